"""mnist-jobs' Python client: `from mnist_jobs_client import Client`.

The wire models (job specs, job views, comparisons, predictions) are defined here, once, and the
server imports them from here; this package imports nothing of the server, and never torch except
in `Client.load_model` (the `torch` extra).
"""

from __future__ import annotations

from mnist_jobs_client.client import Client
from mnist_jobs_client.errors import AmbiguousId, ApiError, ChecksumMismatch, ServerUnreachable, WaitTimeout

__version__ = "0.1.1"
__all__ = ["AmbiguousId", "ApiError", "ChecksumMismatch", "Client", "ServerUnreachable", "WaitTimeout"]
