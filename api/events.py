"""Live events: one reader of the events table per API process, fanned out to every open stream.

The `Broadcaster` (app.state.events; started by the first stream, stopped with the app) reads the
events above the last id it read every MNIST_JOBS_EVENTS_POLL_SECONDS, in a worker thread, and
offers each to the queue of every stream that wants it (every stream of all jobs, and those of its
job): one query per interval however many clients watch. A stream's queue is bounded
(MNIST_JOBS_EVENTS_QUEUE_MAX): a client too slow to keep up is ended, with a last comment, rather
than hold up the others or grow the queue without end; it resumes from the table with Last-Event-ID.

Every stream is also held to its caller's token: the broadcaster checks each stream's token against
the tokens as they are now (the reload path new requests use) every CALLER_CHECK_SECONDS, and ends
the stream of a revoked or expired token at once, with a last comment saying why, dropping what its
queue still held.

A stream subscribes before it reads its starting point (a snapshot of the job, or the stored events
after Last-Event-ID), so nothing committed in between is lost; what both deliver is sent once (ids).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import anyio
from sse_starlette import ServerSentEvent

from service.jobs import lifecycle
from service.jobs.schemas import JobRead
from service.platform import events
from service.platform.auth import Caller
from service.platform.db import Database
from service.platform.errors import NotFound
from service.platform.events import StoredEvent
from service.platform.models import Job
from service.platform.states import JobStatus

log = logging.getLogger(__name__)
PAGE = 500  # events read per query, by the broadcaster and by a replay
GAP_WAIT_SECONDS = 2.0  # how long a missing id holds back the ones after it (see Broadcaster._deliver)
SHUTTING_DOWN = "the server is shutting down; reconnect with Last-Event-ID to resume"
CALLER_CHECK_SECONDS = 1.0  # how often each open stream's token is checked again (revocation, expiry)
SEP = "\n"  # line ends of the stream (sse-starlette's default is CRLF; both are valid)


def frame(event: StoredEvent) -> bytes:
    """The event as the stream sends it: `id:`, `event:` (its kind) and `data:` (its payload's JSON)."""
    data = event.payload.model_dump_json()
    return ServerSentEvent(data, event=event.kind.value, id=str(event.id), sep=SEP).encode()


def comment(text: str, last_id: int | None = None) -> bytes:
    """A comment (EventSource ignores it); with `last_id`, an `id:` too, which sets the client's
    Last-Event-ID without firing an event."""
    return ServerSentEvent(comment=text, id=None if last_id is None else str(last_id), sep=SEP).encode()


def keep_alive() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive", sep=SEP)


@dataclass(frozen=True)
class Frame:
    """An event on its way to the streams, encoded once for all of them."""

    id: int
    ends_job: bool
    data: bytes


class Subscription:
    """One stream's queue, on the stream's event loop. Ends (next() returns None) when the stream
    falls `size` events behind, the broadcaster closes, or `check` (its caller's token, asked from
    the reader thread) says no; `reason` then says which."""

    def __init__(self, job_id: str | None, size: int, check: Callable[[], str | None] | None = None) -> None:
        self.job_id, self.size, self.check = job_id, size, check
        self.reason: str | None = None
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Frame | None] = asyncio.Queue(size + 1)  # + 1: room for the end

    def offer(self, items: list[Frame]) -> None:
        """From the reader thread: hand `items` to the stream's loop (callbacks keep their order)."""
        self._call(self._put, items)

    def end(self, reason: str) -> None:
        """From any thread."""
        self._call(self._end, reason)

    def cut(self, reason: str) -> None:
        """From any thread: end now, without sending what the queue still holds."""
        self._call(self._cut, reason)

    def _call(self, callback: Callable[[Any], None], argument: object) -> None:
        with suppress(RuntimeError):  # the stream's loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(callback, argument)

    def _put(self, items: list[Frame]) -> None:
        for item in items:
            if self.reason is not None:
                return
            if self._queue.qsize() >= self.size:
                self._end(f"dropped: more than {self.size} events behind; reconnect with Last-Event-ID to resume")
                return
            self._queue.put_nowait(item)

    def _end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._queue.put_nowait(None)

    def _cut(self, reason: str) -> None:
        if self.reason is None:
            while not self._queue.empty():
                self._queue.get_nowait()
        self._end(reason)

    async def next(self) -> Frame | None:
        return await self._queue.get()

    def ready(self) -> list[Frame | None]:
        """What else the queue holds now, without waiting."""
        items: list[Frame | None] = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items


