"""`mnist-jobs`: the root command. The client distribution owns it and its remote commands
(submit, jobs, workers, compare); an installed server adds its own (serve, worker, data, db,
tokens) through the "mnist_jobs.commands" entry points, so one `mnist-jobs` shows what is installed.

Commands are Click's (usage errors exit 2); every exit code is in exits.py, printed by --help.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points

import click

from mnist_jobs_client.cli.common import Remote
from mnist_jobs_client.cli.compare import compare
from mnist_jobs_client.cli.exits import HELP
from mnist_jobs_client.cli.jobs import jobs, workers
from mnist_jobs_client.cli.submit import submit

PLUGINS = "mnist_jobs.commands"


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=HELP)
@click.option(
    "--url",
    envvar="MNIST_JOBS_URL",
    help="the API, e.g. http://jobs.lab:8000 or 127.0.0.1:8000 (http:// when no scheme) "
    "[$MNIST_JOBS_URL; default 127.0.0.1:$MNIST_JOBS_PORT or 8000]",
)
@click.option("--token", envvar="MNIST_JOBS_TOKEN", help="an API token [$MNIST_JOBS_TOKEN]")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None) -> None:
    """Train small PyTorch models (FC vs CNN on MNIST) as queued jobs: use a server (and, where the
    server is installed, run it). Job ids may be given as their first 4 or more characters, as `jobs
    list` shows them."""
    ctx.obj = Remote(url, token)


for _command in (submit, jobs, workers, compare):
    cli.add_command(_command)


def plugins() -> Iterator[tuple[str, click.Command]]:
    """The commands other installed distributions (the server) add; one that fails to load is
    reported and left out, so the remote commands still work."""
    for point in entry_points(group=PLUGINS):
        try:
            command = point.load()
        except Exception as exc:  # an install broken elsewhere must not take the client's commands down
            click.echo(f"mnist-jobs: the command {point.name!r} ({point.value}) did not load: {exc}", err=True)
            continue
        if isinstance(command, click.Command):
            yield point.name, command


def main(argv: list[str] | None = None, *, commands: Iterable[click.Command] = ()) -> None:
    """Run `mnist-jobs`; `commands` are added directly (the server's `python -m cli` passes its own,
    so they are there even where its entry points are not installed)."""
    for command in commands:
        cli.add_command(command)
    for name, command in plugins():
        if name not in cli.commands:
            cli.add_command(command, name)
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="mnist-jobs")
