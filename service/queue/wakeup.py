"""Waking idle workers when a job is queued: PostgreSQL's LISTEN/NOTIFY, with polling as the fallback.

Every write that leaves a job queued (a submit, a comparison, a hand-back, a reaped lease) records a
`status` event in its transaction (service/platform/events.py), which calls `notify_queued`: on PostgreSQL a
`pg_notify` that the server delivers when, and only if, that transaction commits. Each worker's
`Wakeup` listens on a connection of its own, in a daemon thread, and its idle wait ends on the
first notification. While the listener is connected an idle worker needs no poll; it still wakes
for its reaper and for a retry whose backoff ends (no notification marks that moment). When the
connection drops (a database restart), the worker polls every MNIST_JOBS_POLL_SECONDS until the
listener is back, and wakes once on reconnecting, for anything queued meanwhile.

SQLite has no notifications (and serves one host): there `Wakeup` never listens, and idle workers
poll.
"""

from __future__ import annotations

import logging
import threading

import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

CHANNEL = "mnist_jobs_queued"
RECONNECT_SECONDS = 1.0  # between tries to connect the listener again
CHECK_STOP_SECONDS = 1.0  # how long one wait for notifications lasts before it looks at `closed`

log = logging.getLogger("mnist_jobs.wakeup")


def notify_queued(session: Session) -> None:
    """Tell the listening workers that a job is queued, once the caller's transaction commits
    (a no-op on SQLite)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(CHANNEL, "")))


class Wakeup:
    """An idle worker's wait: ended by a notification (PostgreSQL), by `wake()`, or by its timeout."""

    def __init__(self, database_url: str) -> None:
        self._woken = threading.Event()
        self._connected = threading.Event()
        self._closed = threading.Event()
        url = make_url(database_url)
        self._thread: threading.Thread | None = None
        if url.get_backend_name() == "postgresql":
            conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._thread = threading.Thread(target=self._listen, args=(conninfo,), name="wakeup", daemon=True)
            self._thread.start()

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
        self._closed.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=CHECK_STOP_SECONDS + 1)

    def _listen(self, conninfo: str) -> None:
        lost = False  # said "lost" and not yet "back"
        while not self._closed.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._connected.set()
                    if lost:
                        log.info("queue notifications back")
                        lost = False
                    self.wake()  # anything queued while no one listened
                    while not self._closed.is_set():
                        for _ in connection.notifies(timeout=CHECK_STOP_SECONDS, stop_after=1):
                            self.wake()
            except psycopg.Error as error:
                if self._connected.is_set():
                    log.warning("queue notifications lost (%s); polling until they are back", error)
                    lost = True
                self._connected.clear()
                self._closed.wait(RECONNECT_SECONDS)
        self._connected.clear()
