"""A real `mnist-jobs serve`: uvicorn's access lines and the app's own lines carry the request id."""

from __future__ import annotations

from tests.support.processes import wait_until


def test_access_log_lines_carry_the_request_id(live_server, tmp_path):
    server = live_server(workers=0)
    answer = server.client.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers={"X-Request-ID": "trace-7"})
    assert answer.status_code == 404 and answer.headers["x-request-id"] == "trace-7"
    made = server.client.get("/healthz", headers={"X-Request-ID": "not sane!"}).headers["x-request-id"]
    log = tmp_path / "serve-0.log"

    def logged() -> str | None:
        text = log.read_text(errors="replace")
        return text if "trace-7" in text and made in text else None

    text = wait_until(logged, timeout=30)
    line = next(line for line in text.splitlines() if "[trace-7]" in line)
    assert '"GET /v1/jobs/00000000-0000-0000-0000-000000000000 HTTP/1.1" 404' in line
    assert any(f"[{made}]" in line and "/healthz" in line for line in text.splitlines())
    assert "not sane!" not in text
