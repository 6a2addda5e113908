"""The one vocabulary of job states and of how an attempt ends: defined with the client's wire
models (mnist_jobs_client.states), so the server and its clients share one definition."""

from __future__ import annotations

from mnist_jobs_client.states import FINAL_STATUSES, JobStatus, Outcome

__all__ = ["FINAL_STATUSES", "JobStatus", "Outcome"]
