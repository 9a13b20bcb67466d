"""The broker's tables in its SQLite file (the stores keep their own)."""

from __future__ import annotations

from melange._sqlite import Schema

__all__ = ["BROKER_SCHEMA"]

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
        """CREATE TABLE IF NOT EXISTS melange_subscriptions (
            topic TEXT NOT NULL,
            queue TEXT NOT NULL,
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
            PRIMARY KEY (queue, visible_at, id)
        ) WITHOUT ROWID""",
        """CREATE TRIGGER IF NOT EXISTS melange_delivery_done
            AFTER DELETE ON melange_deliveries
            BEGIN DELETE FROM melange_bodies WHERE id = old.id; END""",
    ),
)
