"""`mnist-jobs tokens create/list/revoke` and `serve`'s refusal to listen openly beyond loopback,
as real processes; and a live `serve` with a tokens file, checked over a real socket."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

from tests.support.processes import LiveServer, run_cli
from tests.support.settings import settings_env


def cli(settings, *args: str, **overrides: object) -> subprocess.CompletedProcess[str]:
    return run_cli(settings_env(settings, **overrides), *args, timeout=120)


def test_tokens_create_list_revoke(settings, tmp_path):
    path = tmp_path / "tokens"
    created = cli(settings, "tokens", "create", "--role", "submit", "--file", str(path))
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert len(token) >= 40 and "\n" not in token, "stdout is the token alone"
    token_id = created.stderr.split()[1]
    assert len(token_id) == 12 and "shown only this once" in created.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    assert token not in path.read_text() and path.read_text().startswith(token_id)

    # The file from the setting, when --file is not given.
    admin = cli(settings, "tokens", "create", "--role", "admin", api_tokens_file=str(path))
    assert admin.returncode == 0, admin.stderr
    listed = cli(settings, "tokens", "list", "--file", str(path))
    assert listed.returncode == 0 and f"{token_id}   submit" in listed.stdout and "admin" in listed.stdout
    assert token not in listed.stdout

    revoked = cli(settings, "tokens", "revoke", token_id[:8], "--file", str(path))
    assert revoked.returncode == 0 and token_id in revoked.stdout
    assert token_id not in cli(settings, "tokens", "list", "--file", str(path)).stdout
    again = cli(settings, "tokens", "revoke", token_id, "--file", str(path))
    assert again.returncode == 1 and "no token" in again.stderr

    nowhere = cli(settings, "tokens", "list")
    assert nowhere.returncode == 2 and "MNIST_JOBS_API_TOKENS_FILE" in nowhere.stderr


def test_serve_refuses_a_public_host_without_tokens_unless_insecure(settings):
    refused = cli(settings, "serve", "--host", "0.0.0.0", "--workers", "0")
    assert refused.returncode == 2
    assert "--insecure" in refused.stderr and "tokens create" in refused.stderr


def test_a_live_server_with_a_tokens_file_wants_a_token_and_shows_no_banner(settings, tmp_path):
    path = tmp_path / "tokens"
    token = cli(settings, "tokens", "create", "--role", "read", "--file", str(path)).stdout.strip()
    server = LiveServer(settings.model_copy(update={"api_tokens_file": path}), 0, tmp_path / "serve.log")
    try:
        anonymous = server.client.get("/v1/jobs")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        assert "server" not in anonymous.headers
        ok = server.client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        foreign = server.client.get("/healthz", headers={"Host": "rebound.example"})
        assert foreign.status_code == 400 and foreign.headers["content-type"] == "application/problem+json"
        big = server.client.post("/v1/jobs", content=b" " * 200_000, headers={"Content-Type": "application/json"})
        assert big.status_code == 413
    finally:
        server.stop()
    assert "open to anyone" not in (tmp_path / "serve.log").read_text()


def test_serve_without_tokens_says_it_is_open(settings, tmp_path):
    server = LiveServer(settings, 0, tmp_path / "serve.log")
    server.stop()
    assert "open to anyone who can reach it" in (tmp_path / "serve.log").read_text()


def test_tokens_create_with_an_expiry_and_list_shows_it(settings, tmp_path):
    path = tmp_path / "tokens"
    created = cli(settings, "tokens", "create", "--role", "read", "--expires", "30d", "--file", str(path))
    assert created.returncode == 0, created.stderr
    token_id = created.stderr.split()[1]
    expires = datetime.fromisoformat(created.stderr.split("expires ")[1].split(")")[0])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    assert cli(settings, "tokens", "create", "--role", "admin", "--file", str(path)).returncode == 0
    listed = cli(settings, "tokens", "list", "--file", str(path)).stdout.splitlines()
    assert listed[0].split() == ["ID", "ROLE", "EXPIRES"]
    assert listed[1].split() == [token_id, "read", expires.isoformat()]
    assert listed[2].split()[1:] == ["admin", "never"]
    bad = cli(settings, "tokens", "create", "--role", "read", "--expires", "1 month", "--file", str(path))
    assert bad.returncode == 2 and "--expires" in bad.stderr and "not a duration" in bad.stderr


def test_tokens_create_refuses_a_broken_file_and_makes_an_open_one_0600(settings, tmp_path):
    path = tmp_path / "tokens"
    assert cli(settings, "tokens", "create", "--role", "admin", "--file", str(path)).returncode == 0
    broken = path.read_text() + "pasted-secret-by-mistake\n"
    path.write_text(broken)
    refused = cli(settings, "tokens", "create", "--role", "read", "--file", str(path))
    assert refused.returncode == 1 and "line 2" in refused.stderr and "pasted-secret" not in refused.stderr
    assert path.read_text() == broken, "nothing appended to a file that does not parse"
    listed = cli(settings, "tokens", "list", "--file", str(path))
    assert listed.returncode == 1 and "line 2" in listed.stderr

    path.write_text(broken.splitlines()[0] + "\n")
    path.chmod(0o644)
    assert cli(settings, "tokens", "create", "--role", "read", "--file", str(path)).returncode == 0
    assert path.stat().st_mode & 0o777 == 0o600


def test_serve_refuses_to_start_with_a_tokens_file_that_does_not_parse(settings, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# tokens\n{'a' * 64} admin\n{'b' * 64} root-secret\n")
    refused = cli(settings, "serve", "--workers", "0", "--port", "0", api_tokens_file=str(path))
    assert refused.returncode == 2, refused.stderr
    assert str(path) in refused.stderr and "line 3" in refused.stderr and "root-secret" not in refused.stderr
