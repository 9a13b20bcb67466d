"""The embedded durable broker: SQS semantics in one SQLite file, shared by processes.

See docs/backends/sqlite.md. Needs nothing beyond the standard library.
"""

from melange.backends.sqlite._backend import SQLiteBackend

__all__ = ["SQLiteBackend"]
