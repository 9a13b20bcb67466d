"""Every built-in serializer gives back what it was given."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from decimal import Decimal
from typing import Any

import marshmallow
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from melange.serializers import (
    DataclassSerializer,
    JsonSerializer,
    MarshmallowSerializer,
    PickleSerializer,
    PydanticSerializer,
    SerializerRegistry,
)

EXAMPLES = settings(max_examples=75, deadline=None)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
money = st.decimals(
    allow_nan=False, allow_infinity=False, places=2, min_value=-(10**9), max_value=10**9
)
# From 1970: older local mean times have offsets in seconds, which ISO 8601 cannot carry.
moments = st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.timezones())


class Line(BaseModel):
    sku: str
    quantity: int


class Order(BaseModel):
    order_id: str
    total: Decimal
    placed_at: datetime
    note: str | None = None
    lines: list[Line] = []


@dataclasses.dataclass
class LineData:
    sku: str
    quantity: int


@dataclasses.dataclass
class OrderData:
    order_id: str
    total: Decimal
    placed_at: datetime
    lines: list[LineData]


@dataclasses.dataclass
class Invoice:
    invoice_id: str
    amount: Decimal
    issued_at: datetime


class InvoiceSchema(marshmallow.Schema):
    invoice_id = marshmallow.fields.String(required=True)
    amount = marshmallow.fields.Decimal(required=True, as_string=True)
    issued_at = marshmallow.fields.AwareDateTime(required=True)


def through_registry(registry: SerializerRegistry, event: Any) -> Any:
    return registry.deserialize(*registry.serialize(event))


@EXAMPLES
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_json_round_trip(value: dict[str, Any]) -> None:
    serializer = JsonSerializer()
    assert serializer.deserialize(serializer.serialize(value)) == value


@EXAMPLES
@given(
    st.builds(
        Order,
        order_id=st.text(),
        total=money,
        placed_at=moments,
        note=st.none() | st.text(),
        lines=st.lists(st.builds(Line, sku=st.text(), quantity=st.integers()), max_size=3),
    )
)
def test_pydantic_round_trip(order: Order) -> None:
    registry = SerializerRegistry()
    registry.register_event_type(Order)
    assert isinstance(registry.serializer_for(order), PydanticSerializer)
    assert through_registry(registry, order) == order


@EXAMPLES
@given(
    st.builds(
        OrderData,
        order_id=st.text(),
        total=money,
        placed_at=moments,
        lines=st.lists(st.builds(LineData, sku=st.text(), quantity=st.integers()), max_size=3),
    )
)
def test_dataclass_round_trip(order: OrderData) -> None:
    registry = SerializerRegistry()
    registry.register_event_type(OrderData)
    assert isinstance(registry.serializer_for(order), DataclassSerializer)
    assert through_registry(registry, order) == order


@EXAMPLES
@given(st.builds(Invoice, invoice_id=st.text(), amount=money, issued_at=moments))
def test_marshmallow_round_trip(invoice: Invoice) -> None:
    registry = SerializerRegistry(
        {"serializers": {"marshmallow": MarshmallowSerializer({Invoice: InvoiceSchema})}}
    )
    assert through_registry(registry, invoice) == invoice


@EXAMPLES
@given(json_values, st.binary(min_size=1, max_size=32))
def test_signed_pickle_round_trip(value: Any, key: bytes) -> None:
    serializer = PickleSerializer(key)
    assert serializer.deserialize(serializer.serialize(value)) == value
