"""The in-memory backend under the name tests look for."""

from melange.backends.memory import InMemoryMessagingBackend, link_synchronously

__all__ = ["InMemoryMessagingBackend", "link_synchronously"]
