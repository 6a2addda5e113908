"""The one exception root of the service, and when each error is raised.

Only api/errors.py maps these to HTTP (application/problem+json); `field` names the offending input.

    ServiceError
    ├── NotFound          a job, epoch or checkpoint that does not exist (404)
    ├── Conflict          the request does not fit the resource's state (409)
    ├── InvalidInput      input that passed the schema but is still wrong, e.g. a cursor (422)
    ├── DataUnavailable   a data set is missing or corrupt and could not be prepared (503)
    ├── CheckpointCorrupt a checkpoint file does not match the sha256 recorded for it
    ├── SchemaOutOfDate   the database is not at the migration head this code expects
    └── LeaseLost         a worker's fenced write touched no row: another worker owns the job
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service raises on purpose."""

    title = "Service error"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class NotFound(ServiceError):
    """Raised by lookups (service.jobs) when the id, epoch or file asked for does not exist."""

    title = "Not found"


class Conflict(ServiceError):
    """Raised when the request does not fit the resource's current state: deleting a running job,
    cancelling a finished one, reusing an Idempotency-Key with another body."""

    title = "Conflict"


class InvalidInput(ServiceError):
    """Raised for input the schema cannot judge alone, such as a list cursor this API never gave out."""

    title = "Invalid input"


class DataUnavailable(ServiceError):
    """Raised by service.datasets when a data set is missing or corrupt and no source could provide it."""

    title = "Data set unavailable"


class CheckpointCorrupt(ServiceError):
    """Raised by service.training.checkpoints when a file's sha256 is not the one recorded for it;
    the file is never opened."""

    title = "Checkpoint corrupt"


class SchemaOutOfDate(ServiceError):
    """Raised at start-up by the API and the workers when the database is not at the migration head;
    the message says what to run."""

    title = "Database schema out of date"


class LeaseLost(ServiceError):
    """Raised by service.queue when a worker's fenced write touched no row: another worker owns the
    job now, or it ended. The worker then writes nothing more for that job."""

    title = "Lease lost"
