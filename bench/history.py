"""What a long history costs: the claim, a scrape, list pages, a job read and a submit, timed at
1,000, 100,000 and 1,000,000 jobs of history, on SQLite and on PostgreSQL.

    python -m bench.history [--sizes 1000,100000,1000000] [--databases sqlite,postgresql] [--json FILE]

One database per kind, migrated by Alembic, grows from size to size by a bulk path (executemany on
SQLite, COPY on PostgreSQL; no per-row ORM): each job of history has finished (94 % succeeded,
4 % failed, 2 % cancelled) with its epoch, its attempt and a step curve of STEPS_PER_JOB points,
and the newest 1 % of each size are queued (the previous size's queued jobs are finished first).
PostgreSQL is ANALYZEd after each fill, as autovacuum would. Each figure is the median of repeated
calls, through the real app in process (FastAPI's TestClient) for the HTTP ones; the claim is
service.queue.leases.claim in a transaction that is rolled back, so the history stays as filled.
The step curves are written in the form the schema holds (rows in `steps` before migration 0008,
one packed row per job in `step_chunks` after), so the same bench runs on main before and after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from api import cursors
from api.app import create_app
from bench import postgres
from service.jobs.schemas import TrainResult, job_spec_adapter
from service.platform.config import Settings
from service.platform.db import Database, upgrade
from service.queue import leases

STEPS_PER_JOB = 35  # the step rows per job that issue 21 measured on main's history
QUEUED_FRACTION = 0.01
BATCH = 20_000
REPEAT_SECONDS = 1.0  # each figure repeats its call for about this long (3 to 25 calls)
SPEC = job_spec_adapter.validate_python({"architecture": "fc", "seed": 1, "epochs": 1})
RESULT = TrainResult(
    test_accuracy=0.93,
    test_loss=0.24,
    correct=9300,
    total=10000,
    train_seconds=9.5,
    test_seconds=0.4,
    device="cpu",
    torch_version="2.14.1",
).model_dump_json()
STATUSES = ["succeeded"] * 47 + ["failed"] * 2 + ["cancelled"]  # by i % 50
JOB_COLUMNS = [
    "id",
    "status",
    "architecture",
    "dataset",
    "spec",
    "param_count",
    "pack_key",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "run_after",
    "attempts",
    "max_attempts",
    "cancel_requested",
    "result",
    "error",
    "seed",
    "spec_sha256",
    "test_accuracy",
]


@dataclass(frozen=True)
class Figures:
    database: str
    jobs: int
    claim_ms: float
    metrics_ms: float
    first_page_ms: float
    deepest_page_ms: float
    job_read_ms: float
    submit_ms: float
    database_mb: float


def stamp(moment: datetime) -> str:
    """A naive-UTC timestamp as both databases store models.UTCDateTime (SQLite compares the text)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class History:
    """The jobs of one database, grown in bulk."""

    def __init__(self, url: str, queued: int | None = None) -> None:
        self.url = url
        self.queued = queued  # how many of the newest are queued; None: QUEUED_FRACTION of each size
        self.db = Database(url)
        self.count = 0
        self.start = datetime.now(UTC) - timedelta(days=30)  # job i is created at start + i * gap
        self.gap = timedelta(days=29) / 1_000_000
        with self.db.engine.connect() as connection:
            self.chunked_steps = inspect(connection).has_table("step_chunks")

    @property
    def postgres(self) -> bool:
        return self.db.engine.dialect.name == "postgresql"

    def grow_to(self, size: int) -> None:
        queued_from = size - (self.queued or max(1, round(size * QUEUED_FRACTION)))
        with self.db.engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE jobs SET status = 'succeeded', started_at = run_after, finished_at = run_after, "
                    "attempts = 1, result = :result, test_accuracy = 0.93 WHERE status = 'queued'"
                ),
                {"result": RESULT},
            )
        for first in range(self.count, size, BATCH):
            with self.db.engine.begin() as connection:
                self._insert(connection, range(first, min(first + BATCH, size)), queued_from)
        self.count = size
        if (
            self.chunked_steps
        ):  # since 0008: fold the fill's count changes, as any process's upkeep would within seconds
            from service.platform.metrics import fold_job_counts

            with self.db.write() as session:
                fold_job_counts(session)
        if self.postgres:
            with self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(text("ANALYZE"))

    def _insert(self, connection: Connection, numbers: range, queued_from: int) -> None:
        jobs, epochs, attempts, steps = [], [], [], []
        spec = SPEC.model_dump_json()
        for i in numbers:
            job_id = str(uuid.UUID(int=i + 1))
            created = self.start + i * self.gap
            finished = i < queued_from
            status = STATUSES[i % len(STATUSES)] if finished else "queued"
            ran = finished and (status != "cancelled" or i % 100 < 50)
            born, ends = stamp(created), stamp(created + timedelta(seconds=12))
            jobs.append(
                (
                    job_id, status, "fc", "mnist", spec, 6442, "0" * 64, born, ends if finished else born,
                    born if ran else None, ends if finished else None, born,
                    1 if ran else 0, 3, False, RESULT if status == "succeeded" else None,
                    "training diverged" if status == "failed" else None, i, f"{i:064x}",
                    0.93 if status == "succeeded" else None,
                )
            )  # fmt: skip
            if not ran:
                continue
            attempts.append((job_id, str(uuid.UUID(int=i + 1, version=4)), 1, "w" * 36, born, ends, status))
            if status == "succeeded":
                epochs.append((job_id, 1, 0.3, 0.24, 0.93, 9300, ends))
            steps.append((job_id, [(k, 1, 64 * 50 * k, 2.3 / k) for k in range(1, STEPS_PER_JOB + 1)]))
        self._copy(connection, "jobs", JOB_COLUMNS, jobs)
        self._copy(
            connection,
            "epochs",
            ["job_id", "epoch", "train_loss", "test_loss", "test_accuracy", "correct", "created_at"],
            epochs,
        )
        attempt_columns = ["job_id", "lease_token", "attempt", "worker_id", "started_at", "ended_at", "outcome"]
        self._copy(connection, "attempts", attempt_columns, attempts)
        if self.chunked_steps:
            # Imported here: before migration 0008 the module has no packed form (the bench ran there too).
            from service.platform.models import StepPoint, pack_points

            chunks = []
            for job_id, curve in steps:
                points = [StepPoint(*point) for point in curve]
                chunks.append((job_id, points[0].step, points[-1].step, points[-1].samples, pack_points(points)))
            self._copy(connection, "step_chunks", ["job_id", "first_step", "last_step", "samples", "points"], chunks)
        else:
            rows = [(job_id, *point) for job_id, curve in steps for point in curve]
            self._copy(connection, "steps", ["job_id", "step", "epoch", "samples", "loss"], rows)

    def _copy(self, connection: Connection, table: str, columns: list[str], rows: Sequence[tuple[object, ...]]) -> None:
        if not rows:
            return
        raw: Any = connection.connection.driver_connection  # sqlite3's or psycopg's own connection
        if self.postgres:
            with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join("?" * len(columns))
            raw.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def size_mb(self) -> float:
        with self.db.engine.connect() as connection:
            if self.postgres:
                size = connection.scalar(text("SELECT pg_database_size(current_database())"))
            else:
                pages = connection.scalar(text("PRAGMA page_count"))
                free = connection.scalar(text("PRAGMA freelist_count"))
                size = (pages - free) * connection.scalar(text("PRAGMA page_size"))
        return float(size) / 1e6


