"""Every decoder is total (#17 item 1), on real brokers: a bad message between two good ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from melange.backends.sqs import _wire as sqs_wire
from tests.servers.moto import MotoServer
from tests.wire import (
    Wire,
    assert_dead_lettered,
    run_between_good_ones,
    sqlite_raw_wire,
    sqs_raw_wire,
)

# -- 1. every decoder is total --------------------------------------------------------------

NOT_INTEGERS = {"superscript two": "²", "two minus signs": "--5", "5,000 digits": "9" * 5000}


@pytest.mark.parametrize("value", list(NOT_INTEGERS.values()), ids=list(NOT_INTEGERS))
def test_a_serializer_id_that_is_not_an_integer_is_dead_lettered_not_raised(
    wire: Wire, value: str
) -> None:
    body = b'{"number": 3}'
    run = run_between_good_ones(wire, body, serializer=value)
    assert_dead_lettered(run, body, "decode", "serializer")


def test_sqs_headers_nested_too_deep_are_dead_lettered_not_raised(moto: MotoServer) -> None:
    body = b'{"number": 3}'
    with sqs_raw_wire(moto) as wire:
        run = run_between_good_ones(wire, body, headers={sqs_wire.PACKED_HEADERS: "[" * 100_000})
    assert_dead_lettered(run, body, "decode", sqs_wire.PACKED_HEADERS)


def test_sqlite_metadata_nested_too_deep_is_dead_lettered_not_raised(tmp_path: Path) -> None:
    body = b'{"number": 3}'
    with sqlite_raw_wire(tmp_path / "broker.db") as wire:
        run = run_between_good_ones(wire, body, headers={"": "[" * 100_000})
    assert_dead_lettered(run, body, "decode", "metadata")
