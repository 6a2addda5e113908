"""Pausing a worker process safely, shared by bench/fault_run.py and tests/integration/test_faults.py."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time

PAUSE_TRIES = 200


def pause_outside_a_write(database_url: str, victim: subprocess.Popen[bytes]) -> int:
    """SIGSTOP the worker at a moment it holds no SQLite write lock; returns the tries it took.

    SQLite has one writer: a process stopped inside its write transaction blocks every other writer
    (the reaper included) until it runs again or dies, which no lease can undo (a limitation the
    docs state). So: stop it, probe for the write lock, and if it is held, let the worker run a
    moment and try again. PostgreSQL ends such a session after idle_in_transaction_session_timeout,
    so there any moment is fair (one try). RuntimeError when every try found the lock held."""
    if not database_url.startswith("sqlite:///"):
        victim.send_signal(signal.SIGSTOP)
        return 1
    path = database_url.removeprefix("sqlite:///")
    for tries in range(1, PAUSE_TRIES + 1):
        victim.send_signal(signal.SIGSTOP)
        probe = sqlite3.connect(path, timeout=0.5, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return tries
        except sqlite3.OperationalError:  # "database is locked": stopped mid-write; try another moment
            victim.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        finally:
            probe.close()
    raise RuntimeError(f"the worker held the write lock at every one of {PAUSE_TRIES} tries")
