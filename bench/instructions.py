"""Instructions per message of in-memory publish -> dispatch -> ack, counted by callgrind.

Wall-clock figures on a shared machine swing by half; instruction counts do
not. This runs the in-memory steady state of ``bench/inmemory.py`` (batches
of 10, 1,000 published then drained) under ``valgrind --tool=callgrind`` for
two sizes, and prints the difference per message, so start-up cancels out.
``--source`` points at another checkout (e.g. a ``git worktree`` of the
previous commit) to count the same work on its code, in the same run:

    .venv/bin/python bench/instructions.py --source /tmp/before --source .
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()


def work(n: int) -> None:
    """Publish and consume ``n`` messages (the measured part; run in the child)."""
    sys.path.insert(0, str(Path(os.environ["MELANGE_BENCH_SOURCE"]) / "bench"))
    from inmemory import melange  # the source's own bench, on its own code

    melange(n, 10, 1000)


def instructions(source: Path, n: int) -> int:
    """Return the instructions callgrind counted for ``n`` messages on ``source``'s code."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        env = {**os.environ, "MELANGE_BENCH_SOURCE": str(source), "PYTHONHASHSEED": "0"}
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(HERE),
            "--child",
            str(n),
        ]
        subprocess.run(command, env=env, check=True, capture_output=True)
        summary = re.search(r"^summary:\s+(\d+)", out.read_text(), flags=re.M)
        if summary is None:
            raise RuntimeError("callgrind wrote no summary")
        return int(summary.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", action="append", type=Path, default=[])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=5000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        work(args.child)
        return
    sources = args.source or [HERE.parent.parent]
    print(f"{'source':<40} {'instructions/message':>22}")
    for source in sources:
        small = instructions(source.resolve(), args.small)
        large = instructions(source.resolve(), args.large)
        per_message = (large - small) / (args.large - args.small)
        print(f"{source!s:<40} {per_message:>22,.0f}")


if __name__ == "__main__":
    main()
