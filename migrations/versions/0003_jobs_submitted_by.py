"""jobs.submitted_by: the token id (service.auth) of the caller that submitted each job

Nullable: jobs submitted before tokens existed, or in the open mode, have none. Added and dropped
with plain ALTER TABLE (no batch rebuild of `jobs`, which on SQLite would cascade into its children).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("submitted_by", sa.String(length=12), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "submitted_by")
