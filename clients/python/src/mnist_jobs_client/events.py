"""The Python client's live side: following a job's events stream (Server-Sent Events, parsed
here from lines), and what wait() and wait_comparison() show while they wait.

Kept apart from client.py so that file stays the API's calls. Like it, this module imports
neither torch nor FastAPI; rich is imported only when a progress bar is really drawn.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import httpx

from mnist_jobs_client.comparisons import ComparisonProgress, ComparisonRead
from mnist_jobs_client.schemas import JobRead, Progress
from mnist_jobs_client.states import JobStatus

if TYPE_CHECKING:
    from rich.progress import Progress as Bar

# rich is the optional `progress` extra: without it a terminal gets the plain lines a pipe gets
RICH = importlib.util.find_spec("rich") is not None
LINE_EVERY = 0.1  # plain-line output: one line per tenth of the work (and per epoch and status change)
RECONNECTS = 1  # a broken stream is resumed once with Last-Event-ID; then the caller polls


class Deadline:
    """A wait's end: `seconds` from now, or never (None)."""

    def __init__(self, seconds: float | None) -> None:
        self.at = None if seconds is None else time.monotonic() + seconds

    @property
    def past(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def cap(self, seconds: float) -> float:
        """`seconds`, or less if the deadline comes first."""
        return seconds if self.at is None else max(0.0, min(seconds, self.at - time.monotonic()))


@dataclass(frozen=True)
class Event:
    event: str  # "message" when the server named none (the SSE default)
    data: str
    id: str | None  # the stream's last event id as of this event (the value to resume after)


class EventParser:
    """Events from an SSE stream's lines (text/event-stream, WHATWG HTML § 9.2.6): `field: value`
    lines, `:` comments, a blank line ends an event. `last_id` is the stream's last event id, the
    value to resume after: an `id:` sets it even in a block without data, which fires no event (the
    server sends one with a comment to move a client's resume point on). An event cut off by the
    end of the stream is dropped, as a browser drops it: it may be incomplete."""

    def __init__(self) -> None:
        self.last_id: str | None = None

    def events(self, lines: Iterable[str]) -> Iterator[Event]:
        kind = ""
        data: list[str] = []
        for line in lines:
            if not line:
                if data:
                    yield Event(kind or "message", "\n".join(data), self.last_id)
                kind, data = "", []
                continue
            if line.startswith(":"):
                continue  # a comment: the server's keep-alive
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                kind = value
            elif name == "id" and "\0" not in value:
                self.last_id = value or None
            # "retry" and unknown fields: ignored, as the standard says (we reconnect on our own terms)


class Display:
    """A progress bar (rich) when `stream` is a terminal and rich is installed, else a plain line per
    milestone: a change of status or of `milestone` (an epoch, a tenth of the work, a count of ended
    jobs)."""

    def __init__(self, name: str, stream: TextIO | None = None) -> None:
        self.name, self.stream = name, stream or sys.stderr
        self._bar: Bar | None = None
        self._last_line: tuple[str, object] | None = None

    def update(self, status: str, fraction: float | None, detail: str, milestone: object) -> None:
        if not self.stream.isatty() or not RICH:
            if (status, milestone) != self._last_line:
                self._last_line = (status, milestone)
                print(f"{self.name}: {status}" + (f", {detail}" if detail else ""), file=self.stream, flush=True)
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
            extra = (TextColumn("{task.fields[detail]}"), TimeRemainingColumn())
            self._bar = Bar(*columns, *extra, console=Console(file=self.stream))
            self._bar.start()
            self._bar.add_task(self.name, total=1.0, detail="")
        task = self._bar.task_ids[0]
        self._bar.update(task, description=f"{self.name} {status}", detail=detail, completed=fraction or 0.0)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def job_detail(progress: Progress | None, epochs: int) -> str:
    if progress is None:
        return ""
    loss = "" if progress.loss is None else f", loss {progress.loss:.4f}"
    return f"epoch {progress.epoch}/{epochs}, step {progress.step}/{progress.steps}{loss}"


class JobWatch:
    """What wait() knows of a job as views, events or polls arrive: the latest view, its status, and
    its progress, handed to the caller's callback (each new one) and to a Display (progress=True)."""

    def __init__(self, job: JobRead, progress: bool | Callable[[Progress], None], stream: TextIO | None = None) -> None:
        self.job, self.status, self.progress = job, job.status, job.progress
        self._callback = progress if callable(progress) else None
        self._display = Display(f"job {job.id[:8]}", stream) if progress is True else None
        self._shown: Progress | None = None
        self.seen(job)

    @property
    def ended(self) -> bool:
        return self.status.is_final

    def seen(self, job: JobRead) -> None:
        """A full view of the job (a GET, or the stream's `job` event)."""
        self.job, self.status = job, job.status
        self._show(job.progress)

    def event(self, event: Event) -> None:
        """One stream event; raises ValueError (pydantic's included) for one that does not parse."""
        if event.event == "job":
            self.seen(JobRead.model_validate_json(event.data))
        elif event.event == "status":
            self.status = JobStatus(_object(event.data)["status"])
            if not self.ended:  # an end is shown with the final view (its result), which wait() reads next
                self._show(self.progress)
        elif event.event == "progress":
            self._show(Progress.model_validate_json(event.data))
        # `step` and `epoch` events repeat what progress and the final view carry: not needed here

    def _show(self, progress: Progress | None) -> None:
        self.progress = progress
        if progress is not None and progress != self._shown and self._callback is not None:
            self._callback(progress)
        self._shown = progress or self._shown
        if self._display is not None:
            fraction = 1.0 if self.status is JobStatus.succeeded else progress.fraction if progress else None
            tenth = None if progress is None else (progress.epoch, int(progress.fraction / LINE_EVERY))
            self._display.update(self.status.value, fraction, self._detail(), tenth)

    def _detail(self) -> str:
        result, error = self.job.result, self.job.error
        if self.status is JobStatus.succeeded and result is not None:
            return f"test accuracy {100 * result.test_accuracy:.2f} %"
        if self.ended and error:
            return error
        return job_detail(self.progress, self.job.spec.epochs)

    def close(self) -> None:
        if self._display is not None:
            self._display.close()


def _object(data: str) -> dict[str, Any]:
    parsed = json.loads(data)
    if not isinstance(parsed, dict):
        raise ValueError(f"an event's data is not a JSON object: {data[:80]!r}")
    return parsed


def follow(http: httpx.Client, watch: JobWatch, deadline: Deadline, read_seconds: float) -> None:
    """Feed `watch` the job's events (GET /v1/jobs/{id}/events) until the job ends. Returns early,
    for the caller to poll, where that path answers with no stream (a 404: a server without the
    route, since the caller has just read the job), an event does not parse, the deadline passed,
    or the stream broke again after reconnecting once with Last-Event-ID."""
    parser = EventParser()  # one for every connection: its last_id is where a reconnect resumes
    for _ in range(1 + RECONNECTS):
        last_id = parser.last_id
        headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_id} if last_id else {})
        # A read waits at most until the deadline, so a quiet stream cannot outlast the wait.
        timeout = httpx.Timeout(read_seconds, read=max(0.05, deadline.cap(read_seconds)))
        try:
            with http.stream("GET", f"/v1/jobs/{watch.job.id}/events", headers=headers, timeout=timeout) as response:
                if response.status_code != 200 or "text/event-stream" not in response.headers.get("content-type", ""):
                    return
                for event in parser.events(_until(response.iter_lines(), deadline)):
                    watch.event(event)
        except httpx.TransportError:
            pass  # broken, or quiet past the read timeout (no keep-alive): reconnect, then poll
        except ValueError:
            return  # an event that does not parse (pydantic's errors are ValueErrors): not a stream to follow
        if watch.ended or deadline.past:
            return


def _until(lines: Iterable[str], deadline: Deadline) -> Iterator[str]:
    """The lines up to the deadline: checked at each line, keep-alive comments included (a read
    timeout bounds the wait for a line on a real connection)."""
    for line in lines:
        yield line
        if deadline.past:
            return


class ComparisonWatch:
    """What wait_comparison() shows: each new ComparisonProgress to a callback, or a Display."""

    def __init__(self, comparison_id: str, progress: bool | Callable[[ComparisonProgress], None]) -> None:
        self._callback = progress if callable(progress) else None
        self._display = Display(f"comparison {comparison_id[:8]}") if progress is True else None
        self._shown: ComparisonProgress | None = None

    def seen(self, comparison: ComparisonRead) -> None:
        p = comparison.progress
        if self._callback is not None and p != self._shown:
            self._callback(p)
        self._shown = p
        if self._display is not None:
            ended = p.succeeded + p.failed + p.cancelled
            detail = f"{ended}/{p.total} jobs ended ({p.running} running, {p.failed} failed)"
            self._display.update(comparison.status.value, p.fraction, detail, (ended, p.running))

    def close(self) -> None:
        if self._display is not None:
            self._display.close()
