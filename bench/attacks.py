"""A standing attack bench: each attack against a live server for a bounded time, while a probe
measures GET /healthz/live and GET /v1/jobs/{id} latency and the API's memory.

Starts `mnist-jobs serve --workers 0` and one `mnist-jobs worker` (bench/fault_service.py) on
127.0.0.1 with a tokens file, SQLite and the real MNIST (../shared/data, or MNIST_JOBS_DATA_DIR when
it is prepared), trains one 1-epoch FC job (predict and pictures need a checkpoint), stops the
worker (no training competes with the API for the cores), and starts the helpers (one predict, one
picture). Then: an idle phase, each attack of bench/attack_kinds.py in turn (its own token each;
slowloris runs at least 20 s, past the server's read timeout), and a final idle phase, with a
settle pause between phases that no table counts. The probe (bench/attack_probe.py) runs in its
own process with its own read token throughout.

Targets, per phase: the probe's p99 for both URLs at most 3x the idle phase's and at most 100 ms;
the API's RSS at the end within 50 MB of its start. A benchmark, not a test: it exits 0 whatever
the figures (non-zero only when the bench itself broke), and prints which targets were met.

  .venv/bin/python -m bench.attacks [--phase-seconds 10] [--only slowloris,cursors] [--keep]
      [--port 8801] [--out var/attacks] [--setting rate_limit_per_second=100 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.attack_kinds import ATTACKS, Target
from bench.attack_report import report
from bench.fault_service import REAL_DATA, Service, service_env
from bench.postgres import free_port
from bench.run import REPO

TOKENS = {"admin": "admin", "probe": "read", "slowloris": "submit", "predict": "read", "render": "read"}
TOKENS |= {"events": "read", "cursors": "read", "submit": "submit"}
MIN_SECONDS = {"slowloris": 20.0}  # past MNIST_JOBS_REQUEST_READ_TIMEOUT_SECONDS (15 s), to see it act
SETTLE_S = 3.0
SETUP_TIMEOUT_S = 600


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "cli", *args], env=env, cwd=REPO, capture_output=True, check=True)
    return done.stdout.decode().strip()


def train_one(url: str, token: str) -> str:
    """Submit a 1-epoch FC job, wait for it to succeed, warm the inference helper and the render
    pool on it; the job's id."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
        response = client.post("/v1/jobs", json={"architecture": "fc", "epochs": 1, "name": "attack probe"})
        response.raise_for_status()
        job_id: str = response.json()["id"]
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        while (status := client.get(f"/v1/jobs/{job_id}").json()["status"]) not in ("succeeded", "failed"):
            if time.monotonic() > deadline:
                raise SystemExit(f"the setup job {job_id} did not end within {SETUP_TIMEOUT_S} s")
            time.sleep(1)
        if status != "succeeded":
            raise SystemExit(f"the setup job {job_id} {status}: {client.get(f'/v1/jobs/{job_id}').text}")
        for call in (
            lambda: client.post(f"/v1/jobs/{job_id}/predict", json={"pixels": [0] * 784}),
            lambda: client.get("/v1/datasets/mnist/samples.png", params={"permutation_seed": 1, "count": 100}),
            lambda: client.get(f"/v1/jobs/{job_id}/curves.png"),
        ):
            call().raise_for_status()
    return job_id


async def run_phases(target: Target, names: list[str], seconds: float) -> list[dict[str, Any]]:
    """Idle, each attack, idle: each phase's name, monotonic start and end, and what its attack saw."""
    phases: list[dict[str, Any]] = []
    for name in ["idle", *names, "idle after"]:
        started = time.monotonic()
        print(f"{datetime.now(UTC):%H:%M:%S} phase {name}", flush=True)
        if name in ATTACKS:
            saw = await ATTACKS[name](target, max(seconds, MIN_SECONDS.get(name, 0.0)))
        else:
            await asyncio.sleep(seconds)
            saw = {}
        phases.append({"name": name, "start": started, "end": time.monotonic(), "saw": saw})
        await asyncio.sleep(SETTLE_S if name != "idle after" else 0)
    return phases


