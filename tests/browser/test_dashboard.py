"""The dashboard in a real browser (headless Chromium) against a real `mnist-jobs serve`.

A test fails when a page shows its error banner or the browser logs a SEVERE entry (a script error,
a failed request, a Content-Security-Policy violation). Waits are hang guards, not timings.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from service.jobs.schemas import job_spec_adapter

HANG_GUARD_SECONDS = 120
SCREENS = Path("/tmp/screens")
FINAL = {"succeeded", "failed", "cancelled"}
PAGES = ["/", "/submit", "/comparisons", f"/jobs/{uuid.uuid4()}", f"/comparisons/{uuid.uuid4()}"]


def wait(browser: Chrome, condition: Any, timeout: float = HANG_GUARD_SECONDS) -> Any:
    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda _: condition())


def click(browser: Chrome, selector: str) -> None:
    """Click the element, found again if the page re-rendered it between finding and clicking (a
    late event redraws the tables)."""

    def attempt() -> bool:
        try:
            browser.find_element(By.CSS_SELECTOR, selector).click()
        except StaleElementReferenceException:
            return False
        return True

    wait(browser, attempt)


def by_id(browser: Chrome, element_id: str) -> WebElement:
    return browser.find_element(By.ID, element_id)


def assert_no_problems(browser: Chrome, expected: re.Pattern[str] | None = None) -> None:
    """No error banner on the page, and no SEVERE browser log entry since the last call (other than
    `expected` ones, e.g. the 401 that makes a page ask for a token)."""
    banner = by_id(browser, "error")
    assert not banner.is_displayed(), f"error banner: {banner.text}"
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert [m for m in severe if expected is None or not expected.search(m)] == [], severe


def type_into(element: WebElement, text: str) -> None:
    element.clear()
    element.send_keys(text)


def screenshot(browser: Chrome, tmp_path: Path, name: str) -> None:
    """Into the test's tmp_path, and /tmp/screens/ for a person to look at."""
    path = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(path))
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENS / path.name)


def progress(browser: Chrome) -> tuple[str, float]:
    status = by_id(browser, "job-status").text
    return status, float(by_id(browser, "job-progress").get_attribute("value") or 0)


def expected_mode(server: Any) -> str:
    """A page follows the event streams where the server has them (the document lists them), else it polls."""
    return "events" if "/v1/jobs/{job_id}/events" in server.client.get("/openapi.json").json()["paths"] else "polling"


def live_mode(browser: Chrome) -> str:
    return str(browser.execute_script("return document.documentElement.dataset.live || ''"))


def picture_shown(browser: Chrome, element_id: str) -> bool:
    script = "const img = document.getElementById(arguments[0]); return !img.hidden && img.naturalWidth > 0"
    return bool(browser.execute_script(script, element_id))


def test_submit_a_job_watch_it_train_and_download_its_checkpoint(live_server, browser, downloads, tmp_path):
    server = live_server(workers=1, step_metrics_every=4)  # the small training set has 10 steps an epoch
    browser.get(server.url + "/")
    wait(browser, lambda: "No jobs yet" in by_id(browser, "jobs-body").text)
    assert_no_problems(browser)

    browser.find_element(By.LINK_TEXT, "Submit").click()
    Select(wait(browser, lambda: by_id(browser, "f-architecture"))).select_by_value("cnn")
    type_into(by_id(browser, "f-cnn-n_features"), "6")
    type_into(by_id(browser, "f-epochs"), "100")  # about 10 s on the small data: long enough to watch
    type_into(by_id(browser, "f-name"), "browser <b>test</b>")  # shown as text, never as markup
    type_into(by_id(browser, "f-labels"), "suite: browser")
    by_id(browser, "submit").click()
    wait(browser, lambda: "/jobs/" in browser.current_url)
    job_id = browser.current_url.rsplit("/", 1)[1]
    assert_no_problems(browser)
    wait(browser, lambda: live_mode(browser) == expected_mode(server))
    print(f"the job page's live updates: {live_mode(browser)}")

    seen: list[float] = []  # the bar's values while the job runs
    midway = False
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while (state := progress(browser))[0] not in FINAL:
        assert time.monotonic() < deadline, f"the job did not end; the bar showed {seen}"
        status, value = state
        if status == "running" and (not seen or value != seen[-1]):
            seen.append(value)
            # a screenshot early on, replaced by one mid-run when the job is still running by then
            if len(seen) == 3 or (not midway and value >= 0.4 and picture_shown(browser, "curves")):
                screenshot(browser, tmp_path, "running")
                midway = value >= 0.4
        time.sleep(0.1)
    assert state[0] == "succeeded", by_id(browser, "job-failure").text
    assert len(seen) >= 2 and seen == sorted(seen) and seen[-1] > seen[0], f"the bar never moved: {seen}"
    assert by_id(browser, "job-title").text == "browser <b>test</b>"

    wait(browser, lambda: picture_shown(browser, "confusion") and picture_shown(browser, "curves"))
    wait(browser, lambda: by_id(browser, "job-progress").get_attribute("value") == "1")
    assert re.search(r"\d+\.\d\d % \(\d+ of 200\)", by_id(browser, "result").text)  # 200 test images
    assert (tmp_path / "running.png").exists(), f"no screenshot while running: the bar showed {seen}"
    screenshot(browser, tmp_path, "succeeded")

    job = server.client.get(f"/v1/jobs/{job_id}").json()
    latest = max(job["result"]["checkpoints"], key=lambda c: c["epoch"])
    filename = f"{job_id}-epoch{latest['epoch']:03d}.pt"
    click(browser, f'a.download[download="{filename}"]')
    saved = downloads / filename
    wait(browser, lambda: saved.exists() and not list(downloads.glob("*.crdownload")))
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == latest["sha256"]
    assert len(by_id(browser, "metrics").find_elements(By.CSS_SELECTOR, "tbody tr")) == len(job["metrics"]) == 100
    assert_no_problems(browser)

    browser.get(server.url + "/?status=succeeded&architecture=cnn&label=suite:browser")
    row = wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"]'))[0]
    assert "browser <b>test</b>" in row.text and "succeeded" in row.text and "suite: browser" in row.text
    assert Select(browser.find_element(By.NAME, "status")).first_selected_option.text == "succeeded"
    assert_no_problems(browser)


