"""Which consumers of a dispatcher take which events, and the event classes they make readable."""

from __future__ import annotations

import threading

from melange.consumers import Consumer
from melange.exceptions import ConfigurationError
from melange.manifests import manifest_of
from melange.serializers import SerializerRegistry

__all__ = ["Routes"]


class Routes:
    """The consumers attached to one dispatcher, looked up per event type (thread-safe).

    ``async_listeners`` says whether ``async def`` listeners may be attached:
    only a dispatcher that awaits them (``melange.aio``) allows them.
    """

    def __init__(self, serializers: SerializerRegistry, *, async_listeners: bool) -> None:
        self.serializers = serializers
        self.async_listeners = async_listeners
        self._consumers: list[Consumer] = []
        self._routes: dict[tuple[type, str | None], tuple[Consumer, ...]] = {}
        self._lock = threading.Lock()

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """Return the attached consumers, in the order they were attached."""
        return tuple(self._consumers)

    def attach(self, consumer: Consumer) -> None:
        """Add a consumer; its event classes (and their known subclasses) become readable.

        Raises:
            ConfigurationError: it has ``async def`` listeners and they are not allowed.
        """
        if not self.async_listeners and consumer.has_async_listeners():
            raise ConfigurationError(
                f"{type(consumer).__qualname__} has async listeners:"
                " consume with melange.aio.AsyncMessageDispatcher"
            )
        with self._lock:
            self._consumers.append(consumer)
            self._routes = {}
        self.learn_event_types()

    def unattach(self, consumer: Consumer) -> None:
        """Remove a consumer; its events are skipped from now on unless another accepts them."""
        with self._lock:
            self._consumers.remove(consumer)
            self._routes = {}

    def consumers_for(self, event_type: type, manifest: str | None) -> tuple[Consumer, ...]:
        """Return the consumers that accept an event of this type and manifest."""
        key = (event_type, manifest)
        found = self._routes.get(key)
        if found is None:
            found = tuple(c for c in self._consumers if c.wants(event_type, manifest))
            with self._lock:
                self._routes[key] = found
        return found

    def event_types(self) -> list[type]:
        """Return every class some consumer accepts: its listener types and their subclasses."""
        seen: dict[type, None] = {}
        pending = [t for consumer in self._consumers for t in consumer.accepted_types()]
        while pending:
            cls = pending.pop()
            if cls in seen or cls.__module__ == "builtins":
                continue
            seen[cls] = None
            pending.extend(cls.__subclasses__())
        return list(seen)

    def topics(self) -> list[str]:
        """Return the manifest topics a queue of the dispatcher subscribes to."""
        return sorted({manifest_of(cls) for cls in self.event_types()})

    def filter_manifests(self) -> list[str]:
        """Return the manifests the consumers take: ``filter_events=True`` subscribes with them.

        Raises:
            ConfigurationError: no consumer is attached, or one takes events by
                other means than its listeners' classes (``decides_by_class``).
        """
        loose = [c for c in self._consumers if not c.decides_by_class()]
        if loose:
            raise ConfigurationError(
                f"filter_events=True: {type(loose[0]).__qualname__} does not take events by"
                " class alone (it overrides handle/accepts/wants or listens for a built-in"
                " type), so the manifests it takes are not known: list them in filter_events"
            )
        manifests = self.topics()
        if not manifests:
            raise ConfigurationError("filter_events=True: no consumer is attached to take events")
        return manifests

    def learn_event_types(self) -> bool:
        """Make every accepted class readable by the serializers; return whether any was new."""
        known = self.serializers.event_types
        added = False
        for cls in self.event_types():
            if manifest_of(cls) not in known:
                known.register(cls)
                added = True
        return added
