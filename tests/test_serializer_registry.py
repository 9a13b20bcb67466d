"""SerializerRegistry: bindings, defaults, ids, configuration and caching."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest
from pydantic import BaseModel

from melange.exceptions import (
    ConfigurationError,
    EventTypeMismatchError,
    NoSerializerError,
    SerializationError,
    UnknownManifestError,
    UnknownSerializerError,
)
from melange.manifests import EventTypes
from melange.serializers import (
    DataclassSerializer,
    JsonSerializer,
    PickleSerializer,
    PydanticSerializer,
    Serializer,
    SerializerRegistry,
    TypedSerializer,
)


class Base:
    pass


class Sub(Base):
    pass


class SubSub(Sub):
    pass


class Unbound:
    pass


class A(JsonSerializer):
    @staticmethod
    def identifier() -> int:
        return 101


class B(JsonSerializer):
    @staticmethod
    def identifier() -> int:
        return 102


class ReprSerializer(Serializer):
    """Writes any object as its repr: lets a plain class be serialized in these tests."""

    @staticmethod
    def identifier() -> int:
        return 103

    def serialize(self, data: Any) -> str:
        return repr(data)

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        return (data, manifest)


def a_b_registry(**extra: Any) -> SerializerRegistry:
    return SerializerRegistry(
        {
            "serializers": {"a": A, "b": B, "json": JsonSerializer},
            "serializer_bindings": {Base: "a", Sub: "b"},
            **extra,
        }
    )


def test_the_most_specific_binding_wins() -> None:
    registry = a_b_registry(default="json")
    assert type(registry.serializer_for(Base())) is A
    assert type(registry.serializer_for(Sub())) is B
    assert type(registry.serializer_for(SubSub())) is B


def test_an_unbound_class_gets_the_default() -> None:
    registry = a_b_registry(default="json")
    assert type(registry.serializer_for(Unbound())) is JsonSerializer
    assert registry.serializer_for(Unbound()) is registry.by_name("json")


def test_without_a_default_an_unbound_class_has_no_serializer() -> None:
    registry = a_b_registry()
    assert type(registry.serializer_for(SubSub())) is B
    with pytest.raises(NoSerializerError):
        registry.serializer_for(Unbound())
    with pytest.raises(NoSerializerError):
        registry.serialize(Unbound())


def test_the_original_config_dict_takes_classes_and_instances() -> None:
    pydantic_serializer = PydanticSerializer()
    registry = SerializerRegistry(
        {
            "serializers": {"json": JsonSerializer, "pydantic": pydantic_serializer},
            "serializer_bindings": {dict: "json", BaseModel: "pydantic"},
            "default": "json",
        }
    )

    class Paid(BaseModel):
        order_id: str

    assert registry.by_name("pydantic") is pydantic_serializer
    assert registry.serializer_for(Paid(order_id="1")) is pydantic_serializer
    assert type(registry.by_id(1)) is JsonSerializer
    assert registry.serialize({"a": 1}) == ('{"a":1}', None, 1)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"serializers": {"a": A, "a2": A}}, id="duplicate id"),
        pytest.param(
            {"serializers": {"json": JsonSerializer, "j": A, "x": JsonSerializer}}, id="dup"
        ),
        pytest.param(
            {"serializers": {"a": A}, "serializer_bindings": {Base: "missing"}},
            id="binding to an unknown name",
        ),
        pytest.param({"serializers": {"a": A}, "default": "missing"}, id="unknown default"),
        pytest.param({"serializers": {"a": A}, "surprise": 1}, id="unknown setting"),
        pytest.param({"serializers": {"a": object}}, id="not a serializer"),
        pytest.param({"serializers": {"p": PickleSerializer}}, id="pickle class without key"),
        pytest.param(
            {"serializers": {"a": A}, "serializer_bindings": {"Base": "a"}}, id="not a class"
        ),
        pytest.param({"serializers": [A]}, id="serializers not a mapping"),
    ],
)
def test_bad_configuration_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        SerializerRegistry(config)


def test_register_refuses_a_second_serializer_with_a_taken_id() -> None:
    registry = SerializerRegistry()
    with pytest.raises(ConfigurationError, match="id 1"):
        registry.register("other json", JsonSerializer())
    assert registry.by_id(1) is registry.by_name("json")


def test_one_instance_may_have_two_names_and_a_name_can_be_replaced() -> None:
    a = A()
    registry = SerializerRegistry(
        {"serializers": {"a": a, "alias": a}, "serializer_bindings": {Base: "a"}}
    )
    assert registry.by_name("alias") is registry.by_id(101) is a
    assert registry.serializer_for(Base()) is a
    registry.register("a", B)
    assert type(registry.serializer_for(Base())) is B  # the binding follows the name
    assert registry.by_id(101) is a  # still named "alias"
    registry.register("alias", registry.by_name("a"))
    with pytest.raises(UnknownSerializerError):
        registry.by_id(101)  # its last name is gone


def test_unknown_ids_and_names_are_refused() -> None:
    registry = SerializerRegistry()
    with pytest.raises(UnknownSerializerError):
        registry.by_id(99)
    with pytest.raises(UnknownSerializerError):
        registry.by_name("yaml")
    with pytest.raises(UnknownSerializerError):
        registry.deserialize("{}", None, 99)


def test_the_default_registry() -> None:
    registry = SerializerRegistry()
    assert type(registry.by_id(1)) is JsonSerializer
    assert type(registry.by_id(3)) is PydanticSerializer
    assert type(registry.by_id(5)) is DataclassSerializer
    assert registry.by_name("json") is registry.by_id(1)
    assert registry.by_name("pydantic") is registry.by_id(3)
    assert registry.by_name("dataclass") is registry.by_id(5)
    with pytest.raises(UnknownSerializerError):
        registry.by_id(2)  # pickle is never registered by default
    with pytest.raises(UnknownSerializerError):
        registry.by_id(4)
    assert registry.serialize([1, "a"]) == ('[1,"a"]', None, 1)
    assert registry.deserialize('{"a":1}', None, None) == {"a": 1}  # no id: the default


def test_default_registry_handles_models_dataclasses_and_dicts() -> None:
    @dataclasses.dataclass
    class Shipped:
        order_id: str

    class Paid(BaseModel):
        order_id: str

    registry = SerializerRegistry()
    assert registry.register_event_type(Shipped) == "Shipped"
    assert registry.register_event_type(Paid) == "Paid"
    assert registry.event_types.resolve("Paid") is Paid
    expected = {Shipped: ("Shipped", 5), Paid: ("Paid", 3), dict: (None, 1)}
    for event in (Shipped("1"), Paid(order_id="2"), {"order_id": "3"}):
        content, manifest, serializer_id = registry.serialize(event)
        assert (manifest, serializer_id) == expected[type(event)]
        assert registry.deserialize(content, manifest, serializer_id) == event


def test_a_dataclass_goes_to_the_dataclass_serializer_whatever_its_name() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    @dataclasses.dataclass
    class Labelled(Point):
        label: str

    registry = SerializerRegistry(
        {
            "serializers": {
                "json": JsonSerializer,
                "dc": DataclassSerializer,
                "repr": ReprSerializer,
            },
            "serializer_bindings": {Labelled: "repr"},
            "default": "json",
        }
    )
    assert registry.serializer_for(Point(1)) is registry.by_name("dc")
    assert registry.serializer_for(Labelled(1, "a")) is registry.by_name("repr")  # a binding first
    no_dataclass = SerializerRegistry({"serializers": {"json": JsonSerializer}, "default": "json"})
    assert no_dataclass.serializer_for(Point(1)) is no_dataclass.by_name("json")


def test_a_message_without_serializer_id_needs_a_default() -> None:
    registry = SerializerRegistry({"serializers": {"a": A}})
    with pytest.raises(UnknownSerializerError):
        registry.deserialize("{}", None, None)
    registry.set_default("a")
    assert registry.deserialize("[1]", None, None) == [1]


@pytest.mark.parametrize("change", ["bind", "register", "set_default"])
def test_reconfiguring_forgets_cached_choices(change: str) -> None:
    registry = SerializerRegistry({"serializers": {"a": A}, "default": "a"})
    if change != "register":
        registry.register("repr", ReprSerializer)
    assert type(registry.serializer_for(Sub())) is A
    with pytest.raises(SerializationError, match="not JSON-serializable"):
        registry.serialize(Sub())
    if change == "bind":
        registry.bind(Sub, "repr")
    elif change == "register":
        registry.register("a", ReprSerializer())
    else:
        registry.set_default("repr")
    assert type(registry.serializer_for(Sub())) is ReprSerializer
    content, manifest, serializer_id = registry.serialize(Sub())
    assert (content[:1], manifest, serializer_id) == ("<", "Sub", 103)


class Recorder(TypedSerializer):
    """Reads any manifest into its class built with no arguments."""

    @staticmethod
    def identifier() -> int:
        return 104

    def serialize(self, data: Any) -> str:
        return ""

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        return self.event_types.resolve(manifest)()


def test_a_typed_serializer_reads_with_the_registry_event_types() -> None:
    registry = SerializerRegistry({"serializers": {"rec": Recorder}})
    serializer = registry.by_name("rec")
    assert isinstance(serializer, TypedSerializer)
    assert serializer.event_types is registry.event_types
    registry.register_event_type(Sub)
    assert type(registry.deserialize("", "Sub", 104)) is Sub
    with pytest.raises(UnknownManifestError):
        registry.deserialize("", "Base", 104)  # never imported, only looked up


def test_a_typed_serializer_keeps_the_event_types_it_was_given() -> None:
    own = EventTypes([Base])
    serializer = Recorder(own)
    shared = EventTypes()
    registry = SerializerRegistry({"serializers": {"rec": serializer}}, event_types=shared)
    assert registry.event_types is shared
    assert serializer.event_types is own
    assert type(registry.deserialize("", "Base", 104)) is Base
    assert "Base" not in shared


def test_classes_registered_before_joining_a_registry_are_carried_over() -> None:
    serializer = Recorder()
    serializer.event_types.register(SubSub)
    registry = SerializerRegistry({"serializers": {"rec": serializer}})
    assert serializer.event_types is registry.event_types
    assert registry.event_types.resolve("SubSub") is SubSub


def test_a_typed_serializer_serves_one_registry_unless_given_event_types() -> None:
    serializer = Recorder()
    first = SerializerRegistry({"serializers": {"rec": serializer}})
    first.register("again", serializer)  # the same registry: fine
    with pytest.raises(ConfigurationError, match="another registry"):
        SerializerRegistry({"serializers": {"rec": serializer}})
    shared = EventTypes()
    given = Recorder(shared)
    SerializerRegistry({"serializers": {"rec": given}})
    SerializerRegistry({"serializers": {"rec": given}})
    assert given.event_types is shared


def test_concurrent_reads_while_reconfiguring_see_whole_configurations() -> None:
    registry = SerializerRegistry({"serializers": {"a": A, "b": B}, "default": "a"})
    classes = [type(f"Event{i}", (Sub,), {}) for i in range(50)]
    wrong: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for cls in classes:
                found = type(registry.serializer_for(cls()))
                if found not in (A, B):
                    wrong.append(found.__name__)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for thread in readers:
        thread.start()
    try:
        for round_ in range(200):
            registry.bind(Sub, "b" if round_ % 2 == 0 else "a")
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert wrong == []
    # the last bind was to "a": no reader may have left a stale "b" in the cache
    assert {type(registry.serializer_for(cls())) for cls in classes} == {A}


class Parcel(BaseModel):
    __melange_manifest__ = "registry.parcel"
    weight: int


@pytest.mark.parametrize("serializer_id", [None, 1], ids=["no id", "the JSON id"])
def test_a_registered_manifest_is_read_by_its_class_serializer(serializer_id: int | None) -> None:
    registry = SerializerRegistry()
    registry.register_event_type(Parcel)
    assert registry.deserialize('{"weight": 3}', "registry.parcel", serializer_id) == Parcel(
        weight=3
    )


def test_a_registered_manifest_that_reads_as_another_type_is_refused() -> None:
    registry = SerializerRegistry()
    registry.register_event_type(Parcel)
    with pytest.raises(EventTypeMismatchError, match=r"'registry\.parcel' names Parcel"):
        registry.deserialize('{"weight": "heavy"}', "registry.parcel", 1)
    without_pydantic = SerializerRegistry(
        {"serializers": {"json": JsonSerializer}, "default": "json"}
    )
    without_pydantic.register_event_type(Parcel)
    with pytest.raises(EventTypeMismatchError, match="read a dict"):
        without_pydantic.deserialize('{"weight": 3}', "registry.parcel", None)


def test_an_unknown_manifest_is_still_read_as_a_plain_value() -> None:
    assert SerializerRegistry().deserialize('{"weight": 3}', "elsewhere.parcel", 1) == {"weight": 3}
