"""Schema versions: ``__melange_version__`` on the wire, upcasters on receive, newer refused.

The producer and the consumer each have their own class for one manifest,
as two services (or two releases) would; each has its own registry.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import marshmallow
import pytest
from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.backends.memory import InMemoryMessagingBackend
from melange.dead_letters import ERROR_MESSAGE, ERROR_STAGE
from melange.exceptions import ConfigurationError, DeserializationError
from melange.serializers import (
    DataclassSerializer,
    MarshmallowSerializer,
    NewerVersionError,
    SerializerRegistry,
    Upcasters,
    upcaster,
    version_of,
)
from melange.serializers.versions import VERSION_HEADER
from melange.testing import receive, unique_name
from tests.wire import Wire

MANIFEST = "versions.customer_registered"


class RegisteredV1(BaseModel):
    __melange_manifest__ = MANIFEST
    name: str


class RegisteredV2(BaseModel):
    __melange_manifest__ = MANIFEST
    __melange_version__ = 2
    first_name: str
    last_name: str


class RegisteredV3(BaseModel):
    __melange_manifest__ = MANIFEST
    __melange_version__ = 3
    first_name: str
    last_name: str
    country: str


def chain() -> Upcasters:
    """1 -> 2 splits the name; 2 -> 3 adds the country the old versions did not have."""
    steps = Upcasters()

    def split(old: dict[str, Any]) -> dict[str, Any]:
        first, _, last = old.pop("name").partition(" ")
        return {**old, "first_name": first, "last_name": last}

    steps.register(MANIFEST, 1, split)
    steps.register(MANIFEST, 2, lambda old: {**old, "country": "unknown"})
    return steps


class Onboarding(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[RegisteredV3] = []

    @listener
    def on_registered(self, event: RegisteredV3) -> None:
        self.seen.append(event)


def test_the_version_travels_in_a_header_only_when_the_class_declares_one() -> None:
    backend = InMemoryMessagingBackend()
    publisher = MessagePublisher(backend)
    assert VERSION_HEADER not in publisher.build_message(RegisteredV1(name="a b")).metadata
    built = publisher.build_message(RegisteredV3(first_name="a", last_name="b", country="x"))
    assert built.metadata[VERSION_HEADER] == "3"
    assert (version_of(RegisteredV1), version_of(RegisteredV3)) == (1, 3)


def test_a_v1_and_a_v2_producer_reach_a_v3_consumer_on_every_backend(wire: Wire) -> None:
    consumer = Onboarding()
    dispatcher = MessageDispatcher(
        wire.backend, [consumer], serializers=SerializerRegistry(upcasters=chain())
    )
    queue_name = unique_name("versions")
    queue, _ = dispatcher.declare(queue_name, visibility_timeout=2)
    publisher = MessagePublisher(wire.backend)
    publisher.publish(RegisteredV1(name="Ada Lovelace"), queue=queue)
    publisher.publish(RegisteredV2(first_name="Alan", last_name="Turing"), queue=queue)
    publisher.publish(
        RegisteredV3(first_name="Grace", last_name="Hopper", country="US"), queue=queue
    )
    deadline = time.monotonic() + 30
    while len(consumer.seen) < 3 and time.monotonic() < deadline:
        dispatcher.consume_loop(queue_name, idle_timeout=0.5)
    assert sorted(consumer.seen, key=lambda e: e.first_name) == [
        RegisteredV3(first_name="Ada", last_name="Lovelace", country="unknown"),
        RegisteredV3(first_name="Alan", last_name="Turing", country="unknown"),
        RegisteredV3(first_name="Grace", last_name="Hopper", country="US"),
    ]


class OldOnboarding(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[RegisteredV1] = []

    @listener
    def on_registered(self, event: RegisteredV1) -> None:
        self.seen.append(event)


def test_a_v3_message_to_a_v1_consumer_is_dead_lettered_naming_both_versions(wire: Wire) -> None:
    consumer = OldOnboarding()
    dispatcher = MessageDispatcher(wire.backend, [consumer], serializers=SerializerRegistry())
    queue_name = unique_name("versions")
    queue, dead_letter = dispatcher.declare(queue_name, visibility_timeout=2)
    assert dead_letter is not None
    publisher = MessagePublisher(wire.backend)
    sent = publisher.publish(
        RegisteredV3(first_name="Grace", last_name="Hopper", country="US"), queue=queue
    )
    publisher.publish(RegisteredV1(name="Ada Lovelace"), queue=queue)
    deadline = time.monotonic() + 30
    while not consumer.seen and time.monotonic() < deadline:
        dispatcher.consume_loop(queue_name, idle_timeout=0.5)
    [dead] = receive(wire.backend, dead_letter, 1, timeout=10)
    wire.backend.acknowledge_batch([dead])
    assert consumer.seen == [RegisteredV1(name="Ada Lovelace")]
    assert dead.content == sent.content
    assert dead.metadata[ERROR_STAGE] == "deserialize"
    assert "version 3" in dead.metadata[ERROR_MESSAGE]
    assert "version 1" in dead.metadata[ERROR_MESSAGE]


def test_newer_versions_may_be_read_leniently() -> None:
    lenient = SerializerRegistry(lenient_versions=True)
    strict = SerializerRegistry()
    content = RegisteredV3(first_name="G", last_name="H", country="US").model_dump_json()
    for registry in (lenient, strict):
        registry.event_types.register(RegisteredV2)
    pydantic_id = strict.serializer_for(RegisteredV2(first_name="a", last_name="b")).identifier()
    assert lenient.deserialize(content, MANIFEST, pydantic_id, "3") == RegisteredV2(
        first_name="G", last_name="H"
    )
    with pytest.raises(NewerVersionError, match="version 3 is newer"):
        strict.deserialize(content, MANIFEST, pydantic_id, "3")


@dataclasses.dataclass
class MovedV2:
    __melange_manifest__ = "versions.moved"
    __melange_version__ = 2
    street: str
    city: str


class MovedSchemaV2(marshmallow.Schema):
    street = marshmallow.fields.String(required=True)
    city = marshmallow.fields.String(required=True)

    @marshmallow.post_load
    def make(self, data: dict[str, Any], **kwargs: Any) -> MovedV2:
        return MovedV2(**data)


@pytest.mark.parametrize("kind", ["dataclass", "marshmallow"])
def test_dataclasses_and_marshmallow_are_upcast_too(kind: str) -> None:
    steps = Upcasters()
    steps.register(
        "versions.moved", 1, lambda old: dict(zip(("street", "city"), old["address"], strict=True))
    )
    serializer: Any = (
        DataclassSerializer()
        if kind == "dataclass"
        else MarshmallowSerializer({MovedV2: MovedSchemaV2})
    )
    registry = SerializerRegistry(
        {"serializers": {kind: serializer}, "serializer_bindings": {MovedV2: kind}},
        upcasters=steps,
    )
    registry.event_types.register(MovedV2)
    old = '{"address": ["1 Main St", "Springfield"]}'
    got = registry.deserialize(old, "versions.moved", serializer.identifier(), None)
    assert got == MovedV2(street="1 Main St", city="Springfield")


def test_a_missing_step_a_failing_step_and_a_bad_header_are_typed_errors() -> None:
    steps = Upcasters()
    steps.register(MANIFEST, 2, lambda old: {**old, "country": "unknown"})
    registry = SerializerRegistry(upcasters=steps)
    registry.event_types.register(RegisteredV3)
    pydantic_id = registry.serializer_for(RegisteredV1(name="x")).identifier()
    with pytest.raises(DeserializationError, match="no upcaster from version 1"):
        registry.deserialize('{"name": "a b"}', MANIFEST, pydantic_id, None)
    with pytest.raises(DeserializationError, match="version 2 is not a JSON object"):
        registry.deserialize("[1]", MANIFEST, pydantic_id, "2")
    steps.register(MANIFEST, 1, lambda old: {**old, "first_name": old["missing"]})
    with pytest.raises(DeserializationError, match=r"upcasting .* from version 1 failed: KeyError"):
        registry.deserialize('{"name": "a b"}', MANIFEST, pydantic_id, None)
    for header in ("0", "-1", "two", "9" * 12, b"\xff"):
        with pytest.raises(DeserializationError, match="x-melange-version"):
            registry.deserialize("{}", MANIFEST, pydantic_id, header)
    with pytest.raises(ConfigurationError, match="already has an upcaster"):
        steps.register(MANIFEST, 2, lambda old: old)


def test_the_upcaster_decorator_registers_for_every_registry() -> None:
    manifest = f"versions.{unique_name('decorated')}"

    class Renamed(BaseModel):
        __melange_manifest__ = manifest
        __melange_version__ = 2
        full_name: str

    @upcaster(manifest, from_version=1)
    def rename(old: dict[str, Any]) -> dict[str, Any]:
        return {"full_name": old["name"]}

    registry = SerializerRegistry()
    registry.event_types.register(Renamed)
    pydantic_id = registry.serializer_for(Renamed(full_name="x")).identifier()
    assert registry.deserialize('{"name": "Ada"}', manifest, pydantic_id) == Renamed(
        full_name="Ada"
    )
