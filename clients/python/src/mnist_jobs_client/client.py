"""The Python client: `from mnist_jobs_client import Client`, typed with the server's own models.

Sync, on httpx; every call returns the pydantic model the API answers with (JobRead, ComparisonRead,
...), and every failure is an ApiError carrying the problem details. Importing it never imports
torch, FastAPI or SQLAlchemy: load_model() imports torch when it is called.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from mnist_jobs_client import downloads
from mnist_jobs_client.comparisons import ComparisonCreate, ComparisonProgress, ComparisonRead
from mnist_jobs_client.errors import (
    AmbiguousId,
    ApiError,
    ChecksumMismatch,
    ServerUnreachable,
    WaitTimeout,
    invalid_spec,
)
from mnist_jobs_client.events import ComparisonWatch, Deadline, JobWatch, follow
from mnist_jobs_client.predictions import PredictResponse
from mnist_jobs_client.schemas import JobPage, JobRead, Progress, WorkerRead
from mnist_jobs_client.specs import AnySpec, job_spec_adapter
from mnist_jobs_client.wire import (
    JOB_ID,
    Page,
    check_id_prefix,
    comparison_page,
    default_url,
    job_page,
    retry_after,
    spec_body,
    with_scheme,
)

if TYPE_CHECKING:
    import torch

__all__ = ["AmbiguousId", "ApiError", "ChecksumMismatch", "Client", "ServerUnreachable", "WaitTimeout"]

POLL_SECONDS = 0.5
MATCHES_SHOWN = 10  # ids an ambiguous prefix names
ModelFormat = Literal["onnx", "safetensors"]
_workers = TypeAdapter(list[WorkerRead])
T = TypeVar("T")


class Client:
    """The mnist-jobs API. `Client()` reads MNIST_JOBS_URL and MNIST_JOBS_TOKEN; `transport` is
    httpx's (tests pass the app's in-process transport). Use it as a context manager, or close()."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        retries: int = 3,
    ) -> None:
        self.base_url = with_scheme(base_url or default_url())
        token = token if token is not None else os.environ.get("MNIST_JOBS_TOKEN") or None
        headers = {"User-Agent": "mnist-jobs-client"} | ({"Authorization": f"Bearer {token}"} if token else {})
        self.timeout, self.retries = timeout, retries
        # Public on purpose: raw calls (pictures, metrics) and httpx's event hooks.
        self.http = httpx.Client(base_url=self.base_url, headers=headers, transport=transport, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- plumbing: every request goes through _stream, which turns every failure into an ApiError
    @contextmanager
    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """The answer to one request. A refusal that says when to come back (the server's rate limit,
        a full queue: wire.retry_after) is sent again after that wait, up to `retries` times."""
        url = f"{self.base_url}{path}"
        try:
            for attempt in range(self.retries + 1):
                with self.http.stream(method, path, **kwargs) as response:
                    if not response.is_error:
                        yield response
                        return
                    response.read()
                    wait = retry_after(method, response)
                    if wait is None or attempt == self.retries:
                        raise ApiError.from_response(response)
                time.sleep(wait)
        except httpx.TransportError as exc:
            what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
            raise ServerUnreachable(
                f"{method} {url} {what} ({type(exc).__name__}: {exc}): is `mnist-jobs serve` running at "
                f"{self.base_url}? Set MNIST_JOBS_URL (or Client(base_url=...)) to the server's address",
                url=url,
            ) from exc

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self._stream(method, path, **kwargs) as response:
            response.read()
            return response

    def _paged(self, path: str, params: list[tuple[str, Any]], parse: Callable[[bytes], Page[T]]) -> Iterator[T]:
        cursor: list[tuple[str, Any]] = []
        while True:
            items, next_cursor = parse(self._call("GET", path, params=params + cursor).content)
            yield from items
            if next_cursor is None:
                return
            cursor = [("cursor", next_cursor)]

    # -- jobs
    def submit(self, spec: AnySpec | dict[str, Any], *, idempotency_key: str | None = None) -> JobRead:
        """Validated here with the server's own model, so a bad spec fails before it is sent."""
        if isinstance(spec, dict):
            try:
                spec = job_spec_adapter.validate_python(spec)
            except ValidationError as exc:
                raise invalid_spec(exc, "job spec") from exc
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        answer = self._call("POST", "/v1/jobs", json=spec_body(spec), headers=headers)
        return JobRead.model_validate_json(answer.content)

    def resolve(self, job_id: str) -> str:
        """The full id of the one job whose id starts with `job_id` (4 hex characters or more, as
        `jobs list` and the dashboard show them), asked of the server; a full id is returned as it is.
        A 404 ApiError when none does, AmbiguousId (naming them) when several do."""
        text = check_id_prefix(job_id)
        if JOB_ID.match(text):
            return text
        params = {"id_prefix": text, "limit": MATCHES_SHOWN}
        found = [
            job.id for job in JobPage.model_validate_json(self._call("GET", "/v1/jobs", params=params).content).items
        ]
        if not found:
            raise ApiError(f"no job id starts with {text}", status=404, title="Not Found", field="job_id")
        if len(found) > 1:
            raise AmbiguousId(text, found)
        return found[0]

    def get(self, job_id: str) -> JobRead:
        return JobRead.model_validate_json(self._call("GET", f"/v1/jobs/{job_id}").content)

    def jobs(
        self,
        *,
        status: str | None = None,
        architecture: Literal["fc", "cnn"] | None = None,
        dataset: str | None = None,
        name: str | None = None,
        label: str | Sequence[str] = (),
        comparison: str | None = None,
        id_prefix: str | None = None,
        permutation_seed: int | Literal["none"] | None = None,
        seed: int | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        sort: Literal["created_at", "test_accuracy"] = "created_at",
        limit: int = 50,
    ) -> Iterator[JobRead]:
        """Every job matching the filters, page after page (`limit` per request); `label` is
        "key:value" or a list of them, all required; permutation_seed="none" = natural pixels;
        id_prefix: the jobs whose id starts with it (4 hex characters or more)."""
        filters: dict[str, object] = {"status": status, "architecture": architecture, "dataset": dataset}
        filters["id_prefix"] = id_prefix
        filters |= {"name": name, "comparison": comparison, "permutation_seed": permutation_seed, "seed": seed}
        filters |= {"created_after": created_after, "created_before": created_before}
        text = {k: v.isoformat() if isinstance(v, datetime) else str(v) for k, v in filters.items() if v is not None}
        params = list(text.items())
        params += [("label", text) for text in ([label] if isinstance(label, str) else label)]
        return self._paged("/v1/jobs", [*params, ("sort", sort), ("limit", limit)], job_page)

    def cancel(self, job_id: str) -> JobRead:
        return JobRead.model_validate_json(self._call("POST", f"/v1/jobs/{job_id}/cancel").content)

    def delete(self, job_id: str) -> None:
        self._call("DELETE", f"/v1/jobs/{job_id}")

    def wait(
        self, job_id: str, *, progress: bool | Callable[[Progress], None] = False, timeout: float | None = None
    ) -> JobRead:
        """The job once it has ended (succeeded, failed or cancelled), followed live through its
        events stream, or polled every 0.5 s where the server has none or the stream broke twice.
        progress=True draws a bar on a terminal (stderr; plain lines otherwise); a callable gets each
        Progress. Raises WaitTimeout past `timeout` seconds."""
        deadline = Deadline(timeout)
        watch = JobWatch(self.get(job_id), progress)  # a 404 here is the job's, so one from /events is the route's
        try:
            if not watch.ended:
                follow(self.http, watch, deadline, self.timeout)
            while not watch.ended:
                self._check(deadline, watch.job)
                time.sleep(deadline.cap(POLL_SECONDS))
                watch.seen(self.get(job_id))
            if not watch.job.status.is_final:  # the stream's `status` said so: its final view, result included
                watch.seen(self.get(job_id))
            return watch.job
        finally:
            watch.close()

    @staticmethod
    def _check(deadline: Deadline, last: JobRead | ComparisonRead) -> None:
        if deadline.past:
            what = "job" if isinstance(last, JobRead) else "comparison"
            raise WaitTimeout(f"{what} {last.id} has not ended in time (still {last.status.value})", last)

    # -- checkpoints, models, predictions
    def _download(
        self, path: str, params: dict[str, Any], what: str, write: Callable[[bytes], object]
    ) -> httpx.Response:
        """Stream a file into `write`, hashing as it comes; ChecksumMismatch if it differs from the
        sha256 the server sent. Every download (checkpoint, ONNX, safetensors) goes through here."""
        with self._stream("GET", path, params=params) as response:
            downloads.verify_into(response, what, write)
        return response

    def _save(
        self, path: str, params: dict[str, Any], what: str, target: str | os.PathLike[str], fallback: str
    ) -> Path:
        return downloads.save(lambda write: self._download(path, params, what, write), Path(target), fallback)

    def download_checkpoint(self, job_id: str, path: str | os.PathLike[str], *, epoch: int | None = None) -> Path:
        """The checkpoint (latest kept epoch, or `epoch`) saved at `path` (a folder: under the
        server's file name). Written to a temp file beside it and renamed only once its sha256
        matched: a failed download leaves no file, and never a partial one at `path`."""
        params = {} if epoch is None else {"epoch": epoch}
        return self._save(f"/v1/jobs/{job_id}/checkpoint", params, f"checkpoint of job {job_id}", path, f"{job_id}.pt")

    def download_model(
        self, job_id: str, path: str | os.PathLike[str], *, format: ModelFormat = "onnx", epoch: int | None = None
    ) -> Path:
        """The job's model (latest kept epoch, or `epoch`) as ONNX or safetensors, runnable without
        mnist-jobs, saved at `path` (a folder: under the server's file name) as download_checkpoint
        saves a checkpoint: verified by sha256, all or nothing."""
        params: dict[str, Any] = {"format": format} | ({} if epoch is None else {"epoch": epoch})
        what = f"{format} model of job {job_id}"
        return self._save(f"/v1/jobs/{job_id}/model", params, what, path, f"{job_id}.{format}")

    def load_model(self, job_id: str, *, epoch: int | None = None) -> tuple[torch.nn.Module, torch.Tensor | None]:
        """The job's trained net (the tutorial's class, in eval mode, on the CPU) and its pixel
        permutation (None for natural pixels). The net expects what training fed it: images
        (N, 1, 28, 28) scaled to pixels / 255, normalised with mean 0.1307 and std 0.3081, then
        permuted as x.view(N, -1)[:, permutation].view_as(x). Built from the job's safetensors file
        (verified by sha256; nothing is unpickled); needs the `torch` extra."""
        from mnist_jobs_client.loading import from_safetensors

        chunks: list[bytes] = []
        params: dict[str, Any] = {"format": "safetensors"} | ({} if epoch is None else {"epoch": epoch})
        self._download(f"/v1/jobs/{job_id}/model", params, f"safetensors model of job {job_id}", chunks.append)
        return from_safetensors(b"".join(chunks))

    def predict(self, job_id: str, image: bytes | Sequence[int]) -> PredictResponse:
        """The digit the job's latest checkpoint sees: a 28x28 PNG's bytes, or 784 ints 0..255 row
        by row (a list; numpy's `array.flatten().tolist()`). Its permutation is applied server-side."""
        path = f"/v1/jobs/{job_id}/predict"
        if isinstance(image, bytes | bytearray):
            response = self._call("POST", path, content=bytes(image), headers={"Content-Type": "image/png"})
        else:
            response = self._call("POST", path, json={"pixels": list(image)})
        return PredictResponse.model_validate_json(response.content)

    # -- comparisons and workers
    def compare(self, request: ComparisonCreate | dict[str, Any]) -> ComparisonRead:
        if isinstance(request, dict):
            try:
                request = ComparisonCreate.model_validate(request)
            except ValidationError as exc:
                raise invalid_spec(exc, "comparison") from exc
        body = request.model_dump(mode="json", exclude_unset=True)
        return ComparisonRead.model_validate_json(self._call("POST", "/v1/comparisons", json=body).content)

    def comparison(self, comparison_id: str) -> ComparisonRead:
        return ComparisonRead.model_validate_json(self._call("GET", f"/v1/comparisons/{comparison_id}").content)

    def comparisons(self, *, limit: int = 20) -> Iterator[ComparisonRead]:
        """Every comparison, newest first, page after page (`limit` per request)."""
        return self._paged("/v1/comparisons", [("limit", limit)], comparison_page)

    def wait_comparison(
        self,
        comparison_id: str,
        *,
        progress: bool | Callable[[ComparisonProgress], None] = False,
        timeout: float | None = None,
    ) -> ComparisonRead:
        """The comparison once every job has ended (a failed one included: the other cells go on),
        polled every 0.5 s; progress as wait()'s, a callable getting each new ComparisonProgress."""
        deadline, watch = Deadline(timeout), ComparisonWatch(comparison_id, progress)
        try:
            while True:
                comparison = self.comparison(comparison_id)
                watch.seen(comparison)
                if comparison.progress.queued + comparison.progress.running == 0:
                    return comparison
                self._check(deadline, comparison)
                time.sleep(deadline.cap(POLL_SECONDS))
        finally:
            watch.close()

    def cancel_comparison(self, comparison_id: str) -> ComparisonRead:
        return ComparisonRead.model_validate_json(self._call("POST", f"/v1/comparisons/{comparison_id}/cancel").content)

    def delete_comparison(self, comparison_id: str) -> None:
        self._call("DELETE", f"/v1/comparisons/{comparison_id}")

    def workers(self) -> list[WorkerRead]:
        return _workers.validate_json(self._call("GET", "/v1/workers").content)
