"""Manifests: the stable names events travel under, and the classes they map to."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from melange.exceptions import ConfigurationError, UnknownManifestError

__all__ = ["MANIFEST_ATTRIBUTE", "EventTypes", "manifest_of"]

MANIFEST_ATTRIBUTE = "__melange_manifest__"


def manifest_of(cls: type) -> str:
    """Return the manifest of an event class: ``__melange_manifest__`` or its name."""
    declared = cls.__dict__.get(MANIFEST_ATTRIBUTE)
    if declared is None:
        return cls.__name__
    if not isinstance(declared, str) or not declared:
        raise ConfigurationError(f"{cls.__qualname__}.{MANIFEST_ATTRIBUTE} must be a string")
    return declared


class EventTypes:
    """The event classes one process knows, by manifest.

    The manifest is only ever looked up here, never imported: a message can
    only become a class this process registered.
    """

    def __init__(self, classes: Iterable[type] = ()) -> None:
        self._lock = threading.Lock()
        self._by_manifest: dict[str, type] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: type) -> str:
        """Register a class under its manifest and return the manifest.

        Raises:
            ConfigurationError: another class already has that manifest.
        """
        manifest = manifest_of(cls)
        with self._lock:
            known = self._by_manifest.setdefault(manifest, cls)
        if known is not cls:
            raise ConfigurationError(
                f"manifest {manifest!r} is claimed by both {known.__module__}.{known.__qualname__}"
                f" and {cls.__module__}.{cls.__qualname__}"
            )
        return manifest

    def resolve(self, manifest: str | None) -> type:
        """Return the class registered for a manifest.

        Raises:
            UnknownManifestError: no class is registered under it.
        """
        cls = self._by_manifest.get(manifest) if manifest is not None else None
        if cls is None:
            raise UnknownManifestError(f"no event class is known for manifest {manifest!r}")
        return cls

    def get(self, manifest: str | None) -> type | None:
        """Return the class for a manifest, or ``None``."""
        return self._by_manifest.get(manifest) if manifest is not None else None

    def __contains__(self, manifest: object) -> bool:
        return manifest in self._by_manifest

    def manifests(self) -> list[str]:
        """Return every registered manifest."""
        with self._lock:
            return list(self._by_manifest)
