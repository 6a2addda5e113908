"""workers: the versions a worker runs (mnist-jobs and torch)

With workers on many hosts, a job's numbers depend on the code and the torch build of the worker
that trained it: each worker records both when it registers. Workers registered before this
revision have NULL there (unknown).

Downgrade drops the two columns.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("version", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("torch_version", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("torch_version")
        batch.drop_column("version")
