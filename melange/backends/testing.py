"""The in-memory backend under the name tests look for (``melange.testing`` has the rest)."""

from typing import Any

from melange.backends.memory import InMemoryMessagingBackend

__all__ = ["InMemoryMessagingBackend"]


def __getattr__(name: str) -> Any:
    """Keep ``link_synchronously`` importable from here; it lives in ``melange.testing``."""
    from melange.backends import memory

    return getattr(memory, name)
