"""Small, learnable MNIST-format IDX files for tests (the real data set never enters the repo)."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic (0, 0, type 0x08, ndim), big-endian sizes, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


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
    for name, array in zip(FILES, (train_x, train_y, test_x, test_y)):
        data = idx_bytes(array)
        checksums[name] = hashlib.sha256(data).hexdigest()
        if gz:
            (raw_dir / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw_dir / name).write_bytes(data)
    return checksums
