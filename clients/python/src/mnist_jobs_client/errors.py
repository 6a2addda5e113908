"""The Python client's errors: every failure of a call is an ApiError (importable from mnist_jobs_client)."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import ValidationError

from mnist_jobs_client.comparisons import ComparisonRead
from mnist_jobs_client.schemas import JobRead


class ApiError(Exception):
    """Every failure of a call: the server's problem (RFC 9457: status, title, detail, field, errors)
    with its X-Request-ID, or, with status None, a failure found on this side (see the subclasses)."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str = "",
        field: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
        url: str | None = None,
    ) -> None:
        self.detail, self.status, self.title, self.field = detail, status, title, field
        self.errors, self.request_id, self.url = errors or [], request_id, url
        head = f"{status} {title}: " if status is not None else ""
        super().__init__(head + detail + (f" [X-Request-ID {request_id}]" if request_id else ""))

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:  # not JSON: a proxy's page, say
            body = None
        problem: dict[str, Any] = body if isinstance(body, dict) else {}
        return cls(
            str(problem.get("detail") or response.text[:500] or response.reason_phrase),
            status=response.status_code,
            title=str(problem.get("title") or response.reason_phrase),
            field=problem.get("field"),
            errors=problem.get("errors"),
            request_id=response.headers.get("X-Request-ID"),
            url=str(response.request.url),
        )


class ServerUnreachable(ApiError):
    """No answer: the connection failed or timed out (httpx's TransportError is its __cause__)."""


class WaitTimeout(ApiError, TimeoutError):
    """wait(timeout=...) or wait_comparison(timeout=...) ran out; `last` is the latest view seen."""

    def __init__(self, detail: str, last: JobRead | ComparisonRead) -> None:
        super().__init__(detail)
        self.last = last


class ChecksumMismatch(ApiError):
    """A checkpoint's bytes do not hash to the sha256 the server sent with them (nothing was kept)."""


def invalid_spec(exc: ValidationError, what: str) -> ApiError:
    """The 422 the server would answer, raised before sending: the same model checked the input.
    The discriminator's tag ("fc"/"cnn") is dropped from locations, as the server drops it."""
    errors = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        loc = loc[1:] if loc and loc[0] in ("fc", "cnn") else loc
        field = "architecture" if error["type"].startswith("union_tag") else ".".join(loc) or "body"
        errors.append({"field": field, "message": f"{field}: {error['msg']}", "type": error["type"]})
    detail = f"invalid {what} (not sent): " + "; ".join(e["message"] for e in errors)
    return ApiError(detail, status=422, title="Invalid request", field=errors[0]["field"], errors=errors)


class AmbiguousId(ApiError):
    """A job id prefix that several jobs' ids start with; `matches` are their ids (the first ten)."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        super().__init__(f"ambiguous job id prefix {prefix}: it matches " + ", ".join(matches), field="job_id")
        self.prefix, self.matches = prefix, matches
