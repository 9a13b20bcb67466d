"""The headers only melange writes (``x-melange-``), and where a producer's values for them go.

Melange never sends its own headers in a message's metadata, so one that
arrives there was set by another producer (or copied from elsewhere): on
receive it is moved to ``x-foreign-<name>`` with its value and logged once,
and it neither marks nor steers the message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

__all__ = [
    "FOREIGN_PREFIX",
    "OWN_PREFIX",
    "SERIALIZER_HEADER",
    "VERSION_HEADER",
    "disowned",
    "foreign_name",
    "is_own_header",
    "warn_foreign_once",
]

#: melange's own headers: only melange writes them (RabbitMQ, SQLite, memory; SQS too in headers).
OWN_PREFIX = "x-melange-"
#: A producer's value for melange's own header, on receive: ``x-melange-a`` → ``x-foreign-a``.
FOREIGN_PREFIX = "x-foreign-"
#: A header under melange's prefix another producer may set: which serializer reads it.
SERIALIZER_HEADER = "x-melange-serializer"
#: The other: which schema version of its event the content is (``__melange_version__``).
VERSION_HEADER = "x-melange-version"
#: What a producer says of its own content, under melange's prefix.
_PRODUCERS_HEADERS = frozenset({SERIALIZER_HEADER, VERSION_HEADER})


_log = logging.getLogger("melange.backends")
_MAX_WARNED = 1000  # header names are the producer's: remember no more than this many
_warned: set[str] = set()
_warned_lock = threading.Lock()


def is_own_header(key: str) -> bool:
    """Whether only melange may write ``key`` (its prefix, but the serializer and version)."""
    return key.startswith(OWN_PREFIX) and key not in _PRODUCERS_HEADERS


def foreign_name(key: str) -> str:
    """Return where a producer's value for melange's own header ``key`` is kept."""
    return FOREIGN_PREFIX + key.removeprefix(OWN_PREFIX)


def disowned(metadata: Mapping[str, str | bytes]) -> Mapping[str, str | bytes]:
    """Return received headers, those a producer set under ``x-melange-`` moved to ``x-foreign-``.

    Melange never sends its own headers in a message's metadata, so one that
    arrives there was forged or copied by another producer: it must not mark
    the message undecodable or change how it is handled. Logged once per name.
    """
    for key in metadata:
        if key.startswith(OWN_PREFIX) and key not in _PRODUCERS_HEADERS:
            break
    else:
        return metadata
    kept: dict[str, str | bytes] = {}
    moved: dict[str, str | bytes] = {}
    for key, value in metadata.items():
        if is_own_header(key):
            moved[foreign_name(key)] = value
            warn_foreign_once(key)
        else:
            kept[key] = value
    kept.update(moved)
    return kept


def warn_foreign_once(key: str) -> None:
    """Log, once per header name, that a producer set one of melange's own headers."""
    with _warned_lock:
        if key in _warned or len(_warned) >= _MAX_WARNED:
            return
        _warned.add(key)
    _log.warning(
        "a received message carries %r, a header only melange writes: it is kept as %r"
        " and not trusted (logged once per header name)",
        key[:200],
        foreign_name(key)[:200],
    )
