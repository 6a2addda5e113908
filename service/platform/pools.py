"""Blocking work in a bounded pool, never on the request threads (no FastAPI; the API awaits it).

`BoundedCalls`: a blocking function (a call to the inference helper) run on threads of the pool's
own, `workers` at a time, with at most `max_waiting` more waiting; past that Overloaded (503 with
Retry-After) at once. A stalled helper then holds its own threads only: the request threads, and
every route that does not need the helper, go on. (Pictures have their own pool of processes:
service.pictures.pool.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from service.platform.errors import Overloaded

T = TypeVar("T")


class BoundedCalls:
    def __init__(self, name: str, *, workers: int, max_waiting: int, retry_after_seconds: int = 1) -> None:
        self.name, self.workers, self.max_waiting = name, workers, max_waiting
        self.retry_after_seconds = retry_after_seconds
        self.admitted = 0  # running + waiting
        self._lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self.admitted >= self.workers + self.max_waiting:
                raise Overloaded(
                    f"{self.max_waiting} calls are already waiting for the {self.name}; retry shortly",
                    retry_after_seconds=self.retry_after_seconds,
                )
            self.admitted += 1
        try:
            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(self.workers)
            return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)
        finally:
            with self._lock:
                self.admitted -= 1
