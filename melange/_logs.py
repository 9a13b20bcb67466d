"""The ``melange`` command's logging: one handler on the ``melange`` logger, text or JSON.

The library itself installs no handler; this is what the CLI sets up.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from melange._secrets import masked

__all__ = ["FORMATS", "JsonFormatter", "configure", "masked"]

FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DRIVERS = ("pika", "botocore", "boto3", "urllib3")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str = "INFO", log_format: str = "text") -> logging.Handler:
    """Send the ``melange`` logger's records at ``level`` and worse to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT))
    logger = logging.getLogger("melange")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    # Drivers log what melange reports itself, less clearly: only their worst, unless debugging.
    quiet = logging.DEBUG if logger.level <= logging.DEBUG else logging.CRITICAL
    for name in _DRIVERS:
        logging.getLogger(name).setLevel(quiet)
    return handler
