"""ORM tables. The schema itself is only ever created or changed by an Alembic migration."""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine

from service.platform.states import JobStatus, Outcome
from service.storage.store import StoredFile

E = TypeVar("E", bound=enum.StrEnum)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite has no time zones), always returned as an aware UTC datetime."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class TextEnum(TypeDecorator[E]):
    """A StrEnum stored as its value in a plain string column (no database enum type, so a new
    state needs no migration), and read back as the enum."""

    impl = String
    cache_ok = True

    def __init__(self, enum_type: type[E], length: int) -> None:
        super().__init__(length)
        self.enum_type = enum_type

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum_type(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum_type(value)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[Mapping[object, TypeEngine[Any] | type[TypeEngine[Any]]]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
    }


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[JobStatus] = mapped_column(TextEnum(JobStatus, 16))
    architecture: Mapped[str] = mapped_column(String(8))
    dataset: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]]  # the JobSpec as stored (seed filled in); read back through job_spec_adapter
    param_count: Mapped[int] = mapped_column(Integer)
    # Jobs that may train together as one stacked model share this key (JobSpec.pack_key).
    pack_key: Mapped[str] = mapped_column(String(64))

    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    run_after: Mapped[datetime]  # not claimed before this time (retry backoff)

    attempts: Mapped[int] = mapped_column(Integer, default=0)  # counted attempts (a hand-back gives one back)
    max_attempts: Mapped[int] = mapped_column(Integer)
    # The lease: every write by the owning worker is guarded by id AND lease_token AND status='running'.
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None]
    worker_id: Mapped[str | None] = mapped_column(String(36))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    progress: Mapped[dict[str, Any] | None]  # a schemas.Progress, rewritten by each heartbeat
    result: Mapped[dict[str, Any] | None]  # a schemas.TrainResult, written once by the fenced finish
    error: Mapped[str | None] = mapped_column(Text)
    # Latest training state to resume from (an epoch checkpoint, or a mid-epoch state on shutdown).
    resume_path: Mapped[str | None] = mapped_column(Text)
    resume_sha256: Mapped[str | None] = mapped_column(String(64))

    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)  # jobs.lifecycle.scoped_key
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    submitted_by: Mapped[str | None] = mapped_column(String(12))  # token id (service.platform.auth); None: open mode

    name: Mapped[str | None] = mapped_column(String(200))
    # Copies of spec and result fields, for filters and sorting (set at enqueue and at finish).
    seed: Mapped[int | None] = mapped_column(BigInteger)
    permutation_seed: Mapped[int | None] = mapped_column(BigInteger)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    # sha256 of the stored spec (seed included): equal specs train to equal weights (result reuse).
    spec_sha256: Mapped[str | None] = mapped_column(String(64))
    reused_from: Mapped[str | None] = mapped_column(String(36))  # the finished job whose result this one took
    # The comparison cell this job is one seed of (no foreign key; see migration 0005).
    comparison_id: Mapped[str | None] = mapped_column(String(36))
    cell_position: Mapped[int | None] = mapped_column(Integer)

    epochs: Mapped[list[Epoch]] = relationship(
        back_populates="job", order_by="Epoch.epoch", cascade="all, delete-orphan", passive_deletes=True
    )
    labels: Mapped[list[JobLabel]] = relationship(
        back_populates="job", order_by="JobLabel.key", cascade="all, delete-orphan", passive_deletes=True
    )
    attempt_rows: Mapped[list[Attempt]] = relationship(
        back_populates="job",
        order_by=lambda: [Attempt.started_at, Attempt.lease_token],
        cascade="all, delete-orphan",
        passive_deletes=True,
    )

    __table_args__ = (
        # The claim, the queue's figures and ?status= lists read one status in creation order: a
        # seek to the status and a walk in order, never through the other statuses' history.
        Index("ix_jobs_status", "status", "created_at", "id"),
        Index("ix_jobs_run_after", "status", "run_after"),  # the next runnable moment; jobs backing off
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_finished", "finished_at", "id"),  # GET /metrics: the jobs ended since the last scrape
        Index("ix_jobs_comparison", "comparison_id", "cell_position"),
        Index("ix_jobs_spec_sha256", "spec_sha256"),
        Index("ix_jobs_test_accuracy", "test_accuracy", "created_at", "id"),
    )


class JobLabel(Base):
    """One of a job's labels (a small string map), a row per key so a filter is an index lookup."""

    __tablename__ = "job_labels"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))

    job: Mapped[Job] = relationship(back_populates="labels")

    __table_args__ = (Index("ix_job_labels_key_value", "key", "value"),)


STEP_POINT = struct.Struct("<iiqd")  # step, epoch, samples, loss: one point of a packed step curve


class StepPoint(NamedTuple):
    step: int  # counted over all epochs, from 1
    epoch: int
    samples: int  # training samples seen by the job up to this step
    loss: float  # this step's batch loss


def pack_points(points: Sequence[StepPoint]) -> bytes:
    return b"".join(STEP_POINT.pack(*point) for point in points)