class Broadcaster:
    """The one reader: a thread, so that streams served by any event loop of the process (uvicorn
    has one; a test client may run its own beside the app's) are fed alike."""

    def __init__(self, db: Database, *, poll_seconds: float, queue_max: int, hold_gaps: bool | None = None) -> None:
        self.db, self.poll_seconds, self.queue_max = db, poll_seconds, queue_max
        # SQLite commits in id order (one writer at a time), so a missing id is gone for good (its
        # job was deleted). On PostgreSQL a lower id may still be committing: wait for it a little.
        self.hold_gaps = db.engine.dialect.name != "sqlite" if hold_gaps is None else hold_gaps
        self.last_id = 0
        self._every: set[Subscription] = set()  # streams of all jobs
        self._by_job: dict[str, set[Subscription]] = {}
        self._lock = threading.Lock()  # the two above, and starting the thread
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._gap_since: float | None = None

    @asynccontextmanager
    async def subscribe(
        self,
        job_id: str | None,
        *,
        until: anyio.Event | None = None,
        check: Callable[[], str | None] | None = None,
    ) -> AsyncIterator[Subscription]:
        """A queue of the events read from now on: `job_id`'s, or every job's for None; ended
        when `until` is set (the server's shutdown, as sse-starlette signals it), or cut when
        `check` (the caller's token, checked every CALLER_CHECK_SECONDS) gives a reason."""
        subscription = Subscription(job_id, self.queue_max, check)
        await anyio.to_thread.run_sync(self._add, subscription)
        watch = None if until is None else asyncio.create_task(self._end_on(until, subscription))
        try:
            yield subscription
        finally:
            if watch is not None:
                watch.cancel()
            with self._lock:
                self._every.discard(subscription)
                if job_id is not None and (found := self._by_job.get(job_id)) is not None:
                    found.discard(subscription)
                    if not found:
                        del self._by_job[job_id]

    @staticmethod
    async def _end_on(until: anyio.Event, subscription: Subscription) -> None:
        await until.wait()
        subscription.end(SHUTTING_DOWN)

    def _add(self, subscription: Subscription) -> None:
        with self._lock:
            if self._stop.is_set():
                subscription.end(SHUTTING_DOWN)
                return
            if self._thread is None:
                # Read before the first stream is added, which then reads its own starting point:
                # the events committed in between reach it (and are sent once, by id).
                self.last_id = self._latest()
                self._thread = threading.Thread(target=self._run, name="events-broadcaster", daemon=True)
                self._thread.start()
            if subscription.job_id is None:
                self._every.add(subscription)
            else:
                self._by_job.setdefault(subscription.job_id, set()).add(subscription)

    def _latest(self) -> int:
        with self.db.read() as session:
            return events.latest_id(session)

    def _run(self) -> None:
        full = False
        next_read = next_check = time.monotonic()
        while not self._stop.wait(0 if full else max(0.0, min(next_read, next_check) - time.monotonic())):
            now = time.monotonic()
            if now >= next_check:
                next_check = now + CALLER_CHECK_SECONDS
                self._check_callers()
            if full or now >= next_read:
                next_read = now + self.poll_seconds
                ready = self._ready(self._read(), now)
                full = len(ready) == PAGE  # more may be waiting: read again at once
                self._fan_out(ready)

    def _check_callers(self) -> None:
        """Cut the streams whose caller's token is no longer accepted (revoked, expired)."""
        with self._lock:
            held = [s for s in (*self._every, *(s for found in self._by_job.values() for s in found)) if s.check]
        for subscription in held:
            assert subscription.check is not None
            try:
                refused = subscription.check()
            except Exception:  # a check that fails is tried again on the next round, not fatal
                log.exception("checking a stream's token failed")
                continue
            if refused is not None:
                subscription.cut(f"ended: {refused}; the token's open streams end with it")

    def _read(self) -> list[StoredEvent]:
        try:
            with self.db.read() as session:
                return events.after(session, self.last_id, limit=PAGE)
        except Exception:  # a busy or briefly unreachable database: the next poll reads the same ids
            log.exception("reading events failed; retrying")
            return []

    def _fan_out(self, ready: list[StoredEvent]) -> None:
        """Each event to the streams that want it, one hand-over per stream for the lot. The streams
        added after this copy read their starting point later, so they have these events already."""
        if not ready:
            return
        with self._lock:
            every, by_job = tuple(self._every), {job: tuple(found) for job, found in self._by_job.items()}
        batches: dict[Subscription, list[Frame]] = {}
        for event in ready:
            item = Frame(event.id, event.ends_job, frame(event))
            for subscription in (*every, *by_job.get(event.job_id, ())):
                batches.setdefault(subscription, []).append(item)
        for subscription, items in batches.items():
            subscription.offer(items)

    def _ready(self, read: list[StoredEvent], now: float) -> list[StoredEvent]:
        """The events of `read` to send now, in order; last_id moves past them."""
        ready = []
        for event in read:
            if self.hold_gaps and event.id != self.last_id + 1:
                self._gap_since = self._gap_since if self._gap_since is not None else now
                if now - self._gap_since < GAP_WAIT_SECONDS:
                    break  # read again from last_id next time; past the wait the id counts as rolled back
            self._gap_since = None
            self.last_id = event.id
            ready.append(event)
        return ready

    async def close(self) -> None:
        """End every stream and stop reading (the app's shutdown)."""
        with self._lock:
            self._stop.set()
            subscriptions = (*self._every, *(s for found in self._by_job.values() for s in found))
            thread = self._thread
        for subscription in subscriptions:
            subscription.end(SHUTTING_DOWN)
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join)


