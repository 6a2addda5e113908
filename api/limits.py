"""A fair share per caller, before any route runs: no caller can take the server from the others.

A caller is a known token (by its id), else the client's address: unknown or missing tokens, and
every caller in the open mode, share their address's share, so inventing tokens buys nothing.
Every request but /healthz (a container's health check must never wait on its own traffic):

- carries at most MNIST_JOBS_MAX_HEADER_COUNT header fields (431; their bytes are bounded by the
  HTTP server itself, api/server.py);
- takes one token from its caller's bucket: MNIST_JOBS_RATE_LIMIT_BURST at once, refilled at
  MNIST_JOBS_RATE_LIMIT_PER_SECOND. An empty bucket is a 429 with Retry-After. Every answer says
  where the caller stands in the RateLimit-Policy and RateLimit fields of the IETF draft
  (draft-ietf-httpapi-ratelimit-headers-10): `"burst";q=<burst>;w=<seconds to refill it>` and
  `"burst";r=<requests left>;t=<seconds until the bucket is full again>`;
- counts against its caller's MNIST_JOBS_MAX_REQUESTS_PER_CALLER requests in flight, and an event
  stream also against MNIST_JOBS_MAX_STREAMS_PER_CALLER open streams, for as long as it runs (429).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem
from service.platform.auth import TokenStore, authenticate
from service.platform.config import Settings
from service.platform.errors import Unauthorized

EXEMPT = re.compile(r"/healthz(/.*)?")
STREAMS = re.compile(r"/v1/(jobs/[^/]+/)?events")
POLICY = "burst"
KNOWN_CALLER = "mnist_jobs.caller"  # the request state's key for the Caller authenticated here
BUCKETS_KEPT = 10_000  # callers remembered at once; a full bucket is forgotten first (it is a new one)


@dataclass
class Bucket:
    tokens: float
    updated: float  # time.monotonic()


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    remaining: int
    full_in_seconds: int  # until the bucket is full again
    retry_after_seconds: int  # until one more request is allowed (0 when it is)


class TokenBuckets:
    """Thread-safe: the middleware runs on the event loop, tests may share it across loops."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> Verdict:
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= BUCKETS_KEPT:
                    self._forget_full(now)
                bucket = self._buckets[key] = Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            allowed = bucket.tokens >= 1
            if allowed:
                bucket.tokens -= 1
            tokens = bucket.tokens
        retry = 0 if allowed else math.ceil((1 - tokens) / self.rate)
        return Verdict(allowed, int(tokens), math.ceil((self.burst - tokens) / self.rate), retry)

    def _forget_full(self, now: float) -> None:
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * self.rate >= self.burst]
        for key in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[key]

    @property
    def window_seconds(self) -> int:
        return max(1, math.ceil(self.burst / self.rate))


def caller_key(scope: Scope, tokens: TokenStore | None) -> str:
    """`token:<id>` for a known token, else `address:<client host>`. A known token's Caller is kept
    in the request's state (KNOWN_CALLER), so the auth dependency does not check it again."""
    authorization = Headers(scope=scope).get("authorization", "")
    scheme, _, presented = authorization.partition(" ")
    if tokens is not None and scheme.lower() == "bearer" and presented.strip():
        try:
            caller = authenticate(tokens.tokens(), presented.strip())
        except Unauthorized:
            pass
        else:
            scope.setdefault("state", {})[KNOWN_CALLER] = caller
            return f"token:{caller.id}"
    client = scope.get("client")
    return f"address:{client[0] if client else 'unknown'}"


class CallerLimits:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_headers = settings.max_header_count
        self.max_requests, self.max_streams = settings.max_requests_per_caller, settings.max_streams_per_caller
        self.buckets = TokenBuckets(settings.rate_limit_per_second, settings.rate_limit_burst)
        self.in_flight: Counter[str] = Counter()
        self.streams: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or EXEMPT.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        if len(scope["headers"]) > self.max_headers:
            count = len(scope["headers"])
            detail = f"the request has {count} header fields; this server takes at most {self.max_headers}"
            await problem(431, "Request header fields too large", detail, field="headers")(scope, receive, send)
            return
        key = caller_key(scope, scope["app"].state.tokens)
        verdict = self.buckets.take(key)
        policy = f'"{POLICY}";q={self.buckets.burst};w={self.buckets.window_seconds}'
        state = f'"{POLICY}";r={verdict.remaining};t={verdict.full_in_seconds}'
        fields = {"RateLimit-Policy": policy, "RateLimit": state}
        stream = STREAMS.fullmatch(scope["path"]) is not None and scope["method"] == "GET"
        refusal = self._refusal(key, verdict, stream)
        if refusal is not None:
            detail, retry_after = refusal
            answer = problem(429, "Rate limited", detail)
            answer.headers.update({**fields, "Retry-After": str(retry_after)})
            await answer(scope, receive, send)
            return

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(fields)
            await send(message)

        self.in_flight[key] += 1
        self.streams[key] += stream
        try:
            await self.app(scope, receive, send_with_fields)
        finally:
            _release(self.in_flight, key)
            if stream:
                _release(self.streams, key)

    def _refusal(self, key: str, verdict: Verdict, stream: bool) -> tuple[str, int] | None:
        """Why this request is refused and when to retry, or None."""
        if not verdict.allowed:
            return (
                f"this caller sent more than {self.buckets.burst} requests at once or "
                f"{self.buckets.rate:g} a second (MNIST_JOBS_RATE_LIMIT_BURST, MNIST_JOBS_RATE_LIMIT_PER_SECOND)",
                verdict.retry_after_seconds,
            )
        if self.in_flight[key] >= self.max_requests:
            return f"this caller has {self.max_requests} requests in flight (MNIST_JOBS_MAX_REQUESTS_PER_CALLER)", 1
        if stream and self.streams[key] >= self.max_streams:
            return (
                f"this caller holds {self.max_streams} event streams open (MNIST_JOBS_MAX_STREAMS_PER_CALLER); "
                "close one, or follow every job with one GET /v1/events",
                5,
            )
        return None


def _release(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
