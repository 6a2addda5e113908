"""Claims per second: `--processes` OS processes each claim (service.queue.leases.claim, one job per write
transaction) until the queue is empty, on SQLite and on PostgreSQL.

    python -m bench.claims [--processes 16] [--jobs 400] [--url URL ...]

Without --url it measures both: a temp SQLite file, and PostgreSQL (MNIST_JOBS_TEST_POSTGRES_URL, or
a throwaway cluster as the tests start one, bench/postgres.py). Every run also checks that
each job was claimed exactly once (tests/integration/test_claims_many.py asserts only that).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path

from sqlalchemy import func, select

from service.jobs import lifecycle
from service.jobs.schemas import job_spec_adapter
from service.platform.db import Database, upgrade
from service.platform.models import Attempt, Job
from service.platform.states import JobStatus
from service.queue import leases


@dataclass(frozen=True)
class Result:
    database: str
    processes: int
    job_ids: list[str]  # those enqueued
    claimed: list[str]  # every claim of every process (a job twice here: claimed twice)
    seconds: float

    @property
    def per_second(self) -> float:
        return len(self.claimed) / self.seconds

    def problems(self, database: Database) -> list[str]:
        """What is wrong: jobs claimed twice or never, or rows that disagree with the claims."""
        counts = Counter(self.claimed)
        found = [f"{job_id} claimed {n} times" for job_id, n in counts.items() if n != 1]
        found += [f"{job_id} never claimed" for job_id in set(self.job_ids) - counts.keys()]
        with database.read() as session:
            running = session.scalar(
                select(func.count()).where(Job.status == JobStatus.running.value, Job.attempts == 1)
            )
            attempts = session.scalar(select(func.count()).select_from(Attempt))
        if running != len(self.job_ids) or attempts != len(self.job_ids):
            found.append(f"{running} jobs running once and {attempts} attempt rows, for {len(self.job_ids)} jobs")
        return found


def enqueue(database: Database, count: int) -> list[str]:
    spec = job_spec_adapter.validate_python({"architecture": "fc", "seed": 1})
    with database.write() as session:
        return [lifecycle.enqueue(session, spec, default_max_attempts=3)[0].id for _ in range(count)]


def claim_until_empty(url: str, worker: str, start: Barrier, out: multiprocessing.Queue[list[str]]) -> None:
    """One process: claim one job per transaction until a claim finds none."""
    database = Database(url)
    claimed: list[str] = []
    with database.read() as session:  # connect before the start, as a running worker has
        session.scalar(select(1))
    start.wait()
    while True:
        with database.write() as session:
            found = leases.claim(session, worker, lease_seconds=600)
        if not found:
            break
        claimed.extend(claim.job_id for claim in found)
    database.dispose()
    out.put(claimed)


def measure(url: str, processes: int = 16, count: int = 400) -> Result:
    """Enqueue `count` jobs in the (migrated, empty) database at `url` and let `processes` claim them."""
    database = Database(url)
    job_ids = enqueue(database, count)
    database.dispose()
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(processes + 1), context.Queue()
    procs = [context.Process(target=claim_until_empty, args=(url, f"bench-{n}", start, out)) for n in range(processes)]
    for proc in procs:
        proc.start()
    start.wait(timeout=300)  # all connected: the clock measures claims, not interpreter start-up
    began = time.perf_counter()
    claimed = [job_id for _ in procs for job_id in out.get(timeout=300)]
    seconds = time.perf_counter() - began
    for proc in procs:
        proc.join(timeout=60)
        if proc.exitcode != 0:
            raise RuntimeError(f"a claiming process exited with {proc.exitcode}")
    return Result(url.split(":", 1)[0].split("+")[0], processes, job_ids, claimed, seconds)


def report(result: Result, url: str) -> None:
    database = Database(url)
    problems = result.problems(database)
    database.dispose()
    print(
        f"{result.database:<10} {result.processes} processes, {len(result.job_ids)} jobs: "
        f"{result.per_second:,.0f} claims/s ({result.seconds:.2f} s)"
        + (f"  PROBLEMS: {problems[:5]}" if problems else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--url", action="append", help="a database URL (migrated here; should be empty)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mnist-jobs-claims-") as folder:
        server = None
        urls = args.url
        if not urls:
            from bench import postgres

            server = postgres.start()
            urls = [f"sqlite:///{Path(folder) / 'claims.db'}", server.new_database()]
        try:
            for url in urls:
                upgrade(url)
                report(measure(url, args.processes, args.jobs), url)
        finally:
            if server is not None:
                server.close()


if __name__ == "__main__":
    main()
