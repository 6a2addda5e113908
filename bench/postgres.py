"""A PostgreSQL server for tests and benchmarks: the one MNIST_JOBS_TEST_POSTGRES_URL names, or a throwaway cluster.

The throwaway cluster is Debian's `initdb` + `pg_ctl` (apt-get installs `postgresql` once when they
are missing) run as an unprivileged user (postgres refuses root) under a temp folder, on a free port
of 127.0.0.1 and a socket in that folder, with fsync and synchronous_commit off. It is stopped
(`pg_ctl stop -m immediate`) and its folder removed at the end of the session; nothing else on the
machine is started or changed. `Server.restart` stops and starts it again on the same port (the
database restart of bench/fault_run.py). When no server can be had, `unavailable` says why (the tests skip).

Every test gets a fresh database: an empty one (new_database), which `migrate` replaces with a copy
of a template migrated once per session (CREATE DATABASE ... TEMPLATE), as the SQLite path copies a
file migrated once.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

URL_ENV = "MNIST_JOBS_TEST_POSTGRES_URL"
APT_TIMEOUT_S = 600
UNPRIVILEGED = ("postgres", "mnistjobs-test")  # an existing user of these, else the second is created


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server about to start (the cluster here, the API and
    test servers in bench/fault_service.py and tests/support/processes.py)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binaries() -> Path | None:
    """The newest Debian PostgreSQL bin folder holding initdb and pg_ctl, or one on PATH."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def apt_install(package: str) -> str | None:
    """Install one of Debian's packages; None when it worked, else why not."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"apt-get cannot install {package} here (not root, or no apt-get)"
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` took over {APT_TIMEOUT_S} s"
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr.strip()[-400:]}"
    return None


def unprivileged_user() -> str:
    for name in UNPRIVILEGED:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", UNPRIVILEGED[-1]], check=True, capture_output=True)
    return UNPRIVILEGED[-1]


@dataclass
class Server:
    """A reachable server: `admin` is a URL to its `postgres` database with CREATEDB rights."""

    admin: URL
    created: list[str] = field(default_factory=list)
    template: str | None = None
    stop: list[str] | None = None  # the command that stops a cluster we started
    folder: Path | None = None
    ctl: list[str] | None = None  # a cluster we started: `pg_ctl -D <data>` as its user
    start_args: list[str] = field(default_factory=list)  # pg_ctl's arguments that start it (same port)

    def url(self, database: str) -> str:
        return self.admin.set(database=database).render_as_string(hide_password=False)

    def execute(self, *statements: str) -> None:
        engine = create_engine(self.admin, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                for statement in statements:
                    connection.execute(text(statement))
        finally:
            engine.dispose()

    def new_database(self, template: str | None = None) -> str:
        name = f"mnist_jobs_test_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        self.created.append(name)
        return self.url(name)

    def migrated(self, url: str) -> None:
        """Replace the (empty) test database at `url` by a copy of the head template."""
        from service.platform.db import current_revision, upgrade

        if current_revision(url) is not None:
            upgrade(url)  # already migrated (a second fixture asked): as upgrade() on a SQLite file
            return
        if self.template is None:
            head = self.new_database()
            upgrade(head)
            self.template = make_url(head).database
        name = make_url(url).database
        self.execute(f'DROP DATABASE "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')

    def restart(self, down_seconds: float = 0.0) -> float:
        """Stop a cluster we started (`pg_ctl stop -m fast`: every session is ended), keep it down
        `down_seconds`, start it again on the same port and socket; returns the seconds from the
        stop to the restarted server accepting connections (`pg_ctl start -w`)."""
        if self.ctl is None:
            raise RuntimeError("only a cluster started here can be restarted, not a server given by URL")
        began = time.monotonic()
        subprocess.run([*self.ctl, "stop", "-m", "fast", "-w"], check=True, capture_output=True, timeout=120)
        time.sleep(down_seconds)
        subprocess.run([*self.ctl, *self.start_args], check=True, capture_output=True, timeout=120)
        return time.monotonic() - began

    def close(self) -> None:
        if self.stop is not None:
            subprocess.run(self.stop, capture_output=True, timeout=60)
        else:
            for name in self.created:
                self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _start_cluster(binaries: Path, max_connections: int) -> Server:
    user = unprivileged_user()
    folder = Path(tempfile.mkdtemp(prefix="mnist-jobs-pg-"))
    shutil.chown(folder, user)
    data, port = folder / "data", free_port()
    as_user = ["runuser", "-u", user, "--"]
    ctl = [*as_user, str(binaries / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c synchronous_commit=off"
        options += f" -c full_page_writes=off -c max_connections={max_connections}"
        start_args = ["-l", str(folder / "log"), "-o", options, "-w", "start"]
        subprocess.run([*ctl, *start_args], check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        log = (folder / "log").read_text(errors="replace")[-800:] if (folder / "log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        stderr = getattr(error, "stderr", b"") or b""
        raise RuntimeError(f"could not start a PostgreSQL cluster: {error}: {stderr.decode()[-400:]} {log}") from error
    admin = URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=port, database="postgres")
    return Server(admin=admin, stop=[*ctl, "stop", "-m", "immediate"], folder=folder, ctl=ctl, start_args=start_args)


_tried_apt: list[str | None] = []


def start(max_connections: int = 200) -> Server:
    """The server the tests use; RuntimeError saying why when there can be none. `max_connections`:
    of a cluster started here (the tests' parallel workers need more than the default 100)."""
    given = os.environ.get(URL_ENV)
    if given:
        return Server(admin=make_url(given).set(drivername="postgresql+psycopg"))
    binaries = _binaries()
    if binaries is None:
        if not _tried_apt:
            _tried_apt.append(apt_install("postgresql"))
        binaries = _binaries()
        if binaries is None:
            raise RuntimeError(f"no PostgreSQL for the tests: {_tried_apt[0] or 'initdb/pg_ctl still missing'}")
    return _start_cluster(binaries, max_connections)


ACTIVE: list[Server] = []  # the session's server, for tests.support.settings.migrate
