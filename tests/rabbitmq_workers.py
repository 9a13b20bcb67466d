"""A consumer process for the RabbitMQ crash test: ``python -m tests.rabbitmq_workers``.

It records ``number receive_count pid`` for each event it handles (the line
is on disk before the handler goes on), and with ``--hang`` it then sleeps in
the handler until it is killed.
"""

from __future__ import annotations

import argparse

from melange import MessageDispatcher
from melange.backends.rabbitmq import RabbitMQBackend
from tests.recorder import Recorder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--max-messages", type=int, default=1)
    parser.add_argument("--idle-timeout", type=float, default=60.0)
    args = parser.parse_args()
    with RabbitMQBackend(args.url, visibility_timeout=3600) as backend:
        dispatcher = MessageDispatcher(backend, consumers=[Recorder(args.out, args.hang)])
        dispatcher.declare(args.queue)
        dispatcher.consume_loop(
            args.queue, max_messages=args.max_messages, idle_timeout=args.idle_timeout
        )


if __name__ == "__main__":
    main()
