"""Backends, built from a URL. Importing this package loads no broker driver.

A URL's scheme names the backend: melange's own (``memory``, ``sqlite``,
``sqs``, ``amqp``, ``amqps``), one given to ``register(scheme, factory)``, or
one a package installed under the entry point group ``melange.backends``
(the name is the scheme, the value ``module:callable``).
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from melange._secrets import url_error
from melange.exceptions import ConfigurationError

if TYPE_CHECKING:
    from melange.backends.interfaces import MessagingBackend

__all__ = [
    "DEFAULT_BACKEND_URL",
    "ENTRY_POINT_GROUP",
    "BackendFactory",
    "default_backend_url",
    "from_url",
    "register",
    "registered_schemes",
]

DEFAULT_BACKEND_URL = "sqlite:///melange.db"
#: The entry point group third-party packages register backends under.
ENTRY_POINT_GROUP = "melange.backends"

#: Builds a backend from a whole URL, e.g. a class's ``from_url`` classmethod.
BackendFactory = Callable[[str], "MessagingBackend"]

# scheme -> "module:Class"; each class has a ``from_url(url)`` classmethod.
_BUILT_IN = {
    "memory": "melange.backends.memory:InMemoryMessagingBackend",
    "sqlite": "melange.backends.sqlite:SQLiteBackend",
    "sqs": "melange.backends.sqs:AWSBackend",
    "amqp": "melange.backends.rabbitmq:RabbitMQBackend",
    "amqps": "melange.backends.rabbitmq:RabbitMQBackend",
}
_registered: dict[str, BackendFactory] = {}
_lock = threading.Lock()


def register(scheme: str, factory: BackendFactory, *, replace: bool = False) -> None:
    """Make ``from_url`` (and ``melange --backend``) build ``scheme://`` URLs with ``factory``.

    Raises:
        ConfigurationError: the scheme is not a valid URL scheme, is one of
            melange's own, or is registered already (pass ``replace=True``).
    """
    name = scheme.lower()
    if not name or not name[0].isalpha() or not all(c.isalnum() or c in "+-." for c in name):
        raise ConfigurationError(f"{scheme!r} is not a URL scheme")
    if name in _BUILT_IN:
        raise ConfigurationError(f"{name}:// is one of melange's own backends")
    with _lock:
        if name in _registered and not replace and _registered[name] is not factory:
            raise ConfigurationError(f"{name}:// is registered already (replace=True to change)")
        _registered[name] = factory


def registered_schemes() -> list[str]:
    """Return every scheme ``from_url`` knows: melange's, registered ones, installed ones."""
    installed = {point.name.lower() for point in entry_points(group=ENTRY_POINT_GROUP)}
    with _lock:
        return sorted({*_BUILT_IN, *_registered, *installed})


def from_url(url: str) -> MessagingBackend:
    """Build a backend from a URL such as ``memory://``.

    Raises:
        ConfigurationError: the scheme is not known, or its entry point is broken.
        MissingExtraError: the backend's driver is not installed.
    """
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as e:
        raise url_error(url, e) from None
    factory = _factory_for(scheme)
    if factory is None:
        known = ", ".join(f"{name}://" for name in registered_schemes())
        raise ConfigurationError(f"unknown backend URL scheme {scheme!r} (known: {known})")
    return factory(url)


def _factory_for(scheme: str) -> BackendFactory | None:
    target = _BUILT_IN.get(scheme)
    if target is not None:
        module_name, class_name = target.split(":")
        factory: BackendFactory = getattr(importlib.import_module(module_name), class_name).from_url
        return factory
    with _lock:
        registered = _registered.get(scheme)
    if registered is not None:
        return registered
    return _installed(scheme)


def _installed(scheme: str) -> BackendFactory | None:
    """Load the factory a package declared for ``scheme`` under ``melange.backends``."""
    points = [p for p in entry_points(group=ENTRY_POINT_GROUP) if p.name.lower() == scheme]
    if not points:
        return None
    point = points[0]
    try:
        loaded = point.load()
    except ConfigurationError:  # such as MissingExtraError: already says what to do
        raise
    except Exception as e:  # an installed package's bug, reported with its name
        raise ConfigurationError(f"cannot load backend entry point {point.value!r}: {e}") from e
    factory: BackendFactory = getattr(loaded, "from_url", loaded)
    if not callable(factory):
        raise ConfigurationError(f"backend entry point {point.value!r} is not callable")
    with _lock:
        _registered.setdefault(scheme, factory)
    return factory


def default_backend_url() -> str:
    """Return ``MELANGE_BACKEND_URL`` if set, else the embedded default."""
    return os.environ.get("MELANGE_BACKEND_URL") or DEFAULT_BACKEND_URL