def test_with_tokens_the_pages_ask_for_one_and_work_once_it_is_given(live_server, browser):
    server = live_server(workers=0, api_tokens="tok:admin")
    unauthorized = re.compile(r"status of 401")
    browser.get(server.url + "/")
    wait(browser, lambda: by_id(browser, "login").is_displayed())
    assert not by_id(browser, "main").is_displayed()
    assert_no_problems(browser, expected=unauthorized)

    type_into(by_id(browser, "token"), "not-the-token")
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait(browser, lambda: "did not accept" in by_id(browser, "login").text)
    assert_no_problems(browser, expected=unauthorized)

    type_into(by_id(browser, "token"), "tok")
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait(browser, lambda: "No jobs yet" in by_id(browser, "jobs-body").text)
    assert not by_id(browser, "login").is_displayed() and by_id(browser, "logout").is_displayed()

    browser.find_element(By.LINK_TEXT, "Submit").click()  # the token stays for the tab's other pages
    wait(browser, lambda: by_id(browser, "submit")).click()
    wait(browser, lambda: by_id(browser, "job-status").text == "queued")  # no worker: it stays queued
    wait(browser, lambda: live_mode(browser) == expected_mode(server))  # a stream read with the token too
    by_id(browser, "cancel").click()
    wait(browser, lambda: by_id(browser, "job-status").text == "cancelled")
    assert not by_id(browser, "cancel").is_displayed()
    assert_no_problems(browser)

    by_id(browser, "logout").click()
    wait(browser, lambda: by_id(browser, "login").is_displayed())
    assert_no_problems(browser, expected=unauthorized)


def test_a_comparison_started_from_its_form_shows_cells_effects_and_summary(live_server, browser):
    server = live_server(workers=1)
    browser.get(server.url + "/comparisons?live=poll")  # this tab polls: the fallback where there are no streams
    wait(browser, lambda: "No comparisons yet" in by_id(browser, "comparisons-body").text)
    type_into(browser.find_element(By.NAME, "seeds"), "2")
    type_into(browser.find_element(By.NAME, "name"), "two seeds")
    by_id(browser, "start-comparison").click()
    wait(browser, lambda: "/comparisons/" in browser.current_url)
    wait(browser, lambda: live_mode(browser) == "polling")
    wait(browser, lambda: by_id(browser, "comparison-status").text == "succeeded")
    cells = by_id(browser, "cells").find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(cells) == 4 and all("seed 2:" in c.text and "%" in c.text for c in cells)
    assert by_id(browser, "effects").find_elements(By.CSS_SELECTOR, "tbody tr code")
    wait(browser, lambda: picture_shown(browser, "summary"))
    assert by_id(browser, "comparison-title").text == "two seeds"
    assert_no_problems(browser)


@pytest.mark.parametrize("path", PAGES)
def test_pages_have_a_strict_policy_and_no_inline_code(client, path):
    response = client.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "connect-src 'self';" in policy and "unsafe" not in policy
    html = response.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html), "inline style or handler"
    for url in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        file = client.get(url)
        assert file.status_code == 200 and file.headers["x-content-type-options"] == "nosniff"


def test_pages_escape_what_they_echo_and_know_ids_are_uuids(client):
    page = client.get("/", params={"name": '"><script>alert(1)</script>'}).text
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    missing = client.get("/jobs/not-a-uuid")
    assert missing.status_code == 404 and "ids are UUIDs" in missing.text


def test_the_submit_form_is_the_specs_json_schema(client):
    html = client.get("/submit").text
    schema = job_spec_adapter.json_schema()
    for name, variant in schema["$defs"].items():
        architecture = variant["properties"]["architecture"]["const"]
        assert f'data-architecture="{architecture}"' in html, name
        for field in variant["properties"]:
            assert f'name="{field}"' in html, field
    assert re.search(r'name="epochs"[^>]*value="1"[^>]*min="1"[^>]*max="100"', html)
    assert re.search(r'name="n_features"[^>]*value="6"[^>]*min="1"[^>]*max="256"', html)
