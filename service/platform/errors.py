"""The one exception root of the service, and when each error is raised.

Only api/errors.py maps these to HTTP (application/problem+json); `field` names the offending input.

    ServiceError
    ├── NotFound          a job, epoch or checkpoint that does not exist (404)
    ├── Conflict          the request does not fit the resource's state (409)
    ├── InvalidInput      input that passed the schema but is still wrong, e.g. a cursor (422)
    ├── DataUnavailable   a data set is missing or corrupt and could not be prepared (503)
    ├── CheckpointCorrupt a checkpoint file does not match the sha256 recorded for it (409)
    ├── SchemaOutOfDate   the database is not at the migration head this code expects
    ├── Unauthorized      no token, or one the server does not know, with tokens configured (401)
    ├── Forbidden         a known token whose role may not make this call (403)
    ├── TooLarge          a request body over the size limit (413)
    ├── UnsupportedMedia  a state-changing call whose body is not application/json (415)
    ├── TooMany           the caller's queue is full (429, with Retry-After)
    │   └── TooManyRenders    the caller started MNIST_JOBS_RENDERS_PER_MINUTE renders this minute
    ├── Overloaded        a bounded pool (the inference helper's, the renders') is full (503, with Retry-After)
    ├── FilesNotRemoved   a job's files could not all be removed, so its row is kept (500)
    ├── PredictionUnavailable  the inference helper could not start, died, or timed out (503)
    ├── StoreUnavailable  the object store holding the artifacts did not answer in time (503, with Retry-After)
    └── LeaseLost         a worker's fenced write touched no row: another worker owns the job
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service raises on purpose."""

    title = "Service error"
    retry_after_seconds: int | None = None  # sent as Retry-After, where the error says when to retry

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class NotFound(ServiceError):
    """Raised by lookups (service.jobs.lifecycle) when the id, epoch or file asked for does not exist."""

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


class Unauthorized(ServiceError):
    """Raised by the API's auth dependency when tokens are configured and the call carries none, or
    one that is not known."""

    title = "Unauthorized"


class Forbidden(ServiceError):
    """Raised when a known token's role may not make the call (a `read` token deleting a job)."""

    title = "Forbidden"


class TooLarge(ServiceError):
    """Raised before a request body over MNIST_JOBS_MAX_BODY_BYTES is read whole."""

    title = "Request body too large"


class UnsupportedMedia(ServiceError):
    """Raised for a state-changing call whose body is not application/json: a browser's cross-origin
    'simple' request (text/plain, form data) can then never submit or cancel."""

    title = "Unsupported media type"


class TooMany(ServiceError):
    """Raised when a caller already has MNIST_JOBS_MAX_QUEUED_PER_TOKEN jobs queued or running."""

    title = "Too many queued jobs"

    def __init__(self, detail: str, *, retry_after_seconds: int, field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self.retry_after_seconds = retry_after_seconds


class TooManyRenders(TooMany):
    """Raised when a caller has started MNIST_JOBS_RENDERS_PER_MINUTE uncached pictures in the last
    minute (service.pictures.pool): each costs seconds of a render process."""

    title = "Too many renders"


class Overloaded(ServiceError):
    """Raised by a bounded pool (platform.pools, pictures.pool) when it has as much work as it takes: more calls waiting
    on the inference helper than MNIST_JOBS_PREDICT_QUEUE_MAX, or more renders in flight than
    MNIST_JOBS_RENDER_QUEUE_MAX. Nothing was started; a retry after Retry-After may succeed."""

    title = "Overloaded"

    def __init__(self, detail: str, *, retry_after_seconds: int, field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self.retry_after_seconds = retry_after_seconds


class FilesNotRemoved(ServiceError):
    """Raised by service.storage.store when a job's files could not all be removed (a read-only or
    foreign-owned artifacts dir): the job's row is kept, so nothing is left on disk that no row
    points at. The server's own fault, hence a 500."""

    title = "Job files not removed"


class PredictionUnavailable(ServiceError):
    """Raised by service.inference.client when the inference helper process cannot answer: it would not
    start, stopped twice in a row, hung past MNIST_JOBS_PREDICT_TIMEOUT_SECONDS, or failed in a way
    that is not the checkpoint's fault. A retry may succeed (a hung helper is replaced)."""

    title = "Prediction unavailable"


class StoreUnavailable(ServiceError):
    """Raised by service.storage.s3 when the object store stayed unreachable (no connection, 5xx,
    throttling) for MNIST_JOBS_ARTIFACTS_RETRY_SECONDS. Nothing was written; a retry may succeed."""

    title = "Artifact store unavailable"

    def __init__(self, detail: str, *, retry_after_seconds: int, field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self.retry_after_seconds = retry_after_seconds


class LeaseLost(ServiceError):
    """Raised by service.queue.leases when a worker's fenced write touched no row: another worker owns the
    job now, or it ended. The worker then writes nothing more for that job."""

    title = "Lease lost"
