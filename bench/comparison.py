"""`python -m bench.comparison`: the experiment end to end on a warm server against the textbook loop.

1. The textbook loop (bench/textbook.py) runs the tutorial's four configurations once each (seed 1:
   FC and CNN, natural and permuted pixels); 20 runs (5 seeds) are extrapolated as 5x their sum.
2. A live `mnist-jobs serve` (N workers, SQLite) is warmed by one FC and one CNN job, then times:
   the default comparison `{"seeds": 5}` (20 jobs) from POST to its last job's end; the tutorial's
   four jobs alone as a comparison `{"seeds": [1]}`; and the 5-seed comparison again with reuse.
Both halves run in this one process on the same machine, and the ratios are service / textbook.
The comparison's table (mnist_jobs_client.cli.compare.render) is printed too.

Data: MNIST_JOBS_DATA_DIR if it holds MNIST, else ../shared/data (copied to a temp dir).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import torch

from bench import textbook
from bench.run import TUTORIAL_JOBS, data_dir, start_serve
from mnist_jobs_client.cli.compare import render
from service.comparisons.schemas import ComparisonRead


def textbook_runs(root: Path) -> dict[str, float]:
    times = {}
    for architecture, permutation_seed in TUTORIAL_JOBS:
        started = time.perf_counter()
        textbook.run(str(root), architecture, seed=1, permutation_seed=permutation_seed)
        times[f"{architecture} {'natural' if permutation_seed is None else 'permuted'}"] = time.perf_counter() - started
        print(
            f"textbook {architecture} permutation={permutation_seed}: {time.perf_counter() - started:.1f} s", flush=True
        )
    return times


def wait_workers(api: httpx.Client, workers: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if len(api.get("/v1/workers").json()) >= workers:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the workers did not register within 120 s")


def run_comparison(api: httpx.Client, body: dict[str, object]) -> tuple[float, ComparisonRead]:
    """Seconds from POST to every job ended, and the comparison as it then reads."""
    started = time.perf_counter()
    response = api.post("/v1/comparisons", json=body)
    response.raise_for_status()
    comparison = ComparisonRead.model_validate(response.json())
    while comparison.progress.queued + comparison.progress.running:
        time.sleep(0.05)
        comparison = ComparisonRead.model_validate(api.get(f"/v1/comparisons/{comparison.id}").json())
    return time.perf_counter() - started, comparison


def warm_up(api: httpx.Client) -> None:
    """One CNN and one FC job: each worker loads the data set and imports what training needs."""
    seconds, comparison = run_comparison(
        api, {"seeds": [10_000], "permutation_seeds": [None], "reuse": False, "name": "warm-up"}
    )
    assert comparison.status.value == "succeeded", comparison.error
    print(f"warm-up (one FC and one CNN job): {seconds:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, `python -m bench.comparison --workers {args.workers}`\n",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        root = data_dir(tmp)
        book = textbook_runs(root)
        four_book = sum(book.values())
        server = start_serve(root, tmp, args.workers, args.port)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=30) as api:
                wait_workers(api, args.workers)
                warm_up(api)
                five, comparison = run_comparison(api, {"seeds": 5, "reuse": False})
                four, tutorial = run_comparison(api, {"seeds": [1], "reuse": False})
                again, rerun = run_comparison(api, {"seeds": 5})
        finally:
            server.terminate()
            server.wait(timeout=60)
    print("\n" + render(comparison) + "\n")
    print("| run | textbook s | service s | service/textbook |\n|---|---|---|---|")
    print(
        f"| default comparison, 20 jobs (textbook: 5 x the four runs) | {5 * four_book:.1f} | {five:.2f} | "
        f"{five / (5 * four_book):.3f} |"
    )
    print(f"| the tutorial's four jobs (seed 1) | {four_book:.1f} | {four:.2f} | {four / four_book:.3f} |")
    print(f"| the 5-seed comparison again, reuse on ({rerun.progress.succeeded} jobs reused) | - | {again:.3f} | - |")
    print("\ntextbook, one run each: " + ", ".join(f"{k} {v:.1f} s" for k, v in book.items()))
    print(f"tutorial's four jobs through the service: {render(tutorial).splitlines()[0]}")


if __name__ == "__main__":
    main()
