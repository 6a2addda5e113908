"""events: the outbox of job changes that live streams (server-sent events) read

One row per change to a job (status, progress, step losses, an epoch), written in the transaction
of the change, so an event exists if and only if its change committed. `id` only grows
(AUTOINCREMENT: never reused after pruning) and is the stream's `id:`; rows older than
MNIST_JOBS_EVENTS_KEEP_SECONDS are pruned. A new table, so its foreign key needs no rebuild of
`jobs`: deleting a job deletes its events.

Downgrade drops the table (the events are a log for live clients; nothing else reads them).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(length=36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_job_id", "events", ["job_id", "id"])
    op.create_index("ix_events_created_at", "events", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_events_created_at", table_name="events")
    op.drop_index("ix_events_job_id", table_name="events")
    op.drop_table("events")
