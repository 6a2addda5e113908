"""The one vocabulary of job states and of how an attempt (or a training run) ends.

Every module that writes or compares a status or an outcome uses these enums, never string
literals; the values are what the database stores and the JSON shows.
"""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    """A job's state: queued -> running -> succeeded | failed | cancelled (running -> queued on retry)."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class Outcome(enum.StrEnum):
    """How an attempt ended, and why a training loop was asked to stop.

    A trainer is stopped with `cancelled` (the user asked), `handed_back` (the worker is shutting
    down: checkpoint and requeue without spending the attempt) or `lease_lost` (another worker owns
    the job now: write nothing). `lease_expired` is written by the reaper, never by the worker.
    """

    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    handed_back = "handed back"
    lease_expired = "lease expired"
    lease_lost = "lease lost"
