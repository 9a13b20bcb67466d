"""The ``melange`` command: run a worker, inspect and redrive dead letters, inspect sagas.

    melange worker myapp.consumers:Billing --queue billing [--backend URL]
        [--threads N | --async [--concurrency N]] [--processes N] [--prefetch N]
        [--idempotency URL] [--outbox URL]
        [--middleware module:Class] [--visibility-timeout SECONDS]
        [--log-level INFO] [--log-format text|json]
    melange dlq peek billing [--limit 10]
    melange dlq redrive billing
    melange relay --outbox sqlite:///orders.db [--once]
    melange stats --outbox URL | melange dlq peek --outbox URL
    melange saga list OrderSaga [--store URL] [--status running] [--json]
    melange saga show OrderSaga o-1 [--store URL] [--json]
    melange schema check myapp.events_released myapp/events.py [--json]

Without ``--backend`` (given before or after the subcommand) the URL is
``MELANGE_BACKEND_URL``, else ``sqlite:///melange.db``; without ``--store`` the
saga store is ``MELANGE_SAGA_STORE_URL``, else the same file. Modules named
``module:attribute`` are imported from the current folder too, as with
``python -m``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from melange._logs import FORMATS, configure
from melange._sqlite import require_existing
from melange._supervisor import supervise
from melange.backends import default_backend_url, from_url
from melange.cli._loading import load_consumers, load_middleware
from melange.cli._outbox import add_relay_command
from melange.cli._queues import add_queue_commands
from melange.cli._schema import add_schema_commands
from melange.cli._worker import add_worker_command
from melange.exceptions import MelangeError
from melange.saga._commands import add_saga_commands

__all__ = ["build_parser", "load_consumers", "load_middleware", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``melange`` command."""
    parser = argparse.ArgumentParser(prog="melange", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"melange {_version()}")
    parser.add_argument("--backend", default=None, metavar="URL", help=_BACKEND_HELP)
    _add_logging_options(parser, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    add_worker_command(commands)
    add_queue_commands(commands)
    add_relay_command(commands)
    add_saga_commands(commands)
    add_schema_commands(commands)
    _add_shared_options(parser)
    return parser


_BACKEND_HELP = "the broker (default: $MELANGE_BACKEND_URL, else sqlite:///melange.db)"


def _add_logging_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log this and worse (default: INFO)",
    )
    parser.add_argument(
        "--log-format", default=default, choices=FORMATS, help="log lines as (default: text)"
    )


def _add_shared_options(parser: argparse.ArgumentParser) -> None:
    """Let ``--backend`` and the logging options come after the subcommand too."""
    children = [
        sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for sub in action.choices.values()
    ]
    if not children:
        parser.add_argument(
            "--backend", default=argparse.SUPPRESS, metavar="URL", help=_BACKEND_HELP
        )
        _add_logging_options(parser, argparse.SUPPRESS)
    for child in children:
        _add_shared_options(child)


def _version() -> str:
    try:
        return metadata.version("melange")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _one_process(arguments: list[str]) -> list[str]:
    """Return the command line with ``--processes 1``: what each supervised worker runs."""
    kept: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--processes":
            skip = True
        elif not argument.startswith("--processes="):
            kept.append(argument)
    return [*kept, "--processes", "1"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``melange`` command; return its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    configure(getattr(args, "log_level", "INFO"), getattr(args, "log_format", "text"))
    if getattr(args, "processes", 1) > 1:
        return supervise(_one_process(arguments), args.processes)
    if os.getcwd() not in sys.path:  # as ``python -m`` does
        sys.path.insert(0, os.getcwd())
    try:
        if hasattr(args, "run_alone"):  # needs no broker (``None``: these arguments need one)
            alone: int | None = args.run_alone(args)
            if alone is not None:
                return alone
        args.url = args.backend or default_backend_url()
        if getattr(args, "read_only", False):
            require_existing(args.url)
        with from_url(args.url) as backend:
            status: int = args.run(args, backend)
            return status
    except MelangeError as e:
        print(f"melange: {e}", file=sys.stderr)
        return 2
