"""Passwords in URLs: masked wherever a URL is shown, scrubbed from drivers' messages.

Users write passwords unencoded (``amqp://shop:p/ss#w?rd@rabbit/``), which
breaks a standard parse: the authority would end at the first ``/``. Here the
raw string is read instead. The credentials are everything between
``scheme://`` and the last ``@``; the password is what follows their first
``:``. A path or query holding an ``@`` is masked too much, never too little.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from melange.exceptions import ConfigurationError

__all__ = [
    "MASK",
    "check_credentials",
    "credentials_of",
    "masked",
    "password_of",
    "scrubbed",
    "url_error",
    "without_credentials",
]

MASK = "***"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# ``?password=…`` (libpq takes it in a URL) and ``password=…`` in a libpq conninfo string.
_QUERY_SECRET = re.compile(r"(?i)([?&;][^=&#]*(?:password|secret)[^=&#]*=)[^&#]*")
_KEYWORD_SECRET = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)")
# Unencoded, these end the authority of a standard parse, so drivers misread the URL.
_AUTHORITY_ENDS = "/?#"
_MISREAD = (
    "cannot be read: percent-encode a '/', '?' or '#' in the password (%2F, %3F, %23)"
    " and an '@' after the host (%40)"
)


def _split(url: str) -> tuple[str, str | None, str]:
    """Return ``(scheme://, credentials or None, the rest)``; ``"".join`` gives ``url`` back."""
    scheme = _SCHEME.match(url)
    if scheme is None:
        return "", None, url
    start = scheme.end()
    at = url.rfind("@", start)
    if at < 0 or url[start : start + 1] in ("/", "?", "#"):  # no authority: ``sqlite:///a@b.db``
        return url[:start], None, url[start:]
    return url[:start], url[start:at], url[at:]


def masked(url: str) -> str:
    """Return ``url`` with its password, if any, replaced by ``***``; never raises."""
    prefix, credentials, rest = _split(url)
    if credentials is None:
        if not prefix:
            return _KEYWORD_SECRET.sub(rf"\g<1>{MASK}", url)
        return prefix + _QUERY_SECRET.sub(rf"\g<1>{MASK}", rest)
    user, colon, _ = credentials.partition(":")
    shown = f"{user}:{MASK}" if colon else user
    return prefix + shown + _QUERY_SECRET.sub(rf"\g<1>{MASK}", rest)


def password_of(url: str) -> str | None:
    """Return the raw (not decoded) password in ``url``, or ``None``."""
    credentials = _split(url)[1]
    if credentials is None or ":" not in credentials:
        return None
    return credentials.partition(":")[2]


def credentials_of(url: str) -> tuple[str, str] | None:
    """Return the percent-decoded ``(user, password)`` of ``url``, or ``None`` if it has none."""
    credentials = _split(url)[1]
    if credentials is None:
        return None
    user, _, password = credentials.partition(":")
    return unquote(user), unquote(password)


def without_credentials(url: str) -> str:
    """Return ``url`` without its ``user:password@``."""
    prefix, credentials, rest = _split(url)
    return url if credentials is None else prefix + rest[1:]


def scrubbed(text: str, url: str) -> str:
    """Return ``text`` (a driver's message) with ``url``'s password, raw or decoded, as ``***``."""
    password = password_of(url)
    if password:
        for form in sorted({password, unquote(password)}, key=len, reverse=True):
            text = text.replace(form, MASK)
    return text


def check_credentials(url: str, *, readable: str = "") -> None:
    """Refuse ``url`` if a driver would misread its credentials: they hold ``/``, ``?`` or ``#``.

    A driver ends the credentials at the first of those, so it would read part
    of the password as the host, the path or the query (and might quote it in
    an error). ``readable`` names the characters the caller parses itself.

    Raises:
        ConfigurationError: with the fix (percent-encoding), not the URL's password.
    """
    credentials = _split(url)[1]
    ends = [c for c in _AUTHORITY_ENDS if c not in readable]
    if credentials is not None and any(c in credentials for c in ends):
        raise url_error(url, _MISREAD)


def url_error(url: str, error: Exception | str) -> ConfigurationError:
    """Return the ``ConfigurationError`` for a URL that cannot be used, without its password.

    When the credentials hold an unencoded ``/``, ``?`` or ``#``, the driver
    misread the URL and its message may quote a piece of the password: the
    reason given is then the fix, not the driver's message.
    """
    credentials = _split(url)[1]
    if credentials is not None and any(c in credentials for c in _AUTHORITY_ENDS):
        reason = _MISREAD
    else:
        reason = scrubbed(str(error), url)
    return ConfigurationError(f"{masked(url)}: {reason}")
