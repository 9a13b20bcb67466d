"""``python -m melange.cli``: the same as ``python -m melange``."""

import runpy

runpy.run_module("melange", run_name="__main__", alter_sys=True)
