"""Each built-in serializer: manifests, signed pickle, error mapping, lazy imports, the docs."""

from __future__ import annotations

import base64
import dataclasses
import os
import pathlib
import pickle
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
    SerializationError,
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

ROOT = Path(__file__).resolve().parent.parent

# -- manifests ---------------------------------------------------------------


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
    registry = SerializerRegistry()
    assert registry.serialize(Named())[1] == "orders.created"
    assert registry.serialize(Plain())[1] == "Plain"


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
    writer.register_event_type(Full)
    reader.register_event_type(Slim)
    content, manifest, serializer_id = writer.serialize(
        Full(order_id="o", total=Decimal("1.5"), email="e")
    )
    assert manifest == "orders.created"
    event = reader.deserialize(content, manifest, serializer_id)
    assert type(event) is Slim
    assert event == Slim(order_id="o", total=Decimal("1.5"))
    assert type(writer.deserialize(content, manifest, serializer_id)) is Full


def test_a_manifest_is_never_imported() -> None:
    registry = SerializerRegistry()
    with pytest.raises(UnknownManifestError):
        registry.deserialize("{}", "os.system", PydanticSerializer.identifier())
    with pytest.raises(UnknownManifestError):
        registry.deserialize("{}", "pathlib.Path", DataclassSerializer.identifier())


# -- pickle ------------------------------------------------------------------


