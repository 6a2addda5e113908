"""The server's commands of `mnist-jobs`: serve | worker | data | db | tokens.

The API and the workers are separate processes that meet only in the database and the artifacts
dir. `serve` migrates the database (the one place besides `db upgrade` that does), runs the API
in this process and each worker as a `mnist-jobs worker` subprocess. Heavy imports (torch,
uvicorn) happen inside the command that needs them, so `--help` and `submit` start quickly. The
root command, its exit codes and the commands that talk to a server are the client distribution's
(mnist_jobs_client.cli); these plug into it through the "mnist_jobs.commands" entry points.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import click

from cli import supervisor
from mnist_jobs_client.cli import main as client_main
from service.jobs.schemas import DATASETS
from service.platform.config import LOOPBACK_HOSTS, Settings
from service.platform.logs import LOG_FORMATS

log = logging.getLogger("mnist_jobs.serve")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name other than localhost may resolve to anything
        return False


def check_exposure(host: str, insecure: bool, settings: Settings) -> None:
    """Refuse to serve an open API beyond this machine; say plainly when it is open at all."""
    from service.platform import auth

    if auth.configured(settings):
        if settings.api_tokens_file is not None and not settings.api_tokens_file.exists():
            log.warning(
                "the tokens file %s does not exist: every /v1 call is refused "
                "until `mnist-jobs tokens create --role admin` writes it",
                settings.api_tokens_file,
            )
        elif settings.api_tokens_file is not None:
            check_tokens_file(settings.api_tokens_file)
    elif not is_loopback(host) and not insecure:
        print(
            f"mnist-jobs serve: refusing to listen on {host} with no API tokens: anyone who can reach the port "
            "could submit, cancel and delete jobs. Create a token (`mnist-jobs tokens create --role admin`) "
            "and set MNIST_JOBS_API_TOKENS_FILE, or pass --insecure to serve it open anyway.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    else:
        log.warning(
            "no API tokens configured (MNIST_JOBS_API_TOKENS_FILE): the API on %s is open to anyone who can reach it",
            host,
        )
    if not is_loopback(host) and set(settings.allowed_hosts) <= set(LOOPBACK_HOSTS):
        log.warning(
            "MNIST_JOBS_ALLOWED_HOSTS names only loopback hosts: clients on other machines get 400 "
            'until it lists the names they use (e.g. \'["jobs.lab", "10.0.0.5"]\')'
        )


def check_tokens_file(path: Path) -> None:
    """A tokens file that cannot be read or parsed stops the server before it listens; the message
    names the line by number only (the line may hold a secret)."""
    from service.platform import auth

    try:
        auth.list_tokens(path)
    except UnicodeDecodeError:
        reason = "it is not UTF-8 text"
    except OSError as exc:
        reason = f"it cannot be read ({type(exc).__name__})"
    except ValueError as exc:  # "line N: what is wrong with it"
        reason = f"it does not parse at {exc}"
    else:
        return
    print(f"mnist-jobs serve: the tokens file {path} cannot be used: {reason}; fix it and start again", file=sys.stderr)
    raise SystemExit(2)


LOG_FORMAT = click.option(
    "--log-format", type=click.Choice(LOG_FORMATS), help="text | json lines (default: MNIST_JOBS_LOG_FORMAT)"
)


def with_log_format(log_format: str | None, settings: Settings) -> Settings:
    """`--log-format` over MNIST_JOBS_LOG_FORMAT; the workers a supervisor starts get it too."""
    return settings.model_copy(update={"log_format": log_format}) if log_format else settings


@click.group()
def cli() -> None:
    """The server's commands: a holder only; `mnist-jobs` itself is the client's root command."""


@cli.command(epilog="example: mnist-jobs serve --host 0.0.0.0 --workers 2 --log-format json")
@click.option("--host")
@click.option("--port", type=click.IntRange(0, 65535))
@click.option(
    "--workers", type=click.IntRange(0), help="worker processes (default: one per GPU, or per core; 0 = API only)"
)
@click.option("--device", help="auto | cpu | cuda | cuda:N")
@LOG_FORMAT
@click.option("--insecure", is_flag=True, help="serve a non-loopback --host even with no API tokens (open to all)")
def serve(
    host: str | None, port: int | None, workers: int | None, device: str | None, log_format: str | None, insecure: bool
) -> None:
    """Migrate the database, then run the API and the worker processes."""
    from service.platform import logs

    settings = with_log_format(log_format, Settings())
    log_config = logs.uvicorn_config(settings.log_format)  # each line with the id of the request it is about
    logs.setup(log_config)  # for the lines before uvicorn starts (it applies the same config again)
    host = host or settings.host
    check_exposure(host, insecure, settings)

    import uvicorn

    from api.app import create_app
    from api.server import uvicorn_options
    from service.platform.db import upgrade

    upgrade(settings.database_url, transaction_pooler=settings.database_transaction_pooler)
    # One worker per GPU, or per core on a CPU-only host, unless a count was asked for.
    requested = workers if workers is not None else settings.workers if "workers" in settings.model_fields_set else None
    try:
        devices = supervisor.worker_devices(requested, device or settings.device)
    except ValueError as exc:
        sys.exit(f"mnist-jobs serve: {exc}")
    pool = supervisor.WorkerPool(devices, settings)
    pool.start()
    # uvicorn shuts down on SIGINT/SIGTERM and then re-raises the signal to the handler that was
    # there before it; a no-op one lets us go on to stop the workers and exit 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    try:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port if port is not None else settings.port,
            log_level="info",
            log_config=log_config,
            server_header=False,  # no version banner
            **uvicorn_options(settings),  # limits before parsing: h11, head size, read timeouts, connections
        )
    finally:
        pool.stop()


@cli.command(
    epilog="examples: mnist-jobs worker --device cuda:1; mnist-jobs worker --all-gpus; mnist-jobs worker --workers 8"
)
@click.option("--device", help="auto | cpu | cuda | cuda:N")
@click.option("--all-gpus", is_flag=True, help="one worker process per visible GPU, kept running")
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="this many worker processes (on --device), kept running, sharing one database listener",
)
@click.option("--check", is_flag=True, help="exit 0 when this host's workers are alive (health check)")
@click.option("--max-jobs", type=click.IntRange(1))
@click.option("--wakeup-fd", type=click.IntRange(0), hidden=True)  # from a supervisor (cli/supervisor.py)
@LOG_FORMAT
def worker(
    device: str | None,
    all_gpus: bool,
    workers: int | None,
    check: bool,
    max_jobs: int | None,
    wakeup_fd: int | None,
    log_format: str | None,
) -> None:
    """Run one worker process (or one per GPU with --all-gpus, or N with --workers)."""
    if sum((device is not None or workers is not None, all_gpus, check)) > 1:
        raise click.UsageError("--device/--workers, --all-gpus and --check go one at a time")
    settings = with_log_format(log_format, Settings())
    if check:
        problem = supervisor.worker_health(settings)
        print(problem or "ok", file=sys.stderr if problem else sys.stdout)
        raise SystemExit(1 if problem else 0)
    if all_gpus or workers is not None:
        if max_jobs is not None:  # a kept-running pool restarts a worker that stops after N jobs
            sys.exit("mnist-jobs worker: --max-jobs is for one worker; it does not go with --all-gpus or --workers")
        from service.platform import logs

        logs.setup(logs.worker_config(settings.log_format))
        try:
            devices = supervisor.worker_devices(workers, "cuda" if all_gpus else device or settings.device)
        except ValueError as exc:
            sys.exit(f"mnist-jobs worker: {exc}")
        supervisor.supervise(devices, settings)
        return
    from workers.main import run_worker

    run_worker(settings, device, max_jobs, wakeup_fd)


@cli.command(epilog="examples: mnist-jobs data prepare --from ~/Downloads/mnist; mnist-jobs data status")
@click.argument("action", type=click.Choice(["prepare", "status"]))
@click.option("--dataset", type=click.Choice(DATASETS), help="default: mnist for prepare, every data set for status")
@click.option("--from", "source_dir", metavar="DIR", help="a folder with the four IDX files (raw or .gz)")
def data(action: str, dataset: str | None, source_dir: str | None) -> None:
    """Prepare a data set (find, fetch, verify) or show which are ready."""
    from pathlib import Path

    from service.datasets import catalog as datasets
    from service.datasets.sources import StderrProgress
    from service.platform.errors import DataUnavailable

    settings = Settings()
    if action == "status":
        rows = [datasets.status(settings, name) for name in ([dataset] if dataset else DATASETS)]
        print(f"{'DATASET':<14} {'STATE':<8} {'TRAIN':>6} {'TEST':>6} {'SIZE':>9}  SOURCE")
        for row in rows:
            print(
                f"{row.name:<14} {row.state:<8} {row.train_samples or '-':>6} {row.test_samples or '-':>6} "
                f"{row.size_bytes / 1e6:>6.1f} MB  {row.source or '-'}"
            )
        for row in rows:
            if row.detail:
                print(f"{row.name}: {row.detail}")
        return
    name = dataset or "mnist"
    try:
        prepared = datasets.prepare(settings, name, Path(source_dir) if source_dir else None, StderrProgress())
    except DataUnavailable as exc:
        sys.exit(f"{name}: not ready: {exc.detail}")
    print(f"{name}: ready in {prepared.raw}; served by {prepared.served_by} in {prepared.seconds:.1f} s")


@cli.command(epilog="examples: mnist-jobs db upgrade; mnist-jobs db backup backups/jobs-2026-11-29.db")
@click.argument("action", type=click.Choice(["upgrade", "current", "backup"]))
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
def db(action: str, file: Path | None) -> None:
    """The database: upgrade to the head, show the current revision, or back it up to FILE (a
    consistent copy of a live SQLite database, taken while jobs run)."""
    from sqlalchemy.engine import make_url

    from service.platform.db import current_revision, head_revision, upgrade

    settings = Settings()
    if action == "backup":
        from service.platform import backup
        from service.platform.errors import InvalidInput

        if file is None:
            raise click.UsageError("db backup needs the FILE to write")
        try:
            size = backup.backup(settings.database_url, file)
        except InvalidInput as exc:
            sys.exit(f"mnist-jobs db backup: {exc.detail}")
        print(f"backed up to {file} ({size / 1e6:.1f} MB)")
        return
    if action == "upgrade":
        upgrade(settings.database_url, transaction_pooler=settings.database_transaction_pooler)
    pooled = settings.database_transaction_pooler
    current, head = current_revision(settings.database_url, transaction_pooler=pooled), head_revision()
    shown = make_url(settings.database_url).render_as_string(hide_password=True)  # never the password
    print(f"{shown}: revision {current} (head {head})")


@cli.group(epilog="example: mnist-jobs tokens create --role submit --expires 30d --file tokens.txt")
def tokens() -> None:
    """API tokens: create (printed once), list, revoke."""


TOKENS_FILE = click.option("--file", "file", help="the tokens file (default: MNIST_JOBS_API_TOKENS_FILE)")


def _tokens(action: str, file: str | None, run: Callable[[Path], None]) -> None:
    path = Path(file) if file else Settings().api_tokens_file
    if path is None:
        print("mnist-jobs tokens: no tokens file: pass --file or set MNIST_JOBS_API_TOKENS_FILE", file=sys.stderr)
        raise SystemExit(2)
    try:
        run(path)
    except (OSError, ValueError) as exc:
        print(f"mnist-jobs tokens {action}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


@tokens.command("create")
@click.option("--role", required=True, type=click.Choice(["read", "submit", "admin"]))
@click.option("--expires", metavar="DURATION", help="the token stops working after this long: 45s, 90m, 12h, 30d")
@TOKENS_FILE
def tokens_create(role: str, expires: str | None, file: str | None) -> None:
    """Make a token, print it once, append its sha256 and role (and expiry) to the file."""
    from service.platform import auth

    try:
        lifetime = None if expires is None else auth.parse_duration(expires)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None

    def run(path: Path) -> None:
        token, known = auth.create(path, auth.parse_role(role), lifetime)
        print(token)
        until = "" if known.expires is None else f", expires {known.expires.isoformat()}"
        print(
            f"token {known.id} ({known.role.name}{until}) added to {path}; it is shown only this once", file=sys.stderr
        )

    _tokens("create", file, run)


@tokens.command("list")
@TOKENS_FILE
def tokens_list(file: str | None) -> None:
    """Token ids, roles and expiries (UTC)."""
    from service.platform import auth

    def run(path: Path) -> None:
        now = auth.now_utc()
        print(f"{'ID':<14} {'ROLE':<8} EXPIRES")
        for known in auth.list_tokens(path):
            expires = "never" if known.expires is None else known.expires.isoformat()
            print(f"{known.id:<14} {known.role.name:<8} {expires}{' (expired)' if known.expired(now) else ''}")

    _tokens("list", file, run)


@tokens.command("revoke")
@click.argument("token_id", metavar="ID")
@TOKENS_FILE
def tokens_revoke(token_id: str, file: str | None) -> None:
    """Remove the token whose id starts with ID."""
    from service.platform import auth

    def run(path: Path) -> None:
        gone = auth.revoke(path, token_id)
        print(f"revoked token {gone.id} ({gone.role.name})")

    _tokens("revoke", file, run)


def main(argv: list[str] | None = None) -> None:
    """`python -m cli`: the one `mnist-jobs`, with the server's commands added directly."""
    from service.platform.errors import SchemaOutOfDate

    try:
        client_main(argv, commands=cli.commands.values())
    except SchemaOutOfDate as exc:  # a user's fix, not a crash: say what to run, no traceback
        sys.exit(f"mnist-jobs: {exc.detail}")