# The streams: async generators of encoded events, for sse_starlette.EventSourceResponse.


@dataclass(frozen=True)
class JobStart:
    """Where a job's stream starts: a snapshot (`view`, the newest event id), or a replay (`replay`:
    the stored events after the client's Last-Event-ID, first page; `status` read with it)."""

    last_id: int
    view: JobRead | None = None
    replay: list[StoredEvent] | None = None
    status: JobStatus | None = None


def job_start(db: Database, job_id: str, last_event_id: int | None, viewer: Caller) -> JobStart | None:
    """None when the job is gone (deleted since the route found it). The snapshot is the job as
    `viewer` may see it (lifecycle.view)."""
    with db.read() as session:
        if last_event_id is not None and events.resumable(session, last_event_id):
            job = session.get(Job, job_id)
            if job is None:
                return None
            first = events.after(session, last_event_id, limit=PAGE, job_id=job_id)
            return JobStart(last_event_id, replay=first, status=job.status)
        # The newest id first: a change that commits between the two reads is then sent twice at
        # worst (in the snapshot and as an event), never lost (on PostgreSQL each read is its own
        # snapshot; on SQLite the transaction's first read fixes one for both).
        latest = events.latest_id(session)
        try:
            return JobStart(latest, view=lifecycle.view(lifecycle.get(session, job_id), viewer))
        except NotFound:
            return None


def stored(db: Database, last_id: int, job_id: str | None) -> list[StoredEvent]:
    with db.read() as session:
        return events.after(session, last_id, limit=PAGE, job_id=job_id)


def latest(db: Database) -> int:
    with db.read() as session:
        return events.latest_id(session)


async def replay(
    db: Database, first: list[StoredEvent], job_id: str | None, subscription: Subscription
) -> AsyncIterator[StoredEvent]:
    """`first`, then the stored events after it, a page at a time; none once the subscription
    ended (its reason is then sent by `live`)."""
    page = first
    while page:
        for event in page:
            if subscription.reason is not None:
                return
            yield event
        page = [] if len(page) < PAGE else await anyio.to_thread.run_sync(stored, db, page[-1].id, job_id)


async def live(subscription: Subscription, last_id: int, job_id: str | None) -> AsyncIterator[bytes]:
    """The subscription's events after `last_id`; a job's stream ends after the job's last one.
    Every frame waiting in the queue goes out in one write: a busy pack makes about a hundred
    events a second, and one send per event per stream kept the event loop from everything else
    (a cancel waited seconds behind 250 streams)."""
    while True:
        waiting = [await subscription.next(), *subscription.ready()]
        out: list[bytes] = []
        for item in waiting:
            if item is None:  # the end: what came before it, then why
                yield b"".join([*out, comment(subscription.reason or "ended")])
                return
            if item.id > last_id:
                out.append(item.data)
                if job_id is not None and item.ends_job:
                    yield b"".join(out)
                    return
        if out:
            yield b"".join(out)


async def job_stream(
    hub: Broadcaster,
    db: Database,
    check: Callable[[], str | None] | None,
    viewer: Caller,
    job_id: str,
    last_event_id: int | None,
    shutdown: anyio.Event,
) -> AsyncIterator[bytes]:
    """`event: job` (the job as GET /v1/jobs/{id} shows it, `id:` the newest event id), or with
    Last-Event-ID the job's stored events after it; then its events live, to its final status."""
    async with hub.subscribe(job_id, until=shutdown, check=check) as subscription:
        start = await anyio.to_thread.run_sync(job_start, db, job_id, last_event_id, viewer)
        if start is None:
            return
        last_id = start.last_id
        if start.view is not None:
            view = start.view.model_dump_json()
            yield ServerSentEvent(view, event="job", id=str(last_id), sep=SEP).encode()
            if start.view.status.is_final:
                return
        else:
            async for event in replay(db, start.replay or [], job_id, subscription):
                yield frame(event)
                last_id = event.id
                if event.ends_job:
                    return
            ended = start.status is not None and start.status.is_final  # its end was sent before the reconnect
            if ended and subscription.reason is None:
                return
        async for data in live(subscription, last_id, job_id):
            yield data


async def all_stream(
    hub: Broadcaster,
    db: Database,
    check: Callable[[], str | None] | None,
    last_event_id: int | None,
    shutdown: anyio.Event,
) -> AsyncIterator[bytes]:
    """Every job's events: the stored ones after Last-Event-ID (those still kept), then live. Without
    one (or with one this database never gave out), first an `id:` of the newest event, so that a
    reconnect resumes from there."""
    async with hub.subscribe(None, until=shutdown, check=check) as subscription:
        newest = await anyio.to_thread.run_sync(latest, db)
        if last_event_id is None or last_event_id > newest:
            last_id = newest
            yield comment(f"live events after id {last_id}", last_id)
        else:
            last_id = last_event_id
            first = await anyio.to_thread.run_sync(stored, db, last_id, None)
            async for event in replay(db, first, None, subscription):
                yield frame(event)
                last_id = event.id
        async for data in live(subscription, last_id, None):
            yield data
