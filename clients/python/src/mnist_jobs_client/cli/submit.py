"""`mnist-jobs submit`: one option per job spec field, generated from the spec models, and the
one-line summary of an ended job."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import click
from pydantic.fields import FieldInfo

from mnist_jobs_client.cli.common import Remote, parse_labels
from mnist_jobs_client.cli.exits import exit_for, handled
from mnist_jobs_client.schemas import JobRead
from mnist_jobs_client.specs import CNNSpec, FCSpec

F = TypeVar("F", bound=Callable[..., Any])


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
