"""Backends, built from a URL. Importing this package loads no broker driver."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from melange.exceptions import ConfigurationError

if TYPE_CHECKING:
    from melange.backends.interfaces import MessagingBackend

__all__ = ["DEFAULT_BACKEND_URL", "default_backend_url", "from_url"]

DEFAULT_BACKEND_URL = "sqlite:///melange.db"

# scheme -> "module:Class"; each class has a ``from_url(url)`` classmethod.
_SCHEMES = {
    "memory": "melange.backends.memory:InMemoryMessagingBackend",
    "sqlite": "melange.backends.sqlite:SQLiteBackend",
    "sqs": "melange.backends.sqs:AWSBackend",
    "amqp": "melange.backends.rabbitmq:RabbitMQBackend",
    "amqps": "melange.backends.rabbitmq:RabbitMQBackend",
}


def from_url(url: str) -> MessagingBackend:
    """Build a backend from a URL such as ``memory://``.

    Raises:
        ConfigurationError: the scheme is not known.
        MissingExtraError: the backend's driver is not installed.
    """
    scheme = urlsplit(url).scheme.lower()
    target = _SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{name}://" for name in sorted(_SCHEMES))
        raise ConfigurationError(f"unknown backend URL scheme {scheme!r} (known: {known})")
    module_name, class_name = target.split(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    backend: MessagingBackend = backend_class.from_url(url)
    return backend


def default_backend_url() -> str:
    """Return ``MELANGE_BACKEND_URL`` if set, else the embedded default."""
    return os.environ.get("MELANGE_BACKEND_URL") or DEFAULT_BACKEND_URL
