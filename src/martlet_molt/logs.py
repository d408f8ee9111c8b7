"""Log set-up: loguru to stderr, with the standard library's records (uvicorn's) routed in."""

from __future__ import annotations

import logging
import re
import sys
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record


_API_KEY_PARAM = re.compile(r"(?i)([?&]api_key=)[^&\s\"']*")


def redact(message: str) -> str:
    """Hide the value of any `api_key=` query parameter (an access log would show it)."""
    return _API_KEY_PARAM.sub(r"\1[redacted]", message)


class _InterceptHandler(logging.Handler):
    """Send standard-library log records to loguru, with API keys in URLs redacted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, redact(record.getMessage()))


_BASE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {message}"


def _format(record: Record) -> str:
    """Lines logged inside a run or a reader carry its session id (run ids are in the text)."""
    if "session_id" in record["extra"]:
        return _BASE_FORMAT + " | session={extra[session_id]}\n{exception}"
    return _BASE_FORMAT + "\n{exception}"


def configure_logging(level: str = "INFO") -> None:
    """One format for everything the process logs; DEBUG only when asked for."""
    logger.remove()
    logger.add(sys.stderr, level=level.upper(), format=_format, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.INFO, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = [_InterceptHandler()]
        logging.getLogger(name).propagate = False
    # The HTTP clients log every upstream request at INFO; runs already log theirs.
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)
