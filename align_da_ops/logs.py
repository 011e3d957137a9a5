"""structlog set-up, called once by the entry point; libraries only call `get_logger`."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["console", "json"]


# Libraries that log through the standard library; their records are rendered like ours.
FOREIGN_LOGGERS = ("apscheduler",)


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is at each record (it may be replaced: tests, daemons)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _DropSkippedRuns(logging.Filter):
    """APScheduler's per-tick "skipped: maximum number of running instances reached" while a cycle runs;
    the scheduler logs one `cycle_still_running` line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


_current: tuple[str, str] = ("console", "INFO")


def current() -> tuple[str, str]:
    """(format, level) of the last `configure` (what dask workers are configured with)."""
    return _current


def configure(fmt: LogFormat = "console", level: str = "INFO") -> None:
    """Console rendering for people, one JSON object per line for services; the standard-library loggers of
    `FOREIGN_LOGGERS` go through the same renderer (as event, level, logger, timestamp)."""
    global _current
    _current = (fmt, level)
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    handler = _StderrHandler()
    handler.addFilter(_DropSkippedRuns())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    for name in FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        foreign.handlers = [handler]
        foreign.propagate = False
        foreign.setLevel(max(logging.getLevelName(level.upper()), logging.WARNING))  # their INFO is one line per tick
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # Resolve sys.stderr at each use, not once: it may be replaced (tests, daemons).
        logger_factory=lambda *args: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str):
    return structlog.get_logger(name)
