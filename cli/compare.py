"""`mnist-jobs compare`: the experiment as one command — submit a comparison, follow it (a bar on a
terminal, plain lines when piped), then print its table and effects.

Exit codes: 0 succeeded (or submitted, without --wait), 1 failed, 2 usage, 3 cancelled,
4 server unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import httpx

from service.comparison_schemas import ComparisonCreate, ComparisonRead, EffectRead
from service.config import Settings
from service.schemas import CellRead

EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_UNREACHABLE = 1, 2, 3, 4
POLL_SECONDS = 0.5
ENDED = ("succeeded", "failed", "cancelled")


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "compare",
        help="run the experiment: FC vs CNN, natural vs permuted pixels, over seeds, with statistics",
        description="Submit a comparison (one job per cell and seed) and print its table and effects.",
        epilog="example: mnist-jobs compare --seeds 5 --wait",
    )
    p.add_argument("--seeds", type=int, default=5, help="seeds 1..N for every cell (default 5)")
    p.add_argument("--seed-list", help="explicit seeds instead, e.g. 3,7,11")
    p.add_argument("--architectures", default="fc,cnn", help="default fc,cnn")
    p.add_argument("--permutation-seeds", help="e.g. none,42 (the default: natural and one shared shuffle)")
    p.add_argument("--epochs", type=int, help="per job (default 1)")
    p.add_argument("--name")
    p.add_argument("--no-reuse", action="store_true", help="train every job even if an equal one has finished")
    p.add_argument("--wait", action="store_true", help="follow it to the end, then print the table")
    p.add_argument("--json", action="store_true", help="print the comparison's JSON instead of the table")
    p.add_argument("--url", help="API base URL (default: $MNIST_JOBS_URL or http://HOST:PORT from settings)")
    p.add_argument("--token", default=os.environ.get("MNIST_JOBS_TOKEN"), help="API token (default: $MNIST_JOBS_TOKEN)")
    p.set_defaults(func=compare)


def request_from(args: argparse.Namespace) -> ComparisonCreate:
    body: dict[str, Any] = {"architectures": args.architectures.split(","), "reuse": not args.no_reuse}
    body["seeds"] = [int(s) for s in args.seed_list.split(",")] if args.seed_list else args.seeds
    if args.permutation_seeds:
        body["permutation_seeds"] = [None if s == "none" else int(s) for s in args.permutation_seeds.split(",")]
    if args.epochs is not None:
        body["spec"] = {"epochs": args.epochs}
    if args.name:
        body["name"] = args.name
    return ComparisonCreate.model_validate(body)


def compare(args: argparse.Namespace, settings: Settings) -> None:
    try:
        request = request_from(args)
    except ValueError as exc:  # pydantic's ValidationError, or a seed that is not a number
        print(f"mnist-jobs compare: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    url = args.url or os.environ.get("MNIST_JOBS_URL") or f"http://{settings.host}:{settings.port}"
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
            comparison = _checked(client.post("/v1/comparisons", json=request.model_dump(mode="json")))
            if args.wait:
                comparison = follow(client, comparison, sys.stderr.isatty())
    except httpx.TransportError as exc:
        print(f"mnist-jobs compare: cannot reach {url} ({exc}); is `mnist-jobs serve` running there?", file=sys.stderr)
        sys.exit(EXIT_UNREACHABLE)
    print(comparison.model_dump_json(indent=2) if args.json else render(comparison))
    status = comparison.status.value
    sys.exit({"failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}.get(status, 0) if args.wait else 0)


def _checked(response: httpx.Response) -> ComparisonRead:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except json.JSONDecodeError:
            detail = response.text
        print(f"mnist-jobs compare: error {response.status_code}: {detail}", file=sys.stderr)
        sys.exit(EXIT_USAGE if response.status_code in (400, 422) else EXIT_FAILED)
    return ComparisonRead.model_validate(response.json())


def follow(client: httpx.Client, comparison: ComparisonRead, on_terminal: bool) -> ComparisonRead:
    """Poll until every job has ended (or one failed and the others ended), showing progress."""
    path = f"/v1/comparisons/{comparison.id}"
    if not on_terminal:  # a line each time a job ends (or the status changes), not at every poll
        last = ""
        while True:
            if (counts := _counts(comparison) + comparison.status.value) != last:
                print(progress_line(comparison), file=sys.stderr, flush=True)
                last = counts
            if _ended(comparison):
                return comparison
            time.sleep(POLL_SECONDS)
            comparison = _checked(client.get(path))
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("comparison", total=1.0)
        while True:
            bar.update(task, completed=comparison.progress.fraction, description=_counts(comparison))
            if _ended(comparison):
                return comparison
            time.sleep(POLL_SECONDS)
            comparison = _checked(client.get(path))


def _ended(comparison: ComparisonRead) -> bool:
    return comparison.progress.queued + comparison.progress.running == 0


def _counts(comparison: ComparisonRead) -> str:
    p = comparison.progress
    return f"{p.succeeded + p.failed + p.cancelled}/{p.total} jobs ended ({p.running} running, {p.failed} failed)"


def progress_line(comparison: ComparisonRead) -> str:
    return f"{comparison.status.value}: {_counts(comparison)}, {comparison.progress.fraction:.0%}"


def cell_name(cell: CellRead) -> str:
    pixels = "natural" if cell.permutation_seed is None else f"permuted (seed {cell.permutation_seed})"
    return f"{cell.architecture.upper()} {pixels}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _interval(ci95: tuple[float, float] | None, unit: str = " %") -> str:
    return "-" if ci95 is None else f"[{100 * ci95[0]:.2f}, {100 * ci95[1]:.2f}]{unit}"


def effect_line(effect: EffectRead) -> str:
    estimate = "-" if effect.estimate is None else f"{100 * effect.estimate:+.2f} pp"
    p = "-" if effect.p_value is None else f"{effect.p_value:.2g}"
    verdict = {True: "interval excludes 0", False: "interval includes 0", None: ""}[effect.excludes_zero]
    test = f"{effect.test}, n={effect.n}"
    return f"{effect.name:<28} {estimate:>10}  {_interval(effect.ci95, ' pp'):<22} p={p:<8} {test:<14} {verdict}"


def render(comparison: ComparisonRead) -> str:
    """The comparison as a plain-text table of cells, then its effects (pp = percentage points)."""
    lines = [f"comparison {comparison.id}: {comparison.status.value}, seeds {comparison.seeds}"]
    lines.append(f"{'cell':<28} {'params':>7} {'n':>3} {'mean':>9} {'std':>8}  {'95 % interval':<20} values")
    for cell in comparison.cells:
        values = " ".join(f"{100 * v:.2f}" for v in cell.values)
        lines.append(
            f"{cell_name(cell):<28} {cell.param_count:>7,} {cell.n:>3} {_pct(cell.mean):>9} {_pct(cell.std):>8}  "
            f"{_interval(cell.ci95):<20} {values}"
        )
    if comparison.effects:
        lines.append("")
        lines.extend(effect_line(effect) for effect in comparison.effects)
    if comparison.error:
        lines.append(f"\nfailed: {comparison.error}")
    return "\n".join(lines)
