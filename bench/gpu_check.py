"""`make gpu-check`: on a machine with CUDA, the service trains on the GPU what it trains on the CPU.

1. The tutorial's four jobs (fc, cnn, natural and permuted 42; seed 1; 1 epoch) go through a real
   `mnist-jobs worker --device cuda:0` (a temp SQLite queue, packing off), and each job's correct
   test images are compared with the same spec trained on the CPU: equal within TOLERANCE of 10,000
   (GPU kernels round differently, so bit-identity is a CPU-only promise).
2. Four FC jobs trained as one pack by the same kind of worker (one claim, pack size 4) against
   each trained alone on the GPU: within TOLERANCE too.
It prints each epoch's time on both devices and exits 1 on a mismatch. Without CUDA it prints
"no CUDA device: skipped" and exits 0. `--device cpu` runs the same machinery on the CPU (a dry
run of the script itself). Data: MNIST_JOBS_DATA_DIR if it holds MNIST, else ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.run import REPO, TUTORIAL_JOBS, Discard, data_dir, spec
from service.jobs import lifecycle
from service.jobs.schemas import AnySpec, TrainResult
from service.platform.config import Settings
from service.platform.db import Database, upgrade
from service.training.devices import configure_torch
from service.training.engine import Trainer
from service.training.tensors import load_tensors

TOLERANCE = 10  # test images of 10,000
SEED = 1
PACK = [("fc", None, 1), ("fc", 42, 1), ("fc", None, 2), ("fc", 42, 2)]  # (architecture, permutation, seed)
WORKER_TIMEOUT_SECONDS = 600


def run_worker(specs: list[AnySpec], root: Path, tmp: Path, device: str, pack_size: int) -> list[dict[str, Any]]:
    """Queue `specs` in a fresh SQLite file, let one real worker process train them all, and return
    each job's result and the size of the pack it was trained in (from the worker's JSON log lines)."""
    tmp.mkdir(parents=True)
    url = f"sqlite:///{tmp / 'jobs.db'}"
    upgrade(url)
    db = Database(url)
    try:
        with db.write() as session:
            ids = [lifecycle.enqueue(session, s, default_max_attempts=1)[0].id for s in specs]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MNIST_JOBS_")},
            "MNIST_JOBS_DATABASE_URL": url,
            "MNIST_JOBS_DATA_DIR": str(root),
            "MNIST_JOBS_ARTIFACTS_DIR": str(tmp / "artifacts"),
            "MNIST_JOBS_PACK_SIZE": str(pack_size),
        }
        command = [sys.executable, "-m", "cli", "worker", "--device", device, "--max-jobs", str(len(specs))]
        command += ["--log-format", "json"]
        with open(tmp / "worker.log", "wb") as log:
            done = subprocess.run(
                command,
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=WORKER_TIMEOUT_SECONDS,
            )
        if done.returncode != 0:
            sys.exit(f"the worker exited with {done.returncode}:\n{(tmp / 'worker.log').read_text()[-3000:]}")
        packs = {}
        for line in (tmp / "worker.log").read_text().splitlines():
            fields = json.loads(line) if line.startswith("{") else {}
            if fields.get("transition") == "claimed":
                packs[fields["job_id"]] = fields["pack"]
        answers = []
        with db.read() as session:
            for job_id in ids:
                job = lifecycle.get(session, job_id)
                if job.status != "succeeded" or job.result is None:
                    sys.exit(f"job {job_id} ended {job.status}: {job.error}")
                answers.append({"result": TrainResult.model_validate(job.result), "pack": packs.get(job_id)})
        return answers
    finally:
        db.dispose()


def on_cpu(specs: list[AnySpec], root: Path) -> list[TrainResult]:
    """Each spec trained in this process on the CPU, single-threaded as a CPU worker trains it."""
    configure_torch(1)
    base = load_tensors(Settings(data_dir=root), "mnist")
    results = []
    for s in specs:
        results.append(Trainer(s, base.permuted_by(s.permutation_seed), torch.device("cpu")).run(Discard())[0])
    return results


def name(s: AnySpec) -> str:
    return f"{s.architecture}{' permuted 42' if s.permutation_seed is not None else ''} seed {s.seed}"


def compare(title: str, rows: list[tuple[str, TrainResult, TrainResult]], left: str, right: str) -> bool:
    print(f"\n{title}\n| job | {left} correct | {right} correct | Δ | {left} epoch s | {right} epoch s |")
    print("|---|---|---|---|---|---|")
    ok = True
    for label, a, b in rows:
        delta = b.correct - a.correct
        ok &= abs(delta) <= TOLERANCE
        mark = "" if abs(delta) <= TOLERANCE else f"  <- over {TOLERANCE}"
        seconds = f"{a.train_seconds:.2f} | {b.train_seconds:.2f}"
        print(f"| {label} | {a.correct} | {b.correct} | {delta:+d} | {seconds} |{mark}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", default="cuda:0", help="the device to check against the CPU (default cuda:0)")
    device = parser.parse_args().device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return
    label = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    print(f"gpu-check on {device} ({label}), torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mnist-jobs-gpu-check-") as folder:
        tmp = Path(folder)
        root = data_dir(tmp)
        tutorial = [spec(architecture, permutation_seed, SEED) for architecture, permutation_seed in TUTORIAL_JOBS]
        pack = [spec(architecture, permutation_seed, seed) for architecture, permutation_seed, seed in PACK]
        names = {name(s) for s in tutorial}
        extra = [s for s in pack if name(s) not in names]  # the pack's jobs alone: the tutorial's FC ones, and these
        alone = run_worker(tutorial + extra, root, tmp / "alone", device, pack_size=1)
        packed = run_worker(pack, root, tmp / "packed", device, pack_size=len(pack))
        cpu = on_cpu(tutorial, root)
    by_name = {name(s): answer["result"] for s, answer in zip([*tutorial, *extra], alone, strict=True)}
    ok = compare(
        f"The tutorial's four jobs: CPU vs {device}",
        [(name(s), c, by_name[name(s)]) for s, c in zip(tutorial, cpu, strict=True)],
        "cpu",
        device,
    )
    ok &= compare(
        f"FC jobs on {device}: alone vs packed ({len(pack)} as one model)",
        [(name(s), by_name[name(s)], answer["result"]) for s, answer in zip(pack, packed, strict=True)],
        "alone",
        "packed",
    )
    one_claim = all(answer["pack"] == len(pack) for answer in packed)
    how = "claimed and trained as one pack" if one_claim else "NOT trained as one pack"
    print(f"\nthe {len(pack)} FC jobs were {how}")
    print(f"{time.perf_counter() - started:.0f} s in all")
    if not (ok and one_claim):
        sys.exit(f"gpu-check failed: a result differs by more than {TOLERANCE} test images, or no pack was formed")
    print("gpu-check passed")


if __name__ == "__main__":
    main()
