"""The pictures the API serves: real matplotlib renders decoded with PIL, sample digits read from real IDX
files, the content cache on a real folder, and the API's import of them staying free of torch."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.synthetic import idx_uint8, make_digits, write_mnist
from service.datasets.samples import read_test_samples
from service.datasets.sources import FILES
from service.jobs.schemas import CellRead, EpochMetrics, StepMetrics
from service.pictures import render as rendering
from service.pictures.render import (
    PictureCache,
    confusion_png,
    curves_png,
    permuted_images,
    samples_png,
    summary_png,
)
from service.platform.errors import DataUnavailable, InvalidInput, NotFound
from tests.support.settings import make_settings

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N_TEST = 30  # test images in the files these tests write; bench.synthetic draws them with seed 2


def decoded(png: bytes) -> np.ndarray:
    """The picture as gray levels, after checking it is a PNG of a sensible size with something drawn."""
    assert png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert 300 <= image.width <= 2500 and 150 <= image.height <= 2500, image.size
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    assert gray.std() > 10, "blank picture"
    return gray


def mirror() -> list[int]:
    """The permutation that flips every image left to right."""
    return [row * 28 + (27 - col) for row in range(28) for col in range(28)]


def data_settings(tmp_path: Path, gz: bool = False):
    root = tmp_path / "data"
    pins = write_mnist(root / "MNIST" / "raw", n_train=10, n_test=N_TEST, gz=gz)
    return make_settings(tmp_path, root, pins)


# Reading the samples -------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_the_samples_are_the_first_images_and_labels_of_the_test_files(tmp_path, gz):
    images, labels = read_test_samples(data_settings(tmp_path, gz), "mnist", 7)
    want_images, want_labels = make_digits(N_TEST, seed=2)
    assert images.dtype == labels.dtype == np.uint8
    assert images.shape == (7, 28, 28) and labels.shape == (7,)
    assert np.array_equal(images, want_images[:7]) and np.array_equal(labels, want_labels[:7])
    assert images.flags.writeable, "a copy, not a view that keeps the whole file in memory"
    everything, _ = read_test_samples(data_settings(tmp_path / "all", gz), "mnist", N_TEST)
    assert np.array_equal(everything, want_images)


def test_missing_data_is_refused_with_the_fix_and_no_server_path(tmp_path):
    settings = data_settings(tmp_path)
    (settings.data_dir / "MNIST" / "raw" / FILES[2]).unlink()
    with pytest.raises(NotFound) as caught:
        read_test_samples(settings, "mnist", 3)
    assert FILES[2] in caught.value.detail and "mnist-jobs data prepare --dataset mnist" in caught.value.detail
    assert str(tmp_path) not in caught.value.detail and caught.value.field == "dataset"


def test_a_file_that_does_not_match_its_pin_is_refused(tmp_path):
    settings = data_settings(tmp_path)
    labels = settings.data_dir / "MNIST" / "raw" / FILES[3]
    labels.write_bytes(labels.read_bytes()[:-1] + b"\x09")
    with pytest.raises(DataUnavailable, match="wrong sha256"):
        read_test_samples(settings, "mnist", 3)


def test_a_broken_gz_is_refused(tmp_path):
    settings = data_settings(tmp_path, gz=True)
    gz = settings.data_dir / "MNIST" / "raw" / f"{FILES[2]}.gz"
    gz.write_bytes(gz.read_bytes()[:100])
    with pytest.raises(DataUnavailable, match="unreadable"):
        read_test_samples(settings, "mnist", 3)


def test_a_pinned_file_with_a_wrong_header_is_refused(tmp_path):
    settings = data_settings(tmp_path)
    images = settings.data_dir / "MNIST" / "raw" / FILES[2]
    two_dims = idx_uint8(np.zeros((N_TEST, 784), dtype=np.uint8))  # right bytes, wrong shape
    truncated = idx_uint8(np.zeros((N_TEST, 28, 28), dtype=np.uint8))[:-5]
    for content, message in ((two_dims, "not an IDX file"), (truncated, "after its header")):
        images.write_bytes(content)
        pins = {**settings.data_checksums["mnist"], FILES[2]: hashlib.sha256(content).hexdigest()}
        with pytest.raises(DataUnavailable, match=message):
            read_test_samples(settings.model_copy(update={"data_checksums": {"mnist": pins}}), "mnist", 3)


def test_unknown_data_sets_and_counts_beyond_the_test_split_are_refused(tmp_path):
    settings = data_settings(tmp_path)
    with pytest.raises(DataUnavailable, match="unknown data set"):
        read_test_samples(settings, "cifar", 3)
    with pytest.raises(InvalidInput) as caught:
        read_test_samples(settings, "mnist", N_TEST + 1)
    assert caught.value.field == "count"
    assert read_test_samples(settings, "mnist", 0)[0].shape == (0, 28, 28)


# Sample digits -------------------------------------------------------------------------------


def test_permuted_images_take_pixel_i_from_pixel_permutation_i():
    images, _ = make_digits(3, seed=5)
    order = np.random.default_rng(0).permutation(784).tolist()
    permuted = permuted_images(images, order)
    flat, flat_permuted = images.reshape(3, 784), permuted.reshape(3, 784)
    for i in (0, 1, 400, 783):
        assert np.array_equal(flat_permuted[:, i], flat[:, order[i]])
    assert np.array_equal(permuted_images(images, mirror()), images[:, :, ::-1])
    with pytest.raises(ValueError, match="exactly once"):
        permuted_images(images, [0] * 784)
    with pytest.raises(ValueError, match="exactly once"):
        permuted_images(images, list(range(783)))


def test_samples_with_a_permutation_show_the_permuted_digits_under_the_originals():
    # Left half gray, right half black: mirrored, the permuted digit has its gray half on the right.
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    image[:, :, :14] = 128
    labels = np.array([3], dtype=np.uint8)
    plain = samples_png(image, labels)
    permuted = samples_png(image, labels, mirror(), permutation_seed=7)
    assert plain != permuted and samples_png(image, labels) == plain, "deterministic, and different"
    gray = decoded(permuted)
    assert gray.shape[0] > decoded(plain).shape[0], "a second row"

    def mean_column(mask: np.ndarray) -> float:
        return float((np.arange(mask.shape[1]) * mask.sum(0)).sum() / mask.sum())

    def gray_is_left(band: np.ndarray) -> bool:  # (a title's few dark pixels barely move the means)
        return mean_column((band > 100) & (band < 160)) < mean_column(band < 40)

    half = gray.shape[0] // 2
    assert gray_is_left(gray[:half]) and not gray_is_left(gray[half:])


def test_a_grid_of_real_looking_digits_renders():
    images, labels = make_digits(23, seed=3)
    gray = decoded(samples_png(images, labels, np.random.default_rng(1).permutation(784).tolist(), 5))
    assert gray.shape[1] > 1000, "ten columns"
    decoded(samples_png(images[:0], labels[:0]))  # nothing to show still makes a picture


# Curves, confusion, summary ------------------------------------------------------------------


def steps_of(epochs: int, per_epoch: int = 50) -> list[StepMetrics]:
    rng = np.random.default_rng(0)
    return [
        StepMetrics(step=s, epoch=(s - 1) // per_epoch + 1, samples=s * 64, loss=loss)
        for s in range(1, epochs * per_epoch + 1)
        for loss in [2.3 * np.exp(-s / 40) + rng.random() / 5]
    ]


def epochs_of(accuracies: list[float]) -> list[EpochMetrics]:
    return [EpochMetrics(epoch=i, train_loss=0.3, test_loss=0.2, test_accuracy=a) for i, a in enumerate(accuracies, 1)]


@pytest.mark.parametrize(
    "steps, epochs",
    [
        (steps_of(3), epochs_of([0.95, 0.97, 0.975])),
        ([], []),  # a job that just started
        (steps_of(1)[:5], epochs_of([0.9])),  # one epoch: a point, a few steps: points
        ([*steps_of(1)[:30], StepMetrics(step=31, epoch=1, samples=31 * 64, loss=float("inf"))], []),
        ([*steps_of(1)[:30], StepMetrics(step=31, epoch=1, samples=31 * 64, loss=1e9)], epochs_of([1.0])),
    ],
    ids=["three-epochs", "empty", "one-epoch", "non-finite-loss", "diverging"],
)
def test_curves_render_in_every_state_of_a_job(steps, epochs):
    png = curves_png(steps, epochs, "CNN on MNIST")
    decoded(png)
    assert curves_png(steps, epochs, "CNN on MNIST") == png, "equal input, equal bytes"
    assert b"Matplotlib" not in png, "no version tag in the bytes"


def test_the_confusion_matrix_renders_and_must_be_square():
    rng = np.random.default_rng(2)
    matrix = (np.diag(rng.integers(850, 1150, 10)) + rng.integers(0, 12, (10, 10))).tolist()
    decoded(confusion_png(matrix, "CNN, epoch 1"))
    decoded(confusion_png([[0] * 10] * 10, "nothing tested"))
    with pytest.raises(ValueError, match="square"):
        confusion_png([[1, 2, 3]], "no")


def cell(position: int, architecture: str, seed: int | None, values: list[float]) -> CellRead:
    mean = float(np.mean(values)) if values else None
    ci = (mean - 0.01, mean + 0.01) if mean is not None and len(values) > 1 else None
    return CellRead.model_validate(
        {
            "position": position,
            "architecture": architecture,
            "permutation_seed": seed,
            "param_count": 6442 if architecture == "fc" else 6422,
            "n": len(values),
            "mean": mean,
            "std": 0.01 if ci else None,
            "ci95": ci,
            "values": values,
            "seeds": list(range(len(values))),
            "job_ids": [f"job-{i}" for i in range(len(values))],
            "failed": [] if values else ["job-9: out of memory"],
        }
    )


def test_the_summary_renders_full_partial_and_empty_comparisons():
    full = [
        cell(0, "fc", None, [0.87, 0.88, 0.865]),
        cell(1, "cnn", None, [0.955, 0.96, 0.95]),
        cell(2, "fc", 42, [0.86, 0.87, 0.865]),
        cell(3, "cnn", 42, [0.79, 0.81, 0.80]),
    ]
    png = summary_png(full, "FC vs CNN")
    decoded(png)
    assert summary_png(full, "FC vs CNN") == png, "the jitter is deterministic"
    decoded(summary_png([full[0], cell(1, "cnn", None, [0.95]), cell(2, "fc", 42, [])], "partial"))
    decoded(summary_png([cell(0, "fc", 2**63 - 1, [])], "nothing yet " * 20))


def test_pictures_render_the_same_in_parallel_threads():
    # The API renders in a thread pool: no picture may depend on another's state (as pyplot's would).
    matrix = (np.eye(10, dtype=int) * 90 + 1).tolist()
    jobs = [lambda: confusion_png(matrix, "a"), lambda: curves_png(steps_of(2), epochs_of([0.9, 0.95]), "b")] * 2
    serial = [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert [future.result() for future in [pool.submit(job) for job in jobs]] == serial


# Cache ---------------------------------------------------------------------------------------


def test_the_cache_renders_once_per_key_and_stores_privately(tmp_path):
    cache = PictureCache(tmp_path / "artifacts" / "pictures")
    calls: list[str] = []

    def render(name: str) -> bytes:
        calls.append(name)
        return PNG_SIGNATURE + name.encode()

    assert cache.get("a", lambda: render("a")) == PNG_SIGNATURE + b"a"
    assert cache.get("a", lambda: render("again")) == PNG_SIGNATURE + b"a"
    assert cache.get("b", lambda: render("b")) == PNG_SIGNATURE + b"b"
    assert calls == ["a", "b"]
    digest = hashlib.sha256(f"render-v{rendering.RENDER_VERSION}\na".encode()).hexdigest()
    path = cache.folder / f"{digest}.png"
    assert path.read_bytes() == PNG_SIGNATURE + b"a"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(cache.folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in cache.folder.iterdir()) == sorted([path.name, cache.path("b").name]), "no temp files"


def test_a_new_render_version_or_a_damaged_file_renders_again(tmp_path, monkeypatch):
    cache = PictureCache(tmp_path / "pictures")
    calls: list[int] = []

    def render() -> bytes:
        calls.append(len(calls) + 1)
        return PNG_SIGNATURE

    cache.get("k", render)
    cache.path("k").write_bytes(b"half a fi")  # not a PNG: never served
    cache.get("k", render)
    monkeypatch.setattr(rendering, "RENDER_VERSION", rendering.RENDER_VERSION + 1)
    cache.get("k", render)
    cache.get("k", render)
    assert calls == [1, 2, 3]


def test_the_cache_keeps_at_most_max_files_dropping_the_least_recently_used(tmp_path):
    cache = PictureCache(tmp_path / "pictures", max_files=2)
    for key in ("a", "b"):
        cache.get(key, lambda: PNG_SIGNATURE)
    os.utime(cache.path("b"), ns=(1, 1))  # "a" was served more recently than "b"
    cache.get("c", lambda: PNG_SIGNATURE)
    assert sorted(p.name for p in cache.folder.iterdir()) == sorted([cache.path("a").name, cache.path("c").name])


def test_a_cache_that_cannot_write_still_returns_the_picture(tmp_path):
    blocker = tmp_path / "pictures"
    blocker.write_bytes(b"a file where the folder should be")
    assert PictureCache(blocker).get("k", lambda: PNG_SIGNATURE + b"x") == PNG_SIGNATURE + b"x"


# The API process stays free of torch -----------------------------------------------------------


def test_importing_the_pictures_and_the_samples_does_not_import_torch():
    code = "import sys, service.pictures.render, service.datasets.samples; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", result.stderr
