"""The statistics a comparison answers with: each cell's mean and 95 % interval over its seeds, and
the effects between cells with their intervals and p-values (scipy's t tests)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    std: float | None  # sample standard deviation (n - 1)
    ci95: tuple[float, float] | None  # the t interval of the mean


def summarize(values: Sequence[float]) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None)
    mean = math.fsum(values) / n
    if n < 2:
        return Summary(n, mean, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, (mean - half, mean + half))


@dataclass(frozen=True)
class Effect:
    estimate: float | None  # mean of a minus mean of b
    ci95: tuple[float, float] | None
    p_value: float | None  # two-sided
    test: Literal["welch", "paired"]
    n: int  # values in a and b (welch), or pairs (paired)


def welch(a: Sequence[float], b: Sequence[float]) -> Effect:
    """mean(a) - mean(b) with Welch's t test and interval (unequal variances, independent samples)."""
    n = len(a) + len(b)
    if not a or not b:
        return Effect(None, None, None, "welch", n)
    estimate = math.fsum(a) / len(a) - math.fsum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return Effect(estimate, None, None, "welch", n)
    if len(set(a)) == 1 and len(set(b)) == 1:  # no spread: t is undefined
        return Effect(estimate, (estimate, estimate), None, "welch", n)
    result = stats.ttest_ind(a, b, equal_var=False)
    return Effect(estimate, _interval(result), _p(result.pvalue), "welch", n)


def paired(a: Sequence[float], b: Sequence[float]) -> Effect:
    """mean(a - b) over pairs (a[i], b[i]) with the paired t test and its interval."""
    assert len(a) == len(b), "pairs come in twos"
    n = len(a)
    if n == 0:
        return Effect(None, None, None, "paired", 0)
    estimate = math.fsum(x - y for x, y in zip(a, b, strict=True)) / n
    if n < 2:
        return Effect(estimate, None, None, "paired", n)
    if all(x - y == estimate for x, y in zip(a, b, strict=True)):  # no spread: t is undefined
        return Effect(estimate, (estimate, estimate), None, "paired", n)
    result = stats.ttest_rel(a, b)
    return Effect(estimate, _interval(result), _p(result.pvalue), "paired", n)


def _interval(result: object) -> tuple[float, float] | None:
    low, high = result.confidence_interval(CONFIDENCE)  # type: ignore[attr-defined]  # scipy's TtestResult
    return (float(low), float(high)) if math.isfinite(low) and math.isfinite(high) else None


def _p(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
