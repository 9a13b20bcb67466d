"""Names a package exports but imports on first use (their modules load optional libraries)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from melange.exceptions import MissingExtraError

__all__ = ["lazy_names"]


def lazy_names(
    package: str,
    namespace: dict[str, Any],
    modules: Mapping[str, str],
    *,
    extra: tuple[str, str] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return the ``__getattr__`` and ``__dir__`` of a package with lazily imported names.

    ``modules`` maps each name to the module defining it; a name is imported
    once, then kept in ``namespace``. ``extra`` is ``(library, extra)``: a
    missing library raises ``MissingExtraError`` naming the extra to install.
    """

    def getattr_(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            value = getattr(importlib.import_module(module), name)
        except ModuleNotFoundError as e:
            if extra is None or e.name != extra[0]:
                raise
            raise MissingExtraError(*extra) from e
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *namespace.get("__all__", ())})

    return getattr_, dir_