class Explosive:
    """Unpickling this creates a file: it must never happen to an untrusted payload."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.path,))


def test_the_explosive_payload_really_explodes_when_unpickled_naively(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Explosive(target)))
    assert target.exists()


def test_pickle_is_refused_by_default(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    payload = PickleSerializer("attacker").serialize(Explosive(target))
    with pytest.raises(UnknownSerializerError):
        SerializerRegistry().deserialize(payload, "Explosive", PickleSerializer.identifier())
    assert not target.exists()


def forged_payloads(target: Path) -> dict[str, str]:
    raw = pickle.dumps(Explosive(target))
    return {
        "unsigned": base64.b64encode(raw).decode(),
        "other key": PickleSerializer("other key").serialize(Explosive(target)),
        "signature only": base64.b64encode(b"\0" * 32).decode(),
        "empty": "",
    }


@pytest.mark.parametrize("forge", ["unsigned", "other key", "signature only", "empty"])
def test_pickle_reads_only_payloads_signed_with_its_key(tmp_path: Path, forge: str) -> None:
    target = tmp_path / "pwned"
    payload = forged_payloads(target)[forge]
    registry = SerializerRegistry({"serializers": {"pickle": PickleSerializer("our key")}})
    with pytest.raises(UnsafePayloadError):
        registry.deserialize(payload, None, PickleSerializer.identifier())
    assert not target.exists()


def test_a_signed_payload_round_trips_and_runs(tmp_path: Path) -> None:
    serializer = PickleSerializer("our key")
    assert serializer.deserialize(serializer.serialize({"a": Decimal("1")})) == {"a": Decimal("1")}
    target = tmp_path / "trusted"
    PickleSerializer(b"our key").deserialize(serializer.serialize(Explosive(target)))
    assert target.exists()  # a str key and its bytes are the same key


@pytest.mark.parametrize("key", [b"", "", None, 42])
def test_pickle_needs_a_key(key: Any) -> None:
    with pytest.raises(ConfigurationError):
        PickleSerializer(key)


def test_pickle_content_is_signature_then_pickle_in_base64() -> None:
    import hashlib
    import hmac

    content = PickleSerializer(b"k").serialize([1, 2])
    raw = base64.b64decode(content)
    signature, payload = raw[:32], raw[32:]
    assert pickle.loads(payload) == [1, 2]
    assert signature == hmac.new(b"k", payload, hashlib.sha256).digest()


@pytest.mark.parametrize("content", ["not base64 !!", "é"])
def test_pickle_content_that_is_not_base64_is_malformed(content: str) -> None:
    with pytest.raises(DeserializationError) as caught:
        PickleSerializer(b"k").deserialize(content)
    assert not isinstance(caught.value, UnsafePayloadError)


# -- malformed and invalid content ---------------------------------------------


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


MALFORMED = ["{nope", "", "[1,", '{"a": 1}}']
# Deep enough for the stdlib's recursion limit and pydantic's nesting limit.
TOO_DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("malformed", [*MALFORMED, TOO_DEEP])
@pytest.mark.parametrize(
    ("serializer", "manifest", "invalid"),
    [
        pytest.param(JsonSerializer(), None, [], id="json"),
        pytest.param(
            typed(PydanticSerializer(), Order),
            "Order",
            ['{"order_id": 1, "total": "1"}', '{"order_id": "o"}', "[1]", '"x"'],
            id="pydantic",
        ),
        pytest.param(
            typed(DataclassSerializer(), Parcel),
            "Parcel",
            ['{"parcel_id": "p"}', '{"parcel_id": "p", "weight": "heavy"}', "[1]"],
            id="dataclass",
        ),
        pytest.param(
            typed(MarshmallowSerializer({Invoice: InvoiceSchema}), Invoice),
            "Invoice",
            ['{"invoice_id": "i", "amount": "many"}', '{"invoice_id": "i"}', "[1]"],
            id="marshmallow",
        ),
    ],
)
def test_bad_content_raises_typed_errors(
    serializer: Any, manifest: str | None, invalid: list[str], malformed: str
) -> None:
    with pytest.raises(DeserializationError) as caught:
        serializer.deserialize(malformed, manifest)
    assert not isinstance(caught.value, MessageValidationError)
    for content in invalid:
        with pytest.raises(MessageValidationError):
            serializer.deserialize(content, manifest)


@pytest.mark.parametrize(
    ("serializer", "event"),
    [
        (JsonSerializer(), {"x": float("nan")}),
        (JsonSerializer(), {"x": object()}),
        (PydanticSerializer(), {"not": "a model"}),
        (DataclassSerializer(), Order(order_id="o", total=Decimal(1))),
        (MarshmallowSerializer({Invoice: InvoiceSchema}), Order(order_id="o", total=Decimal(1))),
        (PickleSerializer(b"k"), lambda: None),
    ],
    ids=["json nan", "json object", "pydantic", "dataclass", "marshmallow", "pickle"],
)
def test_what_cannot_be_written_raises_serialization_error(serializer: Any, event: Any) -> None:
    with pytest.raises(SerializationError):
        serializer.serialize(event)


def test_json_ignores_the_manifest_and_writes_none() -> None:
    serializer = JsonSerializer()
    assert serializer.manifest({"a": 1}) is None
    assert serializer.serialize({"é": [1, 2.5, None]}) == '{"é":[1,2.5,null]}'
    assert serializer.deserialize('{"a": 1}', "Whatever") == {"a": 1}


# -- pydantic ----------------------------------------------------------------


def test_pydantic_honours_overridden_dump_and_validate() -> None:
    class Shouting(BaseModel):
        word: str

        def model_dump_json(self, **kwargs: Any) -> str:
            return super().model_dump_json(**kwargs).upper()

        @classmethod
        def model_validate_json(cls, json_data: Any, **kwargs: Any) -> Shouting:
            loaded = super().model_validate_json(json_data, **kwargs)
            return cls(word=loaded.word.lower() if "WORD" in str(json_data) else "?")

    serializer = typed(PydanticSerializer(), Shouting)
    content = serializer.serialize(Shouting(word="hi"))
    assert content == '{"WORD":"HI"}'
    assert serializer.deserialize('{"word":"HI","WORD":1}', "Shouting") == Shouting(word="hi")


def test_pydantic_content_reads_into_a_dataclass_of_the_same_manifest() -> None:
    @dataclasses.dataclass
    class OrderView:
        __melange_manifest__ = "Order"
        order_id: str
        total: Decimal

    serializer = typed(PydanticSerializer(), OrderView)
    content = PydanticSerializer().serialize(Order(order_id="o-1", total=Decimal("2.50")))
    assert serializer.deserialize(content, "Order") == OrderView("o-1", Decimal("2.50"))


def test_pydantic_caches_follow_a_change_of_event_types() -> None:
    class V1(BaseModel):
        __melange_manifest__ = "thing"
        a: int

    class V2(BaseModel):
        __melange_manifest__ = "thing"
        a: int
        b: int = 7

    serializer = typed(PydanticSerializer(), V1)
    assert type(serializer.deserialize('{"a":1}', "thing")) is V1
    serializer.event_types = EventTypes([V2])
    assert serializer.deserialize('{"a":1}', "thing") == V2(a=1, b=7)


# -- dataclasses -------------------------------------------------------------


@dataclasses.dataclass
class Plain:
    name: str
    count: int
    tags: list[str]


def test_dataclasses_without_pydantic_use_the_standard_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pydantic", None)
    serializer = typed(DataclassSerializer(), Plain)
    content = serializer.serialize(Plain("a", 2, ["x"]))
    assert content == '{"name":"a","count":2,"tags":["x"]}'
    assert serializer.deserialize(content, "Plain") == Plain("a", 2, ["x"])
    with pytest.raises(DeserializationError) as caught:
        serializer.deserialize("{nope", "Plain")
    assert not isinstance(caught.value, MessageValidationError)
    for invalid in ['{"name": "a"}', '{"name": "a", "count": 1, "tags": [], "x": 1}', "[1]"]:
        with pytest.raises(MessageValidationError):
            serializer.deserialize(invalid, "Plain")
    with pytest.raises(SerializationError):
        serializer.serialize(Parcel("p", Decimal(1)))  # Decimal needs pydantic


def test_dataclasses_with_pydantic_keep_rich_types() -> None:
    serializer = typed(DataclassSerializer(), Parcel)
    content = serializer.serialize(Parcel("p", Decimal("1.25")))
    assert content == '{"parcel_id":"p","weight":"1.25"}'
    assert serializer.deserialize(content, "Parcel") == Parcel("p", Decimal("1.25"))


# -- marshmallow -------------------------------------------------------------


class Refund:
    def __init__(self, refund_id: str) -> None:
        self.refund_id = refund_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Refund) and other.refund_id == self.refund_id

    __hash__ = None  # type: ignore[assignment]


class RefundSchema(marshmallow.Schema):
    refund_id = marshmallow.fields.String(required=True)

    @marshmallow.post_load
    def make(self, data: dict[str, Any], **kwargs: Any) -> Refund:
        return Refund(**data)


class PartialRefund(Refund):
    pass


def test_marshmallow_in_a_registry_registers_and_binds_its_classes() -> None:
    registry = SerializerRegistry(
        {
            "serializers": {
                "marshmallow": MarshmallowSerializer(
                    {Invoice: InvoiceSchema, Refund: RefundSchema()}
                )
            }
        }
    )
    assert registry.event_types.resolve("Invoice") is Invoice
    assert registry.event_types.resolve("Refund") is Refund
    for event in (Invoice("i-1", 3), Refund("r-1")):
        content, manifest, serializer_id = registry.serialize(event)
        assert (manifest, serializer_id) == (type(event).__name__, 4)
        assert registry.deserialize(content, manifest, serializer_id) == event
    # Invoice is a dataclass, but its own binding wins over the dataclass serializer
    assert registry.serializer_for(Invoice("i", 1)) is registry.by_name("marshmallow")


def test_marshmallow_subclasses_use_the_nearest_schema() -> None:
    registry = SerializerRegistry(
        {"serializers": {"marshmallow": MarshmallowSerializer({Refund: RefundSchema})}}
    )
    registry.register_event_type(PartialRefund)
    content, manifest, serializer_id = registry.serialize(PartialRefund("r-2"))
    assert (content, manifest, serializer_id) == ('{"refund_id": "r-2"}', "PartialRefund", 4)


def test_marshmallow_refuses_what_is_not_a_schema() -> None:
    with pytest.raises(ConfigurationError):
        MarshmallowSerializer({Invoice: dict})  # type: ignore[dict-item]
    with pytest.raises(SerializationError, match="no marshmallow schema"):
        typed(MarshmallowSerializer({Invoice: InvoiceSchema}), Parcel).deserialize("{}", "Parcel")


# -- lazy imports and the docs ---------------------------------------------------


def run_python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_serializers_loads_neither_pydantic_nor_marshmallow() -> None:
    code = (
        "import sys, melange.serializers as s;"
        "assert s.JsonSerializer.identifier() == 1;"
        "print([m for m in ('pydantic', 'marshmallow') if m in sys.modules])"
    )
    assert run_python(code) == "[]"


def test_without_the_extras_the_lazy_serializers_name_them() -> None:
    code = """
import dataclasses, sys
sys.modules["pydantic"] = None
sys.modules["marshmallow"] = None
from melange.exceptions import MissingExtraError
import melange.serializers as s
for name, extra in [("PydanticSerializer", "pydantic"), ("MarshmallowSerializer", "marshmallow")]:
    try:
        getattr(s, name)
    except MissingExtraError as e:
        assert e.extra == extra and f"melange[{extra}]" in str(e), e
    else:
        raise AssertionError(name)

@dataclasses.dataclass
class Shipped:
    parcel_id: str

registry = s.SerializerRegistry()
registry.register_event_type(Shipped)
try:
    registry.by_name("pydantic")
except s.registry.UnknownSerializerError:
    pass
else:
    raise AssertionError("pydantic registered without pydantic")
print(sorted({registry.by_name(n).identifier() for n in ("json", "dataclass")}))
print(registry.deserialize(*registry.serialize(Shipped("p-1"))))
"""
    assert run_python(code).splitlines() == ["[1, 5]", "Shipped(parcel_id='p-1')"]
