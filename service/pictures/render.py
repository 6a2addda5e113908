"""The pictures the API serves, as PNG bytes: sample digits, training curves, a confusion matrix and a
comparison's summary; and PictureCache, which keeps each rendered picture on disk by its content.

No torch, no database, no FastAPI. The API draws them in render processes (service.pictures.pool), never in
its own. No pyplot either: its "current figure" is global state; each picture is its own Figure on
an Agg canvas.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import logging
import math
import os
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, MaxNLocator, PercentFormatter

from service.datasets.samples import read_test_samples
from service.jobs.schemas import CellRead, EpochMetrics, StepMetrics
from service.platform.config import Settings
from service.storage.store import private_dirs, prune_oldest, write_bytes_atomic

RENDER_VERSION = 3  # part of every cache key: bump it whenever a picture's drawing changes
DPI = 100
SIDE = 28  # pixels per image side
SAMPLE_COLUMNS = 10
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NOTE = {"ha": "center", "va": "center", "color": "0.45", "fontsize": 11}  # "no data yet" notes
ARCHITECTURE_COLORS = {"fc": "tab:blue", "cnn": "tab:orange"}
GOLDEN = (math.sqrt(5) - 1) / 2  # jitter by the golden ratio: spread out, and the same on every call

log = logging.getLogger(__name__)


def to_png(fig: Figure) -> bytes:
    """The figure as PNG; without the Software tag (matplotlib's version), so equal input gives equal bytes
    across upgrades as far as the drawing itself stays the same."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def headline(fig: Figure, title: str) -> None:
    """The figure's title, wrapped to its width: a long title must not be cut off at the edges. It
    carries what users typed (job and comparison names), so it is plain text: matplotlib would read
    "$...$" as math markup, and a name such as "$\\foo$" would fail every render."""
    chars_per_line = max(24, int(fig.get_figwidth() * 11))  # about 11 characters per inch at 13 pt
    fig.suptitle(textwrap.fill(title, chars_per_line), fontsize=13, parse_math=False)


def note(ax: Axes, text: str) -> None:
    """An empty panel that says why it is empty (rather than a blank or a 0..1 frame)."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, transform=ax.transAxes, parse_math=False, **NOTE)  # type: ignore[arg-type]


def percent_axis(ax: Axes, low: float, high: float) -> None:
    """The y axis from `low` to `high` percent, written like the text ("95 %"; "95.5 %" when narrow)."""
    ax.set_ylim(low, high)
    ax.yaxis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))  # no 2.5 steps: whole percents when wide
    ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0 if high - low >= 6 else 1, symbol=" %"))


# Sample digits ---------------------------------------------------------------------------------


def permuted_images(images: np.ndarray, permutation: Sequence[int]) -> np.ndarray:
    """Each image with its pixels shuffled as training shuffles them: pixel i of the flattened
    (row-major) result is pixel permutation[i] of the flattened original."""
    order = np.asarray(permutation, dtype=np.intp)
    if order.shape != (SIDE * SIDE,) or not np.array_equal(np.sort(order), np.arange(SIDE * SIDE)):
        raise ValueError(f"a permutation holds each of 0..{SIDE * SIDE - 1} exactly once")
    return images.reshape(len(images), SIDE * SIDE)[:, order].reshape(images.shape)


def samples_png(
    images: np.ndarray,
    labels: np.ndarray,
    permutation: Sequence[int] | None = None,
    permutation_seed: int | None = None,
    *,
    title: str | None = None,
) -> bytes:
    """A grid of digits (uint8, (N, 28, 28)) titled by their labels; with a permutation, each row of
    digits has a row of the same digits permuted under it."""
    versions = [("original", images)]
    if permutation is not None:
        versions.append(("permuted", permuted_images(images, permutation)))
    n = len(images)
    cols = max(1, min(n, SAMPLE_COLUMNS))
    groups = max(1, math.ceil(n / cols))
    rows = groups * len(versions)
    fig = Figure(figsize=(max(4.0, 1.15 * cols + 0.6), 1.25 * rows + 0.7), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for index in range(groups * cols):
        group, col = divmod(index, cols)
        for offset, (name, shown) in enumerate(versions):
            ax = axes[group * len(versions) + offset, col]
            if index >= n:
                ax.set_axis_off()
                continue
            ax.imshow(shown[index], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(str(labels[index]), fontsize=12, parse_math=False)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col == 0 and len(versions) > 1:
                ax.set_ylabel(name, fontsize=11, parse_math=False)
    if n == 0:
        note(axes[0, 0], "no digits")
    if title is None:
        title = "Test digits and their labels"
        if permutation is not None:
            seed = "" if permutation_seed is None else f" by permutation seed {permutation_seed}"
            title = f"Test digits (upper row) and the same digits with their pixels permuted{seed} (lower row)"
    headline(fig, title)
    return to_png(fig)


def dataset_samples_png(
    settings: Settings, dataset: str, count: int, permutation: Sequence[int] | None, permutation_seed: int | None
) -> bytes:
    """samples_png of the data set's first `count` test digits, read here: in the render process,
    so the API never holds the test split's bytes."""
    images, labels = read_test_samples(settings, dataset, count)
    return samples_png(images, labels, permutation, permutation_seed)


# Training curves -------------------------------------------------------------------------------


def curves_png(steps: Sequence[StepMetrics], epochs: Sequence[EpochMetrics], title: str) -> bytes:
    """Training loss over the samples seen (left) and test accuracy after each epoch (right)."""
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    loss_ax, accuracy_ax = fig.subplots(1, 2, width_ratios=(3, 2))
    draw_loss(loss_ax, steps)
    draw_accuracy(accuracy_ax, epochs)
    headline(fig, title)
    return to_png(fig)


def draw_loss(ax: Axes, steps: Sequence[StepMetrics]) -> None:
    ax.set_title("training loss (one batch per point)", fontsize=11)
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("NLL loss")
    finite = [s for s in steps if math.isfinite(s.loss)]
    if not finite:
        note(ax, "no training steps recorded yet" if not steps else "no finite loss recorded")
        return
    x = np.array([s.samples for s in finite], dtype=np.float64)
    y = np.array([s.loss for s in finite])
    few = len(y) < 20  # a few points are drawn as points; many as a line with a running mean
    if few:
        ax.plot(x, y, color="tab:blue", lw=1.5, marker="o", label="batch loss")
    else:  # batch losses are noisy: a thin line for them, and a running mean for the trend
        ax.plot(x, y, color="tab:blue", lw=0.8, alpha=0.45, label="batch loss")
        window = max(5, len(y) // 25)
        smooth = np.convolve(y, np.ones(window) / window, mode="valid")
        ax.plot(x[window - 1 :], smooth, color="tab:blue", lw=2, label=f"running mean ({window} points)")
    ends = [(a.samples + b.samples) / 2 for a, b in itertools.pairwise(finite) if a.epoch != b.epoch]
    if len(ends) > 20:  # more would hide the curve behind a grey wall
        ends = []
    for i, end in enumerate(ends):
        ax.axvline(end, color="0.5", ls=":", lw=1.2, label="end of an epoch" if i == 0 else None)
    if y.max() > 20 * max(float(np.median(y)), 1e-12):  # a diverging run would flatten the rest
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(alpha=0.3)
    hidden = len(steps) - len(finite)
    ax.legend(
        title=f"{hidden} non-finite losses not shown" if hidden else None,
        loc="upper right",
        fontsize=9,
        title_fontsize=9,
    )


def draw_accuracy(ax: Axes, epochs: Sequence[EpochMetrics]) -> None:
    ax.set_title("test accuracy after each epoch", fontsize=11)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    points = sorted((e.epoch, 100 * e.test_accuracy) for e in epochs if math.isfinite(e.test_accuracy))
    if not points:
        note(ax, "no epoch finished yet")
        return
    x, y = zip(*points, strict=True)
    ax.plot(x, y, color="tab:green", marker="o", ms=7 if len(points) <= 30 else 3, lw=1.5)
    # Every value written out while they are few; past that only the last one (they would pile up).
    for ex, ey in points if len(points) <= 12 else points[-1:]:
        ax.annotate(f"{ey:.2f} %", (ex, ey), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=9)
    pad = max(1.5, (max(y) - min(y)) * 0.2)
    percent_axis(ax, max(0.0, min(y) - pad), max(min(100.0, max(y) + pad), max(y) + pad / 2))
    ax.set_xlim(min(x) - 0.5, max(x) + 0.5)  # one epoch is a point in the middle, not on the frame
    if len(points) <= 12:
        ax.set_xticks(x)  # MaxNLocator(integer=True) falls back to fractions with one epoch in view
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


# Confusion matrix ------------------------------------------------------------------------------


def confusion_png(matrix: Sequence[Sequence[int]], title: str) -> bytes:
    """A heat map of counts, row = true digit, column = predicted digit, each cell's count written in it."""
    counts = np.asarray(matrix, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix is square, not {counts.shape}")
    k = counts.shape[0]
    fig = Figure(figsize=(7.4, 6.6), layout="constrained")
    ax = fig.subplots()
    # A square-root scale: the few mistakes off the diagonal still show next to the large diagonal.
    top = max(1, int(counts.max()))
    norm = PowerNorm(0.5, vmin=0, vmax=top)
    image = ax.imshow(counts, cmap="Blues", norm=norm)
    size = 10 if counts.max() < 1000 else 9
    shade = np.asarray(norm(counts), dtype=np.float64)
    for (row, col), value in np.ndenumerate(counts):
        color = "white" if shade[row, col] > 0.55 else ("0.6" if value == 0 else "black")
        ax.text(col, row, str(value), ha="center", va="center", color=color, fontsize=size)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted digit", fontsize=11)
    ax.set_ylabel("true digit", fontsize=11)
    bar = fig.colorbar(image, ax=ax, label="test images", shrink=0.85)
    bar.set_ticks([t for t in (0, 10, 50, 100, 250, 500, 1000, 2000, 5000) if t <= top])  # even on sqrt
    total, correct = int(counts.sum()), int(np.trace(counts))
    if total:
        ax.set_title(f"{100 * correct / total:.2f} % correct ({correct:,} of {total:,} test images)", fontsize=10)
    headline(fig, title)
    return to_png(fig)


# Comparison summary ----------------------------------------------------------------------------


def cell_label(cell: CellRead) -> str:
    data = "natural" if cell.permutation_seed is None else f"permuted (S={cell.permutation_seed})"
    return f"{cell.architecture.upper()}\n{data}\n{cell.param_count:,} params\nn = {cell.n}"


def summary_png(cells: Sequence[CellRead], title: str) -> bytes:
    """Test accuracy per cell: every seed as a point, the mean with its 95 % interval beside them."""
    labels = [cell_label(cell) for cell in cells]
    widest = max((len(line) for label in labels for line in label.splitlines()), default=0)
    fig = Figure(figsize=(max(6.0, len(cells) * max(1.8, 0.085 * widest) + 1.2), 5.6), layout="constrained")
    ax = fig.subplots()
    shown: list[float] = []
    for i, cell in enumerate(cells):
        color = ARCHITECTURE_COLORS[cell.architecture]
        values = 100 * np.asarray(cell.values, dtype=np.float64)
        jitter = (np.arange(len(values)) * GOLDEN % 1 - 0.5) * 0.24
        ax.scatter(i - 0.12 + jitter, values, s=26, color=color, alpha=0.7, edgecolors="none")
        shown.extend(values.tolist())
        if cell.mean is None:
            failed = f"\n({len(cell.failed)} failed)" if cell.failed else ""
            ax.text(i, 0.5, f"no results yet{failed}", transform=ax.get_xaxis_transform(), **NOTE)  # type: ignore[arg-type]
            continue
        mean = 100 * cell.mean
        low, high = (100 * cell.ci95[0], 100 * cell.ci95[1]) if cell.ci95 else (mean, mean)
        error = [[mean - low], [high - mean]] if cell.ci95 else None
        ax.errorbar([i + 0.2], [mean], yerr=error, fmt="D", color="black", mfc=color, ms=8, capsize=5)
        ax.annotate(f"{mean:.2f} %", (i + 0.2, mean), textcoords="offset points", xytext=(8, 0), va="center")
        shown.extend([low, high])
    ax.set_xticks(range(len(cells)), labels, fontsize=10, parse_math=False)
    ax.set_xlim(-0.6, max(len(cells), 1) - 0.4)
    if shown:
        pad = max(1.0, (max(shown) - min(shown)) * 0.12)
        percent_axis(ax, max(0.0, min(shown) - pad), min(100.0 + pad / 4, max(shown) + pad))
    else:
        percent_axis(ax, 0.0, 100.0)
    if not cells:
        note(ax, "no cells")
    ax.set_ylabel("test accuracy", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    headline(fig, title)
    # Neutral proxies (the colours only tell FC from CNN, which the labels say), below the axes so the
    # legend never hides a point.
    legend = [
        Line2D([], [], ls="", marker="o", color="0.5", alpha=0.7, label="one seed (spread sideways)"),
        Line2D([], [], ls="", marker="D", mfc="white", mec="black", ms=8, label="mean, with its 95 % interval"),
    ]
    fig.legend(handles=legend, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    return to_png(fig)


# Cache -----------------------------------------------------------------------------------------


class PictureCache:
    """Rendered pictures on disk, named by the sha256 of RENDER_VERSION and the caller's key (which the
    caller builds from everything drawn, so equal content hits and changed content misses). Files are
    written atomically and private, like every artifact. The oldest files beyond `max_files` are removed,
    so a dashboard polling a running job's curves cannot fill the disk."""

    def __init__(self, folder: Path, *, max_files: int = 2000) -> None:
        self.folder = folder
        self.max_files = max_files

    def path(self, key: str) -> Path:
        digest = hashlib.sha256(f"render-v{RENDER_VERSION}\n{key}".encode()).hexdigest()
        return self.folder / f"{digest}.png"

    def get(self, key: str, render: Callable[[], bytes]) -> bytes:
        """The cached picture, or `render()`'s, stored (the API renders through service.platform.pools instead)."""
        cached = self.read(key)
        if cached is not None:
            return cached
        data = render()
        self.store(key, data)
        return data

    def read(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except OSError:  # not cached yet, or pruned between a listing and this read
            return None
        if not data.startswith(PNG_SIGNATURE):  # a damaged file is never served
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: pruned last
        return data

    def store(self, key: str, data: bytes) -> None:
        try:
            private_dirs(self.folder)  # a cache of this host's, not an artifact: no ArtifactStore
            write_bytes_atomic(self.path(key), data)
            self.prune()
        except OSError as exc:  # a full or read-only disk costs a re-render, never the picture
            log.warning("picture cache: not stored (%s)", exc.strerror or type(exc).__name__)

    def prune(self) -> None:
        prune_oldest(self.folder, self.max_files, ".png")
