"""Melange 7's test fixtures, in our words: banana events, consumers and a serializer stub."""

from __future__ import annotations

import json
from typing import Any

from melange.compat import (
    AsyncConsumer,
    AsyncSingleDispatchConsumer,
    JsonSerializer,
    PickleSerializer,
    Serializer,
    SingleDispatchConsumer,
    async_consumer,
    consumer,
)


class BaseMessage:
    pass


class MessageStubInterface(BaseMessage):
    pass


class BananaHappened(MessageStubInterface):
    def __init__(self, somevalue: Any) -> None:
        self.somevalue = somevalue


class NotBananaHappened(MessageStubInterface):
    pass


class SerializerStub(Serializer[BananaHappened]):
    """Serializer 40: bananas as ``{"value": …}``."""

    @staticmethod
    def identifier() -> int:
        return 40

    def manifest(self, data: Any) -> str:
        return "BananaEvent"

    def serialize(self, data: Any) -> str:
        if isinstance(data, BananaHappened):
            return json.dumps({"value": data.somevalue})
        return json.dumps("apple")

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        value = json.loads(data)
        return BananaHappened(value["value"]) if isinstance(value, dict) else None


class Calls:
    def __init__(self) -> None:
        self.events: list[Any] = []


class ExceptionaleConsumer(SingleDispatchConsumer):
    def __init__(self, calls: Calls) -> None:
        super().__init__()
        self.calls = calls

    @consumer
    def on_banana(self, event: BananaHappened) -> None:
        self.calls.events.append(event)
        raise RuntimeError("this consumer always fails")


class BananaConsumer(SingleDispatchConsumer):
    def __init__(self, calls: Calls) -> None:
        super().__init__()
        self.calls = calls

    @consumer
    def on_banana(self, event: BananaHappened) -> None:
        self.calls.events.append(event)


class NoBananaConsumer(SingleDispatchConsumer):
    def __init__(self, calls: Calls) -> None:
        super().__init__()
        self.calls = calls

    @consumer
    def on_not_banana(self, event: NotBananaHappened) -> None:
        self.calls.events.append(event)


class AsyncExceptionaleConsumer(AsyncSingleDispatchConsumer):
    @async_consumer
    async def on_banana(self, event: BananaHappened) -> None:
        raise RuntimeError("this consumer always fails")


class AsyncBananaConsumer(AsyncConsumer):
    pass


class AsyncNoBananaConsumer(AsyncSingleDispatchConsumer):
    def __init__(self, call_registry: dict[str, Any]) -> None:
        super().__init__()
        self.call_registry = call_registry

    @async_consumer
    async def on_not_banana(self, event: NotBananaHappened) -> None:
        self.call_registry["banana"] = event


serializer_settings: dict[str, Any] = {
    "serializers": {"json": JsonSerializer, "pickle": PickleSerializer, "test": SerializerStub},
    "serializer_bindings": {dict: "json", MessageStubInterface: "test", BaseMessage: "test"},
    "default": "pickle",
}
