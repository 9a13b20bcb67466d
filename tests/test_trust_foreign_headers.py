"""Headers of other producers survive (#17 item 4): binary values arrive as bytes and travel on."""

from __future__ import annotations

from melange import MessageDispatcher
from melange.dead_letters import (
    redrive,
)
from melange.policies import RetryPolicy
from melange.testing import receive, unique_name
from tests.wire import (
    Refusing,
    Wire,
    _consume_until_dead_lettered,
    run_between_good_ones,
)

# -- 4. headers of other producers survive ----------------------------------------------


BINARY = b"\x00\xff\xfe binary"


def test_a_binary_header_reaches_the_handler_as_bytes(wire: Wire) -> None:
    run = run_between_good_ones(wire, b'{"number": 3}', headers={"blob": BINARY, "tenant": "t"})
    assert sorted(run.consumer.handled) == [1, 2, 3]
    assert run.dead_letters == []
    assert run.consumer.headers[3]["blob"] == BINARY
    assert run.consumer.headers[3]["tenant"] == "t"


def test_a_binary_header_survives_dead_lettering_and_redrive(wire: Wire) -> None:
    backend = wire.backend
    dispatcher = MessageDispatcher(backend, consumers=[Refusing()], retry=RetryPolicy.none())
    name = unique_name("bin")
    _, dead_letter = dispatcher.declare(name, visibility_timeout=2)
    assert dead_letter is not None
    many = {f"h{n}": f"v{n}" for n in range(12)}  # more than SQS's 10 attributes: packed
    wire.send_raw(name, b'{"number": 3}', {"blob": BINARY, **many}, None, "trust.shipped")
    [dead] = _consume_until_dead_lettered(dispatcher, name, dead_letter)
    assert dead.metadata["blob"] == BINARY
    backend.release(dead)
    assert redrive(backend, name) == 1
    [back] = receive(backend, backend.get_queue(name), 1)
    assert back.metadata["blob"] == BINARY
    assert back.metadata["h11"] == "v11"
    backend.acknowledge(back)
