"""How the client words its requests and reads the answers: addresses, job ids and their
prefixes, spec bodies, pages."""

from __future__ import annotations

import json
import os
import re
from typing import Any, TypeVar

import httpx

from mnist_jobs_client.comparisons import ComparisonPage, ComparisonRead
from mnist_jobs_client.schemas import JobPage, JobRead
from mnist_jobs_client.specs import AnySpec

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_WAIT_MAX_SECONDS = 30  # a longer Retry-After is the caller's to wait for, not the client's
RATE_LIMITED = "Rate limited"  # the title of the server's fair-share refusals (api/limits.py)
MIN_PREFIX = 4  # hex characters: shorter prefixes match too many ids to be worth a request
JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PREFIX = re.compile(r"^[0-9a-f]{4}[0-9a-f-]{0,32}$")
T = TypeVar("T")
Page = tuple[list[T], str | None]  # a page's items and the cursor of the next one


def job_page(raw: bytes) -> Page[JobRead]:
    page = JobPage.model_validate_json(raw)
    return page.items, page.next_cursor


def comparison_page(raw: bytes) -> Page[ComparisonRead]:
    page = ComparisonPage.model_validate_json(raw)
    return page.items, page.next_cursor


def spec_body(spec: AnySpec) -> dict[str, Any]:
    """The JSON of what the caller set: model_dump leaves out the submission options (name,
    labels, max_attempts, reuse are `exclude=True` so they stay out of the spec's hash)."""
    options = {name: getattr(spec, name) for name in ("max_attempts", "name", "labels", "reuse")}
    body = spec.model_dump(mode="json", exclude_unset=True)
    return body | {name: value for name, value in options.items() if name in spec.model_fields_set}


def with_scheme(url: str) -> str:
    """`127.0.0.1:8000` means http://127.0.0.1:8000, as curl reads it; a URL with a scheme is kept."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def default_url() -> str:
    """MNIST_JOBS_URL, else this machine at MNIST_JOBS_PORT (the port `mnist-jobs serve` listens on)."""
    port = os.environ.get("MNIST_JOBS_PORT")
    return os.environ.get("MNIST_JOBS_URL") or (f"http://127.0.0.1:{port}" if port else DEFAULT_URL)


def check_id_prefix(text: str) -> str:
    """A job id, or the start of one (4 hex characters or more), lowercased; ValueError otherwise."""
    text = text.strip().lower()
    if not (JOB_ID.match(text) or _PREFIX.match(text)):
        raise ValueError(f"{text[:40]!r} is not a job id nor its first {MIN_PREFIX} or more hex characters")
    return text


def retry_after(method: str, response: httpx.Response) -> int | None:
    """Seconds to wait before sending the request again, or None when it should not be: a 429 from
    the server's rate limiter (refused before anything ran, so any method may be sent again) or a
    503 to a GET or HEAD (a full queue, a database restart), each with a Retry-After of at most
    RETRY_WAIT_MAX_SECONDS."""
    after = response.headers.get("retry-after", "")
    if not after.isascii() or not after.isdigit() or int(after) > RETRY_WAIT_MAX_SECONDS:
        return None
    if response.status_code == 503 and method in ("GET", "HEAD"):
        return int(after)
    if response.status_code != 429:
        return None
    try:
        title = json.loads(response.content).get("title")
    except (ValueError, AttributeError):
        return None
    return int(after) if title == RATE_LIMITED else None
