"""The scope of publishing that middleware wraps: the ``Outgoing`` on its way out."""

from __future__ import annotations

from melange.outgoing import Destination, DestinationKind, Outgoing

__all__ = ["Destination", "DestinationKind", "Publishing"]

#: The scope of publishing one event, as middleware sees it: the ``Outgoing`` on its way.
Publishing = Outgoing
