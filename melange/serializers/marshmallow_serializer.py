"""marshmallow schemas bound to event classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from melange.exceptions import (
    ConfigurationError,
    DeserializationError,
    MessageValidationError,
    MissingExtraError,
    SerializationError,
)
from melange.manifests import EventTypes
from melange.serializers.base import TypedSerializer

try:
    import marshmallow
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("marshmallow", "marshmallow") from e

__all__ = ["MarshmallowSerializer"]


class MarshmallowSerializer(TypedSerializer):
    """Each class is written and read by its own schema.

    ``MarshmallowSerializer({Order: OrderSchema})``.

    A schema whose ``load`` returns a dict (no ``@post_load``) has the class
    built from it with keyword arguments.
    """

    def __init__(
        self,
        schemas: Mapping[type, marshmallow.Schema | type[marshmallow.Schema]],
        event_types: EventTypes | None = None,
    ) -> None:
        super().__init__(event_types)
        self._schemas: dict[type, marshmallow.Schema] = {}
        for cls, schema in schemas.items():
            instance = schema() if isinstance(schema, type) else schema
            if not isinstance(instance, marshmallow.Schema):
                raise ConfigurationError(f"{schema!r} is not a marshmallow schema")
            self._schemas[cls] = instance

    @staticmethod
    def identifier() -> int:
        return 4

    def classes(self) -> tuple[type, ...]:
        return tuple(self._schemas)

    def serialize(self, data: Any) -> str:
        schema = self._schemas.get(type(data))
        if schema is None:
            raise SerializationError(f"no marshmallow schema for {type(data).__qualname__}")
        try:
            return str(schema.dumps(data))
        except (TypeError, ValueError, AttributeError) as e:
            raise SerializationError(f"cannot serialize {type(data).__qualname__}: {e}") from e

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        cls = self.event_types.resolve(manifest)
        schema = self._schemas.get(cls)
        if schema is None:
            raise SerializationError(f"no marshmallow schema for {cls.__qualname__}")
        try:
            loaded = schema.loads(data)
        except marshmallow.ValidationError as e:
            raise MessageValidationError(f"invalid {cls.__qualname__}: {e.messages}") from e
        except ValueError as e:
            raise DeserializationError(f"malformed JSON for {cls.__qualname__}: {e}") from e
        if isinstance(loaded, dict):
            try:
                return cls(**loaded)
            except TypeError as e:
                raise MessageValidationError(f"invalid {cls.__qualname__}: {e}") from e
        return loaded
