"""The first digits of a data set's test split, read with numpy from its IDX files (no torch: the API
draws them). Each file is checked against its pinned sha256 as it is read, so a picture never shows
data the workers would refuse to train on."""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib

import numpy as np

from service.datasets import catalog
from service.datasets.sources import FILES, DataSet, data_dir_relative
from service.platform.config import Settings
from service.platform.errors import DataUnavailable, InvalidInput, NotFound

TEST_IMAGES, TEST_LABELS = FILES[2], FILES[3]
UNSIGNED_BYTE = 0x08  # the IDX type code of every MNIST-format file
IMAGE_SIDE = 28


def test_pins(settings: Settings, dataset: str) -> tuple[str, str]:
    """The pinned sha256 of the test images and labels: what read_test_samples will return is fixed
    by them (it refuses any other bytes), so they name a picture of samples without reading a file."""
    ds = catalog.data_set(settings, dataset)  # DataUnavailable for a name the catalog does not know
    return ds.pins[TEST_IMAGES], ds.pins[TEST_LABELS]


def read_test_samples(settings: Settings, dataset: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` test images, uint8 (count, 28, 28), and their labels, uint8 (count,).

    Raises DataUnavailable (unknown, missing or corrupt data set; the message says how to fix it) and
    InvalidInput when the test split has fewer than `count` images."""
    ds = catalog.data_set(settings, dataset)  # DataUnavailable for a name the catalog does not know
    images = idx_array(ds, TEST_IMAGES, verified_bytes(ds, TEST_IMAGES), ndim=3)
    labels = idx_array(ds, TEST_LABELS, verified_bytes(ds, TEST_LABELS), ndim=1)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE) or len(images) != len(labels):
        raise DataUnavailable(
            f"data set {dataset!r}: {TEST_IMAGES} holds {images.shape} images for {len(labels)} labels, "
            f"not N 28x28 images for N labels",
            field="dataset",
        )
    if not 0 <= count <= len(labels):
        raise InvalidInput(f"count must be between 0 and {len(labels)} (the test split's size)", field="count")
    # Copies: the arrays must not keep the whole file's bytes alive.
    return images[:count].copy(), labels[:count].copy()


def verified_bytes(ds: DataSet, file: str) -> bytes:
    """The decompressed content of raw/<file> (or raw/<file>.gz when there is no raw one), refused
    unless its sha256 is the pinned one. Hashing what is read, rather than trusting an earlier check,
    means a file swapped since the last preparation is still caught; the test files are small."""
    where = data_dir_relative(ds)  # never a server path in a message
    path, gz = ds.raw / file, ds.raw / f"{file}.gz"
    try:
        if path.is_file():
            data = path.read_bytes()
        elif gz.is_file():
            data = gzip.decompress(gz.read_bytes())
        else:  # not prepared on this server: nothing to show (404), not a fault (corrupt files are)
            raise NotFound(
                f"data set {ds.name!r} is missing {file} (raw or .gz) in {where} in the data dir; "
                f"run `mnist-jobs data prepare --dataset {ds.name}` (a worker also prepares it before its first job)",
                field="dataset",
            )
    except (OSError, EOFError, zlib.error) as exc:  # unreadable, or a truncated / broken .gz
        raise DataUnavailable(
            f"data set {ds.name!r}: {file} in {where} is unreadable ({type(exc).__name__}); "
            f"`mnist-jobs data prepare --dataset {ds.name}` replaces it",
            field="dataset",
        ) from None
    if hashlib.sha256(data).hexdigest() != ds.pins[file]:
        raise DataUnavailable(
            f"data set {ds.name!r}: {file} in {where} has the wrong sha256; "
            f"`mnist-jobs data prepare --dataset {ds.name}` moves it aside and fetches a good copy",
            field="dataset",
        )
    return data


def idx_array(ds: DataSet, file: str, data: bytes, ndim: int) -> np.ndarray:
    """An IDX file's content as a read-only uint8 view of `data`, shaped by its header: two zero bytes,
    the type code (0x08: unsigned byte), the number of dimensions, then each size as big-endian uint32."""
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes((0, 0, UNSIGNED_BYTE, ndim)):
        raise DataUnavailable(
            f"data set {ds.name!r}: {file} is not an IDX file of unsigned bytes with {ndim} dimension(s)",
            field="dataset",
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(dims))
    if len(data) != header + size:
        raise DataUnavailable(
            f"data set {ds.name!r}: {file} holds {len(data) - header} bytes after its header, not the "
            f"{size} its sizes {dims} say",
            field="dataset",
        )
    return np.frombuffer(data, dtype=np.uint8, count=size, offset=header).reshape(dims)
