"""Structured logs, one style for both programs: a stable snake_case event name per line plus its
fields. JSON in a container, text on a terminal; library loggers (uvicorn, aiortc, kopf, aiohttp)
go through the same renderer, so every line parses."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure(fmt: str = "auto", level: str = "info", *, own: str, quiet: Mapping[str, int] | None = None) -> None:
    """Log at ``level`` for the program's own loggers (``own``), WARNING for libraries unless
    ``quiet`` says otherwise; ``fmt`` is json, text, or auto (text on a terminal)."""
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric = getattr(logging, level.upper())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger(own).setLevel(numeric)
    for name, library_level in (quiet or {}).items():
        logging.getLogger(name).setLevel(library_level)


def get(name: str) -> structlog.types.FilteringBoundLogger:
    logger: structlog.types.FilteringBoundLogger = structlog.get_logger(name)
    return logger
