"""SQS near-limit dead letters (#17 item 6).

A copy gets a shortened reason, or the broker moves the original whole, handled once.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from melange import MessageDispatcher
from melange.aio import AsyncMessageDispatcher, BridgedBackend
from melange.backends.sqs import LocalSQSBackend
from melange.dead_letters import (
    ERROR_MESSAGE,
    ERROR_STAGE,
    dead_letter_reason,
)
from melange.models import Message, QueueWrapper
from melange.policies import RetryPolicy
from melange.testing import unique_name
from tests.servers.moto import MotoServer
from tests.wire import (
    Refusing,
    _consume_until_dead_lettered,
    _send_sized,
)

# -- 6. SQS near-limit dead letters ---------------------------------------------------------


def _refused_on(
    backend: LocalSQSBackend, prefix: str, *, visibility: float
) -> tuple[Refusing, MessageDispatcher, str, QueueWrapper]:
    """Declare a queue whose one consumer refuses everything, dead-lettering at once."""
    consumer = Refusing()
    dispatcher = MessageDispatcher(backend, consumers=[consumer], retry=RetryPolicy.none())
    name = unique_name(prefix)
    _, dead_letter = dispatcher.declare(name, visibility_timeout=visibility)
    assert dead_letter is not None
    return consumer, dispatcher, name, dead_letter


def test_a_near_limit_dead_letter_keeps_its_body_and_a_shortened_reason(
    moto: MotoServer,
) -> None:
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as backend:
        consumer, dispatcher, name, dead_letter = _refused_on(backend, "near", visibility=2)
        # The full reason does not fit, 64 characters of it do.
        body = _send_sized(backend, name, 262_144 - 600)
        dead = _consume_until_dead_lettered(dispatcher, name, dead_letter)

    [copy] = dead
    assert copy.content == body
    assert consumer.calls == 1
    assert copy.metadata[ERROR_STAGE] == "handle"
    assert copy.metadata[ERROR_MESSAGE].startswith("refused: rrr")
    assert len(copy.metadata[ERROR_MESSAGE]) <= 64


def test_a_dead_letter_that_cannot_fit_is_moved_whole_by_the_broker_after_one_handling(
    moto: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as backend:
        consumer, dispatcher, name, dead_letter = _refused_on(backend, "full", visibility=60)
        body = _send_sized(backend, name, 262_144)  # SQS's limit: no room for a single header
        with caplog.at_level("ERROR", logger="melange"):
            # Each receive hidden for 60 s: only releasing at once lets 5 receives fit in 30 s.
            dead = _consume_until_dead_lettered(dispatcher, name, dead_letter)

    [moved] = dead
    assert moved.content == body  # the original, whole, as the broker moved it
    assert consumer.calls == 1  # later receives were handed back unhandled
    assert ERROR_STAGE not in moved.metadata
    reason = dead_letter_reason(moved, max_message_size=backend.max_message_size)
    assert "size limit" in reason
    assert moved.message_id in reason
    [logged] = [r for r in caplog.records if "does not fit" in r.getMessage()]
    assert moved.message_id in logged.getMessage()
    assert "refused: rrr" in logged.getMessage()


def test_asyncio_workers_hand_back_a_dead_letter_that_cannot_fit_unhandled(
    moto: MotoServer,
) -> None:
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as sync_backend:
        backend = BridgedBackend(sync_backend)
        consumer = Refusing()
        dispatcher = AsyncMessageDispatcher(backend, [consumer], retry=RetryPolicy.none())

        async def consume() -> list[Message]:
            name = unique_name("afull")
            _, dead_letter = await dispatcher.declare(name, visibility_timeout=60)
            assert dead_letter is not None
            _send_sized(sync_backend, name, 262_144)
            dead: list[Message] = []
            deadline = time.monotonic() + 30
            while not dead and time.monotonic() < deadline:
                await dispatcher.consume_loop(name, idle_timeout=0.5)
                dead = await backend.retrieve_messages(dead_letter, max_messages=10)
            await backend.close_connection()
            return dead

        [moved] = asyncio.run(consume())

    assert consumer.calls == 1
    assert len(moved.content.encode()) > 262_000
