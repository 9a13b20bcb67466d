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
except ImportError as e:
    raise MissingExtraError("marshmallow", "marshmallow") from e

__all__ = ["MarshmallowSerializer"]


class MarshmallowSerializer(TypedSerializer):
    """Each class is written and read by its own schema: ``{Order: OrderSchema}``.

    A subclass without a schema of its own uses its nearest base's. A schema
    whose ``loads`` returns a dict (no ``@post_load``) has the class built
    from it with keyword arguments. Registered in a registry, the classes are
    registered in its event types and bound to this serializer.

    Raises:
        ConfigurationError: a mapping value is not a marshmallow schema.
    """

    def __init__(
        self,
        schemas: Mapping[type, marshmallow.Schema | type[marshmallow.Schema]],
        event_types: EventTypes | None = None,
    ) -> None:
        self._schemas: dict[type, marshmallow.Schema] = {}
        for cls, given in schemas.items():
            schema: object = given
            if isinstance(given, type) and issubclass(given, marshmallow.Schema):
                schema = given()
            if not isinstance(schema, marshmallow.Schema) or not isinstance(cls, type):
                raise ConfigurationError(
                    f"MarshmallowSerializer takes {{class: schema}}, got {cls!r}: {given!r}"
                )
            self._schemas[cls] = schema
        self._declared = tuple(self._schemas)
        super().__init__(event_types)

    @staticmethod
    def identifier() -> int:
        """Return 4."""
        return 4

    def classes(self) -> tuple[type, ...]:
        """Return the classes given a schema."""
        return self._declared

    def serialize(self, data: Any) -> str:
        """Return ``schema.dumps(data)`` with the schema of ``data``'s class.

        Raises:
            SerializationError: no schema is given for the class, or the schema fails.
        """
        cls = type(data)
        schema = self._schema(cls)
        try:
            return str(schema.dumps(data))
        except (TypeError, ValueError, AttributeError, marshmallow.ValidationError) as e:
            raise SerializationError(f"cannot serialize {cls.__qualname__}: {e}") from e

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        """Load JSON with the schema of the class registered for ``manifest``.

        Raises:
            UnknownManifestError: no class is known for the manifest.
            SerializationError: that class has no schema here.
            DeserializationError: the text is not JSON.
            MessageValidationError: the schema refuses the data, or the class refuses the fields.
        """
        cls = self.event_types.resolve(manifest)
        schema = self._schema(cls)
        try:
            loaded = schema.loads(data)
        except marshmallow.ValidationError as e:
            raise MessageValidationError(f"invalid {cls.__qualname__}: {e.messages}") from e
        except (ValueError, TypeError, RecursionError) as e:
            raise DeserializationError(f"malformed JSON for {cls.__qualname__}: {e}") from e
        if isinstance(loaded, dict):
            try:
                return cls(**loaded)
            except TypeError as e:
                raise MessageValidationError(f"invalid {cls.__qualname__}: {e}") from e
        return loaded

    def _schema(self, cls: type) -> marshmallow.Schema:
        schema = self._schemas.get(cls)
        if schema is None:
            for base in cls.__mro__[1:]:
                schema = self._schemas.get(base)
                if schema is not None:
                    self._schemas[cls] = schema
                    break
            else:
                raise SerializationError(f"no marshmallow schema for {cls.__qualname__}")
        return schema
