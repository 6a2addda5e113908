"""PgBouncer for tests and benchmarks: Debian's package (apt-get installs `pgbouncer` once when it is
missing), started in front of a bench.postgres cluster in transaction mode, as the cluster's
unprivileged user, on a free port of 127.0.0.1, its config and log in a temp folder.

The settings are the ones docs/postgresql.md recommends for mnist-jobs: pool_mode = transaction, a
server pool far smaller than the clients it serves (`server_connections`), and
idle_transaction_timeout in place of the idle_in_transaction_session_timeout that a client cannot
send through it. `close()` stops it and removes the folder.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from bench.postgres import Server, apt_install, free_port, unprivileged_user

START_TIMEOUT_S = 30
MAX_CLIENTS = 2000


@dataclass
class Bouncer:
    proc: subprocess.Popen[bytes]
    port: int
    folder: Path

    def url(self, direct_url: str) -> str:
        """`direct_url` (a database of the cluster behind it) through PgBouncer instead."""
        return make_url(direct_url).set(port=self.port).render_as_string(hide_password=False)

    def log(self) -> str:
        return (self.folder / "pgbouncer.log").read_text(errors="replace")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def start(server: Server, server_connections: int = 20) -> Bouncer:
    """PgBouncer in transaction mode in front of `server`; RuntimeError saying why when it cannot run."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        problem = apt_install("pgbouncer")
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise RuntimeError(f"no PgBouncer: {problem or 'pgbouncer still missing'}")
    user, port = unprivileged_user(), free_port()
    folder = Path(tempfile.mkdtemp(prefix="mnist-jobs-pgbouncer-"))
    shutil.chown(folder, user)
    admin = server.admin
    (folder / "users.txt").write_text(f'"{admin.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={admin.host} port={admin.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "users.txt"}
pool_mode = transaction
max_client_conn = {MAX_CLIENTS}
default_pool_size = {server_connections}
max_db_connections = {server_connections}
idle_transaction_timeout = 10
logfile = {folder / "pgbouncer.log"}
pidfile = {folder / "pgbouncer.pid"}
"""
    )
    for path in folder.iterdir():
        shutil.chown(path, user)
    proc = subprocess.Popen(
        ["runuser", "-u", user, "--", binary, str(folder / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (
                (folder / "pgbouncer.log").read_text(errors="replace")[-600:]
                if (folder / "pgbouncer.log").exists()
                else ""
            )
            shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError(f"pgbouncer exited at start ({proc.returncode}): {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Bouncer(proc, port, folder)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    shutil.rmtree(folder, ignore_errors=True)
    raise RuntimeError(f"pgbouncer did not listen within {START_TIMEOUT_S} s")