def median_ms(call: Callable[[], object]) -> float:
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - began < REPEAT_SECONDS and len(times) < 25):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(name: str, history: History, settings: Settings) -> Figures:
    def claim() -> None:
        with Session(history.db.engine) as session, session.begin():
            assert leases.claim(session, "bench-worker", 60.0), "nothing to claim"
            session.rollback()

    oldest = history.start + 50 * history.gap  # the deepest page: after the 51st-oldest job
    deepest = cursors.encode(oldest, str(uuid.UUID(int=51)))
    old_job = str(uuid.UUID(int=history.count // 3 + 1))
    body = {"architecture": "fc", "epochs": 1}
    with TestClient(create_app(settings)) as client:

        def get(path: str) -> Callable[[], None]:
            def call() -> None:
                answer = client.get(path)
                assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])

            return call

        def submit() -> None:
            answer = client.post("/v1/jobs", json=body)
            assert answer.status_code == 201, answer.text[:300]

        get("/metrics")()  # the first scrape only takes its baseline
        figures = Figures(
            database=name,
            jobs=history.count,
            claim_ms=median_ms(claim),
            metrics_ms=median_ms(get("/metrics")),
            first_page_ms=median_ms(get("/v1/jobs?limit=50")),
            deepest_page_ms=median_ms(get(f"/v1/jobs?limit=50&cursor={deepest}")),
            job_read_ms=median_ms(get(f"/v1/jobs/{old_job}")),
            submit_ms=median_ms(submit),
            database_mb=history.size_mb(),
        )
    return figures


def databases(kinds: list[str], folder: Path) -> Iterator[tuple[str, str]]:
    if "sqlite" in kinds:
        yield "sqlite", f"sqlite:///{folder / 'history.db'}"
    if "postgresql" in kinds:
        server = postgres.start()
        try:
            yield "postgresql", server.new_database()
        finally:
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    results: list[Figures] = []
    print(f"{'database':<11} {'jobs':>9} {'claim':>8} {'metrics':>8} {'page 1':>8} {'deepest':>8} {'read':>8} "
          f"{'submit':>8} {'size MB':>8}   (ms, median)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mnist-jobs-history-") as folder:
        for name, url in databases(args.databases.split(","), Path(folder)):
            upgrade(url)
            history = History(url)
            settings = Settings(
                database_url=url,
                artifacts_dir=Path(folder) / f"artifacts-{name}",
                data_dir=Path(folder) / "data",
                rate_limit_per_second=1e6,
                rate_limit_burst=1_000_000,
            )
            for size in sizes:
                began = time.monotonic()
                history.grow_to(size)
                filled = time.monotonic() - began
                row = measure(name, history, settings)
                results.append(row)
                print(f"{name:<11} {size:>9,} {row.claim_ms:>8.2f} {row.metrics_ms:>8.2f} {row.first_page_ms:>8.2f} "
                      f"{row.deepest_page_ms:>8.2f} {row.job_read_ms:>8.2f} {row.submit_ms:>8.2f} "
                      f"{row.database_mb:>8.0f}   (filled in {filled:.0f} s)", flush=True)  # fmt: skip
            history.db.dispose()
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in results], indent=2))


if __name__ == "__main__":
    main()
