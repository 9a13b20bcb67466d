"""``python -m examples.saga``: the order saga across four service processes.

    python -m examples.saga [--backend URL] [--orders N] [--json]

Without ``--backend`` the services share a new embedded SQLite broker.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

from examples.saga.demo import Demo, plan, problems, report


def _short(step: str) -> str:
    """Return a timeline step as the one-line view shows it ('' to leave it out)."""
    words = step.split()
    if step.startswith(("started by ", "handled ", "sent ")):
        return words[2] if words[0] == "started" else words[1]
    if step.startswith("compensating: sent "):
        return "undo " + words[2]
    if step.startswith("timeout "):
        return ""
    return step


def main() -> int:
    parser = argparse.ArgumentParser(description="the order saga across four services")
    parser.add_argument("--backend", default=None, help="broker URL (default: a new SQLite file)")
    parser.add_argument("--orders", type=int, default=12, help="orders to place (default 12)")
    parser.add_argument("--json", action="store_true", help="print the run as JSON, last")
    parser.add_argument(
        "--payment-timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long the saga waits for payments (default 2)",
    )
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=4.0,
        metavar="SECONDS",
        help="how late payments answers for -slow orders (default 4; keep it longer)",
    )
    parser.add_argument(
        "--outbox",
        action="store_true",
        help="the saga sends through the orders database's transactional outbox",
    )
    args = parser.parse_args()
    batch = plan(args.orders)
    with tempfile.TemporaryDirectory(prefix="melange-saga-") as folder:
        url = args.backend or f"sqlite:///{folder}/broker.db"
        demo = Demo(
            Path(folder),
            url,
            payment_timeout=args.payment_timeout,
            slow_seconds=args.slow_seconds,
            outbox=args.outbox,
        )
        sends = ", sends through the orders outbox" if args.outbox else ""
        print(f"order saga: 4 services, 4 processes, broker {url.split('?')[0]}{sends}", flush=True)
        demo.declare()
        demo.start_all()
        try:
            demo.place(batch)
            print(f"placed {len(batch)} orders; waiting for every saga to end", flush=True)
            ended = demo.wait(batch)
        finally:
            codes = demo.stop_all()
        result = report(demo, batch)
    for order_id, end in result["orders"].items():
        steps = " → ".join(filter(None, map(_short, end["steps"])))
        why = f" ({end['reason']})" if end["reason"] else ""
        print(f"  {order_id:<10} {end['status']}{why}: {steps}")
    outcomes = Counter(end["reason"] or "completed" for end in result["orders"].values())
    print("summary: " + ", ".join(f"{n} {what}" for what, n in sorted(outcomes.items())))
    found = problems(batch, result) if ended else ["some sagas did not end in time"]
    if any(codes):
        found.append(f"a service exited with {codes}")
    for problem in found:
        print(f"PROBLEM: {problem}")
    if not found:
        print("every order ended as planned; inventory, payments and shipping agree")
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
