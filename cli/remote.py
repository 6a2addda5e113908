"""The commands that talk to a running server, on service.client: submit, jobs ..., workers.

Conventions: `--json` prints the API's JSON for scripts; a table or a summary line otherwise.
Exit codes: 0 succeeded (or done), 1 failed, 2 usage or a request the server refused as invalid,
3 cancelled, 4 server unreachable.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from service.client import ApiError, Client, ServerUnreachable
from service.schemas import CNNSpec, FCSpec, JobRead
from service.states import JobStatus

EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_UNREACHABLE = 1, 2, 3, 4
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Remote:
    """Where the server is: --url / --token of the root command (or MNIST_JOBS_URL / _TOKEN)."""

    url: str | None = None
    token: str | None = None

    def client(self) -> Client:
        return Client(self.url, self.token)


def handled(command: F) -> F:
    """Turn the client's errors into a message on stderr and the documented exit code."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ServerUnreachable as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_UNREACHABLE)
        except ApiError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE if exc.status in (400, 413, 415, 422) else EXIT_FAILED)

    return run  # type: ignore[return-value]


def exit_for(status: JobStatus) -> None:
    """The exit code of a command that waited for a job or a comparison to end."""
    sys.exit({JobStatus.failed: EXIT_FAILED, JobStatus.cancelled: EXIT_CANCELLED}.get(status, 0))


def emit_json(model: BaseModel | list[Any]) -> None:
    if isinstance(model, BaseModel):
        click.echo(model.model_dump_json(indent=2))
    else:
        click.echo(json.dumps([item.model_dump(mode="json") for item in model], indent=2))


# -- submit: one option per spec field, generated from the spec models ---------------------------------

SPEC_FIELDS: dict[str, FieldInfo] = {
    name: field
    for model in (FCSpec, CNNSpec)
    for name, field in model.model_fields.items()
    if name not in ("architecture", "labels")
}


def _click_type(annotation: Any) -> Any:
    """The click type of a spec field's annotation (Optional unwrapped; a Literal is a choice)."""
    if get_origin(annotation) in (Union, UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is Literal:
        return click.Choice([str(value) for value in get_args(annotation)])
    if annotation is int:
        return click.INT
    return click.FLOAT if annotation is float else click.STRING


def _help(name: str, field: FieldInfo) -> str:
    only = (
        " (fc only)" if name not in CNNSpec.model_fields else " (cnn only)" if name not in FCSpec.model_fields else ""
    )
    default = "" if field.default is None else f"; default {field.default}"
    return f"{field.description or name.replace('_', ' ')}{only}{default}"


def spec_options(command: F) -> F:
    """An option for every field of FCSpec and CNNSpec: a new spec field appears without code."""
    for name, field in reversed(SPEC_FIELDS.items()):
        flag = f"--{name.replace('_', '-')}"
        if field.annotation is bool:
            command = click.option(flag, name, is_flag=True, default=None, help=_help(name, field))(command)
        else:
            kind = _click_type(field.annotation)
            command = click.option(flag, name, type=kind, default=None, help=_help(name, field))(command)
    return command


def parse_labels(labels: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for text in labels:
        key, sep, value = text.partition("=")
        if not sep:
            raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="--label")
        pairs[key] = value
    return pairs


@click.command(
    epilog="""\b
examples:
  mnist-jobs submit cnn --permutation-seed 42 --wait
  mnist-jobs submit --architecture cnn --wait
  mnist-jobs submit fc --n-hidden 16 --epochs 3 --label team=vision --json
  mnist-jobs submit --spec job.json --seed 7""",
)
@click.argument("architecture", type=click.Choice(["fc", "cnn"]), required=False)
@click.option("--architecture", "architecture_option", type=click.Choice(["fc", "cnn"]), help="or as the argument")
@spec_options
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="a label; repeat for several")
@click.option("--spec", "spec_file", type=click.File(), help="a JSON job spec; flags override its fields")
@click.option("--idempotency-key", help="a repeat with the same key returns the first job")
@click.option("--wait", is_flag=True, help="follow the job to its end (a progress bar on a terminal)")
@click.option("--json", "as_json", is_flag=True, help="print the job's JSON")
@click.pass_obj
@handled
def submit(
    remote: Remote,
    /,
    architecture: str | None,
    architecture_option: str | None,
    labels: tuple[str, ...],
    spec_file: Any,
    **options: Any,
) -> None:
    """Submit a training job; exit 0 once submitted (with --wait: 0 succeeded, 1 failed, 3 cancelled)."""
    idempotency_key, wait, as_json = options.pop("idempotency_key"), options.pop("wait"), options.pop("as_json")
    spec: dict[str, Any] = json.load(spec_file) if spec_file else {}
    if not isinstance(spec, dict):
        raise click.BadParameter("the file must hold a JSON object", param_hint="--spec")
    spec |= {name: value for name, value in options.items() if value is not None}
    if architecture and architecture_option and architecture != architecture_option:
        raise click.UsageError(f"two architectures given: {architecture} and --architecture {architecture_option}")
    if architecture or architecture_option:
        spec["architecture"] = architecture or architecture_option
    if labels:
        spec["labels"] = spec.get("labels", {}) | parse_labels(labels)
    if "architecture" not in spec:
        raise click.UsageError("give the architecture (fc or cnn), or a --spec file that has one")
    with remote.client() as client:
        job = client.submit(spec, idempotency_key=idempotency_key)
        if not wait:
            click.echo(job.model_dump_json(indent=2) if as_json else f"{job.id} {job.status.value}")
            return
        if not as_json:
            click.echo(f"submitted {job.id}", err=True)
        job = client.wait(job.id, progress=not as_json)
    click.echo(job.model_dump_json(indent=2) if as_json else summary(job))
    exit_for(job.status)


