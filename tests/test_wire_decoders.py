"""Every backend's decoder is total: any bytes and headers become a ``Message``.

Property-based: hypothesis feeds arbitrary header maps, attributes, rows and
bodies to the step from a broker's delivery to a ``Message`` of RabbitMQ, SQS
and SQLite; each must return a message (marked undecodable with a reason when
it cannot be read), never raise. 2,000 examples each under ``CI=true``.
"""

from __future__ import annotations

import datetime
import decimal
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melange.backends.decoding import integer_of
from melange.backends.sqlite._queries import Claimed, received
from melange.backends.sqs._wire import PACKED_HEADERS, SERIALIZER_ID, message_from
from melange.exceptions import UndecodableMessageError
from melange.models import DECODE_ERROR, Message

pika = pytest.importorskip("pika")
from melange.backends.rabbitmq._codec import SERIALIZER, to_message  # noqa: E402

EXAMPLES = 2000 if os.environ.get("CI") == "true" else 200
examples = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

texts = st.text(max_size=40) | st.sampled_from(
    # The last three: the fields of an x-death entry the RabbitMQ decoder reads.
    ["²", "--5", "+7", " 12 ", "9" * 5000, "[" * 2000, "queue", "exchange", "routing-keys"]
)
raw = st.binary(max_size=40) | st.sampled_from([b"\xff\xfe", b"\xed\xa0\x80"])
numbers = (
    st.integers()
    | st.integers(min_value=2**63, max_value=2**70)
    | st.builds(pow, st.just(10), st.just(5000))
    | st.floats(allow_nan=True)
)
scalars = (
    texts
    | raw
    | numbers
    | st.booleans()
    | st.none()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.datetimes(max_value=datetime.datetime(2100, 1, 1))
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=8,
)
# The keys melange reads itself, so that hostile values reach the code that parses them.
keys = (
    texts
    | raw
    | st.sampled_from(
        [SERIALIZER, "x-melange-receives", "x-delivery-count", "x-death", "x-first-death-queue"]
    )
)


def _assert_a_message(message: Any) -> None:
    assert isinstance(message, Message)
    assert isinstance(message.content, str)
    assert isinstance(message.message_id, str)
    assert message.message_id
    assert all(isinstance(k, str) for k in message.metadata)
    assert all(isinstance(v, str | bytes) for v in message.metadata.values())
    if DECODE_ERROR in message.metadata:
        assert message.metadata[DECODE_ERROR]
        assert message.serializer_id is None


class TestIntegerOf:
    @pytest.mark.parametrize(
        "text", ["²", "--5", "-", "", "1_000", "٣", "9" * 5000, "1e3", "0x1f"], ids=repr
    )
    def test_anything_but_plain_ascii_digits_is_refused(self, text: str) -> None:
        with pytest.raises(UndecodableMessageError):
            integer_of(text, "count")

    @pytest.mark.parametrize("value", [10**5000, 2**63, -(2**63)], ids=["huge", "2^63", "-2^63"])
    def test_a_number_beyond_64_bits_is_refused(self, value: int) -> None:
        with pytest.raises(UndecodableMessageError):
            integer_of(value, "count")

    @pytest.mark.parametrize(("value", "number"), [("12", 12), (" -3 ", -3), ("+4", 4), (7, 7)])
    def test_integers_are_read(self, value: object, number: int) -> None:
        assert integer_of(value, "count") == number


class TestRabbitMQ:
    @examples
    @given(
        headers=st.none() | st.dictionaries(keys, values, max_size=6),
        message_id=st.none() | texts | raw | numbers,
        kind=st.none() | texts | raw,
        body=raw,
        redelivered=st.booleans(),
    )
    def test_any_delivery_becomes_a_message(
        self, headers: Any, message_id: Any, kind: Any, body: bytes, redelivered: bool
    ) -> None:
        properties = pika.BasicProperties(message_id=message_id, type=kind, headers=headers)
        delivery = (1, redelivered, "exchange", "key", properties, body)
        _assert_a_message(to_message(object(), delivery))  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "count",
        ["²", "--5", "9" * 5000, 10**5000, decimal.Decimal("1.5")],
        ids=["superscript", "double-minus", "5000-digits", "huge-int", "decimal"],
    )
    def test_a_bad_count_makes_the_message_undecodable(self, count: object) -> None:
        properties = pika.BasicProperties(message_id="m", headers={"x-delivery-count": count})
        message = to_message(object(), (1, True, "", "q", properties, b"{}"))  # type: ignore[arg-type]
        assert "not an integer" in message.metadata[DECODE_ERROR]
        assert message.content == "{}"
        assert message.message_id == "m"


class TestSQS:
    attribute = st.fixed_dictionaries(
        {"DataType": st.sampled_from(["String", "Number", "Binary", "String.x"]) | texts},
        optional={"StringValue": texts | numbers | raw, "BinaryValue": raw | texts},
    )

    @examples
    @given(
        attributes=st.none()
        | st.dictionaries(
            texts | st.sampled_from([SERIALIZER_ID, PACKED_HEADERS, "melange.manifest"]),
            attribute,
            max_size=6,
        ),
        body=texts | raw,
        count=st.none() | texts | numbers,
        message_id=st.none() | texts,
    )
    def test_any_entry_becomes_a_message(
        self, attributes: Any, body: Any, count: Any, message_id: Any
    ) -> None:
        entry: dict[str, Any] = {
            "Body": body,
            "ReceiptHandle": "r",
            "MessageAttributes": attributes,
        }
        if message_id is not None:
            entry["MessageId"] = message_id
        if count is not None:
            entry["Attributes"] = {"ApproximateReceiveCount": count}
        _assert_a_message(message_from(entry, "https://queue"))

    def test_deeply_nested_packed_headers_are_undecodable(self) -> None:
        packed = {"DataType": "String", "StringValue": "[" * 100_000}
        entry = {"Body": "b", "MessageId": "m", "MessageAttributes": {PACKED_HEADERS: packed}}
        message = message_from(entry, "https://queue")
        assert "is not JSON" in message.metadata[DECODE_ERROR]
        assert message.content == "b"

    @pytest.mark.parametrize("serializer_id", ["²", "--5", "9" * 5000], ids=len)
    def test_a_bad_serializer_id_is_undecodable(self, serializer_id: str) -> None:
        attribute = {"DataType": "Number", "StringValue": serializer_id}
        entry = {"Body": "b", "MessageId": "m", "MessageAttributes": {SERIALIZER_ID: attribute}}
        assert "not an integer" in message_from(entry, "u").metadata[DECODE_ERROR]


class TestSQLite:
    field = texts | raw | st.none() | numbers
    row = st.tuples(
        st.integers(1, 10**6), st.integers(0, 100), field, field, field | values, field, field
    )

    @examples
    @given(rows=st.lists(row, min_size=1, max_size=4))
    def test_any_rows_become_messages(self, rows: list[tuple[Any, ...]]) -> None:
        messages = received("q", b"token", Claimed(1.0, rows))
        assert len(messages) == len(rows)
        for message in messages:
            _assert_a_message(message)

    def test_a_bad_row_leaves_its_neighbours_readable(self) -> None:
        good = (1, 1, "m1", "{}", "{}", None, None)
        bad = (2, 1, "m2", "{}", "{}", "²", None)
        messages = received(
            "q", b"token", Claimed(1.0, [good, bad, (3, 1, "m3", "x", "{}", 1, "T")])
        )
        assert [DECODE_ERROR in m.metadata for m in messages] == [False, True, False]
        assert [m.message_id for m in messages] == ["m1", "m2", "m3"]
