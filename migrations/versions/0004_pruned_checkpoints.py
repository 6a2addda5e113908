"""epochs.checkpoint_*: nullable, for epochs whose checkpoint file was pruned (keep_checkpoints)

A worker keeps each job's last `keep_checkpoints` epoch checkpoints and its best one; the other
epochs keep their row (their metrics) with the checkpoint columns set to null. `epochs` has no
child tables, so its SQLite batch rebuild touches nothing else (`jobs` is not rebuilt).

Downgrade refuses, naming the jobs, while any epoch has a pruned checkpoint: revision 0003 needs a
file for every epoch, and none can be given back. The alternatives were worse surprises: dropping
those epochs' rows would silently lose their metrics, and filling in a placeholder would have 0003
list checkpoints that do not exist. Delete those jobs first (their files go with them), or stay.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (
    ("checkpoint_path", sa.Text()),
    ("checkpoint_size_bytes", sa.Integer()),
    ("checkpoint_sha256", sa.String(length=64)),
)

# The table as this migration sees it (never the ORM models, which follow the head).
epochs = sa.table("epochs", sa.column("job_id", sa.String), sa.column("checkpoint_path", sa.Text))


class PrunedCheckpoints(RuntimeError):
    """A downgrade below 0004 while some epochs have no checkpoint file any more."""


def _alter(nullable: bool) -> None:
    with op.batch_alter_table("epochs") as batch:
        for name, type_ in COLUMNS:
            batch.alter_column(name, existing_type=type_, nullable=nullable)


def upgrade() -> None:
    _alter(nullable=True)


def downgrade() -> None:
    bind = op.get_bind()
    pruned = bind.execute(
        sa.select(epochs.c.job_id, sa.func.count())
        .where(epochs.c.checkpoint_path.is_(None))
        .group_by(epochs.c.job_id)
        .order_by(epochs.c.job_id)
    ).all()
    if pruned:
        total = sum(count for _, count in pruned)
        named = ", ".join(job_id for job_id, _ in pruned[:10]) + (" ..." if len(pruned) > 10 else "")
        raise PrunedCheckpoints(
            f"cannot downgrade below 0004: {total} epoch(s) of {len(pruned)} job(s) had their checkpoint "
            f"pruned (keep_checkpoints), and revision 0003 needs a file for every epoch; delete those "
            f"jobs first (DELETE /v1/jobs/{{id}}): {named}"
        )
    _alter(nullable=False)