def summary(job: JobRead) -> str:
    """One line for an ended job: how it ended, its accuracy, its size and time."""
    head = f"job {job.id} {job.status.value}"
    if job.result is not None:
        r = job.result
        return (
            f"{head}: test accuracy {100 * r.test_accuracy:.2f} % ({r.correct:,}/{r.total:,}), "
            f"{job.param_count:,} params, trained {r.train_seconds:.1f} s on {r.device}"
        )
    return f"{head}: {job.error}" if job.error else head


# -- jobs ...: list, show, watch, cancel, delete, download -------------------------------------------


@click.group()
def jobs() -> None:
    """List, show, follow, cancel, delete and download jobs."""


def _percent(job: JobRead) -> str:
    if job.result is not None:
        return f"{100 * job.result.test_accuracy:.2f} %"
    if job.progress is not None:
        return f"{100 * job.progress.fraction:.0f} % done"
    return ""


def table(rows: Iterator[list[str]], headers: list[str]) -> None:
    """A plain table (aligned columns, no colours or box characters), readable on a terminal and in a pipe."""
    lines = [headers, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    for line in lines:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


@jobs.command("list", epilog="example: mnist-jobs jobs list --status running --label team=vision")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]))
@click.option("--architecture", type=click.Choice(["fc", "cnn"]))
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="repeat to require several")
@click.option("--comparison", help="the jobs of one comparison")
@click.option("--sort", type=click.Choice(["created_at", "test_accuracy"]), default="created_at", show_default=True)
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="jobs shown")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handled
def list_jobs(remote: Remote, /, labels: tuple[str, ...], limit: int, as_json: bool, **filters: Any) -> None:
    """Jobs, newest first (or the most accurate first with --sort test_accuracy)."""
    label = [f"{key}:{value}" for key, value in parse_labels(labels).items()]
    with remote.client() as client:
        found = list(islice(client.jobs(label=label, limit=min(limit, 200), **filters), limit))
    if as_json:
        emit_json(found)
        return
    rows = (
        [
            job.id[:8],
            job.status.value,
            job.architecture,
            "natural" if job.spec.permutation_seed is None else str(job.spec.permutation_seed),
            str(job.spec.seed),
            _percent(job),
            f"{job.created_at:%Y-%m-%d %H:%M:%S}",
            job.name or "",
        ]
        for job in found
    )
    table(rows, ["ID", "STATUS", "ARCH", "PIXELS", "SEED", "ACCURACY", "CREATED (UTC)", "NAME"])


