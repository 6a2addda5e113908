"""16 real OS processes claim 400 queued jobs until none is left, on SQLite and on PostgreSQL:
every job is claimed exactly once (one running attempt each). bench/claims.py does the claiming
and prints claims/s (`python -m bench.claims` for the figures); only correctness is asserted."""

from __future__ import annotations

import pytest

from bench.claims import measure

pytestmark = pytest.mark.databases  # each test once on SQLite, once on PostgreSQL

PROCESSES, JOBS = 16, 400


def test_sixteen_processes_claim_every_job_exactly_once(db, settings, capsys):
    result = measure(settings.database_url, PROCESSES, JOBS)

    assert len(result.job_ids) == JOBS and len(set(result.job_ids)) == JOBS
    assert sorted(result.claimed) == sorted(result.job_ids), "each job claimed once, none left"
    assert result.problems(db) == []
    with capsys.disabled():
        print(f"\n{result.database}: {PROCESSES} processes claimed {JOBS} jobs at {result.per_second:,.0f} claims/s")
