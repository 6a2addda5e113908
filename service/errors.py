"""The one exception root of the service; api/errors.py maps these to HTTP problems."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service raises on purpose."""

    title = "Service error"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class NotFound(ServiceError):
    title = "Not found"


class Conflict(ServiceError):
    """The request does not fit the resource's current state."""

    title = "Conflict"


class InvalidInput(ServiceError):
    title = "Invalid input"


class DataUnavailable(ServiceError):
    """A data set is missing or corrupt and could not be prepared."""

    title = "Data set unavailable"


class LeaseLost(ServiceError):
    """A worker's fenced write touched no row: another worker owns the job now, or it ended."""

    title = "Lease lost"
