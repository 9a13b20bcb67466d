"""Schema versions of event classes, and the upcasters that read old versions as new.

An event class declares its version next to its manifest::

    class OrderPlaced(BaseModel):
        __melange_manifest__ = "orders.placed"
        __melange_version__ = 3

The version travels in the ``x-melange-version`` header (a class that
declares none is version 1 and sends none). A consumer whose class is newer
than a message applies the upcasters registered for the versions between,
oldest first, to the content as a dict, then validates the result::

    @upcaster("orders.placed", from_version=1)
    def split_name(old: dict[str, Any]) -> dict[str, Any]:
        first, _, last = old.pop("name").partition(" ")
        return {**old, "first_name": first, "last_name": last}

A message newer than the consumer's class is refused (``NewerVersionError``,
dead-lettered at stage ``deserialize``) unless the registry reads newer
versions leniently.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from melange._own_headers import VERSION_HEADER
from melange.exceptions import ConfigurationError, DeserializationError

__all__ = [
    "VERSION_ATTRIBUTE",
    "VERSION_HEADER",
    "NewerVersionError",
    "Upcast",
    "Upcasters",
    "upcaster",
    "upcasters",
    "version_in",
    "version_of",
]

VERSION_ATTRIBUTE = "__melange_version__"

Upcast = Callable[[dict[str, Any]], dict[str, Any]]
_F = TypeVar("_F", bound=Upcast)


class NewerVersionError(DeserializationError):
    """A message is a newer version of its event than the consumer's class."""


def version_of(cls: type) -> int:
    """Return the schema version an event class declares (``__melange_version__``), or 1.

    Raises:
        ConfigurationError: the declared version is not an integer of at least 1.
    """
    declared = getattr(cls, VERSION_ATTRIBUTE, 1)
    if type(declared) is not int or declared < 1:
        raise ConfigurationError(
            f"{cls.__qualname__}.{VERSION_ATTRIBUTE} must be an integer of at least 1"
        )
    return declared


def version_in(header: str | bytes | None) -> int:
    """Return the version a message's header gives (none: 1).

    Raises:
        DeserializationError: the header is not a positive integer.
    """
    if header is None:
        return 1
    text = header.decode("ascii", "replace") if isinstance(header, bytes) else header
    if not text.isascii() or not text.isdigit() or len(text) > 9 or int(text) < 1:
        raise DeserializationError(f"{VERSION_HEADER} is not a positive integer: {text[:40]!r}")
    return int(text)


class Upcasters:
    """Upcasters by (manifest, the version they read); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: dict[tuple[str, int], Upcast] = {}

    def register(self, manifest: str, from_version: int, step: Upcast) -> None:
        """Register ``step``: content of ``manifest`` at ``from_version`` to the next version.

        Raises:
            ConfigurationError: a version below 1, or a step already registered for it.
        """
        if type(from_version) is not int or from_version < 1:
            raise ConfigurationError("from_version must be an integer of at least 1")
        with self._lock:
            known = self._steps.setdefault((manifest, from_version), step)
        if known is not step:
            raise ConfigurationError(
                f"{manifest!r} already has an upcaster from version {from_version}"
            )

    def covers(self, manifest: str, from_version: int, to_version: int) -> bool:
        """Whether a step is registered for every version from ``from_version`` to the last."""
        with self._lock:
            return all((manifest, v) in self._steps for v in range(from_version, to_version))

    def current(
        self, content: str, manifest: str, version: int, cls: type, *, lenient: bool = False
    ) -> str:
        """Return ``content`` of ``manifest`` at ``version`` as the version ``cls`` declares.

        Raises:
            NewerVersionError: the message is newer than ``cls`` (unless ``lenient``).
            DeserializationError: an upcaster is missing or failed, or the content
                is not a JSON object.
        """
        target = version_of(cls)
        if version == target or (version > target and lenient):
            return content
        if version > target:
            raise NewerVersionError(
                f"{manifest!r} version {version} is newer than this consumer's"
                f" {cls.__qualname__}, version {target}: upgrade the consumer"
                " (or read newer versions leniently)"
            )
        with self._lock:
            found = [self._steps.get((manifest, v)) for v in range(version, target)]
        steps = [step for step in found if step is not None]
        if len(steps) < len(found):
            missing = version + found.index(None)
            raise DeserializationError(
                f"{manifest!r} version {version} cannot become version {target}"
                f" ({cls.__qualname__}): no upcaster from version {missing}"
            )
        try:
            data = json.loads(content)
        except (ValueError, RecursionError) as e:
            raise DeserializationError(f"{manifest!r} version {version} is not JSON: {e}") from e
        for n, step in enumerate(steps):
            if not isinstance(data, dict):
                raise DeserializationError(
                    f"{manifest!r} version {version + n} is not a JSON object to upcast"
                )
            try:
                data = step(data)
            except Exception as e:
                raise DeserializationError(
                    f"upcasting {manifest!r} from version {version + n} failed:"
                    f" {type(e).__name__}: {e}"
                ) from e
        try:
            return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise DeserializationError(f"an upcaster of {manifest!r} returned no JSON: {e}") from e


#: The upcasters ``upcaster`` registers, which every ``SerializerRegistry`` reads by default.
upcasters = Upcasters()


def upcaster(manifest: str, from_version: int = 1) -> Callable[[_F], _F]:
    """Register the decorated function as the step from ``from_version`` to the next.

    It takes the old content as a dict and returns the new one; several steps
    chain (1 → 2 → 3). Content must be a JSON object (pydantic, dataclasses,
    marshmallow and JSON serializers write one).

    Raises:
        ConfigurationError: a step is already registered for that manifest and version.
    """

    def register(step: _F) -> _F:
        upcasters.register(manifest, from_version, step)
        return step

    return register
