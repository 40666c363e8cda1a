"""Structured JSON logs: one object per line, with the request id of the request being served.

``event(logger, "name", field=value, ...)`` logs a structured event; every value is JSON
encoded, so nothing a client sent can break a line or forge another. A plain message (from a
library) becomes ``{"event": "log", "msg": ...}``, so every line has an ``event``. Hot paths
log through a :class:`Sampler` so a flood of identical events costs little and cannot fill
the disk.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    HttpBadRequest,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
    TransferEncodingError,
)
from aiohttp.web_protocol import RequestPayloadError

REQUEST_ID: ContextVar[str | None] = ContextVar("vastserver_request_id", default=None)
MAX_FIELD = 512
PLAIN_EVENT = "log"
"""The ``event`` of a line logged as a plain message rather than through :func:`event`."""


def _clip(v: Any) -> Any:
    if isinstance(v, str) and len(v) > MAX_FIELD:
        return v[:MAX_FIELD] + "..."
    return v


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: _clip(v) for k, v in fields.items()})
        else:  # a plain message (a library's, or Python's own): every line has an event
            out["event"] = PLAIN_EVENT
            out["msg"] = _clip(record.getMessage())
        rid = REQUEST_ID.get()
        if rid is not None and "request_id" not in out:
            out["request_id"] = rid
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=True, default=str, separators=(",", ":"))


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())


def event(
    logger: logging.Logger,
    name: str,
    level: int = logging.INFO,
    *,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, name, exc_info=exc_info, extra={"fields": {"event": name, **fields}})


class Sampler:
    """Let through the first ``burst`` events of each second, then one in ``every``."""

    def __init__(self, every: int = 100, burst: int = 10) -> None:
        self.every = every
        self.burst = burst
        self._second = 0
        self._count = 0

    def __call__(self) -> bool:
        now = int(time.monotonic())
        if now != self._second:
            self._second, self._count = now, 0
        self._count += 1
        return self._count <= self.burst or self._count % self.every == 0


class MalformedRequests(logging.Filter):
    """aiohttp answers a request it cannot parse (bad request line, header, length or
    encoding) with a 400 and logs it at ERROR with a traceback; so it does for a body it
    cannot decode that it reads after an early answer (a 414, a CORS preflight, its own
    417): any client could fill the disk. On ``aiohttp.server`` this keeps such records as
    sampled one-line warnings ``bad_http_request`` (status, the error's class and a reason
    with nothing the client sent, see :func:`parse_error_reason`; no traceback) and passes
    everything else."""

    def __init__(self, sampler: Sampler | None = None) -> None:
        super().__init__()
        self.sampler = sampler or Sampler()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            status = exc.code
        elif isinstance(exc, RequestPayloadError):
            status = 400
        else:
            return True
        if not self.sampler():
            return False
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.fields = {
            "event": "bad_http_request",
            "status": status,
            "error": type(exc).__name__,
            "why": parse_error_reason(exc),
        }
        return True


REASONS: dict[type[BaseException], str] = {
    InvalidURLError: "Invalid URL",
    BadHttpMethod: "Bad HTTP method in the request line",
    BadStatusLine: "Bad status line",
    InvalidHeader: "Invalid HTTP header",
    LineTooLong: "Request line or header line too long",
    ContentEncodingError: "Cannot decode the body's content-encoding",
    TransferEncodingError: "Bad chunked transfer encoding",
    ContentLengthError: "Body shorter than its Content-Length",
    PayloadEncodingError: "Cannot decode the body",
    HttpBadRequest: "Bad request",
    BadHttpMessage: "Bad HTTP message",
    HttpProcessingError: "HTTP processing error",
}
"""The reason logged for each of aiohttp's parse errors (:func:`parse_error_reason`); a
subclass not listed takes its nearest listed base's."""
UNKNOWN_REASON = "Unparseable request"
"""The reason of an error no class of :data:`REASONS` covers."""
BODY_REASON = "Cannot read the request body"
"""A :class:`RequestPayloadError` without the parser's error as its cause."""


def parse_error_reason(exc: BaseException) -> str:
    """What aiohttp's parser found wrong, without anything the client sent: a fixed text
    for the error's class (:data:`REASONS`), never its message. The messages quote what
    the client sent (the request line with its query string, a header line with its value:
    consent strings, bearer tokens; the pure-Python parser's bad chunk-size error is the
    chunk-size line itself), and no filter of that text can tell the parser's words from
    the client's. A :class:`RequestPayloadError` (the body failed to decode) is told by the
    parser error that caused it; a :class:`LineTooLong` says the limit it passed (the
    server's own setting)."""
    if isinstance(exc, RequestPayloadError):
        cause = exc.__cause__
        if cause is None or isinstance(cause, RequestPayloadError):
            return BODY_REASON
        exc = cause
    for cls in type(exc).__mro__:
        reason = REASONS.get(cls)
        if reason is None:
            continue
        if isinstance(exc, LineTooLong) and len(exc.args) > 1:
            limit = exc.args[1]  # the parser's max_line_size or max_field_size
            if isinstance(limit, int) or (isinstance(limit, str) and limit.isdigit()):
                return f"{reason}: more than {int(limit)} bytes"
        return reason
    return UNKNOWN_REASON