def attack(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The whole run in `root`: the service up, the phases with the probe running, the service down."""
    data = Path(os.environ.get("MNIST_JOBS_DATA_DIR") or root / "data")
    settings: dict[str, object] = {"api_tokens_file": root / "tokens", "data_source_dir": REAL_DATA}
    env = service_env(data, {}, settings | dict(s.split("=", 1) for s in args.setting))
    cli(env, "data", "prepare", "--from", str(REAL_DATA))
    tokens = {
        name: cli(env, "tokens", "create", "--role", role, "--file", str(root / "tokens"))
        for name, role in TOKENS.items()
    }
    service = Service(root / "service", f"sqlite:///{root}/jobs.db", env)
    service.url = f"http://127.0.0.1:{args.port or free_port()}"
    probe, crashes = None, list[str]()
    try:
        service.start(workers=1)
        assert service.api is not None
        job_id = train_one(service.url, tokens["admin"])
        service.stop_workers()
        host, port = service.url.removeprefix("http://").split(":")
        target = Target(host, int(port), tokens, job_id, service.api.pid)
        names = [n for n in ATTACKS if not args.only or n in args.only.split(",")]
        most = (len(names) + 2) * (max(args.phase_seconds, *MIN_SECONDS.values()) + 2 * 15 + SETTLE_S) + 60
        probe_env = env | {"MNIST_JOBS_PROBE_TOKEN": tokens["probe"]}
        command = [sys.executable, "-m", "bench.attack_probe", service.url, job_id, str(target.api_pid), str(most)]
        probe = subprocess.Popen([*command, str(root / "probe.json")], env=probe_env, cwd=REPO)
        time.sleep(1.0)  # its connections open
        phases = asyncio.run(run_phases(target, names, args.phase_seconds))
        if service.api.poll() is not None:
            crashes.append(f"the API (pid {service.api.pid}) exited {service.api.returncode} during the attacks")
        probe.terminate()
        probe.wait(timeout=30)
        samples = json.loads((root / "probe.json").read_text())
        crashes += service.crashes
    finally:
        if probe is not None and probe.poll() is None:
            probe.kill()
        try:
            service.close()
        except subprocess.TimeoutExpired:
            assert service.api is not None
            service.api.kill()
            crashes.append("the API did not stop within 30 s of SIGTERM")
    return {
        "phases": phases,
        "probe": samples,
        "crashes": crashes,
        "job_id": job_id,
        "api_log": service.logs("api"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-seconds", type=float, default=10.0, help="each phase's length (s)")
    parser.add_argument("--only", help="these attacks alone, comma-separated: " + ",".join(ATTACKS))
    parser.add_argument("--keep", action="store_true", help="keep the service's folder (database, logs)")
    parser.add_argument("--port", type=int, default=0, help="the API's port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--out", type=Path, default=REPO / "var" / "attacks", help="folder for the table and JSON")
    parser.add_argument("--setting", action="append", default=[], help="NAME=VALUE: MNIST_JOBS_NAME for the server")
    args = parser.parse_args()
    unknown = set((args.only or "").split(",")) - set(ATTACKS) - {""}
    if unknown:
        parser.error(f"unknown attack(s) {', '.join(sorted(unknown))}; known: {', '.join(ATTACKS)}")
    root = Path(tempfile.mkdtemp(prefix="mnist-jobs-attacks-"))
    try:
        run = attack(args, root)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    table = report(run, args.phase_seconds)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"attacks-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    stem.with_suffix(".md").write_text(table + "\n")
    stem.with_suffix(".json").write_text(json.dumps({k: v for k, v in run.items() if k != "api_log"}, default=str))
    print(f"wrote {stem}.md and {stem}.json")


if __name__ == "__main__":
    main()
