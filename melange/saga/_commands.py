"""``melange saga list`` and ``melange saga show``: saga instances, from their store."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from melange._sqlite import require_existing
from melange.saga._records import SagaRecord, SagaStatus
from melange.saga._urls import default_saga_store_url, saga_store_from_url

__all__ = ["add_saga_commands"]


def add_saga_commands(commands: Any) -> None:
    """Add ``saga list`` and ``saga show`` to the ``melange`` command's subcommands."""
    saga = commands.add_parser("saga", help="inspect saga instances")
    actions = saga.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the instances of a saga type")
    showing = actions.add_parser("show", help="one instance: status, state, timeline")
    for action in (listing, showing):
        action.add_argument("saga_type", help="the saga's type, e.g. OrderSaga")
        action.add_argument(
            "--store",
            default=None,
            metavar="URL",
            help="the saga store (default: $MELANGE_SAGA_STORE_URL, else sqlite:///melange.db)",
        )
        action.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument(
        "--status", choices=[s.value for s in SagaStatus], default=None, help="only these"
    )
    listing.add_argument("--limit", type=int, default=100, help="at most (default: 100)")
    listing.set_defaults(run_alone=_saga_list)
    showing.add_argument("key", help="the instance's correlation key")
    showing.set_defaults(run_alone=_saga_show)


def _saga_list(args: argparse.Namespace) -> int:
    status = SagaStatus(args.status) if args.status else None
    url = args.store or default_saga_store_url()
    require_existing(url)  # reading never creates a store file
    with saga_store_from_url(url) as store:
        records = store.instances(args.saga_type, status=status, limit=args.limit)
    for record in records:
        if args.json:
            print(json.dumps(_summary(record), ensure_ascii=False))
        else:
            last = record.timeline[-1].what if record.timeline else ""
            print(f"{record.key}\t{record.status.value}\tv{record.version}\t{last}")
    if not args.json:
        print(f"{len(records)} {args.saga_type} instance(s)")
    return 0


def _saga_show(args: argparse.Namespace) -> int:
    url = args.store or default_saga_store_url()
    require_existing(url)  # reading never creates a store file
    with saga_store_from_url(url) as store:
        record = store.find(args.saga_type, args.key)
        pending = (
            []
            if record is None
            else store.pending(args.saga_type, record.saga_id, due_by=float("inf"))
        )
    if record is None:
        print(f"melange: no {args.saga_type} instance with key {args.key!r}", file=sys.stderr)
        return 1
    shown = {
        **_summary(record),
        "timeline": [
            {"at": datetime.fromtimestamp(s.at, UTC).isoformat(), "what": s.what}
            for s in record.timeline
        ],
        "compensations": [c.built.manifest for c in record.compensations],
        "timeouts": sorted(record.timeouts.values()),
        "outbox": [f"{p.built.manifest} to {p.where.name}" for p in pending],
    }
    if args.json:
        print(json.dumps(shown, ensure_ascii=False))
        return 0
    for name in ("saga_type", "key", "saga_id", "status", "version", "state"):
        print(f"{name}: {shown[name]}")
    print("timeline:")
    for step in shown["timeline"]:
        print(f"  {step['at']}  {step['what']}")
    for name in ("compensations", "timeouts", "outbox"):
        print(f"{name}: {', '.join(shown[name]) or '-'}")
    return 0


def _summary(record: SagaRecord) -> dict[str, Any]:
    return {
        "saga_type": record.saga_type,
        "key": record.key,
        "saga_id": record.saga_id,
        "status": record.status.value,
        "version": record.version,
        "state": json.loads(record.state) if record.state else None,
    }
