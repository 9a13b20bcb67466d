"""A namespace melange owns (#17 item 3): a producer's x-melange- headers steer nothing."""

from __future__ import annotations

from melange.dead_letters import (
    ERROR_MESSAGE,
    ERROR_STAGE,
    without_error_headers,
)
from melange.models import Message
from tests.wire import (
    Wire,
    run_between_good_ones,
)

# -- 3. a namespace melange owns ------------------------------------------------------------


def test_a_producer_set_decode_error_does_not_dead_letter_its_message(wire: Wire) -> None:
    headers = {"x-melange-decode-error": "forged", "x-melange-receives": "999"}
    run = run_between_good_ones(wire, b'{"number": 3}', headers=headers)
    assert sorted(run.consumer.handled) == [1, 2, 3]
    assert run.dead_letters == []


def test_redrive_strips_every_header_only_melange_writes() -> None:
    dead = Message(
        content="{}",
        metadata={
            ERROR_STAGE: "decode",
            ERROR_MESSAGE: "why",
            "x-melange-decode-error": "why",
            "x-melange-anything": "x",
            "x-melange-serializer": "1",
            "tenant": "t-1",
        },
    )
    assert without_error_headers(dead).metadata == {"x-melange-serializer": "1", "tenant": "t-1"}
