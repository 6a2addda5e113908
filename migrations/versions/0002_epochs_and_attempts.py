"""epochs and attempts as rows

Per-epoch metrics (jobs.metrics, a JSON list) and checkpoints (the checkpoints table) become one
`epochs` table; the attempt history (jobs.history, a JSON list) becomes the `attempts` table, keyed
by the claim's lease token. Existing rows are moved, both ways.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The tables as this migration sees them (never the ORM models, which follow the head).
jobs = sa.table(
    "jobs",
    sa.column("id", sa.String),
    sa.column("lease_token", sa.String),
    sa.column("status", sa.String),
    sa.column("spec", sa.JSON),
    sa.column("pack_key", sa.String),
    sa.column("metrics", sa.JSON),
    sa.column("history", sa.JSON),
    sa.column("result", sa.JSON),
)
checkpoints = sa.table(
    "checkpoints",
    sa.column("job_id", sa.String),
    sa.column("epoch", sa.Integer),
    sa.column("path", sa.Text),
    sa.column("size_bytes", sa.Integer),
    sa.column("sha256", sa.String),
    sa.column("created_at", sa.DateTime),
)
epochs = sa.table(
    "epochs",
    sa.column("job_id", sa.String),
    sa.column("epoch", sa.Integer),
    sa.column("train_loss", sa.Float),
    sa.column("test_loss", sa.Float),
    sa.column("test_accuracy", sa.Float),
    sa.column("correct", sa.Integer),
    sa.column("checkpoint_path", sa.Text),
    sa.column("checkpoint_size_bytes", sa.Integer),
    sa.column("checkpoint_sha256", sa.String),
    sa.column("created_at", sa.DateTime),
)
attempts = sa.table(
    "attempts",
    sa.column("job_id", sa.String),
    sa.column("lease_token", sa.String),
    sa.column("attempt", sa.Integer),
    sa.column("worker_id", sa.String),
    sa.column("started_at", sa.DateTime),
    sa.column("ended_at", sa.DateTime),
    sa.column("outcome", sa.String),
    sa.column("resumed_from_epoch", sa.Integer),
    sa.column("resumed_from_step", sa.Integer),
)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _finite(value: Any) -> Any:
    """A loss as the new columns keep it: revision 0001's code stored NaN/inf for a diverged job
    (shown as null by its API); SQLite cannot keep NaN in a REAL column, and JSON has no token for it."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _naive_utc(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _pack_key(spec: dict[str, Any]) -> str:
    """JobSpec.pack_key as of this revision: every stored field but the per-job ones."""
    shape = {name: value for name, value in spec.items() if name not in ("seed", "permutation_seed")}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


def _pack_key_0001(spec: dict[str, Any]) -> str:
    """The pack key revision 0001's code computed from a hand-written list of fields."""
    names = (
        "architecture",
        "n_hidden",
        "n_features",
        "batch_size",
        "test_batch_size",
        "epochs",
        "dataset",
        "lr",
        "momentum",
    )
    return hashlib.sha256(json.dumps([spec.get(name) for name in names]).encode()).hexdigest()


def _finite_results() -> None:
    """Results whose numbers are not all finite (a diverged job 0001 called succeeded) keep null
    there, as 0001's API showed them, instead of a NaN token that is not JSON."""
    bind = op.get_bind()
    for job in bind.execute(sa.select(jobs.c.id, jobs.c.result).where(jobs.c.result.is_not(None))).all():
        result = _json(job.result)
        if isinstance(result, dict) and any(_finite(v) is None and v is not None for v in result.values()):
            cleaned = {key: _finite(value) for key, value in result.items()}
            bind.execute(sa.update(jobs).where(jobs.c.id == job.id).values(result=cleaned))


def _rekey(key: Any) -> None:
    bind = op.get_bind()
    for job in bind.execute(sa.select(jobs.c.id, jobs.c.spec)).all():
        bind.execute(sa.update(jobs).where(jobs.c.id == job.id).values(pack_key=key(_json(job.spec))))


def create_epochs_and_attempts() -> None:
    op.create_table(
        "epochs",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=True),
        sa.Column("test_loss", sa.Float(), nullable=True),
        sa.Column("test_accuracy", sa.Float(), nullable=False),
        sa.Column("correct", sa.Integer(), nullable=False),
        sa.Column("checkpoint_path", sa.Text(), nullable=False),
        sa.Column("checkpoint_size_bytes", sa.Integer(), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "epoch"),
    )
    op.create_table(
        "attempts",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("lease_token", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=36), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("resumed_from_epoch", sa.Integer(), nullable=True),
        sa.Column("resumed_from_step", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "lease_token"),
    )


