"""API under load: submissions per second, and status-read latency while a worker trains.

Starts `mnist-jobs serve` on 127.0.0.1 with one worker and a temp SQLite file, keeps the worker busy
with a training job, then (bounded in count and time, loopback only):
  1. POSTs `--submissions` jobs with `--concurrency` clients in flight -> submissions/s;
  2. GETs /v1/jobs/{id} `--reads` times -> p50 / p99 latency in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.run import REPO, data_dir, wait_for_api

TIME_LIMIT_SECONDS = 60


async def submit_all(client: httpx.AsyncClient, count: int, concurrency: int) -> tuple[int, float]:
    done = 0
    deadline = time.monotonic() + TIME_LIMIT_SECONDS

    async def one_client(n: int) -> None:
        nonlocal done
        for _ in range(n):
            if time.monotonic() > deadline:
                return
            response = await client.post("/v1/jobs", json={"architecture": "fc", "epochs": 1})
            assert response.status_code == 201, response.text
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(one_client(count // concurrency) for _ in range(concurrency)))
    return done, time.perf_counter() - started


async def read_latencies(client: httpx.AsyncClient, job_id: str, count: int, concurrency: int) -> list[float]:
    latencies: list[float] = []

    async def one_client(n: int) -> None:
        for _ in range(n):
            started = time.perf_counter()
            response = await client.get(f"/v1/jobs/{job_id}")
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200

    await asyncio.gather(*(one_client(count // concurrency) for _ in range(concurrency)))
    return latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, server_pid: int, args: argparse.Namespace, start_worker) -> None:
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        # Queued first, so that the worker (which takes the oldest job first) starts with it.
        busy = (await client.post("/v1/jobs", json={"architecture": "cnn", "epochs": 3})).json()["id"]
        cpu_before = cpu_seconds(server_pid)
        alone, alone_seconds = await submit_all(client, args.submissions, args.concurrency)
        server_ms_per_post = (cpu_seconds(server_pid) - cpu_before) / alone * 1000
        start_worker()
        while (await client.get(f"/v1/jobs/{busy}")).json()["status"] != "running":
            await asyncio.sleep(0.1)
        latencies = await read_latencies(client, busy, args.reads, args.read_concurrency)
        done, seconds = await submit_all(client, args.submissions, args.concurrency)
        still = (await client.get(f"/v1/jobs/{busy}")).json()["status"]
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(
        f"submissions, API alone: {alone} POSTs in {alone_seconds:.2f} s with {args.concurrency} in flight "
        f"= {alone / alone_seconds:.0f}/s; server CPU {server_ms_per_post:.2f} ms per POST"
    )
    print(
        f"status reads while a worker trains: {len(latencies)} GETs, {args.read_concurrency} in flight: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    print(
        f"submissions while a worker trains (its CNN job {still} after): {done} POSTs in {seconds:.2f} s "
        f"= {done / seconds:.0f}/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--read-concurrency", type=int, default=1)
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        env = {
            **os.environ,
            "MNIST_JOBS_DATA_DIR": str(data_dir(tmp)),
            "MNIST_JOBS_DATABASE_URL": f"sqlite:///{tmp}/load.db",
            "MNIST_JOBS_ARTIFACTS_DIR": str(tmp / "art"),
            # One client measuring the server's throughput: not a caller to hold to a fair share
            # (what the limits cost is measured here all the same: every request passes them).
            "MNIST_JOBS_RATE_LIMIT_PER_SECOND": "1000000",
            "MNIST_JOBS_RATE_LIMIT_BURST": "1000000",
        }

        def quiet(*cli_args: str) -> subprocess.Popen[bytes]:
            """`mnist-jobs <cli_args>` with its output discarded."""
            command = [sys.executable, "-m", "cli", *cli_args]
            return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        server = quiet("serve", "--port", str(args.port), "--workers", "0")
        workers: list[subprocess.Popen[bytes]] = []
        try:
            url = f"http://127.0.0.1:{args.port}"
            wait_for_api(url)
            asyncio.run(measure(url, server.pid, args, lambda: workers.append(quiet("worker"))))
        finally:
            for process in [*workers, server]:
                process.terminate()
                process.wait(timeout=60)


if __name__ == "__main__":
    main()
