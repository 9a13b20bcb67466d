"""Helpers for tests that start real brokers."""

from __future__ import annotations

import os
import shutil
import socket
from typing import NoReturn

import pytest


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def broker_unavailable(reason: str) -> NoReturn:
    """Skip locally; fail under CI=true, where every broker must run."""
    if on_ci():
        pytest.fail(f"broker unavailable on CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_binary(path_or_name: str) -> str:
    """Return the binary's path, or skip (locally) / fail (CI) when it is missing."""
    found = path_or_name if os.path.isabs(path_or_name) else shutil.which(path_or_name)
    if not found or not os.access(found, os.X_OK):
        broker_unavailable(f"{path_or_name} is not installed")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