def create_checkpoints() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "epoch"),
    )


# Rows are read into memory before any table changes: on SQLite, batch mode rebuilds `jobs` (copy,
# drop, rename), and with foreign keys on, dropping it would cascade into every child table.


def upgrade() -> None:
    bind = op.get_bind()
    saved = {(row.job_id, row.epoch): row for row in bind.execute(sa.select(checkpoints))}
    epoch_rows, attempt_rows = [], []
    for job in bind.execute(sa.select(jobs)):
        for metric in _json(job.metrics) or []:
            # Every epoch was recorded with its checkpoint in one transaction: the two always pair up.
            file = saved[(job.id, metric["epoch"])]
            epoch_rows.append(
                {
                    "job_id": job.id,
                    "epoch": metric["epoch"],
                    "train_loss": _finite(metric["train_loss"]),
                    "test_loss": _finite(metric["test_loss"]),
                    "test_accuracy": metric["test_accuracy"],
                    "correct": metric["correct"],
                    "checkpoint_path": file.path,
                    "checkpoint_size_bytes": file.size_bytes,
                    "checkpoint_sha256": file.sha256,
                    "created_at": file.created_at,
                }
            )
        history = _json(job.history) or []
        for index, entry in enumerate(history):
            # The running attempt keeps its live lease token, so its fenced writes still find it;
            # ended ones get a fresh unique key (the old tokens were not kept).
            running = index == len(history) - 1 and job.status == "running" and "ended" not in entry
            attempt_rows.append(
                {
                    "job_id": job.id,
                    "lease_token": job.lease_token if running else str(uuid.uuid4()),
                    "attempt": entry["attempt"],
                    "worker_id": entry["worker_id"],
                    "started_at": _naive_utc(entry["started_at"]),
                    "ended_at": None,
                    "outcome": entry.get("ended"),
                    "resumed_from_epoch": entry.get("resumed_from_epoch"),
                    "resumed_from_step": entry.get("resumed_from_step"),
                }
            )
    op.drop_table("checkpoints")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("metrics")
        batch.drop_column("history")
    _rekey(_pack_key)  # queued jobs keep packing with jobs submitted from now on
    _finite_results()
    create_epochs_and_attempts()
    if epoch_rows:
        op.bulk_insert(epochs, epoch_rows)
    if attempt_rows:
        op.bulk_insert(attempts, attempt_rows)


def downgrade() -> None:
    bind = op.get_bind()
    metrics: dict[str, list[dict[str, Any]]] = {}
    checkpoint_rows = []
    for row in bind.execute(sa.select(epochs).order_by(epochs.c.job_id, epochs.c.epoch)):
        metrics.setdefault(row.job_id, []).append(
            {
                "epoch": row.epoch,
                "train_loss": row.train_loss,
                "test_loss": row.test_loss,
                "test_accuracy": row.test_accuracy,
                "correct": row.correct,
            }
        )
        checkpoint_rows.append(
            {
                "job_id": row.job_id,
                "epoch": row.epoch,
                "path": row.checkpoint_path,
                "size_bytes": row.checkpoint_size_bytes,
                "sha256": row.checkpoint_sha256,
                "created_at": row.created_at,
            }
        )
    history: dict[str, list[dict[str, Any]]] = {}
    for row in bind.execute(
        sa.select(attempts).order_by(attempts.c.job_id, attempts.c.started_at, attempts.c.lease_token)
    ):
        entry: dict[str, Any] = {
            "attempt": row.attempt,
            "worker_id": row.worker_id,
            "started_at": row.started_at.replace(tzinfo=UTC).isoformat(),
        }
        if row.resumed_from_epoch is not None:
            entry["resumed_from_epoch"], entry["resumed_from_step"] = row.resumed_from_epoch, row.resumed_from_step
        if row.outcome is not None:
            entry["ended"] = row.outcome
        history.setdefault(row.job_id, []).append(entry)
    op.drop_table("attempts")
    op.drop_table("epochs")
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("metrics", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("history", sa.JSON(), nullable=False, server_default="[]"))
    for job_id in metrics.keys() | history.keys():
        bind.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id)
            .values(metrics=metrics.get(job_id, []), history=history.get(job_id, []))
        )
    _rekey(_pack_key_0001)
    create_checkpoints()
    if checkpoint_rows:
        op.bulk_insert(checkpoints, checkpoint_rows)
