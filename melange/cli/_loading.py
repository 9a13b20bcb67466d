"""Consumers and middleware named ``module:attribute`` on the command line."""

from __future__ import annotations

import importlib
from typing import Any

from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer
from melange.exceptions import ConfigurationError
from melange.middleware import Middleware

__all__ = ["load_consumers", "load_middleware"]


def load_consumers(target: str, backend: MessagingBackend) -> list[Consumer]:
    """Import ``module:attribute`` and return the consumers it names.

    The attribute may be a ``Consumer`` subclass (built with no arguments),
    an instance, a list of either, or a function that takes the backend and
    returns any of those (for consumers that publish).

    Raises:
        ConfigurationError: the target is malformed or names no consumer.
    """
    found = _imported(target)
    if callable(found) and not isinstance(found, type) and not isinstance(found, Consumer):
        found = found(backend)
    items = found if isinstance(found, list | tuple) else [found]
    consumers = []
    for item in items:
        consumer = item() if isinstance(item, type) and issubclass(item, Consumer) else item
        if not isinstance(consumer, Consumer):
            raise ConfigurationError(f"{target} names {item!r}, not a Consumer")
        consumers.append(consumer)
    return consumers


def load_middleware(target: str) -> Middleware:
    """Import ``module:attribute`` naming a ``Middleware`` (class or instance).

    Raises:
        ConfigurationError: the target is malformed or names no middleware.
    """
    found = _imported(target)
    middleware = found() if isinstance(found, type) else found
    if not isinstance(middleware, Middleware):
        raise ConfigurationError(f"{target} names {found!r}, not a Middleware")
    return middleware


def _imported(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"expected module:attribute, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigurationError(f"cannot import {module_name!r} (for {target}): {e}") from e
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(
            f"module {module_name!r} has no {attribute!r} ({target})"
        ) from None
