"""history: indexes that keep finished history out of the queue's reads, job counts kept by
triggers, and step curves packed one row per batch

- `ix_jobs_claim` (status, run_after, created_at) becomes `ix_jobs_status` (status, created_at,
  id): the claim and `?status=` lists seek to one status and walk it in order, with no sort of all
  queued jobs; and `ix_jobs_run_after` (status, run_after): the next runnable moment, and the
  jobs still backing off, without reading the others. `ix_jobs_finished` (finished_at, id)
  serves GET /metrics' "ended since the last scrape"; `ix_workers_live` (stopped_at, started_at)
  the live workers.
- `job_counts` (status, jobs) and `job_count_changes` (id, status, delta): triggers on `jobs`
  append +1/-1 rows in the transaction of every insert, status change and delete; the service
  folds them into job_counts (service.platform.metrics.fold_job_counts). job_counts starts from
  the jobs there are.
  SQLite: a later migration that rebuilds `jobs` (batch_alter_table) drops its triggers and must
  create them again (create_triggers here).
- `steps` (a row per recorded step) becomes `step_chunks`: a job's points packed little-endian
  (step int32, epoch int32, samples int64, loss float64) in one row per batch; each job's rows
  become one chunk, every value kept.

Downgrade unpacks the chunks into `steps` again and drops the counts and the triggers.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

POINT = struct.Struct("<iiqd")  # step, epoch, samples, loss (service.platform.models.STEP_POINT)
BATCH = 5000

SQLITE_TRIGGERS = (
    """CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_count_changes (status, delta) VALUES (NEW.status, 1);
    END""",
    """CREATE TRIGGER jobs_counted_update AFTER UPDATE OF status ON jobs WHEN OLD.status IS NOT NEW.status BEGIN
        INSERT INTO job_count_changes (status, delta) VALUES (OLD.status, -1), (NEW.status, 1);
    END""",
    """CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs BEGIN
        INSERT INTO job_count_changes (status, delta) VALUES (OLD.status, -1);
    END""",
)
POSTGRES_TRIGGERS = (
    """CREATE FUNCTION jobs_counted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND OLD.status IS NOT DISTINCT FROM NEW.status THEN
            RETURN NULL;
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            INSERT INTO job_count_changes (status, delta) VALUES (OLD.status, -1);
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO job_count_changes (status, delta) VALUES (NEW.status, 1);
        END IF;
        RETURN NULL;
    END $$""",
    "CREATE TRIGGER jobs_counted AFTER INSERT OR DELETE OR UPDATE OF status ON jobs "
    "FOR EACH ROW EXECUTE FUNCTION jobs_counted()",
)


def create_triggers() -> None:
    for statement in POSTGRES_TRIGGERS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS:
        op.execute(statement)


def drop_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER jobs_counted ON jobs")
        op.execute("DROP FUNCTION jobs_counted()")
    else:
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER jobs_counted_{name}")


def _rows_by_job(bind: sa.Connection, query: str) -> Iterator[tuple[str, list[Any]]]:
    """Each job's rows of `query` (ordered by job_id first), one job at a time."""
    job_id: object = None
    rows: list[Any] = []
    for row in bind.execute(sa.text(query).execution_options(stream_results=True, yield_per=BATCH)):
        if row[0] != job_id and rows:
            yield str(job_id), rows
            rows = []
        job_id = row[0]
        rows.append(row)
    if rows:
        yield str(job_id), rows


def _insert_in_batches(table: sa.Table, rows: Iterable[dict[str, object]]) -> None:
    """Insert `rows` BATCH at a time, so a large history never sits in memory whole."""
    batch: list[dict[str, object]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            op.bulk_insert(table, batch)
            batch = []
    if batch:
        op.bulk_insert(table, batch)


def upgrade() -> None:
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index("ix_jobs_status", "jobs", ["status", "created_at", "id"])
    op.create_index("ix_jobs_run_after", "jobs", ["status", "run_after"])
    op.create_index("ix_jobs_finished", "jobs", ["finished_at", "id"])
    op.create_index("ix_workers_live", "workers", ["stopped_at", "started_at"])

    counts = op.create_table(
        "job_counts",
        sa.Column("status", sa.String(length=16), primary_key=True),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "job_count_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
    )
    bind = op.get_bind()
    found = bind.execute(sa.text("SELECT status, COUNT(*) FROM jobs GROUP BY status")).all()
    if found:
        op.bulk_insert(counts, [{"status": status, "jobs": n} for status, n in found])
    create_triggers()

    chunks = op.create_table(
        "step_chunks",
        sa.Column("job_id", sa.String(length=36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("first_step", sa.Integer(), primary_key=True),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("points", sa.LargeBinary(), nullable=False),
    )
    query = "SELECT job_id, step, epoch, samples, loss FROM steps ORDER BY job_id, step"
    packed = (
        {
            "job_id": job_id,
            "first_step": rows[0][1],
            "last_step": rows[-1][1],
            "samples": rows[-1][3],
            "points": b"".join(POINT.pack(row[1], row[2], row[3], row[4]) for row in rows),
        }
        for job_id, rows in _rows_by_job(bind, query)
    )
    _insert_in_batches(chunks, packed)
    op.drop_table("steps")


def downgrade() -> None:
    steps = op.create_table(
        "steps",
        sa.Column("job_id", sa.String(length=36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
    )
    query = "SELECT job_id, points FROM step_chunks ORDER BY job_id, first_step"
    unpacked = (
        {"job_id": job_id, "step": step, "epoch": epoch, "samples": samples, "loss": loss}
        for job_id, rows in _rows_by_job(op.get_bind(), query)
        for row in rows
        for step, epoch, samples, loss in POINT.iter_unpack(row[1])
    )
    _insert_in_batches(steps, unpacked)
    op.drop_table("step_chunks")

    drop_triggers()
    op.drop_table("job_count_changes")
    op.drop_table("job_counts")
    op.drop_index("ix_workers_live", table_name="workers")
    op.drop_index("ix_jobs_finished", table_name="jobs")
    op.drop_index("ix_jobs_run_after", table_name="jobs")
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.create_index("ix_jobs_claim", "jobs", ["status", "run_after", "created_at"])
