"""`mnist-jobs compare`: the experiment as one command — submit a comparison, follow it (a bar on a
terminal, a line per ended job when piped), then print its table and effects.

Exit codes: 0 succeeded (or submitted, without --wait), 1 failed, 3 cancelled; the others are
`mnist-jobs --help`'s (cli/exits.py).
"""

from __future__ import annotations

from typing import Any

import click
from pydantic import ValidationError

from mnist_jobs_client.cli.common import Remote, emit_json
from mnist_jobs_client.cli.exits import exit_for, handled
from mnist_jobs_client.comparisons import ComparisonCreate, ComparisonRead, EffectRead
from mnist_jobs_client.schemas import CellRead


def request_from(options: dict[str, Any]) -> ComparisonCreate:
    body: dict[str, Any] = {"architectures": options["architectures"].split(","), "reuse": not options["no_reuse"]}
    body["seeds"] = [int(s) for s in options["seed_list"].split(",")] if options["seed_list"] else options["seeds"]
    if options["permutation_seeds"]:
        body["permutation_seeds"] = [None if s == "none" else int(s) for s in options["permutation_seeds"].split(",")]
    if options["epochs"] is not None:
        body["spec"] = {"epochs": options["epochs"]}
    if options["name"]:
        body["name"] = options["name"]
    return ComparisonCreate.model_validate(body)


@click.command(
    epilog="""\b
examples:
  mnist-jobs compare --seeds 5 --wait
  mnist-jobs compare --seed-list 3,7,11 --architectures cnn --permutation-seeds none,42,7 --json""",
)
@click.option("--seeds", type=click.IntRange(1), default=5, show_default=True, help="seeds 1..N for every cell")
@click.option("--seed-list", help="explicit seeds instead, e.g. 3,7,11")
@click.option("--architectures", default="fc,cnn", show_default=True)
@click.option("--permutation-seeds", help="e.g. none,42 (default: natural and one shared shuffle)")
@click.option("--epochs", type=click.IntRange(1), help="per job (default 1)")
@click.option("--name")
@click.option("--no-reuse", is_flag=True, help="train every job even if an equal one has finished")
@click.option("--wait", is_flag=True, help="follow it to the end, then print the table")
@click.option("--json", "as_json", is_flag=True, help="print the comparison's JSON instead of the table")
@click.pass_obj
@handled
def compare(remote: Remote, /, wait: bool, as_json: bool, **options: Any) -> None:
    """Run the experiment: FC vs CNN, natural vs permuted pixels, over seeds, with statistics."""
    try:
        request = request_from(options)
    except (ValidationError, ValueError) as exc:  # pydantic's, or a seed that is not a number
        raise click.UsageError(str(exc)) from None
    with remote.client() as client:
        comparison = client.compare(request)
        if wait:
            comparison = client.wait_comparison(comparison.id, progress=not as_json)
    if as_json:
        emit_json(comparison)
    else:
        click.echo(render(comparison))
    if wait:
        exit_for(comparison.status)


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
