"""One warning for every name of Melange 7's API that melange keeps only for migration."""

from __future__ import annotations

import warnings

__all__ = ["deprecated"]


def deprecated(old: str, new: str) -> None:
    """Warn that ``melange.compat.<old>`` is Melange 7's API and ``new`` replaces it."""
    warnings.warn(
        f"melange.compat.{old} is Melange 7's API, kept for migrating: use {new}"
        " (docs/migrating.md)",
        DeprecationWarning,
        stacklevel=3,
    )
