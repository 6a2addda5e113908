"""What the remote commands share: where the server is, job id arguments (full or a prefix), and
plain output (JSON for scripts, aligned tables for people)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
from pydantic import BaseModel

from mnist_jobs_client.client import Client
from mnist_jobs_client.wire import check_id_prefix


@dataclass
class Remote:
    """Where the server is: --url / --token of the root command (or MNIST_JOBS_URL / _TOKEN)."""

    url: str | None = None
    token: str | None = None

    def client(self) -> Client:
        return Client(self.url, self.token)


def check_job_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A job id, or its first 4 or more hex characters (as `jobs list` shows them): resolved by the
    server (Client.resolve) when the command runs, so an ambiguous prefix names its matches."""
    try:
        return check_id_prefix(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def emit_json(model: BaseModel | list[Any]) -> None:
    if isinstance(model, BaseModel):
        click.echo(model.model_dump_json(indent=2))
    else:
        click.echo(json.dumps([item.model_dump(mode="json") for item in model], indent=2))


def table(rows: Iterator[list[str]], headers: list[str]) -> None:
    """A plain table (aligned columns, no colours or box characters), readable on a terminal and in a pipe."""
    lines = [headers, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    for line in lines:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def parse_labels(labels: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for text in labels:
        key, sep, value = text.partition("=")
        if not sep:
            raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="--label")
        pairs[key] = value
    return pairs
