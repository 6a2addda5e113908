"""`make bench`: the service against the tutorial's loop, side by side, on the real MNIST.

Runs baseline and service alternately on the same data and machine, several times, and prints
medians and the ratio service/baseline for:
  1. one training epoch of FC, CNN, and each permuted (the engine vs bench/textbook.py);
  2. FC jobs packed into one stacked model (seconds per job-epoch);
  3. the tutorial's four jobs end to end through a live `mnist-jobs serve` (submit all four ->
     all succeeded) against the four textbook runs back to back; and the idle gap between jobs.

Data: MNIST_JOBS_DATA_DIR if it holds MNIST, else ../shared/data (copied to a temp dir).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import torch

from bench import textbook
from service.datasets.catalog import prepare
from service.jobs.schemas import AnySpec, EpochRecord, FCSpec, job_spec_adapter
from service.platform.config import Settings
from service.platform.states import Outcome
from service.training.checkpoints import TrainingState
from service.training.control import Live
from service.training.engine import Trainer
from service.training.nets import CNN, FC2Layer
from service.training.packed import PackedFCTrainer
from service.training.tensors import MnistTensors, load_tensors, permutation

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
TUTORIAL_JOBS = [("fc", None), ("cnn", None), ("fc", 42), ("cnn", 42)]


def wait_for_api(url: str, timeout: float = 60) -> None:
    """Until GET /healthz answers 200 (a server just started), or SystemExit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the API at {url} did not come up within {timeout:.0f} s")


def data_dir(tmp: Path) -> Path:
    configured = os.environ.get("MNIST_JOBS_DATA_DIR")
    source = Path(configured) if configured else SHARED
    target = tmp / "data" / "MNIST" / "raw"
    target.mkdir(parents=True)
    for file in (source / "MNIST" / "raw").iterdir():
        shutil.copy(file, target / file.name)
    settings = Settings(data_dir=tmp / "data")
    prepare(settings, "mnist")  # decompresses and verifies
    return tmp / "data"


def spec(architecture: str, permutation_seed: int | None, seed: int) -> AnySpec:
    """The tutorial's defaults, one epoch."""
    return job_spec_adapter.validate_python(
        {"architecture": architecture, "permutation_seed": permutation_seed, "seed": seed}
    )


class Discard:
    """Callbacks that keep nothing: the benchmark times training alone."""

    def on_epoch(self, index: int, metrics: EpochRecord, checkpoint: TrainingState) -> None:
        pass

    def on_stop(self, index: int, reason: Outcome, checkpoint: TrainingState) -> None:
        pass


def engine_epoch(base: MnistTensors, architecture: str, permutation_seed: int | None, seed: int) -> float:
    trainer = Trainer(
        spec(architecture, permutation_seed, seed), base.permuted_by(permutation_seed), torch.device("cpu")
    )
    trainer.run(Discard())
    return trainer.train_seconds


