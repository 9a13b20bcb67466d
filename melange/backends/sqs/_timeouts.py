"""How long the SNS and SQS clients wait: the `sqs://` timeout options as a botocore Config."""

from __future__ import annotations

from collections.abc import Mapping

import botocore.config

from melange.exceptions import ConfigurationError

__all__ = ["TIMEOUT_OPTIONS", "client_config"]

#: URL options: seconds to connect, seconds to wait for an answer, attempts per request.
TIMEOUT_OPTIONS = frozenset({"connect_timeout", "read_timeout", "max_attempts"})
# A receive long-polls up to 20 s: a shorter read timeout would fail every idle poll.
_LONGEST_POLL = 20


def client_config(query: Mapping[str, str], shown_url: str) -> botocore.config.Config | None:
    """Return the clients' ``Config`` for the timeout options in ``query``, or ``None`` if none.

    Retries use botocore's ``standard`` mode; ``max_attempts`` counts the first one.
    ``shown_url`` is the URL as errors show it (masked).

    Raises:
        ConfigurationError: a value that is not a number, or out of range.
    """
    given = {name: query[name] for name in TIMEOUT_OPTIONS if name in query}
    if not given:
        return None
    try:
        connect = float(given.get("connect_timeout", 60))
        read = float(given.get("read_timeout", 60))
        attempts = int(given.get("max_attempts", 3))
    except ValueError as e:
        raise ConfigurationError(f"bad timeout option in {shown_url!r}: {e}") from None
    if connect <= 0:
        raise ConfigurationError(f"connect_timeout must be above 0 s in {shown_url!r}")
    if read <= _LONGEST_POLL:
        raise ConfigurationError(
            f"read_timeout must be above {_LONGEST_POLL} s (the longest receive poll)"
            f" in {shown_url!r}"
        )
    if attempts < 1:
        raise ConfigurationError(f"max_attempts must be at least 1 in {shown_url!r}")
    return botocore.config.Config(
        connect_timeout=connect,
        read_timeout=read,
        retries={"total_max_attempts": attempts, "mode": "standard"},
    )
