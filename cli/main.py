"""`mnist-jobs serve | worker | submit | data | db | tokens`.

The API and the workers are separate processes that meet only in the database and the artifacts
dir. `serve` migrates the database (the one place besides `db upgrade` that does), runs the API
in this process and each worker as a `mnist-jobs worker` subprocess. Heavy imports (torch,
uvicorn) happen inside the command that needs them, so `--help` and `submit` start quickly.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time

from cli import compare
from service.config import LOOPBACK_HOSTS, Settings

WORKER_RESTART_DELAY_SECONDS = 2.0


def worker_command(device: str | None) -> list[str]:
    return [sys.executable, "-m", "cli", "worker", *(["--device", device] if device else [])]


def cuda_device_count() -> int:
    """Asked of a short-lived child: `serve` runs the API in this process, which never imports torch."""
    found = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(found.stdout.strip())


def worker_devices(count: int, device: str) -> list[str | None]:
    """With several GPUs and --device auto, spread workers over them; otherwise all use `device`."""
    if device != "auto" or count == 0:
        return [device] * count
    gpus = cuda_device_count()
    return [f"cuda:{i % gpus}" if gpus else "cpu" for i in range(count)]


class WorkerPool:
    """N worker subprocesses, restarted if one dies, stopped with one SIGTERM each."""

    def __init__(self, devices: list[str | None], grace_seconds: float) -> None:
        self.devices, self.grace = devices, grace_seconds
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stopping = threading.Event()

    def _start(self, device: str | None) -> subprocess.Popen[bytes]:
        # Own session: a Ctrl-C in the terminal reaches `serve` only, which then signals each worker once.
        return subprocess.Popen(worker_command(device), start_new_session=True)

    def start(self) -> None:
        self.procs = [self._start(device) for device in self.devices]
        threading.Thread(target=self._watch, name="worker-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None and not self._stopping.is_set():
                    print(f"worker pid {proc.pid} exited with {proc.returncode}; restarting", file=sys.stderr)
                    time.sleep(WORKER_RESTART_DELAY_SECONDS)
                    self.procs[i] = self._start(self.devices[i])

    def stop(self) -> None:
        self._stopping.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name other than localhost may resolve to anything
        return False


def check_exposure(host: str, insecure: bool, settings: Settings) -> None:
    """Refuse to serve an open API beyond this machine; say plainly when it is open at all."""
    from service import auth

    if auth.configured(settings):
        if settings.api_tokens_file is not None and not settings.api_tokens_file.exists():
            print(
                f"warning: the tokens file {settings.api_tokens_file} does not exist: every /v1 call is refused "
                "until `mnist-jobs tokens create --role admin` writes it",
                file=sys.stderr,
            )
    elif not is_loopback(host) and not insecure:
        print(
            f"mnist-jobs serve: refusing to listen on {host} with no API tokens: anyone who can reach the port "
            "could submit, cancel and delete jobs. Create a token (`mnist-jobs tokens create --role admin`) "
            "and set MNIST_JOBS_API_TOKENS_FILE, or pass --insecure to serve it open anyway.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    else:
        print(
            f"warning: no API tokens configured (MNIST_JOBS_API_TOKENS_FILE): the API on {host} is open to "
            "anyone who can reach it",
            file=sys.stderr,
        )
    if not is_loopback(host) and set(settings.allowed_hosts) <= set(LOOPBACK_HOSTS):
        print(
            "warning: MNIST_JOBS_ALLOWED_HOSTS names only loopback hosts: clients on other machines get 400 "
            'until it lists the names they use (e.g. \'["jobs.lab", "10.0.0.5"]\')',
            file=sys.stderr,
        )


def serve(args: argparse.Namespace, settings: Settings) -> None:
    host = args.host or settings.host
    check_exposure(host, args.insecure, settings)

    import uvicorn

    from api.app import create_app
    from api.guards import log_config
    from service.db import upgrade

    upgrade(settings.database_url)
    count = settings.workers if args.workers is None else args.workers
    pool = WorkerPool(worker_devices(count, args.device or settings.device), settings.shutdown_grace_seconds)
    pool.start()
    # uvicorn shuts down on SIGINT/SIGTERM and then re-raises the signal to the handler that was
    # there before it; a no-op one lets us go on to stop the workers and exit 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    try:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=args.port if args.port is not None else settings.port,
            log_level="info",
            log_config=log_config(),  # each line with the id of the request it is about
            server_header=False,  # no version banner
        )
    finally:
        pool.stop()


def worker(args: argparse.Namespace, settings: Settings) -> None:
    from workers.main import run_worker

    run_worker(settings, args.device, args.max_jobs)


def submit(args: argparse.Namespace, settings: Settings) -> None:
    import httpx

    spec: dict[str, object] = {
        "architecture": args.architecture,
        "epochs": args.epochs,
        "permutation_seed": args.permutation_seed,
    }
    if args.seed is not None:
        spec["seed"] = args.seed
    url = args.url or f"http://{settings.host}:{settings.port}"
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        response = client.post("/v1/jobs", json=spec)
        if response.status_code >= 400:
            sys.exit(f"error {response.status_code}: {response.json().get('detail', response.text)}")
        job = response.json()
        while args.wait and job["status"] in ("queued", "running"):
            time.sleep(0.5)
            job = client.get(f"/v1/jobs/{job['id']}").json()
    print(json.dumps(job, indent=2))


def data(args: argparse.Namespace, settings: Settings) -> None:
    from pathlib import Path

    from service.datasets import catalog as datasets
    from service.datasets.sources import StderrProgress
    from service.errors import DataUnavailable
    from service.schemas import DATASETS

    if args.action == "status":
        rows = [datasets.status(settings, name) for name in ([args.dataset] if args.dataset else DATASETS)]
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
    name = args.dataset or "mnist"
    try:
        source_dir = Path(args.source_dir) if args.source_dir else None
        prepared = datasets.prepare(settings, name, source_dir, StderrProgress())
    except DataUnavailable as exc:
        sys.exit(f"{name}: not ready: {exc.detail}")
    print(f"{name}: ready in {prepared.raw}; served by {prepared.served_by} in {prepared.seconds:.1f} s")


def db(args: argparse.Namespace, settings: Settings) -> None:
    from service.db import current_revision, head_revision, upgrade

    if args.action == "upgrade":
        upgrade(settings.database_url)
    current, head = current_revision(settings.database_url), head_revision()
    print(f"{settings.database_url}: revision {current} (head {head})")


def tokens(args: argparse.Namespace, settings: Settings) -> None:
    from pathlib import Path

    from service import auth

    path = Path(args.file) if args.file else settings.api_tokens_file
    if path is None:
        print("mnist-jobs tokens: no tokens file: pass --file or set MNIST_JOBS_API_TOKENS_FILE", file=sys.stderr)
        raise SystemExit(2)
    try:
        if args.action == "create":
            token, known = auth.create(path, auth.parse_role(args.role))
            print(token)
            print(f"token {known.id} ({known.role.name}) added to {path}; it is shown only this once", file=sys.stderr)
        elif args.action == "list":
            print(f"{'ID':<14} ROLE")
            for known in auth.list_tokens(path):
                print(f"{known.id:<14} {known.role.name}")
        else:
            gone = auth.revoke(path, args.id)
            print(f"revoked token {gone.id} ({gone.role.name})")
    except (OSError, ValueError) as exc:
        print(f"mnist-jobs tokens {args.action}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mnist-jobs", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)

    p = commands.add_parser("serve", help="migrate, then run the API and N worker processes")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, help="worker processes (default: one per CPU core; 0 = API only)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--insecure", action="store_true", help="serve a non-loopback --host even with no API tokens (open to all)"
    )
    p.set_defaults(func=serve)

    compare.add_parser(commands)

    p = commands.add_parser("worker", help="run one worker process")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--max-jobs", type=int)
    p.set_defaults(func=worker)

    p = commands.add_parser("submit", help="submit a job over HTTP and print it")
    p.add_argument("architecture", choices=["fc", "cnn"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--permutation-seed", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--url", help="API base URL (default: http://HOST:PORT from settings)")
    p.add_argument("--wait", action="store_true", help="poll until the job has ended")
    p.add_argument("--token", default=os.environ.get("MNIST_JOBS_TOKEN"), help="API token (default: $MNIST_JOBS_TOKEN)")
    p.set_defaults(func=submit)

    from service.schemas import DATASETS  # pydantic only: keeps the CLI quick to start

    p = commands.add_parser("data", help="prepare a data set (find, fetch, verify) or show which are ready")
    p.add_argument("action", choices=["prepare", "status"])
    p.add_argument("--dataset", choices=DATASETS, help="default: mnist for prepare, every data set for status")
    p.add_argument(
        "--from",
        dest="source_dir",
        metavar="DIR",
        help="a folder with the four IDX files (raw or .gz); overrides MNIST_JOBS_DATA_SOURCE_DIR",
    )
    p.set_defaults(func=data)

    p = commands.add_parser("db", help="database schema")
    p.add_argument("action", choices=["upgrade", "current"])
    p.set_defaults(func=db)

    p = commands.add_parser("tokens", help="API tokens: create (printed once), list, revoke")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("create", help="make a token, print it once, append its sha256 and role to the file")
    a.add_argument("--role", required=True, choices=["read", "submit", "admin"])
    actions.add_parser("list", help="token ids and roles")
    a = actions.add_parser("revoke", help="remove the token whose id starts with ID")
    a.add_argument("id", metavar="ID")
    for a in actions.choices.values():
        a.add_argument("--file", help="the tokens file (default: MNIST_JOBS_API_TOKENS_FILE)")
    p.set_defaults(func=tokens)
    return root


def main(argv: list[str] | None = None) -> None:
    from service.errors import SchemaOutOfDate

    args = parser().parse_args(argv)
    try:
        args.func(args, Settings())
    except SchemaOutOfDate as exc:  # a user's fix, not a crash: say what to run, no traceback
        sys.exit(f"mnist-jobs {args.command}: {exc.detail}")
