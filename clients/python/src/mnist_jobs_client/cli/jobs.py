"""`mnist-jobs jobs ...` (list, show, watch, cancel, delete, download) and `mnist-jobs workers`.
Every job id may be a prefix of 4 or more hex characters, resolved by the server."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Any

import click

from mnist_jobs_client.cli.common import Remote, check_job_id, emit_json, parse_labels, table
from mnist_jobs_client.cli.exits import Exit, exit_for, fail, handled
from mnist_jobs_client.cli.submit import summary
from mnist_jobs_client.errors import ApiError
from mnist_jobs_client.schemas import JobRead
from mnist_jobs_client.states import JobStatus


@click.group()
def jobs() -> None:
    """List, show, follow, cancel, delete and download jobs."""


def _percent(job: JobRead) -> str:
    if job.result is not None:
        return f"{100 * job.result.test_accuracy:.2f} %"
    if job.progress is not None:
        return f"{100 * job.progress.fraction:.0f} % done"
    return ""


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


@jobs.command("show", epilog="example: mnist-jobs jobs show 3f2a9c1e")
@click.argument("job_id", callback=check_job_id)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handled
def show(remote: Remote, /, job_id: str, as_json: bool) -> None:
    """One job: its spec, status, epochs and result."""
    with remote.client() as client:
        job = client.get(client.resolve(job_id))
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


@jobs.command("watch", epilog="example: mnist-jobs jobs watch 3f2a9c1e --json")
@click.argument("job_id", callback=check_job_id)
@click.option("--json", "as_json", is_flag=True, help="no progress; the final JSON")
@click.pass_obj
@handled
def watch(remote: Remote, /, job_id: str, as_json: bool) -> None:
    """Follow a job live to its end; exit 0 succeeded, 1 failed, 3 cancelled."""
    with remote.client() as client:
        job = client.wait(client.resolve(job_id), progress=not as_json)
    click.echo(job.model_dump_json(indent=2) if as_json else summary(job))
    exit_for(job.status)


@jobs.command("cancel", epilog="example: mnist-jobs jobs cancel 3f2a9c1e")
@click.argument("job_id", callback=check_job_id)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handled
def cancel(remote: Remote, /, job_id: str, as_json: bool) -> None:
    """Cancel a job: a queued one at once, a running one at its next step (an ended one: exit 7)."""
    with remote.client() as client:
        job_id = client.resolve(job_id)
        try:
            job = client.cancel(job_id)
        except ApiError as exc:
            if exc.status != 409:
                raise
            ended = client.get(job_id)
            fail(f"job {job_id} already {ended.status.value}: nothing to cancel", Exit.CONFLICT)
    click.echo(job.model_dump_json(indent=2) if as_json else cancel_line(job))


def cancel_line(job: JobRead) -> str:
    if job.status is JobStatus.running:
        return f"{job.id} cancel requested; the job stops at its next step"
    return f"{job.id} {job.status.value}"


@jobs.command("delete", epilog="example: mnist-jobs jobs delete 3f2a9c1e")
@click.argument("job_id", callback=check_job_id)
@click.pass_obj
@handled
def delete(remote: Remote, /, job_id: str) -> None:
    """Delete an ended job and its files (an admin token when tokens are on)."""
    with remote.client() as client:
        job_id = client.resolve(job_id)
        client.delete(job_id)
    click.echo(f"{job_id} deleted")


@jobs.command(
    "download",
    epilog="""\b
examples:
  mnist-jobs jobs download 3f2a9c1e -o cnn.pt
  mnist-jobs jobs download 3f2a9c1e --format onnx""",
)
@click.argument("job_id", callback=check_job_id)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["checkpoint", "onnx", "safetensors"]),
    default="checkpoint",
    show_default=True,
    help="the training checkpoint (torch), or the model for use without mnist-jobs",
)
@click.option("--epoch", type=click.IntRange(1), help="default: the latest kept epoch")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("."), help="a file or a folder")
@click.pass_obj
@handled
def download(remote: Remote, /, job_id: str, file_format: str, epoch: int | None, output: Path) -> None:
    """Download a checkpoint or a model, verifying its sha256 as it arrives (nothing is kept if it differs)."""
    with remote.client() as client:
        job_id = client.resolve(job_id)
        if file_format == "checkpoint":
            path = client.download_checkpoint(job_id, output, epoch=epoch)
        else:
            path = client.download_model(
                job_id, output, format="onnx" if file_format == "onnx" else "safetensors", epoch=epoch
            )
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
