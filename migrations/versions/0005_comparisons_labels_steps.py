"""comparisons and their cells; job names, labels, per-step losses; columns to find and reuse jobs

- `comparisons`: one experiment submitted as one request (a grid of cells x seeds);
  `comparison_cells`: one row per (architecture, permutation seed) of its grid.
- `jobs` gains `comparison_id` and `cell_position` (which comparison cell a job belongs to; no
  foreign key, which SQLite could add only by rebuilding `jobs`: service.comparisons.delete
  removes a comparison's jobs before the comparison),
  `name`, the filter and sort columns `seed`, `permutation_seed` and `test_accuracy` (filled from
  the spec and result of existing jobs), `spec_sha256` (the full stored spec's hash: equal specs
  train to equal weights, so a finished job's result can be reused) and `reused_from`.
- `job_labels`: a job's labels, one row per key (indexed by key and value, so a filter is a lookup).
- `steps`: the training loss every N steps of a job, with the samples trained so far.

Downgrade drops what this added; the comparisons, labels and per-step losses go with it (the jobs
themselves, their epochs and results stay).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The table as this migration sees it (never the ORM models, which follow the head).
jobs = sa.table(
    "jobs",
    sa.column("id", sa.String),
    sa.column("spec", sa.JSON),
    sa.column("result", sa.JSON),
    sa.column("seed", sa.BigInteger),
    sa.column("permutation_seed", sa.BigInteger),
    sa.column("test_accuracy", sa.Float),
    sa.column("spec_sha256", sa.String),
)

JOB_COLUMNS = (
    ("comparison_id", sa.String(length=36)),
    ("cell_position", sa.Integer()),
    ("name", sa.String(length=200)),
    ("seed", sa.BigInteger()),
    ("permutation_seed", sa.BigInteger()),
    ("test_accuracy", sa.Float()),
    ("spec_sha256", sa.String(length=64)),
    ("reused_from", sa.String(length=36)),
)


def spec_sha256(spec: dict[str, object]) -> str:
    """A frozen copy of service.jobs.spec_sha256 as of this revision."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def upgrade() -> None:
    op.create_table(
        "comparisons",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("submitted_by", sa.String(length=12), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("seeds", sa.JSON(), nullable=False),
        sa.Column("shared_permutation_seed", sa.BigInteger(), nullable=True),
        sa.Column("reuse", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_comparisons_created", "comparisons", ["created_at", "id"])
    op.create_table(
        "comparison_cells",
        sa.Column(
            "comparison_id",
            sa.String(length=36),
            sa.ForeignKey("comparisons.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("architecture", sa.String(length=8), nullable=False),
        sa.Column("permutation_seed", sa.BigInteger(), nullable=True),
        sa.Column("param_count", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
    )
    # Plain ADD COLUMNs, never a batch rebuild of `jobs`: on SQLite that drops the table, and the
    # foreign keys' ON DELETE CASCADE would empty epochs and attempts with it.
    for name, type_ in JOB_COLUMNS:
        op.add_column("jobs", sa.Column(name, type_, nullable=True))
    op.create_index("ix_jobs_comparison", "jobs", ["comparison_id", "cell_position"])
    op.create_index("ix_jobs_spec_sha256", "jobs", ["spec_sha256"])
    op.create_index("ix_jobs_test_accuracy", "jobs", ["test_accuracy", "created_at", "id"])
    op.create_table(
        "job_labels",
        sa.Column("job_id", sa.String(length=36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(length=63), primary_key=True),
        sa.Column("value", sa.String(length=200), nullable=False),
    )
    op.create_index("ix_job_labels_key_value", "job_labels", ["key", "value"])
    op.create_table(
        "steps",
        sa.Column("job_id", sa.String(length=36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
    )

    bind = op.get_bind()
    for job_id, spec, result in bind.execute(sa.select(jobs.c.id, jobs.c.spec, jobs.c.result)).all():
        accuracy = result.get("test_accuracy") if isinstance(result, dict) else None
        bind.execute(
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(
                seed=spec.get("seed"),
                permutation_seed=spec.get("permutation_seed"),
                test_accuracy=accuracy,
                spec_sha256=spec_sha256(spec),
            )
        )


def downgrade() -> None:
    op.drop_table("steps")
    op.drop_index("ix_job_labels_key_value", table_name="job_labels")
    op.drop_table("job_labels")
    for index in ("ix_jobs_test_accuracy", "ix_jobs_spec_sha256", "ix_jobs_comparison"):
        op.drop_index(index, table_name="jobs")
    for name, _ in reversed(JOB_COLUMNS):
        op.drop_column("jobs", name)
    op.drop_table("comparison_cells")
    op.drop_index("ix_comparisons_created", table_name="comparisons")
    op.drop_table("comparisons")