class StepChunk(Base):
    """A run of a job's training losses (every MNIST_JOBS_STEP_METRICS_EVERY steps), as one batch
    came with a heartbeat: the points packed little-endian (STEP_POINT, 24 bytes each) in one row,
    a tenth of the room a row per step took (migration 0008)."""

    __tablename__ = "step_chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    first_step: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_step: Mapped[int] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(BigInteger)  # at last_step: what GET /metrics reads of a running job
    points: Mapped[bytes] = mapped_column(LargeBinary)

    @classmethod
    def of(cls, job_id: str, points: Sequence[StepPoint]) -> StepChunk:
        """The chunk holding `points` (in step order, at least one)."""
        chunk = cls(job_id=job_id, first_step=points[0].step)
        chunk.replace_points(points)
        return chunk

    def replace_points(self, points: Sequence[StepPoint]) -> None:
        """Hold `points` instead (in step order, from first_step on, at least one)."""
        self.last_step, self.samples, self.points = points[-1].step, points[-1].samples, pack_points(points)

    def unpacked(self) -> list[StepPoint]:
        return [StepPoint(*values) for values in STEP_POINT.iter_unpack(self.points)]


class Comparison(Base):
    """One experiment as one request: a grid of cells (architecture x permutation), each trained
    with every seed; its status and statistics are read from its jobs, never stored."""

    __tablename__ = "comparisons"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    submitted_by: Mapped[str | None] = mapped_column(String(12))
    spec: Mapped[dict[str, Any]]  # the job fields applied to every cell
    seeds: Mapped[list[int]] = mapped_column(JSON)
    shared_permutation_seed: Mapped[int | None] = mapped_column(BigInteger)  # the S every permuted cell shares
    reuse: Mapped[bool] = mapped_column(Boolean)

    cells: Mapped[list[ComparisonCell]] = relationship(
        order_by="ComparisonCell.position", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (Index("ix_comparisons_created", "created_at", "id"),)


class ComparisonCell(Base):
    __tablename__ = "comparison_cells"

    comparison_id: Mapped[str] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    architecture: Mapped[str] = mapped_column(String(8))
    permutation_seed: Mapped[int | None] = mapped_column(BigInteger)
    param_count: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]]  # the cell's job spec without a seed


class Epoch(Base):
    """One finished epoch of a job: its metrics and the checkpoint saved after it (null once the
    worker pruned that file, keep_checkpoints; the metrics stay)."""

    __tablename__ = "epochs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Null only for epochs recorded before non-finite losses failed their job (migration 0002).
    train_loss: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float] = mapped_column(Float)
    correct: Mapped[int] = mapped_column(Integer)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)  # relative to the artifacts dir
    checkpoint_size_bytes: Mapped[int | None] = mapped_column(Integer)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]

    job: Mapped[Job] = relationship(back_populates="epochs")

    def checkpoint_file(self) -> StoredFile | None:
        """The checkpoint this epoch holds, or None once it was pruned (keep_checkpoints)."""
        return StoredFile.existing(self.checkpoint_path, self.checkpoint_sha256)


class Attempt(Base):
    """One claim of a job by a worker, from the claim to how it ended (null while it runs)."""

    __tablename__ = "attempts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    # The claim's lease token: unique per claim of a job, and what the fenced writes end it by.
    lease_token: Mapped[str] = mapped_column(String(36), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)  # the job's attempt count when claimed
    worker_id: Mapped[str] = mapped_column(String(36))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    outcome: Mapped[Outcome | None] = mapped_column(TextEnum(Outcome, 16))
    resumed_from_epoch: Mapped[int | None] = mapped_column(Integer)
    resumed_from_step: Mapped[int | None] = mapped_column(Integer)

    job: Mapped[Job] = relationship(back_populates="attempt_rows")


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(32))
    version: Mapped[str | None] = mapped_column(String(64))  # mnist-jobs; None: registered before 0007
    torch_version: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    stopped_at: Mapped[datetime | None]
    current_job_id: Mapped[str | None] = mapped_column(String(36))

    __table_args__ = (Index("ix_workers_live", "stopped_at", "started_at"),)  # the live ones, in order


class JobCount(Base):
    """How many jobs have each status, as of the last fold of job_count_changes (service.platform.metrics)."""

    __tablename__ = "job_counts"

    status: Mapped[JobStatus] = mapped_column(TextEnum(JobStatus, 16), primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger)


class JobCountChange(Base):
    """+1 or -1 for a status, appended by the database's own triggers on jobs (migration 0008) in
    the transaction of each insert, status change and delete, so no write can miss one; folded into
    job_counts by service.platform.metrics.fold_job_counts. Appended, never updated: concurrent writers never
    wait for each other on a counter row."""

    __tablename__ = "job_count_changes"

    # 64 bits on PostgreSQL; SQLite's rowid (INTEGER PRIMARY KEY) is 64 bits already.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    status: Mapped[JobStatus] = mapped_column(TextEnum(JobStatus, 16))
    delta: Mapped[int] = mapped_column(Integer)


class Event(Base):
    """One change to a job, written in the transaction of the change (service/platform/events.py): the outbox
    the API's live streams read. Ids only grow, in commit order (SQLite has one writer at a time).
    AUTOINCREMENT: without it SQLite reuses the ids of pruned newest rows (an idle hour prunes them
    all), and a client resuming after its last id would skip the new events that took them."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))  # a deleted job's go with it
    kind: Mapped[str] = mapped_column(String(16))  # a service.platform.events.EventKind value
    data: Mapped[dict[str, Any]]  # the kind's payload model, as JSON
    created_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_events_job_id", "job_id", "id"),  # one job's events in order (a resumed stream)
        Index("ix_events_created_at", "created_at"),  # pruning by age
        {"sqlite_autoincrement": True},
    )