def textbook_epoch(root: str, architecture: str, permutation_seed: int | None, seed: int) -> float:
    train_loader, _ = textbook.loaders(root)
    perm = permutation(permutation_seed)
    perm = torch.arange(784) if perm is None else perm
    torch.manual_seed(seed)
    model = FC2Layer(784, 8, 10) if architecture == "fc" else CNN(784, 6, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    started = time.perf_counter()
    textbook.train(model, optimizer, train_loader, perm, "cpu")
    return time.perf_counter() - started


def epochs_side_by_side(root: Path, repeats: int) -> None:
    base = load_tensors(Settings(data_dir=root), "mnist")
    print(
        "| one training epoch | textbook s (median) | service s (median) | service/textbook |\n|---|---|---|---|",
        flush=True,
    )
    for architecture, permutation_seed in TUTORIAL_JOBS:
        baseline, ours = [], []
        for r in range(repeats):
            baseline.append(textbook_epoch(str(root), architecture, permutation_seed, seed=r))
            ours.append(engine_epoch(base, architecture, permutation_seed, seed=r))
        b, o = statistics.median(baseline), statistics.median(ours)
        name = architecture + (" permuted" if permutation_seed is not None else "")
        print(f"| {name} | {b:.2f} | {o:.3f} | {o / b:.3f} |", flush=True)


def packed_epochs(root: Path, sizes: list[int]) -> None:
    base = load_tensors(Settings(data_dir=root), "mnist")
    print("\n| FC jobs packed | epoch s (all jobs) | s per job-epoch |\n|---|---|---|", flush=True)
    for size in sizes:
        specs = [s for j in range(size) if isinstance(s := spec("fc", 42 if j % 2 else None, seed=j), FCSpec)]
        trainer = PackedFCTrainer(specs, base, torch.device("cpu"), [Live() for _ in specs])
        trainer.run(Discard())
        print(f"| {size} | {trainer.train_seconds:.2f} | {trainer.train_seconds / size:.3f} |", flush=True)


def start_serve(root: Path, tmp: Path, workers: int, port: int) -> subprocess.Popen[bytes]:
    """`mnist-jobs serve` on the real data in `root`, a fresh SQLite file and artifacts dir under `tmp`."""
    env = {
        **os.environ,
        "MNIST_JOBS_DATA_DIR": str(root),
        "MNIST_JOBS_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
        "MNIST_JOBS_ARTIFACTS_DIR": str(tmp / "artifacts"),
        "MNIST_JOBS_DEVICE": "cpu",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def serve_four_jobs(root: Path, tmp: Path, workers: int) -> tuple[float, float]:
    """Seconds from submitting the tutorial's four jobs to all succeeded, and the largest idle gap
    between one job's end and the next one's start on the same worker."""
    port = 8765
    server = start_serve(root, tmp, workers, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if len(api.get("/v1/workers").json()) == workers:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            started = time.perf_counter()
            ids = [
                api.post("/v1/jobs", json={"architecture": a, "permutation_seed": p}).json()["id"]
                for a, p in TUTORIAL_JOBS
            ]
            while True:
                jobs = [api.get(f"/v1/jobs/{i}").json() for i in ids]
                if all(j["status"] not in ("queued", "running") for j in jobs):
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            assert all(j["status"] == "succeeded" for j in jobs), [j["error"] for j in jobs]
            return elapsed, idle_gap(jobs)
    finally:
        server.terminate()
        server.wait(timeout=60)


def idle_gap(jobs: list[dict[str, Any]]) -> float:
    by_worker: dict[str, list[tuple[datetime, datetime]]] = {}
    for job in jobs:
        attempt = job["history"][-1]
        by_worker.setdefault(attempt["worker_id"], []).append(
            (datetime.fromisoformat(job["started_at"]), datetime.fromisoformat(job["finished_at"]))
        )
    gaps = [
        (b[0] - a[1]).total_seconds()
        for runs in by_worker.values()
        for a, b in zip(sorted(runs), sorted(runs)[1:], strict=False)
        if b[0] > a[1]
    ]
    return max(gaps, default=0.0)


def textbook_four(root: Path) -> float:
    started = time.perf_counter()
    for architecture, permutation_seed in TUTORIAL_JOBS:
        textbook.run(str(root), architecture, seed=1, permutation_seed=permutation_seed)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--packs", default="8,32,64")
    parser.add_argument("--only", choices=["epochs", "packed", "four"], help="run just one of the three tables")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, `python -m bench.run --repeats {args.repeats}`\n",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        root = data_dir(tmp)
        if args.only in (None, "epochs"):
            epochs_side_by_side(root, args.repeats)
        if args.only in (None, "packed"):
            packed_epochs(root, [int(s) for s in args.packs.split(",")])
        if args.only not in (None, "four"):
            return
        print(
            "\n| the tutorial's four jobs | textbook s | service s | service/textbook | max idle gap ms |\n"
            "|---|---|---|---|---|",
            flush=True,
        )
        for r in range(args.repeats):
            baseline = textbook_four(root)
            ours, gap = serve_four_jobs(root, tmp / f"serve{r}", args.workers)
            print(
                f"| run {r + 1} | {baseline:.1f} | {ours:.2f} | {ours / baseline:.3f} | {gap * 1000:.0f} |", flush=True
            )


if __name__ == "__main__":
    main()
