"""The broker's tables in its SQLite file (the stores keep their own)."""

from __future__ import annotations

from melange._sqlite import Schema, SQLiteFile

__all__ = ["BROKER_SCHEMA", "ensure_broker_schema"]

# A message is an immutable body plus one small delivery row per queue. Claims
# rewrite only the delivery (a few dozen bytes), whose primary key is the
# receive order, so a receive is one index range scan and a few page writes.
BROKER_SCHEMA = Schema(
    "broker",
    1,
    (
        "CREATE TABLE IF NOT EXISTS melange_topics (name TEXT PRIMARY KEY) WITHOUT ROWID",
        """CREATE TABLE IF NOT EXISTS melange_queues (
            name TEXT PRIMARY KEY,
            visibility_timeout REAL NOT NULL,
            max_receive_count INTEGER NOT NULL,
            dead_letter_queue TEXT
        ) WITHOUT ROWID""",
        # manifests: NULL, every message; else a JSON array, only those (filter_events).
        """CREATE TABLE IF NOT EXISTS melange_subscriptions (
            topic TEXT NOT NULL,
            queue TEXT NOT NULL,
            manifests TEXT,
            PRIMARY KEY (topic, queue)
        ) WITHOUT ROWID""",
        """CREATE TABLE IF NOT EXISTS melange_bodies (
            id INTEGER PRIMARY KEY,
            message_id TEXT NOT NULL,
            content TEXT NOT NULL,
            metadata TEXT NOT NULL,
            serializer_id INTEGER,
            manifest TEXT
        )""",
        """CREATE TABLE IF NOT EXISTS melange_deliveries (
            queue TEXT NOT NULL,
            visible_at REAL NOT NULL,
            id INTEGER NOT NULL,
            receive_count INTEGER NOT NULL DEFAULT 0,
            claim BLOB,
            group_id TEXT,
            PRIMARY KEY (queue, visible_at, id)
        ) WITHOUT ROWID""",
        """CREATE TRIGGER IF NOT EXISTS melange_delivery_done
            AFTER DELETE ON melange_deliveries
            BEGIN DELETE FROM melange_bodies WHERE id = old.id; END""",
    ),
)

# Columns added since version 1, NULL in the rows of older files: (table, column).
_ADDED = (
    ("melange_subscriptions", "manifests"),  # filter_events
    ("melange_deliveries", "group_id"),  # message groups
)
_HAS_COLUMN = "SELECT 1 FROM pragma_table_info(?) WHERE name = ?"
# Only grouped deliveries are in it: ungrouped publishes and claims never touch it.
_GROUP_INDEX = (
    "CREATE INDEX IF NOT EXISTS melange_delivery_groups"
    " ON melange_deliveries (queue, group_id, id) WHERE group_id IS NOT NULL"
)
_HAS_INDEX = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'melange_delivery_groups'"


def ensure_broker_schema(file: SQLiteFile) -> None:
    """Create the broker's tables, or bring a file's up to date.

    Version 1 files made before ``filter_events`` and message groups lack
    ``melange_subscriptions.manifests`` and ``melange_deliveries.group_id``:
    they are added (``NULL``: every message, in no group). The columns are
    looked for rather than versioned, so that the file stays readable by the
    melange that made it; that melange cannot declare a subscription in it any
    more, and the messages it sends are in no group.

    Raises:
        StorageError: the file was made by a newer melange, or cannot be written.
        BackendError: the write lock stayed taken past the busy timeout.
    """
    file.ensure(BROKER_SCHEMA)
    if all(file.read(_HAS_COLUMN, added) for added in _ADDED) and file.read(_HAS_INDEX):
        return
    with file.transaction() as db:  # another process may have added them meanwhile
        for table, column in _ADDED:
            if db.execute(_HAS_COLUMN, (table, column)).fetchone() is None:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
        db.execute(_GROUP_INDEX)
