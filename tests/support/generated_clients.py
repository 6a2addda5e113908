"""Two widely used OpenAPI generators, pinned, installed once into var/gen-tools/ (ignored by git) and
reused: openapi-python-client from PyPI in its own venv (its dependencies cannot clash with ours),
and @hey-api/openapi-ts from npm with tsx and typescript to type-check and run what it generates.

Each `*_generator()` skips the calling test, saying why, when its tool cannot be installed (no
network, no node); a tool that installs but then fails to generate is a failure, not a skip."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "var" / "gen-tools"
PYTHON_GENERATOR = "openapi-python-client==0.29.1"
NPM_PACKAGES = {"@hey-api/openapi-ts": "0.99.0", "tsx": "4.23.15", "typescript": "5.9.3", "@types/node": "20.19.43"}
TS_FLOW = Path(__file__).with_name("generated_flow.ts")
# openapi-python-client reads only JSON, text and application/octet-stream answers; told that a PNG
# (and an ONNX or safetensors model) is bytes, it returns a File for each.
PYTHON_CONFIG = {
    "content_type_overrides": {
        "image/png": "application/octet-stream",
        "application/onnx": "application/octet-stream",
        "application/vnd.onnx": "application/octet-stream",
        "application/x-safetensors": "application/octet-stream",
    }
}
# Strict, with the generated code resolved as a bundler would (its imports have no file extensions).
TSC_OPTIONS: tuple[str, ...] = ("--noEmit", "--strict", "--target", "es2022", "--module", "esnext")
TSC_OPTIONS += ("--moduleResolution", "bundler", "--skipLibCheck", "--types", "node")
INSTALL_TIMEOUT_SECONDS = 900  # a hang guard for a first install over a slow network


def install(folder: Path, command: list[str], what: str) -> None:
    """Run `command` (an install into `folder`) once; later calls find the stamp and return."""
    stamp = folder / ".installed"
    if stamp.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            command, cwd=folder, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"{what} could not be installed: {exc}")
    if done.returncode != 0:
        pytest.skip(f"{what} could not be installed (no network?): {done.stderr.strip()[-600:]}")
    stamp.write_text(" ".join(command) + "\n")


def python_generator() -> Path:
    """The openapi-python-client executable, installed on first use."""
    folder = TOOLS / PYTHON_GENERATOR.replace("==", "-")
    if not (folder / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    install(folder, [str(folder / "bin" / "python"), "-m", "pip", "install", PYTHON_GENERATOR], PYTHON_GENERATOR)
    return folder / "bin" / "openapi-python-client"


def ts_tools() -> Path:
    """The node_modules/.bin folder holding openapi-ts, tsc and tsx, installed on first use."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("@hey-api/openapi-ts needs node and npm, which are not installed")
    folder = TOOLS / f"openapi-ts-{NPM_PACKAGES['@hey-api/openapi-ts']}"
    folder.mkdir(parents=True, exist_ok=True)
    package = {"private": True, "name": "mnist-jobs-gen-tools", "dependencies": NPM_PACKAGES}
    (folder / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    install(folder, [npm, "install", "--no-audit", "--no-fund", "--save-exact"], "@hey-api/openapi-ts with npm")
    return folder / "node_modules" / ".bin"


def generate_python(document: Path, out: Path, package: str) -> ModuleType:
    """The package openapi-python-client generates from `document`, imported (its own imports are
    httpx, attrs and python-dateutil, all in this venv). Remove it with `forget_python`."""
    config = out / "config.json"
    out.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(PYTHON_CONFIG))
    command = [str(python_generator()), "generate", "--path", str(document), "--meta", "none"]
    done = subprocess.run(
        [*command, "--config", str(config), "--output-path", str(out / package)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0 and (out / package / "client.py").exists(), done.stdout + done.stderr
    sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    return importlib.import_module(package)


def forget_python(out: Path, package: str) -> None:
    sys.path.remove(str(out))
    for name in [name for name in sys.modules if name == package or name.startswith(f"{package}.")]:
        del sys.modules[name]


def generate_ts(document: Path, out: Path) -> Path:
    """The TypeScript client @hey-api/openapi-ts generates from `document` (under out/generated),
    with the flow script beside it and both type-checked by tsc; returns the flow script."""
    bin_dir = ts_tools()
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(bin_dir / "openapi-ts"), "-i", str(document), "-o", str(out / "generated")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=os.environ | {"NO_COLOR": "1"},
    )
    assert done.returncode == 0 and (out / "generated" / "sdk.gen.ts").exists(), done.stdout + done.stderr
    flow = out / TS_FLOW.name
    shutil.copyfile(TS_FLOW, flow)
    checked = subprocess.run(
        [str(bin_dir / "tsc"), *TSC_OPTIONS, "--typeRoots", str(bin_dir.parent / "@types"), str(flow)],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return flow


def run_ts(flow: Path, *args: str) -> list[dict[str, Any]]:
    """Run the flow script with tsx; each line it prints is one JSON record of a step."""
    done = subprocess.run(
        [str(ts_tools() / "tsx"), str(flow), *args],
        cwd=flow.parent,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
