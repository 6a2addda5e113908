"""The probe of bench/attacks.py, in a process of its own (so the attacks' event loop and GIL do not
slow it): GET /healthz/live and GET /v1/jobs/{id}, each on its own kept-alive connection about
every 20 ms, and the resident memory of the API process and of each of its descendants (the
inference helper, the render pool) every 200 ms from /proc. Everything is written to one JSON file
when the stop event is set (or at the hard deadline), for bench/attacks.py to cut into phases."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

INTERVAL_S = 0.02
MEMORY_EVERY_S = 0.2
TIMEOUT_S = 5.0


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a process (/proc/<pid>/status), or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return 0


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> dict[int, int]:
    """Every process below `pid`, and its parent."""
    found: dict[int, int] = {}
    todo = [(child, pid) for child in children(pid)]
    while todo and len(found) < 1000:
        child, parent = todo.pop()
        found[child] = parent
        todo += [(grandchild, child) for grandchild in children(child)]
    return found


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def role(cmdline: str, parent_role: str) -> str:
    """A short name for a descendant of the API process (the render processes are the forkserver's
    children, forked: their command line is the forkserver's)."""
    if "service.inference.helper" in cmdline:
        return "inference helper"
    if "resource_tracker" in cmdline:
        return "resource tracker"
    if "forkserver" in cmdline:
        return "render process" if parent_role == "render forkserver" else "render forkserver"
    return cmdline[:60] or "?"


def poll(
    client: httpx.Client, path: str, stop: threading.Event, deadline: float, out: list[tuple[float, float, int]]
) -> None:
    """GET `path` until stop is set: (start monotonic time, seconds, status; 0 = no answer)."""
    while not stop.is_set() and time.monotonic() < deadline:
        started = time.monotonic()
        try:
            status = client.get(path).status_code
        except httpx.HTTPError:
            status = 0
        out.append((started, time.monotonic() - started, status))
        time.sleep(max(0.0, INTERVAL_S - (time.monotonic() - started)))


def run(url: str, job_id: str, token: str, api_pid: int, stop: threading.Event, deadline_s: float, out: str) -> None:
    """The probe's process: poll both URLs and sample memory until `stop` is set, then write `out`."""
    deadline = time.monotonic() + deadline_s
    samples: dict[str, list[tuple[float, float, int]]] = {"live": [], "job": []}
    paths = {"live": "/healthz/live", "job": f"/v1/jobs/{job_id}"}
    headers = {"Authorization": f"Bearer {token}"}
    clients = {name: httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT_S) for name in paths}
    threads = [
        threading.Thread(target=poll, args=(clients[name], paths[name], stop, deadline, samples[name]), daemon=True)
        for name in paths
    ]
    for thread in threads:
        thread.start()
    memory: list[dict[str, Any]] = []
    names: dict[int, str] = {}
    while not stop.is_set() and time.monotonic() < deadline:
        kids: dict[str, int] = {}
        for pid, parent in descendants(api_pid).items():
            names.setdefault(pid, role(command(pid), names.get(parent, "")))
            size = rss_bytes(pid)
            if size is not None:
                key = f"{names[pid]} {pid}"
                kids[key] = size
        memory.append({"t": time.monotonic(), "api": rss_bytes(api_pid), "children": kids})
        stop.wait(MEMORY_EVERY_S)
    for thread in threads:
        thread.join(timeout=TIMEOUT_S + 1)
    for client in clients.values():
        client.close()
    Path(out).write_text(json.dumps({"requests": samples, "memory": memory}))


def main() -> None:
    """python -m bench.attack_probe URL JOB_ID API_PID DEADLINE_S OUT, the read token in
    MNIST_JOBS_PROBE_TOKEN; SIGTERM ends it (it writes OUT first)."""
    url, job_id, api_pid, deadline_s, out = sys.argv[1:6]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run(url, job_id, os.environ["MNIST_JOBS_PROBE_TOKEN"], int(api_pid), stop, float(deadline_s), out)


if __name__ == "__main__":
    main()
