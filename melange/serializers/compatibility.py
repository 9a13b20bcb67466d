"""Breaking changes between two releases of an event class (no I/O).

``changes(old, new)`` compares the fields of two classes of one manifest
(pydantic models, dataclasses, or any class with annotations) and says
which changes break whom:

- **new consumers, old messages**: a field the new class requires that old
  messages lack, or whose type changed, breaks them, unless the version was
  raised and upcasters cover every step from the old version;
- **old consumers, new messages**: a field the old class requires that new
  messages no longer carry breaks them; a raised version is refused by old
  consumers until they are upgraded (deploy consumers first).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from melange.manifests import MANIFEST_ATTRIBUTE, manifest_of
from melange.serializers.versions import Upcasters, upcasters, version_of

__all__ = ["Change", "Field", "changes", "event_classes", "fields_of"]


@dataclass(frozen=True, slots=True)
class Field:
    """One field of an event class: its type, as text, and whether it must be given."""

    type: str
    required: bool


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two releases of an event class."""

    manifest: str
    field: str | None
    what: str
    breaking: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "field": self.field,
            "what": self.what,
            "breaking": self.breaking,
        }


def fields_of(cls: type) -> dict[str, Field]:
    """Return an event class's fields (pydantic, dataclass, or annotated class)."""
    model_fields = getattr(cls, "model_fields", None)
    if isinstance(model_fields, dict):  # pydantic 2
        return {
            name: Field(_type_text(info.annotation), bool(info.is_required()))
            for name, info in model_fields.items()
        }
    if dataclasses.is_dataclass(cls):
        return {
            f.name: Field(
                _type_text(f.type),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        }
    annotations: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        annotations.update(getattr(base, "__annotations__", {}))
    return {
        name: Field(_type_text(kind), not hasattr(cls, name))
        for name, kind in annotations.items()
        if not name.startswith("_")
    }


def _type_text(kind: Any) -> str:
    if isinstance(kind, str):
        return kind
    if isinstance(kind, type) and not isinstance(kind, types.GenericAlias):
        return kind.__qualname__
    return str(kind).replace("typing.", "")


def changes(old: type, new: type, steps: Upcasters | None = None) -> list[Change]:
    """Return what changed from ``old`` to ``new``, two releases of one event class."""
    manifest = manifest_of(new)
    registered = upcasters if steps is None else steps
    before, after = version_of(old), version_of(new)
    found: list[Change] = []
    upcast = after > before and registered.covers(manifest, before, after)
    if after < before:
        found.append(Change(manifest, None, f"version went down: {before} -> {after}", True))
    elif after > before:
        found.append(
            Change(
                manifest,
                None,
                f"version {before} -> {after}"
                + ("" if upcast else f": no upcaster chain from version {before}")
                + "; consumers of version "
                + f"{before} dead-letter version {after} until upgraded (deploy consumers first)",
                not upcast,
            )
        )
    old_fields, new_fields = fields_of(old), fields_of(new)
    for name in sorted(old_fields.keys() | new_fields.keys()):
        was, now = old_fields.get(name), new_fields.get(name)
        if now is None and was is not None:
            found.append(
                Change(
                    manifest,
                    name,
                    "removed" + (": old consumers require it" if was.required else ""),
                    was.required,
                )
            )
        elif was is None and now is not None:
            what = "added, required: old messages lack it" if now.required else "added, optional"
            found.append(Change(manifest, name, what, now.required and not upcast))
        elif was is not None and now is not None:
            if was.type != now.type:
                found.append(Change(manifest, name, f"type {was.type} -> {now.type}", not upcast))
            elif now.required and not was.required:
                found.append(
                    Change(manifest, name, "became required: old messages may lack it", not upcast)
                )
    return found


def event_classes(namespace: Iterable[Any]) -> dict[str, type]:
    """Return the classes among ``namespace`` that declare a manifest, by manifest."""
    return {
        manifest_of(value): value
        for value in namespace
        if isinstance(value, type) and MANIFEST_ATTRIBUTE in value.__dict__
    }
