"""The dashboard's browser tests: headless Chromium (Debian's `chromium` and `chromium-driver`)
driven by selenium.

When the browser or its driver is missing, the suite installs them with apt-get (root, as here and
in CI); when that is not possible it skips, and says why on the terminal, never silently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PACKAGES = ["chromium", "chromium-driver"]
APT_TIMEOUT_SECONDS = 600
WINDOW = (1280, 900)


def _missing() -> list[Path]:
    return [path for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]


def _install() -> str | None:
    """apt-get the browser and its driver; None when they are there afterwards, else why not."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "not root, so apt-get cannot install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", *PACKAGES]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` took longer than {APT_TIMEOUT_SECONDS} s"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"`{' '.join(command)}` exited with {done.returncode}: {tail[0]}"
    return None if not _missing() else "apt-get finished but they are still missing"


def _say(config: pytest.Config, text: str) -> None:
    """On the terminal at once, past pytest's output capture (a fixture's prints are otherwise held)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        if reporter is not None:
            reporter.write_line(text, yellow=True)
        else:
            print(text, file=sys.stderr)


@pytest.fixture(scope="session")
def chromium(pytestconfig: pytest.Config) -> tuple[Path, Path]:
    """The browser and its driver, installed with apt-get if need be; a skip naming why otherwise."""
    if _missing():
        names = ", ".join(str(path) for path in _missing())
        _say(pytestconfig, f"\nbrowser tests: {names} missing; installing {' '.join(PACKAGES)} with apt-get …")
        why = _install()
        if why is not None:
            reason = f"browser tests skipped: {names} missing and could not be installed ({why})"
            _say(pytestconfig, reason)
            pytest.skip(reason)
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture
def browser(chromium: tuple[Path, Path], downloads: Path) -> Iterator[webdriver.Chrome]:
    binary, driver = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "download.directory_upgrade": True,
            "safebrowsing.enabled": True,
        },
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium must not try to download one (no network in CI).
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=str(driver)))
    chrome.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    chrome.set_window_size(*WINDOW)
    try:
        yield chrome
    finally:
        chrome.quit()
