"""The exit codes of `mnist-jobs`, in one table: `--help` and docs/cli.md print it."""

from __future__ import annotations

import enum
import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from mnist_jobs_client.errors import AmbiguousId, ApiError, ServerUnreachable
from mnist_jobs_client.states import JobStatus

F = TypeVar("F", bound=Callable[..., Any])


class Exit(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    CANCELLED = 3
    UNREACHABLE = 4
    AUTH = 5
    NOT_FOUND = 6
    CONFLICT = 7
    ERROR = 8


MEANING = {
    Exit.OK: "done (a job or comparison that was waited for succeeded)",
    Exit.FAILED: "the job or comparison failed",
    Exit.USAGE: "usage: a bad option or argument, an ambiguous id prefix, a request the server refused as invalid",
    Exit.CANCELLED: "the job or comparison was cancelled",
    Exit.UNREACHABLE: "no answer from the server (is `mnist-jobs serve` running at --url?)",
    Exit.AUTH: "authentication or permission: a missing, unknown or too weak token (401, 403)",
    Exit.NOT_FOUND: "no such job, comparison, epoch or file (404)",
    Exit.CONFLICT: "not in this state: e.g. cancel of an ended job, the checkpoint of a job still queued (409)",
    Exit.ERROR: "another error: the server's (429, 5xx), or a download that failed its sha256 check",
}
BY_STATUS = {400: Exit.USAGE, 413: Exit.USAGE, 415: Exit.USAGE, 422: Exit.USAGE}
BY_STATUS |= {401: Exit.AUTH, 403: Exit.AUTH, 404: Exit.NOT_FOUND, 409: Exit.CONFLICT}
HELP = "\b\nexit codes:\n" + "\n".join(f"  {code.value}  {text}" for code, text in MEANING.items())


def code_for(error: ApiError) -> Exit:
    if isinstance(error, AmbiguousId):
        return Exit.USAGE
    if isinstance(error, ServerUnreachable):
        return Exit.UNREACHABLE
    return BY_STATUS.get(error.status or 0, Exit.ERROR)


def fail(message: str, code: Exit) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handled(command: F) -> F:
    """Turn the client's errors into a message on stderr and the documented exit code."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            fail(str(exc), code_for(exc))

    return run  # type: ignore[return-value]


def exit_for(status: JobStatus) -> None:
    """The exit code of a command that waited for a job or a comparison to end."""
    sys.exit({JobStatus.failed: Exit.FAILED, JobStatus.cancelled: Exit.CANCELLED}.get(status, Exit.OK))
