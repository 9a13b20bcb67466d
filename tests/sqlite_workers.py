"""Processes for the SQLite multi-process and crash tests: ``python -m tests.sqlite_workers``."""

from __future__ import annotations

import argparse
import os

from melange import MessageDispatcher, MessagePublisher
from melange.backends.sqlite import SQLiteBackend
from tests.recorder import Numbered, Recorder

QUEUE = "numbers"


def declare(backend: SQLiteBackend, visibility_timeout: float) -> MessageDispatcher:
    dispatcher = MessageDispatcher(backend, consumers=[Recorder(os.devnull, hang=False)])
    dispatcher.declare(QUEUE, visibility_timeout=visibility_timeout)
    return dispatcher


def publish(args: argparse.Namespace) -> None:
    backend = SQLiteBackend(args.db)
    publisher = MessagePublisher(backend)
    numbers = range(args.start, args.start + args.count)
    if args.batch > 1:
        for first in range(args.start, args.start + args.count, args.batch):
            chunk = numbers[first - args.start : first - args.start + args.batch]
            publisher.publish_batch(Numbered(number=n) for n in chunk)
        return
    for n in numbers:
        publisher.publish(Numbered(number=n))
        print(n, flush=True)  # only after publish returned


def consume(args: argparse.Namespace) -> None:
    backend = SQLiteBackend(args.db)
    dispatcher = MessageDispatcher(backend, consumers=[Recorder(args.out, hang=args.hang)])
    dispatcher.consume_loop(QUEUE, idle_timeout=args.idle_timeout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["publish", "consume"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", default=os.devnull)
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args()
    {"publish": publish, "consume": consume}[args.role](args)


if __name__ == "__main__":
    main()
