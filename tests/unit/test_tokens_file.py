"""The tokens file: expiries (and files written before them), what a server does with a file that
stops parsing while it runs, and `/healthz/ready` saying so; through the real app and real files."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from service.platform import auth
from service.platform.errors import Unauthorized
from tests.support.settings import migrate

SECRET = "do-not-log-this-line"  # a broken line may hold a plain token: it is never repeated


def test_an_old_file_without_expiries_still_parses_and_an_expiry_round_trips(tmp_path):
    old = f"# written before expiries\n{'a' * 64} admin\n{'b' * 64} read\n"
    assert [(t.role, t.expires) for t in auth.parse_file(old)] == [(auth.Role.admin, None), (auth.Role.read, None)]
    path = tmp_path / "tokens"
    path.write_text(old)
    _, known = auth.create(path, auth.Role.read, timedelta(days=30))
    assert known.expires is not None and known.expires.tzinfo is UTC
    assert timedelta(days=29) < known.expires - datetime.now(UTC) <= timedelta(days=30)
    assert path.read_text().startswith(old), "the lines already there are kept as they were"
    assert path.read_text().splitlines()[-1].endswith(known.expires.strftime("expires=%Y-%m-%dT%H:%M:%SZ"))
    assert auth.list_tokens(path)[-1] == known
    offset = auth.parse_line(f"{'c' * 64} read expires=2030-01-01T02:00:00+02:00")
    assert offset.expires == datetime(2030, 1, 1, tzinfo=UTC), "any offset is read as the UTC time it means"


@pytest.mark.parametrize(
    "line",
    [
        f"{'a' * 64} read expires=tomorrow",
        f"{'a' * 64} read expires=2030-01-01T00:00:00",  # no zone: ambiguous
        f"{'a' * 64} read until=2030-01-01T00:00:00Z",
        f"{'a' * 64} read expires=2030-01-01T00:00:00Z extra",
        f"{'a' * 64} {SECRET}",
        SECRET,
    ],
)
def test_a_bad_line_is_named_by_number_and_never_quoted(line):
    with pytest.raises(ValueError, match=r"^line 3: ") as raised:
        auth.parse_file(f"# tokens\n{'b' * 64} admin\n{line}\n")
    assert SECRET not in str(raised.value) and "tomorrow" not in str(raised.value)


def test_durations():
    assert auth.parse_duration("45s") == timedelta(seconds=45)
    assert auth.parse_duration("90m") == timedelta(minutes=90)
    assert auth.parse_duration("12h") == timedelta(hours=12)
    assert auth.parse_duration("30d") == timedelta(days=30)
    for bad in ("30", "d", "0d", "-1d", "1.5h", "30 days", "1w"):
        with pytest.raises(ValueError, match="not a duration"):
            auth.parse_duration(bad)


def test_an_expired_token_is_refused_like_an_unknown_one():
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    known = auth.KnownToken(auth.digest("t"), auth.Role.admin, expires)
    assert auth.authenticate([known], "t", now=expires - timedelta(seconds=1)).role == auth.Role.admin
    with pytest.raises(Unauthorized, match="expired"):
        auth.authenticate([known], "t", now=expires)


def test_a_file_that_breaks_while_serving_keeps_only_what_both_versions_allow(settings, tmp_path, caplog):
    """A broken line locks nobody out, but a line removed in the same edit still takes effect; ready
    answers 503 naming the tokens file (never its path), every reload logs, and a fix clears it."""
    from api.app import create_app

    path = tmp_path / "tokens"
    admin, _ = auth.create(path, auth.Role.admin)
    reader, reader_known = auth.create(path, auth.Role.read)
    settings = settings.model_copy(update={"api_tokens": None, "api_tokens_file": path})
    migrate(settings.database_url)
    caplog.set_level(logging.ERROR, logger="service.platform.auth")
    with TestClient(create_app(settings)) as client:

        def status(token: str) -> int:
            return client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code

        assert (status(admin), status(reader), client.get("/healthz/ready").status_code) == (200, 200, 200)
        good = path.read_text()

        path.write_text(good + f"{SECRET}\n")
        ready = client.get("/healthz/ready")
        assert ready.status_code == 503 and ready.headers["content-type"] == "application/problem+json"
        assert "tokens file" in ready.json()["detail"] and "line 3" in ready.json()["detail"]
        assert str(tmp_path) not in ready.text and SECRET not in ready.text
        assert client.get("/healthz").status_code == 503
        assert (status(admin), status(reader)) == (200, 200), "the last good tokens keep working"
        errors = [r.getMessage() for r in caplog.records]
        assert len(errors) == 1 and "line 3" in errors[0] and str(path) in errors[0] and SECRET not in errors[0]

        # A hand edit that drops the reader's line and breaks another: the reader is out at once.
        kept = [line for line in good.splitlines() if not line.startswith(reader_known.sha256)]
        path.write_text("\n".join(kept) + f"\n{SECRET} again\n")
        assert (status(admin), status(reader)) == (200, 401)
        assert len(caplog.records) == 2 and "line 2" in caplog.records[-1].getMessage(), "each reload logs"
        # A line added to a broken file grants nothing until the file parses.
        newcomer = "new-token"
        path.write_text(path.read_text() + f"{auth.digest(newcomer)} admin\n")
        assert status(newcomer) == 401

        path.write_text(good)
        assert client.get("/healthz/ready").status_code == 200
        assert (status(admin), status(reader), status(newcomer)) == (200, 200, 401)

        path.unlink()  # no file: no token, which is not an error (the state before the first create)
        assert (status(admin), client.get("/healthz/ready").status_code) == (401, 200)


def test_a_broken_file_at_start_lets_no_token_in_and_is_not_ready(settings, tmp_path):
    from api.app import create_app

    path = tmp_path / "tokens"
    admin, _ = auth.create(path, auth.Role.admin)
    path.write_text(path.read_text() + "garbage\n")
    settings = settings.model_copy(update={"api_tokens": None, "api_tokens_file": path})
    migrate(settings.database_url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {admin}"}).status_code == 401
        assert client.get("/healthz/ready").status_code == 503


def test_create_refuses_a_broken_file_and_tightens_an_open_one(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"{'a' * 64} admin\n{SECRET}\n")
    with pytest.raises(ValueError, match="line 2") as raised:
        auth.create(path, auth.Role.read)
    assert SECRET not in str(raised.value)
    assert path.read_text() == f"{'a' * 64} admin\n{SECRET}\n", "nothing appended"

    path.write_text(f"{'a' * 64} admin")  # no final newline
    path.chmod(0o644)
    _, known = auth.create(path, auth.Role.read)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [t.sha256 for t in auth.list_tokens(path)] == ["a" * 64, known.sha256]
