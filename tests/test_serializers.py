from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import marshmallow
import pytest
from pydantic import BaseModel

from melange.exceptions import (
    ConfigurationError,
    DeserializationError,
    MessageValidationError,
    NoSerializerError,
    UnknownManifestError,
    UnknownSerializerError,
    UnsafePayloadError,
)
from melange.manifests import EventTypes, manifest_of
from melange.serializers import (
    DataclassSerializer,
    JsonSerializer,
    MarshmallowSerializer,
    PickleSerializer,
    PydanticSerializer,
    SerializerRegistry,
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


def test_the_most_specific_binding_wins() -> None:
    registry = SerializerRegistry(
        {
            "serializers": {"a": A, "b": B, "json": JsonSerializer},
            "serializer_bindings": {Base: "a", Sub: "b"},
            "default": "json",
        }
    )
    assert isinstance(registry.serializer_for(Base()), A)
    assert isinstance(registry.serializer_for(Sub()), B)
    assert isinstance(registry.serializer_for(SubSub()), B)
    assert type(registry.serializer_for(Unbound())) is JsonSerializer


def test_without_a_default_an_unbound_class_has_no_serializer() -> None:
    registry = SerializerRegistry({"serializers": {"a": A}, "serializer_bindings": {Base: "a"}})
    with pytest.raises(NoSerializerError):
        registry.serializer_for(Unbound())


def test_binding_later_changes_the_choice() -> None:
    registry = SerializerRegistry({"serializers": {"a": A, "b": B}, "default": "a"})
    assert isinstance(registry.serializer_for(Sub()), A)
    registry.bind(Sub, "b")
    assert isinstance(registry.serializer_for(Sub()), B)


@pytest.mark.parametrize(
    "config",
    [
        {"serializers": {"a": A, "a2": A}},
        {"serializers": {"a": A}, "serializer_bindings": {Base: "missing"}},
        {"serializers": {"a": A}, "default": "missing"},
        {"serializers": {"a": A}, "surprise": 1},
        {"serializers": {"a": object}},
    ],
)
def test_bad_configuration_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        SerializerRegistry(config)


def test_lookup_by_id_and_name() -> None:
    registry = SerializerRegistry()
    assert isinstance(registry.by_id(1), JsonSerializer)
    assert isinstance(registry.by_name("pydantic"), PydanticSerializer)
    with pytest.raises(UnknownSerializerError):
        registry.by_id(2)  # pickle is never registered by default
    with pytest.raises(UnknownSerializerError):
        registry.by_name("pickle")


def test_default_registry_handles_models_dataclasses_and_dicts() -> None:
    @dataclasses.dataclass
    class Shipped:
        order_id: str

    class Paid(BaseModel):
        order_id: str

    registry = SerializerRegistry()
    registry.register_event_type(Shipped)
    registry.register_event_type(Paid)
    for event in (Shipped("1"), Paid(order_id="2"), {"order_id": "3"}):
        content, manifest, serializer_id = registry.serialize(event)
        assert registry.deserialize(content, manifest, serializer_id) == event


def test_manifest_is_the_class_name_or_the_declared_one() -> None:
    class Plain(BaseModel):
        pass

    class Named(BaseModel):
        __melange_manifest__ = "orders.created"

    class Child(Named):
        pass

    assert manifest_of(Plain) == "Plain"
    assert manifest_of(Named) == "orders.created"
    assert manifest_of(Child) == "Child"  # a manifest names one class, not its subclasses


def test_two_classes_for_one_manifest_in_one_registry_is_an_error() -> None:
    class One(BaseModel):
        __melange_manifest__ = "x"

    class Two(BaseModel):
        __melange_manifest__ = "x"

    types = EventTypes([One])
    with pytest.raises(ConfigurationError, match="claimed by both"):
        types.register(Two)
    with pytest.raises(UnknownManifestError):
        types.resolve("y")


def test_each_service_reads_into_its_own_class() -> None:
    class Full(BaseModel):
        __melange_manifest__ = "orders.created"
        order_id: str
        total: Decimal
        email: str

    class Slim(BaseModel):
        __melange_manifest__ = "orders.created"
        order_id: str
        total: Decimal

    writer, reader = SerializerRegistry(), SerializerRegistry()
    reader.register_event_type(Slim)
    content, manifest, serializer_id = writer.serialize(
        Full(order_id="o", total=Decimal("1.5"), email="e")
    )
    assert reader.deserialize(content, manifest, serializer_id) == Slim(
        order_id="o", total=Decimal("1.5")
    )


class Explosive:
    """Unpickling this would create a file: it must never happen."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_pickle_is_refused_by_default(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    payload = PickleSerializer("attacker").serialize(Explosive(str(target)))
    with pytest.raises(UnknownSerializerError):
        SerializerRegistry().deserialize(payload, "Explosive", PickleSerializer.identifier())
    assert not target.exists()


@pytest.mark.parametrize("forge", ["other key", "unsigned"])
def test_pickle_reads_only_payloads_signed_with_its_key(tmp_path: Path, forge: str) -> None:
    import base64
    import pickle

    target = tmp_path / "pwned"
    if forge == "unsigned":
        payload = base64.b64encode(pickle.dumps(Explosive(str(target)))).decode()
    else:
        payload = PickleSerializer("other key").serialize(Explosive(str(target)))
    registry = SerializerRegistry({"serializers": {"pickle": PickleSerializer("our key")}})
    with pytest.raises(UnsafePayloadError):
        registry.deserialize(payload, None, PickleSerializer.identifier())
    assert not target.exists()


def test_pickle_needs_a_key_and_round_trips_when_signed() -> None:
    with pytest.raises(ConfigurationError):
        PickleSerializer(b"")
    serializer = PickleSerializer(b"k")
    assert serializer.deserialize(serializer.serialize({"a": Decimal("1")})) == {"a": Decimal("1")}
    with pytest.raises(DeserializationError):
        serializer.deserialize("not base64 !!")


class Order(BaseModel):
    order_id: str
    total: Decimal


@dataclasses.dataclass
class Parcel:
    parcel_id: str
    weight: Decimal


@dataclasses.dataclass
class Invoice:
    invoice_id: str
    amount: int


class InvoiceSchema(marshmallow.Schema):
    invoice_id = marshmallow.fields.String(required=True)
    amount = marshmallow.fields.Integer(required=True)


def typed(serializer: Any, cls: type) -> Any:
    serializer.event_types.register(cls)
    return serializer


@pytest.mark.parametrize(
    ("serializer", "manifest", "malformed", "invalid"),
    [
        (JsonSerializer(), None, "{nope", None),
        (typed(PydanticSerializer(), Order), "Order", "{nope", '{"order_id": 1}'),
        (typed(DataclassSerializer(), Parcel), "Parcel", "{nope", '{"parcel_id": "p"}'),
        (
            MarshmallowSerializer({Invoice: InvoiceSchema}),
            "Invoice",
            "{nope",
            '{"invoice_id": "i", "amount": "many"}',
        ),
    ],
)
def test_bad_content_raises_typed_errors(
    serializer: Any, manifest: str | None, malformed: str, invalid: str | None
) -> None:
    if isinstance(serializer, MarshmallowSerializer):
        serializer.event_types.register(Invoice)
    with pytest.raises(DeserializationError) as caught:
        serializer.deserialize(malformed, manifest)
    assert not isinstance(caught.value, MessageValidationError)
    if invalid is not None:
        with pytest.raises(MessageValidationError):
            serializer.deserialize(invalid, manifest)


def test_marshmallow_schema_registered_in_a_registry_binds_its_classes() -> None:
    registry = SerializerRegistry(
        {"serializers": {"marshmallow": MarshmallowSerializer({Invoice: InvoiceSchema})}}
    )
    content, manifest, serializer_id = registry.serialize(Invoice("i-1", 3))
    assert (manifest, serializer_id) == ("Invoice", 4)
    assert registry.deserialize(content, manifest, serializer_id) == Invoice("i-1", 3)


def test_importing_serializers_loads_neither_pydantic_nor_marshmallow() -> None:
    code = (
        "import sys, melange.serializers;"
        "print([m for m in ('pydantic', 'marshmallow') if m in sys.modules])"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
