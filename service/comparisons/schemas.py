"""The HTTP/JSON contract of comparisons: defined with the client's wire models
(mnist_jobs_client.comparisons), one definition each, imported here for the server's modules."""

from __future__ import annotations

from mnist_jobs_client.comparisons import (
    ARCHITECTURES,
    DEFAULT_PERMUTATION_SEED,
    DEFAULT_SEEDS,
    MAX_COMPARISON_JOBS,
    Architecture,
    ComparisonCreate,
    ComparisonPage,
    ComparisonProgress,
    ComparisonRead,
    EffectRead,
    GridFields,
)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_PERMUTATION_SEED",
    "DEFAULT_SEEDS",
    "MAX_COMPARISON_JOBS",
    "Architecture",
    "ComparisonCreate",
    "ComparisonPage",
    "ComparisonProgress",
    "ComparisonRead",
    "EffectRead",
    "GridFields",
]
