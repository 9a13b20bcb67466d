"""``python -m melange``: the same as the ``melange`` command."""

import sys

from melange.cli import main

sys.exit(main())