@jobs.command("show", epilog="example: mnist-jobs jobs show 3f2a9c1e-...")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handled
def show(remote: Remote, /, job_id: str, as_json: bool) -> None:
    """One job: its spec, status, epochs and result."""
    with remote.client() as client:
        job = client.get(job_id)
    if as_json:
        emit_json(job)
        return
    click.echo(summary(job))
    click.echo("spec: " + json.dumps(job.spec.model_dump(mode="json"), sort_keys=True))
    if job.metrics:
        table(
            (
                [str(m.epoch), f"{m.train_loss:.4f}", f"{m.test_loss:.4f}", f"{100 * m.test_accuracy:.2f} %"]
                for m in job.metrics
            ),
            ["EPOCH", "TRAIN LOSS", "TEST LOSS", "TEST ACCURACY"],
        )


@jobs.command("watch", epilog="example: mnist-jobs jobs watch 3f2a9c1e-... --json")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="no progress; the final JSON")
@click.pass_obj
@handled
def watch(remote: Remote, /, job_id: str, as_json: bool) -> None:
    """Follow a job live to its end; exit 0 succeeded, 1 failed, 3 cancelled."""
    with remote.client() as client:
        job = client.wait(job_id, progress=not as_json)
    click.echo(job.model_dump_json(indent=2) if as_json else summary(job))
    exit_for(job.status)


@jobs.command("cancel", epilog="example: mnist-jobs jobs cancel 3f2a9c1e-...")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handled
def cancel(remote: Remote, /, job_id: str, as_json: bool) -> None:
    """Cancel a job: a queued one at once, a running one at its next step."""
    with remote.client() as client:
        job = client.cancel(job_id)
    click.echo(job.model_dump_json(indent=2) if as_json else f"{job.id} {job.status.value}")


@jobs.command("delete", epilog="example: mnist-jobs jobs delete 3f2a9c1e-...")
@click.argument("job_id")
@click.pass_obj
@handled
def delete(remote: Remote, /, job_id: str) -> None:
    """Delete an ended job and its files (an admin token when tokens are on)."""
    with remote.client() as client:
        client.delete(job_id)
    click.echo(f"{job_id} deleted")


@jobs.command("download", epilog="example: mnist-jobs jobs download 3f2a9c1e-... -o cnn.pt")
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("."), help="a file or a folder")
@click.option("--epoch", type=click.IntRange(1), help="default: the latest kept epoch")
@click.pass_obj
@handled
def download(remote: Remote, /, job_id: str, output: Path, epoch: int | None) -> None:
    """Download a checkpoint, verifying its sha256 as it arrives (nothing is kept if it differs)."""
    with remote.client() as client:
        path = client.download_checkpoint(job_id, output, epoch=epoch)
    click.echo(str(path))


@click.command("workers", epilog="example: mnist-jobs workers --json")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handled
def workers(remote: Remote, /, as_json: bool) -> None:
    """The worker processes the server knows of, and what each is doing."""
    with remote.client() as client:
        found = client.workers()
    if as_json:
        emit_json(found)
        return
    rows = (
        [
            w.id[:8],
            w.host,
            str(w.pid),
            w.device,
            w.version or "?",
            "gone" if w.stopped_at else "alive",
            (w.current_job_id or "")[:8],
        ]
        for w in found
    )
    table(rows, ["ID", "HOST", "PID", "DEVICE", "VERSION", "STATE", "JOB"])
