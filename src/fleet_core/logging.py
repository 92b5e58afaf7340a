"""Structured logs: JSON lines when stderr is not a terminal (systemd, CI), readable on a TTY.

The standard library's loggers (the MCP SDK's, nats-py's) are routed through the same
renderer, so a service's stderr holds one shape of line.

Every line about a job carries the request id, host, action and revision (bound by the
listener); no line ever carries a seed — ``keys.Seed`` keeps its secret out of repr.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

__all__ = ["LOG_LEVELS", "configure_logging"]

LOG_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(
    level: str = "info", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Route structlog to ``stream`` (stderr): JSON unless it is a TTY, or as ``json`` says."""
    output = stream if stream is not None else sys.stderr
    as_json = not output.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=output.isatty())
    )
    _route_stdlib(output, renderer, level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(output),
        cache_logger_on_first_use=False,
    )


class _OurHandler(logging.StreamHandler[TextIO]):
    """The root handler this module installs: replaced, never stacked, when called again."""


def _route_stdlib(output: TextIO, renderer: structlog.typing.Processor, level: str) -> None:
    """Lines of libraries that log with the standard library (the MCP SDK, nats-py) take the
    same shape as ours — JSON lines under systemd — instead of text of their own. Installed
    on the root logger before the SDK configures logging, whose ``basicConfig`` then leaves
    a root logger that already has a handler alone."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(handler)
    handler = _OurHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root.addHandler(handler)
    root.setLevel(logging.getLevelNamesMapping()[level.upper()])
