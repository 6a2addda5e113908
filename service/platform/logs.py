"""Logging for both processes: text lines for a terminal, or JSON lines for a log collector.

`MNIST_JOBS_LOG_FORMAT=text|json` (or `--log-format`) picks the format of `serve` (uvicorn's
lines, access lines included, and the app's) and of `worker`. A JSON line holds ts, level, logger,
message, and the record's structured fields: the ones a call passes as `extra` (job_id, attempt,
worker_id, outcome, reason, ...) and the id of the HTTP request being answered (request_id).

The request id lives in a contextvar that the API's RequestId middleware (api/guards.py) sets for
the length of a request; RequestIdFilter copies it onto every record, so a line logged anywhere
while a request runs (a route, the service, uvicorn's access line) carries it.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.config
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
NO_REQUEST = "-"  # the request_id of a record logged outside any request
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# The attributes every LogRecord has; any other attribute came from `extra` (or a filter).
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# uvicorn's own extras that only repeat the message (with terminal colours).
_SKIPPED = frozenset({"color_message"})
# uvicorn.access records carry their fields as the message's arguments, in this order.
_ACCESS_FIELDS = ("client_addr", "method", "path", "http_version", "status_code")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the id of the request being answered, or "-"."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or NO_REQUEST
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, then the record's
    structured fields. Values JSON cannot hold are written as their str()."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _SKIPPED and not key.startswith("_"):
                line[key] = value
        if line.get("request_id") == NO_REQUEST:
            del line["request_id"]
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            line.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


# Alembic names each plugin it loads at INFO: a line per plugin at every start, of no use here.
QUIETER = {"alembic.runtime.plugins": {"level": "WARNING"}}


def worker_config(log_format: LogFormat, level: str = "INFO") -> dict[str, Any]:
    """A dictConfig for a worker process: everything to stderr, as text or JSON lines."""
    text = {"format": "%(asctime)s worker[%(process)d] %(levelname)s %(message)s"}
    formatter = {"()": "service.platform.logs.JsonFormatter"} if log_format == "json" else text
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default"}},
        "root": {"handlers": ["default"], "level": level},
        "loggers": dict(QUIETER),
    }


def uvicorn_config(log_format: LogFormat) -> dict[str, Any]:
    """uvicorn's logging config with the request id on its lines, access lines included, and the
    service's own loggers (root) written the same way; as text or JSON lines."""
    from uvicorn.config import LOGGING_CONFIG  # the API's process alone has uvicorn to hand

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"request_id": {"()": "service.platform.logs.RequestIdFilter"}}
    for handler in config["handlers"].values():
        handler["filters"] = ["request_id"]
    if log_format == "json":
        config["formatters"] = {name: {"()": "service.platform.logs.JsonFormatter"} for name in ("default", "access")}
    else:
        config["formatters"]["default"]["fmt"] = "%(levelprefix)s [%(request_id)s] %(name)s: %(message)s"
        config["formatters"]["access"]["fmt"] = (
            '%(levelprefix)s [%(request_id)s] %(client_addr)s - "%(request_line)s" %(status_code)s'
        )
    config["root"] = {"handlers": ["default"], "level": "INFO"}
    config["loggers"] |= QUIETER
    return config


def setup(config: dict[str, Any]) -> None:
    """Apply a config from worker_config or uvicorn_config to this process; Python's warnings (a
    library's deprecation notice) become log records too, so JSON output stays all JSON."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
