"""``melange schema check OLD NEW``: the breaking changes between two releases of events."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

from melange.exceptions import ConfigurationError
from melange.serializers.compatibility import Change, changes, event_classes

__all__ = ["add_schema_commands"]


def add_schema_commands(commands: Any) -> None:
    """Add ``schema check`` to the ``melange`` command's subcommands."""
    schema = commands.add_parser("schema", help="compare releases of event classes")
    actions = schema.add_subparsers(dest="schema_command", required=True)
    check = actions.add_parser(
        "check",
        help="report breaking changes between two releases of the event classes"
        " (exit status 1 if there is one)",
    )
    check.add_argument("old", help="the released events: a module (myapp.events) or a .py file")
    check.add_argument("new", help="the events about to be released, the same way")
    check.add_argument("--json", action="store_true", help="one JSON object per change")
    check.set_defaults(run_alone=_check)


def _check(args: argparse.Namespace) -> int:
    old = event_classes(vars(_module(args.old)).values())
    new = event_classes(vars(_module(args.new)).values())
    found: list[Change] = []
    for manifest in sorted(old.keys() | new.keys()):
        if manifest not in new:
            found.append(Change(manifest, None, "no longer in the new release", False))
        elif manifest not in old:
            found.append(Change(manifest, None, "new event", False))
        else:
            found += changes(old[manifest], new[manifest])
    for change in found:
        if args.json:
            print(json.dumps(change.as_dict()))
        else:
            field = f".{change.field}" if change.field else ""
            mark = "BREAKING" if change.breaking else "ok"
            print(f"{mark:8s} {change.manifest}{field}: {change.what}")
    breaking = sum(change.breaking for change in found)
    if not args.json:
        print(f"{len(found)} change(s), {breaking} breaking")
    return 1 if breaking else 0


def _module(target: str) -> ModuleType:
    """Import a module by name, or a ``.py`` file under a name of its own.

    Raises:
        ConfigurationError: it cannot be imported.
    """
    try:
        if target.endswith(".py"):
            path = Path(target)
            name = f"_melange_schema_{path.stem}_{uuid.uuid4().hex[:8]}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ConfigurationError(f"{target}: not a Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses look their module up
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(target)
    except ConfigurationError:
        raise
    except Exception as e:
        raise ConfigurationError(f"cannot import {target}: {type(e).__name__}: {e}") from e
