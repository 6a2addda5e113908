"""Pictures drawn in separate processes, never on the request threads (no FastAPI; the API awaits it).

`RenderPool`: matplotlib's memory is the render process's, which is replaced every
RENDERS_PER_PROCESS pictures, so the API's memory stays flat; at most `max_in_flight` distinct
pictures at once (503 past it). Requests for a picture being drawn wait for that one render; a
picture already in the cache costs a file read. Each caller may start `per_minute` uncached renders
in any minute (429 past it).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from service.pictures.render import PictureCache
from service.platform.errors import Overloaded, TooManyRenders

RENDERS_PER_PROCESS = 25  # pictures a render process draws before it is replaced (its memory goes with it)
RENDER_RETRY_AFTER_SECONDS = 2
# Render processes run niced: a picture is background work, and on a small host the API's own
# answers (and the workers' training) go first when they compete for a core.
RENDER_NICENESS = 10
CALLERS_KEPT = 10_000  # callers whose render times are remembered at once
# The render processes fork from a server that has the picture code loaded: a fresh one starts in
# milliseconds, and nothing of the API process (threads, sockets, the database) is forked.
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["service.pictures.render"])


@dataclass(frozen=True)
class RenderTask:
    """What a render process runs: a module-level function of service.pictures.render and its arguments
    (pickled to the process, so plain data only)."""

    function: Callable[..., bytes]
    args: tuple[Any, ...] = ()


@dataclass
class RenderCounts:
    """What the pool has done (the tests read it)."""

    rendered: int = 0
    joined: int = 0  # requests that waited for a render another request had started
    cached: int = 0


class RenderPool:
    def __init__(self, cache: PictureCache, *, processes: int, max_in_flight: int, per_minute: int) -> None:
        self.cache, self.processes = cache, processes
        self.max_in_flight, self.per_minute = max_in_flight, per_minute
        self.counts = RenderCounts()
        self._flights: dict[str, asyncio.Future[bytes]] = {}
        self._started: dict[str, deque[float]] = {}  # caller -> monotonic times of its renders this minute
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    async def picture(self, key: str, caller: str, prepare: Callable[[], Awaitable[RenderTask]]) -> bytes:
        """The picture for `key`: from the cache, from a render in flight, or rendered now from what
        `prepare` gathers (called on a miss only)."""
        cached = await anyio.to_thread.run_sync(self.cache.read, key)
        if cached is not None:
            self.counts.cached += 1
            return cached
        flight = self._flights.get(key)
        if flight is not None:
            self.counts.joined += 1
        else:
            if len(self._flights) >= self.max_in_flight:
                raise Overloaded(
                    f"{self.max_in_flight} pictures are being drawn (MNIST_JOBS_RENDER_QUEUE_MAX); retry shortly",
                    retry_after_seconds=RENDER_RETRY_AFTER_SECONDS,
                )
            self._count_start(caller)
            flight = asyncio.ensure_future(self._render(key, prepare))
            self._flights[key] = flight
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
        # shield: one impatient client going away does not cancel the render the others wait for
        return await asyncio.shield(flight)

    def _count_start(self, caller: str) -> None:
        now = time.monotonic()
        if caller not in self._started and len(self._started) >= CALLERS_KEPT:
            self._started = {k: times for k, times in self._started.items() if times and now - times[-1] < 60}
        times = self._started.setdefault(caller, deque())
        while times and now - times[0] >= 60:
            times.popleft()
        if len(times) >= self.per_minute:
            raise TooManyRenders(
                f"this caller started {self.per_minute} new pictures in the last minute "
                "(MNIST_JOBS_RENDERS_PER_MINUTE); pictures already drawn are still served",
                retry_after_seconds=max(1, math.ceil(60 - (now - times[0]))),
            )
        times.append(now)

    async def _render(self, key: str, prepare: Callable[[], Awaitable[RenderTask]]) -> bytes:
        task = await prepare()
        try:
            data = await asyncio.wrap_future(self._pool().submit(task.function, *task.args))
        except BrokenProcessPool:  # a render process died (killed, out of memory): the next call starts a new pool
            with self._lock:
                self._executor = None
            raise Overloaded(
                "the render process stopped while drawing; retry", retry_after_seconds=RENDER_RETRY_AFTER_SECONDS
            ) from None
        self.counts.rendered += 1
        await anyio.to_thread.run_sync(self.cache.store, key, data)
        return data

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.processes,
                    mp_context=_context,
                    max_tasks_per_child=RENDERS_PER_PROCESS,
                    initializer=os.nice,
                    initargs=(RENDER_NICENESS,),
                )
            return self._executor

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
