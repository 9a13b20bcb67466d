"""Every built-in serializer gives back what it was given (Hypothesis)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import marshmallow
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from melange.manifests import EventTypes
from melange.serializers import (
    DataclassSerializer,
    JsonSerializer,
    MarshmallowSerializer,
    PickleSerializer,
    PydanticSerializer,
    SerializerRegistry,
)

EXAMPLES = settings(max_examples=60, deadline=None)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
json_documents = st.dictionaries(st.text(max_size=8), json_values, max_size=6)
money = st.decimals(
    allow_nan=False, allow_infinity=False, places=2, min_value=-(10**9), max_value=10**9
)
# Fixed whole-minute offsets: what ISO 8601 carries. (Named zones can make a
# time ambiguous, and Python never finds an ambiguous time equal across zones.)
offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
)
texts = st.text(max_size=20)


class Line(BaseModel):
    sku: str
    quantity: int


class Order(BaseModel):
    __melange_manifest__ = "orders.created"
    order_id: UUID
    customer: str
    total: Decimal
    placed_at: datetime
    items: int
    note: str | None = None
    lines: list[Line] = []


@dataclasses.dataclass
class LineData:
    sku: str
    quantity: int


@dataclasses.dataclass
class OrderData:
    order_id: UUID
    customer: str
    total: Decimal
    placed_at: datetime
    note: str | None
    lines: list[LineData]


@dataclasses.dataclass
class Invoice:
    invoice_id: str
    amount: Decimal
    issued_at: datetime
    paid: bool
    memo: str | None


class InvoiceSchema(marshmallow.Schema):
    invoice_id = marshmallow.fields.String(required=True)
    amount = marshmallow.fields.Decimal(required=True, as_string=True)
    issued_at = marshmallow.fields.AwareDateTime(required=True)
    paid = marshmallow.fields.Boolean(required=True)
    memo = marshmallow.fields.String(required=True, allow_none=True)


orders = st.builds(
    Order,
    order_id=st.uuids(),
    customer=texts,
    total=money,
    placed_at=moments,
    items=st.integers(),
    note=st.none() | texts,
    lines=st.lists(st.builds(Line, sku=texts, quantity=st.integers()), max_size=3),
)
order_data = st.builds(
    OrderData,
    order_id=st.uuids(),
    customer=texts,
    total=money,
    placed_at=moments,
    note=st.none() | texts,
    lines=st.lists(st.builds(LineData, sku=texts, quantity=st.integers()), max_size=3),
)
invoices = st.builds(
    Invoice,
    invoice_id=texts,
    amount=money,
    issued_at=moments,
    paid=st.booleans(),
    memo=st.none() | texts,
)


@dataclasses.dataclass
class OrderView:
    """Another service's view of ``orders.created``: fewer fields, and a dataclass."""

    __melange_manifest__ = "orders.created"
    order_id: UUID
    total: Decimal
    placed_at: datetime


VIEW_READER = PydanticSerializer(EventTypes([OrderView]))


def through_registry(registry: SerializerRegistry, event: Any) -> Any:
    return registry.deserialize(*registry.serialize(event))


@EXAMPLES
@given(json_documents)
def test_json_round_trip(value: dict[str, Any]) -> None:
    serializer = JsonSerializer()
    assert serializer.deserialize(serializer.serialize(value)) == value
    assert through_registry(SerializerRegistry(), value) == value


@EXAMPLES
@given(orders)
def test_pydantic_round_trip(order: Order) -> None:
    registry = SerializerRegistry()
    registry.register_event_type(Order)
    assert isinstance(registry.serializer_for(order), PydanticSerializer)
    assert through_registry(registry, order) == order


@EXAMPLES
@given(order_data)
def test_dataclass_round_trip(order: OrderData) -> None:
    registry = SerializerRegistry()
    registry.register_event_type(OrderData)
    assert isinstance(registry.serializer_for(order), DataclassSerializer)
    assert through_registry(registry, order) == order


@EXAMPLES
@given(invoices)
def test_marshmallow_round_trip(invoice: Invoice) -> None:
    registry = SerializerRegistry(
        {"serializers": {"marshmallow": MarshmallowSerializer({Invoice: InvoiceSchema})}}
    )
    assert isinstance(registry.serializer_for(invoice), MarshmallowSerializer)
    assert through_registry(registry, invoice) == invoice


@EXAMPLES
@given(
    json_values | orders | order_data | invoices,
    st.binary(min_size=1, max_size=32) | st.text(min_size=1, max_size=16),
)
def test_signed_pickle_round_trip(value: Any, key: bytes | str) -> None:
    serializer = PickleSerializer(key)
    assert serializer.deserialize(serializer.serialize(value)) == value


@EXAMPLES
@given(orders)
def test_a_pydantic_event_reads_into_a_dataclass_of_the_same_manifest(order: Order) -> None:
    view = VIEW_READER.deserialize(PydanticSerializer().serialize(order), "orders.created")
    assert view == OrderView(order.order_id, order.total, order.placed_at)
