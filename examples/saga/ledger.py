"""Each service's own records: a small SQLite file in the demo's folder.

Not melange: what a service would keep in its own database. ``SAGA_DEMO_DIR``
names the folder (the demo sets it for the services it starts).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def folder() -> Path:
    """Return the demo's folder."""
    return Path(os.environ.get("SAGA_DEMO_DIR", "."))


def open_ledger(service: str, schema: str, where: Path | None = None) -> sqlite3.Connection:
    """Open (and create) ``<service>.db``, in autocommit mode with a busy timeout."""
    path = (where or folder()) / f"{service}.db"
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(schema)
    return db
