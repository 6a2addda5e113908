"""Waking idle workers when a job is queued: PostgreSQL's LISTEN/NOTIFY, with polling as the fallback.

Every write that leaves a job queued (a submit, a comparison, a hand-back, a reaped lease) records a
`status` event in its transaction (service/platform/events.py), which calls `notify_queued`: on PostgreSQL a
`pg_notify` that the server delivers when, and only if, that transaction commits. A `Listener`
holds the LISTEN on a session connection of its own, in a daemon thread. A worker's `Wakeup` ends
its idle wait on the first notification, from one of two sources:

- its own Listener (a worker started alone: one LISTEN connection per worker process);
- its supervisor's (`serve`, `worker --workers N`, `worker --all-gpus`: one LISTEN connection per
  host), passed on by a `Fanout` over a pipe to each worker: one byte per event (NOTIFIED,
  CONNECTED, LOST). The pipe's end (the supervisor gone) counts as the notifications lost.

While notifications arrive an idle worker needs no poll; it still wakes for its reaper and for a
retry whose backoff ends (no notification marks that moment). While they are lost (a database
restart) the worker polls every MNIST_JOBS_POLL_SECONDS, and wakes once when they are back, for
anything queued meanwhile. SQLite has no notifications (and serves one host), and LISTEN cannot go
through a pooler in transaction mode (the session that listens goes back to the pool): there the
workers poll, unless MNIST_JOBS_DATABASE_LISTEN_URL names a session connection.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from service.platform.config import Settings

CHANNEL = "mnist_jobs_queued"
RECONNECT_SECONDS = 1.0  # between tries to connect the listener again
CHECK_STOP_SECONDS = 1.0  # how long one wait for notifications lasts before it looks at `closed`
NOTIFIED, CONNECTED, LOST = b"!", b"+", b"-"  # what a Fanout writes down a worker's pipe

log = logging.getLogger("mnist_jobs.wakeup")


def notify_queued(session: Session) -> None:
    """Tell the listening workers that a job is queued, once the caller's transaction commits
    (a no-op on SQLite)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(CHANNEL, "")))


def listen_conninfo(settings: Settings) -> str | None:
    """The libpq connection string LISTEN uses: DATABASE_LISTEN_URL, else DATABASE_URL unless that
    is a transaction pooler; None when there is none (SQLite, or a pooler without a listen URL)."""
    if settings.database_listen_url is not None:
        url = make_url(settings.database_listen_url)
    elif settings.database_transaction_pooler:
        return None
    else:
        url = make_url(settings.database_url)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """LISTEN on a session connection of its own, in a daemon thread, kept connected: `notified()`
    on each notification and on each (re)connection, `connected(bool)` as the connection comes and goes."""

    def __init__(self, conninfo: str, notified: Callable[[], None], connected: Callable[[bool], None]) -> None:
        self.notified, self.connected = notified, connected
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._listen, args=(conninfo,), name="listener", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=CHECK_STOP_SECONDS + 1)

    def _listen(self, conninfo: str) -> None:
        up, lost = False, False  # connected now; said "lost" and not yet "back"
        while not self._closed.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    up = True
                    self.connected(True)
                    if lost:
                        log.info("queue notifications back")
                        lost = False
                    self.notified()  # anything queued while no one listened
                    while not self._closed.is_set():
                        for _ in connection.notifies(timeout=CHECK_STOP_SECONDS, stop_after=1):
                            self.notified()
            except psycopg.Error as error:
                if up:
                    log.warning("queue notifications lost (%s); polling until they are back", error)
                    up, lost = False, True
                    self.connected(False)
                self._closed.wait(RECONNECT_SECONDS)
        if up:
            self.connected(False)


class Wakeup:
    """An idle worker's wait: ended by a notification, by `wake()`, or by its timeout. `source`:
    a libpq connection string to LISTEN on, a pipe's read end from a supervisor's Fanout, or None (poll)."""

    def __init__(self, source: str | int | None) -> None:
        self._woken = threading.Event()
        self._connected = threading.Event()
        self._listener: Listener | None = None
        if isinstance(source, str):
            self._listener = Listener(source, self.wake, self._set_connected)
        elif isinstance(source, int):
            threading.Thread(target=self._follow, args=(source,), name="wakeup-pipe", daemon=True).start()

    @classmethod
    def for_worker(cls, settings: Settings, pipe: int | None) -> Wakeup:
        """A worker's: its supervisor's pipe when it has one, else a LISTEN of its own (or polling)."""
        return cls(pipe if pipe is not None else listen_conninfo(settings))

    @property
    def listening(self) -> bool:
        """Whether a notification would reach this worker now (else it must poll)."""
        return self._connected.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; whether something woke it."""
        woken = self._woken.wait(max(timeout, 0.0))
        self._woken.clear()
        return woken

    def wake(self) -> None:
        self._woken.set()

    def close(self) -> None:
        self.wake()
        if self._listener is not None:
            self._listener.close()

    def _set_connected(self, up: bool) -> None:
        (self._connected.set if up else self._connected.clear)()

    def _follow(self, fd: int) -> None:
        with open(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(4096):
                woken = False
                for byte in (chunk[i : i + 1] for i in range(len(chunk))):
                    if byte == LOST:
                        self._connected.clear()
                    elif byte == CONNECTED:
                        self._connected.set()
                    woken = woken or byte != LOST
                if woken:
                    self.wake()
        log.warning("the supervisor's queue notifications ended; polling")
        self._connected.clear()


class Fanout:
    """A supervisor's one Listener, passed on to each of its workers over a pipe of its own: the
    workers of a host hold one LISTEN connection between them, not one each."""

    def __init__(self, conninfo: str | None) -> None:
        self._lock = threading.Lock()
        self._pipes: set[int] = set()  # write ends, non-blocking
        self._up = False
        self._listener = None if conninfo is None else Listener(conninfo, self._notified, self._connected)

    def pipe(self) -> int | None:
        """A new pipe's read end for a worker about to start (the caller closes it once the child
        has it), with the state so far; None when there is nothing to pass on (the workers poll)."""
        if self._listener is None:
            return None
        read, write = os.pipe()
        os.set_blocking(write, False)
        with self._lock:
            self._pipes.add(write)
            self._write(write, CONNECTED if self._up else LOST)
        return read

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for write in self._pipes:
                os.close(write)
            self._pipes.clear()

    def _notified(self) -> None:
        self._send(NOTIFIED)

    def _connected(self, up: bool) -> None:
        with self._lock:
            self._up = up
        self._send(CONNECTED if up else LOST)

    def _send(self, what: bytes) -> None:
        with self._lock:
            for write in list(self._pipes):
                self._write(write, what)

    def _write(self, write: int, what: bytes) -> None:
        """One byte to one worker (the lock held). A full pipe (a worker stopped, not reading)
        already holds wake-ups enough: the byte is dropped, and a dropped LOST costs that worker at
        most one wait until its next reap. A closed one: that worker is gone."""
        try:
            os.write(write, what)
        except BlockingIOError:
            pass
        except BrokenPipeError:
            self._pipes.discard(write)
            os.close(write)
