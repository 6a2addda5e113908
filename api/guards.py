"""Pure ASGI middleware that turns away what a browser or a flood could send, before any route runs.

- TrustedHosts: Starlette's Host allow-list (its patterns and its Host parsing), answered with a
  400 problem instead of plain text. A page served from another name (DNS rebinding) gets nothing.
- BodyGuard: a body over MNIST_JOBS_MAX_BODY_BYTES is a 413 as soon as the Content-Length says so,
  or as soon as the chunks received pass the limit (chunked or lying bodies): at most the limit is
  ever held in memory. A state-changing call (POST, PUT, PATCH, DELETE) with a body or a
  Content-Type must be application/json (415): the 'simple' requests a web page may send to
  another origin without asking (text/plain, forms) can then neither submit nor cancel. The one
  exception, POST /v1/jobs/{id}/predict, also takes image/png, which is not 'simple' either (a
  browser asks first, and CORS answers).
- RequestId (outermost): every answer, the guards' 400/413/415 included, carries an X-Request-ID:
  the caller's when it is sane (1-64 of [A-Za-z0-9._-]), a fresh uuid4 hex otherwise. The id is in
  a contextvar (service.platform.logs.request_id) while the request runs, and service.platform.logs.RequestIdFilter
  puts it on every log record (uvicorn's access lines too, through log_config()). It is also where
  an exception no handler took ends: Starlette's ServerErrorMiddleware sits outside every user
  middleware, answers text/plain without the id and raises again, and uvicorn then drops the
  keep-alive connection; caught here, it is a problem+json 500 with the id, and the connection stays.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem, service_error, unexpected_error
from service.platform.errors import ServiceError, TooLarge, UnsupportedMedia
from service.platform.logs import LogFormat, request_id, uvicorn_config
from service.platform.logs import RequestIdFilter as RequestIdFilter  # re-exported: its old home

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = "application/json"
PNG = "image/png"
# The media types a state-changing call may send, by path; JSON everywhere else.
MEDIA_TYPES_BY_PATH = [(re.compile(r"/v1/jobs/[^/]+/predict"), (JSON, PNG))]  # api/routes/predict.py
HOST_OK = "mnist_jobs.host_ok"
REQUEST_ID_HEADER = "X-Request-ID"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def choose_request_id(sent: str | None) -> str:
    """The caller's id when it is sane, else a new one (a log line must never carry what a caller
    typed unchecked: newlines, escapes, megabytes)."""
    if sent is not None and SANE_REQUEST_ID.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = choose_request_id(Headers(scope=scope).get("x-request-id"))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        token = request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:  # half an answer is out: only closing the connection can tell the client
                raise
            await unexpected_error(exc)(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


def log_config(log_format: LogFormat = "text") -> dict[str, Any]:
    """uvicorn's logging config with the request id on every line (service.platform.logs, shared with the worker)."""
    return uvicorn_config(log_format)


class TrustedHosts:
    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.check = TrustedHostMiddleware(self._allowed, allowed_hosts=allowed_hosts, www_redirect=False)

    @staticmethod
    async def _allowed(scope: Scope, _receive: Receive, _send: Send) -> None:
        scope[HOST_OK] = True

    @staticmethod
    async def _discard(_message: Message) -> None:
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        verdict: Scope = {**scope}
        await self.check(verdict, receive, self._discard)  # reaches _allowed, or answers into the void
        if verdict.get(HOST_OK):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")
        detail = f"the Host header {host[:100]!r} is not one this server answers to (MNIST_JOBS_ALLOWED_HOSTS)"
        await problem(400, "Host not allowed", detail, field="Host")(scope, receive, send)


class BodyGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            declared = self._declared_length(headers)
            has_body = (declared or 0) > 0 or "transfer-encoding" in headers
            self._check_media_type(scope["method"], scope["path"], headers, has_body)
            body = await self._read(receive, declared) if has_body else None
        except _Disconnected:  # nobody left to answer
            return
        except (ServiceError, _BadLength) as exc:
            response = (
                problem(400, "Bad request", str(exc), field="Content-Length")
                if isinstance(exc, _BadLength)
                else await service_error(Request(scope), exc)
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive if body is None else _replay(body, receive), send)

    def _declared_length(self, headers: Headers) -> int | None:
        values = headers.getlist("content-length")
        if not values:
            return None
        if len(set(values)) != 1 or not values[0].isdigit():
            raise _BadLength("Content-Length is not one non-negative integer")
        declared = int(values[0])
        if declared > self.limit:
            raise TooLarge(f"the body is {declared} bytes; this server takes at most {self.limit}", field="body")
        return declared

    @staticmethod
    def _check_media_type(method: str, path: str, headers: Headers, has_body: bool) -> None:
        if method not in STATE_CHANGING:
            return
        content_type = headers.get("content-type")
        if content_type is None and not has_body:
            return
        media_type = (content_type or "").split(";", 1)[0].strip().lower()
        allowed = next((types for pattern, types in MEDIA_TYPES_BY_PATH if pattern.fullmatch(path)), (JSON,))
        if media_type not in allowed:
            sent = f"'{media_type}'" if media_type else "no Content-Type"
            raise UnsupportedMedia(
                f"{method} takes {' or '.join(allowed)} bodies only; this request sent {sent}", field="Content-Type"
            )

    async def _read(self, receive: Receive, declared: int | None) -> bytes:
        """The whole body, refused as soon as it passes the limit or its declared length."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise TooLarge(f"the body passed {self.limit} bytes, the most this server takes", field="body")
            if declared is not None and size > declared:
                raise _BadLength(f"the body is longer than its Content-Length ({declared})")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


class _BadLength(Exception):
    """Content-Length that is not one number, or that the body does not keep to (400)."""


class _Disconnected(Exception):
    """The client went away while its body was being read."""


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then whatever comes next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
