"""The HTTP server's own limits, applied before the app sees a byte: uvicorn on its h11 protocol.

uvicorn's default protocol (httptools) reads a request head of any size, and neither protocol bounds
how long a client may take to send its request. `LimitedH11Protocol` is uvicorn's h11 protocol with:

- the request line and headers bounded by MNIST_JOBS_MAX_HEADER_BYTES (h11's incomplete-event
  limit): past it the connection gets a 431 problem and is closed (a 64 MB header is refused in
  its first 64 KB; up to LINGER_BYTES more are dropped unread for LINGER_SECONDS, so a client still
  sending can read the answer);
- every request read whole (head and body) within MNIST_JOBS_REQUEST_READ_TIMEOUT_SECONDS of its
  first byte, and a new connection's first byte within the same time: a client that trickles its
  head or its body (slowloris) gets a 408 problem, or only the close when its answer has begun;
- an idle keep-alive connection closed after MNIST_JOBS_KEEP_ALIVE_SECONDS (uvicorn's own timer);
- at most MNIST_JOBS_MAX_CONNECTIONS connections (uvicorn's limit_concurrency, answered 503).

These answers come from the protocol, so they are written here as raw HTTP/1.1 with the same
problem+json body and X-Request-ID as the app's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from typing import Any

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.platform.config import Settings

REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 400: "Bad Request"}
# After a refusal the connection is half-closed and what the client still sends is read and
# dropped, for up to LINGER_SECONDS and LINGER_BYTES (a lingering close, as nginx does): closing at
# once with unread bytes would reset the connection before a client that is still sending has read
# the answer. Past LINGER_BYTES the connection is closed anyway: dropping a 64 MB header would cost
# the event loop more than the client is owed.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
# One log line per refused status this often, with a count of the others: a flood must not fill the log.
LOG_EVERY_SECONDS = 10.0


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of uvicorn.run / uvicorn.Config that apply the limits above."""
    LimitedH11Protocol.read_timeout_seconds = settings.request_read_timeout_seconds
    return {
        "http": LimitedH11Protocol,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.keep_alive_seconds,
        "limit_concurrency": settings.max_connections,
    }


def problem_bytes(status: int, detail: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, with a problem+json body."""
    body = json.dumps({"type": "about:blank", "title": REASONS[status], "status": status, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        "content-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-request-id: {uuid.uuid4().hex}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Connection(h11.Connection):
    """h11's connection, remembering why it refused a request: its error carries the status to
    answer (431 for a head over the limit), which uvicorn's handler does not pass on."""

    refused: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refused = exc
            raise


class LimitedH11Protocol(H11Protocol):
    read_timeout_seconds = 15.0  # set from the settings by uvicorn_options

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        self.conn = self.limited = _Connection(h11.SERVER, self.max_head_bytes)
        self.read_deadline: asyncio.TimerHandle | None = None
        self.lingering: asyncio.TimerHandle | None = None
        self.dropped = 0  # bytes read and dropped since the refusal

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is cut too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.lingering is not None:
            self.lingering.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering is not None:  # refused: dropped unread, up to LINGER_BYTES
            self.dropped += len(data)
            if self.dropped > LINGER_BYTES:
                self.transport.close()
            return
        if self.read_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of a request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
            self._disarm()  # the whole request is in (or the connection is over)

    def send_400_response(self, msg: str) -> None:
        refused = self.limited.refused
        if refused is not None and refused.error_status_hint == 431:
            detail = f"the request line and headers passed {self.max_head_bytes} bytes (MNIST_JOBS_MAX_HEADER_BYTES)"
            self._refuse(431, detail)
            return
        self._refuse(400, f"the request is not valid HTTP/1.1 ({refused or msg})")

    def _arm(self) -> None:
        self._disarm()
        self.read_deadline = self.loop.call_later(self.read_timeout_seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if self.read_deadline is not None:
            self.read_deadline.cancel()
            self.read_deadline = None

    def _read_timed_out(self) -> None:
        self.read_deadline = None
        if self.transport.is_closing():
            return
        answering = self.cycle is not None and not self.cycle.response_complete
        if answering and self.cycle.response_started:
            self.transport.close()  # half an answer is out: closing is all that is left to say
            return
        if answering:  # the app waits for the rest of the body: it now reads a disconnect, and sends nothing
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        detail = (
            f"the request was not received whole within {self.read_timeout_seconds:g} s "
            "(MNIST_JOBS_REQUEST_READ_TIMEOUT_SECONDS)"
        )
        self._refuse(408, detail)

    def _refuse(self, status: int, detail: str) -> None:
        _log_refusal(self.logger, status, detail)
        self._disarm()
        self.transport.write(problem_bytes(status, detail))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.lingering = self.loop.call_later(LINGER_SECONDS, self.transport.close)


_last_logged: dict[int, float] = {}
_not_logged: Counter[int] = Counter()


def _log_refusal(logger: logging.Logger, status: int, detail: str) -> None:
    now = time.monotonic()
    if now - _last_logged.get(status, -LOG_EVERY_SECONDS) < LOG_EVERY_SECONDS:
        _not_logged[status] += 1
        return
    more = _not_logged.pop(status, 0)
    _last_logged[status] = now
    since = f" (and {more} more in the last {LOG_EVERY_SECONDS:g} s or so)" if more else ""
    logger.warning("HTTP %d from the server's limits: %s%s", status, detail, since)
