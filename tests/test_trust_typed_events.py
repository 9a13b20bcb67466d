"""Typed events never vanish (#17 item 2): read by their class's serializer, or dead-lettered."""

from __future__ import annotations

import pytest

from melange.dead_letters import (
    ERROR_TYPE,
)
from tests.wire import (
    Wire,
    assert_dead_lettered,
    run_between_good_ones,
)

# -- 2. typed events never vanish -----------------------------------------------------------


@pytest.mark.parametrize("serializer", [None, "1"], ids=["no serializer id", "the JSON id"])
def test_a_typed_event_with_the_wrong_serializer_is_read_by_its_own(
    wire: Wire, serializer: str | None
) -> None:
    # A foreign producer's JSON for a registered manifest: the pydantic serializer reads it.
    run = run_between_good_ones(wire, b'{"number": 3}', serializer=serializer)
    assert sorted(run.consumer.handled) == [1, 2, 3]
    assert run.dead_letters == []


def test_a_typed_event_no_serializer_can_read_is_dead_lettered_at_deserialize(
    wire: Wire,
) -> None:
    body = b'{"count": "three"}'
    run = run_between_good_ones(wire, body, serializer="1")
    dead = assert_dead_lettered(run, body, "deserialize", "trust.shipped")
    assert dead.metadata[ERROR_TYPE].endswith("EventTypeMismatchError")
