"""Callers: API tokens, their roles and expiries, and who is calling (no FastAPI; api/deps.py uses it).

A tokens file holds one token per line as "<sha256 hex of the token> <role>", optionally followed by
"expires=<UTC time, ISO 8601>" ('#' comments and blank lines allowed); the plain token is never
stored. Lines without an expiry never expire, so files written before expiries existed keep working.
MNIST_JOBS_API_TOKENS ("token:role,...") adds plain tokens for tests. With neither set the API is
open: every caller is an implicit admin. A caller is known by its token id, the first 12 hex digits
of the token's sha256.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from service.platform.config import Settings
from service.platform.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)
ID_LENGTH = 12  # hex digits of the sha256 that name a token (jobs.submitted_by)
EXPIRES = "expires="
LINE_FORMAT = "'<sha256 hex of the token> <role> [expires=<UTC time>]'"
DURATION = re.compile(r"([1-9][0-9]{0,8})([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Role(enum.IntEnum):
    """Each role may do what the ones below it may."""

    read = 1  # list, read, download
    submit = 2  # also submit, and cancel its own jobs
    admin = 3  # also cancel and delete any job


@dataclass(frozen=True)
class KnownToken:
    sha256: str  # hex digest of the plain token
    role: Role
    expires: datetime | None = None  # UTC; None: never

    @property
    def id(self) -> str:
        return self.sha256[:ID_LENGTH]

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def line(self) -> str:
        """The token as the tokens file holds it."""
        if self.expires is None:
            return f"{self.sha256} {self.role.name}"
        return f"{self.sha256} {self.role.name} {EXPIRES}{self.expires.strftime('%Y-%m-%dT%H:%M:%SZ')}"


@dataclass(frozen=True)
class Caller:
    """Who is calling: a token's id and role, or the open mode's anonymous admin (id None)."""

    id: str | None
    role: Role

    def require(self, role: Role) -> None:
        if self.role < role:
            raise Forbidden(f"a {self.role.name} token may not do this; it needs the {role.name} role")

    def sees_submitter(self, submitted_by: str | None) -> bool:
        """Who submitted a job or comparison is shown to admins and to the token that did; any other
        token reads it as null (the open mode has no tokens to show)."""
        return self.role >= Role.admin or (self.id is not None and submitted_by == self.id)

    def require_owner(self, submitted_by: str | None) -> None:
        """Admins may change any job; a submit token only the jobs it submitted."""
        self.require(Role.submit)
        if self.role < Role.admin and submitted_by != self.id:
            raise Forbidden("this job was submitted by another token; only an admin may change it")


OPEN = Caller(id=None, role=Role.admin)


def shown_submitter(viewer: Caller | None, submitted_by: str | None) -> str | None:
    """`submitted_by` as `viewer` may see it (Caller.sees_submitter); null without a viewer."""
    return submitted_by if viewer is not None and viewer.sees_submitter(submitted_by) else None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def now_utc() -> datetime:
    return datetime.now(UTC)


def parse_role(name: str) -> Role:
    try:
        return Role[name]
    except KeyError:
        raise ValueError(f"unknown role {name!r}: one of {', '.join(r.name for r in Role)}") from None


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`: how long a new token lives."""
    match = DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: a whole number and a unit, s, m, h or d (e.g. 30d)")
    return timedelta(seconds=int(match[1]) * UNIT_SECONDS[match[2]])


def parse_line(line: str) -> KnownToken:
    """One non-comment line. The ValueError never quotes the line: it may hold a secret."""
    fields = line.split()
    sha256 = fields[0].lower() if fields else ""
    if len(fields) not in (2, 3) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"expected {LINE_FORMAT}")
    if fields[1] not in Role.__members__:
        raise ValueError(f"the role is not one of {', '.join(r.name for r in Role)}")
    expires = None
    if len(fields) == 3:
        try:
            if not fields[2].startswith(EXPIRES):
                raise ValueError
            expires = datetime.fromisoformat(fields[2].removeprefix(EXPIRES))
        except ValueError:
            raise ValueError(f"the third field is not {EXPIRES}<UTC time, e.g. 2030-01-31T12:00:00Z>") from None
        if expires.tzinfo is None:
            raise ValueError("the expiry has no time zone: end it with Z (UTC)")
        expires = expires.astimezone(UTC)
    return KnownToken(sha256, Role[fields[1]], expires)


@dataclass(frozen=True)
class Parsed:
    """A tokens file read line by line: the tokens of the lines that parse, and the first bad line."""

    tokens: list[KnownToken]
    bad_line: int | None = None
    problem: str | None = None

    @property
    def error(self) -> str | None:
        return None if self.bad_line is None else f"line {self.bad_line}: {self.problem}"


def parse_lines(text: str) -> Parsed:
    tokens: list[KnownToken] = []
    bad_line, problem = None, None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            tokens.append(parse_line(line))
        except ValueError as exc:
            if bad_line is None:
                bad_line, problem = number, str(exc)
    return Parsed(tokens, bad_line, problem)


def parse_file(text: str) -> list[KnownToken]:
    """The tokens of a whole file; ValueError names the first bad line (by number only)."""
    parsed = parse_lines(text)
    if parsed.error is not None:
        raise ValueError(parsed.error)
    return parsed.tokens


def parse_plain(spec: str) -> list[KnownToken]:
    """MNIST_JOBS_API_TOKENS: "token:role,token:role" (tests and throwaway setups)."""
    tokens = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        token, sep, role = item.rpartition(":")
        if not sep or not token:
            raise ValueError("MNIST_JOBS_API_TOKENS: expected 'token:role,token:role'")
        tokens.append(KnownToken(digest(token), parse_role(role)))
    return tokens


def configured(settings: Settings) -> bool:
    """Tokens are on once either setting is given, even while the file is missing or empty."""
    return settings.api_tokens_file is not None or bool(settings.api_tokens)


def authenticate(tokens: Iterable[KnownToken], presented: str, now: datetime | None = None) -> Caller:
    """The caller holding `presented`. Its digest is compared with every known one in constant time;
    an expired token is refused like an unknown one."""
    presented_sha256 = digest(presented)
    found: KnownToken | None = None
    for known in tokens:
        if hmac.compare_digest(known.sha256, presented_sha256) and found is None:
            found = known
    if found is None:
        raise Unauthorized("the bearer token is not known to this server")
    if found.expired(now or now_utc()):
        raise Unauthorized("the bearer token has expired")
    return Caller(id=found.id, role=found.role)


class TokenStore:
    """The tokens the API accepts. The file is read again when it changes (a stat per call), so
    `mnist-jobs tokens create/revoke` take effect without a restart; a missing file holds no token.

    A file that stops parsing while the server runs (a bad hand edit) is logged as an error on
    every reload, and `error` says why (ready answers 503 with it). Meanwhile a token keeps working
    only if its exact line is both in the last good version and still in the broken one: a broken
    line locks nobody out, and a line removed or changed in the same edit still takes effect, so
    the broken file never grants what neither version, alone, would refuse."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.api_tokens_file
        self.plain = parse_plain(settings.api_tokens or "")
        self._lock = threading.Lock()  # request threads and the events thread reload alike
        self._stamp: tuple[int, int, int] | None = None
        self._good: list[KnownToken] = []  # the last version that parsed
        self._from_file: list[KnownToken] = []
        self.error: str | None = None  # why the file is not in use as it stands; names no path

    def tokens(self) -> list[KnownToken]:
        if self.path is None:
            return self.plain
        with self._lock:
            self._reload(self.path)
            return self.plain + self._from_file

    def _reload(self, path: Path) -> None:
        try:
            stat = path.stat()
            stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if stamp == self._stamp:
                return
            text = path.read_text()
        except FileNotFoundError:  # not created yet, or deleted: no file token
            self._stamp, self._good, self._from_file, self.error = None, [], [], None
            return
        except (OSError, UnicodeDecodeError) as exc:  # read again on the next call, which logs again
            self._stamp, self._from_file = None, self._good
            self._broken(path, f"cannot be read ({type(exc).__name__})", len(self._good))
            return
        self._stamp = stamp
        parsed = parse_lines(text)
        if parsed.error is None:
            self._good = self._from_file = parsed.tokens
            if self.error is not None:
                log.info("the tokens file %s parses again: %d tokens", path, len(parsed.tokens))
            self.error = None
            return
        self._from_file = [known for known in self._good if known in parsed.tokens]
        self._broken(path, f"cannot be parsed at {parsed.error}", len(self._from_file))

    def _broken(self, path: Path, why: str, kept: int) -> None:
        self.error = why
        log.error(
            "the tokens file %s %s; until it is fixed, only the %d tokens of its last good version "
            "that it still holds are accepted, and /healthz/ready answers 503",
            path,
            why,
            kept,
        )


def still_valid(store: TokenStore, presented: str) -> str | None:
    """None while `presented` is accepted by the tokens as they are now; else why not (a held
    stream's caller is checked with this, the same reload path as a new request's)."""
    try:
        authenticate(store.tokens(), presented)
    except Unauthorized as exc:
        return exc.detail
    return None


# The tokens file, as `mnist-jobs tokens` edits it.


def create(path: Path, role: Role, lifetime: timedelta | None = None) -> tuple[str, KnownToken]:
    """A new token: the plain token (shown once, never stored) and what the file now holds. A file
    that does not parse is left alone (ValueError naming the line); an existing one becomes 0600."""
    token = secrets.token_urlsafe(32)
    expires = None if lifetime is None else (now_utc() + lifetime).replace(microsecond=0)
    known = KnownToken(digest(token), role, expires)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+") as file:
        os.fchmod(fd, 0o600)  # O_CREAT's mode only applies to a new file
        text = file.read()
        parsed = parse_lines(text)
        if parsed.error is not None:
            raise ValueError(f"{path} does not parse at {parsed.error}; fix it before adding a token")
        file.write(("\n" if text and not text.endswith("\n") else "") + known.line() + "\n")
    return token, known


def list_tokens(path: Path) -> list[KnownToken]:
    return parse_file(path.read_text()) if path.exists() else []


def revoke(path: Path, id_prefix: str) -> KnownToken:
    """Remove the one token whose id starts with `id_prefix`; the file is replaced atomically."""
    prefix = id_prefix.strip().lower()
    matches = [t for t in list_tokens(path) if prefix and t.sha256.startswith(prefix)]
    if len(matches) != 1:
        found = "no token" if not matches else f"{len(matches)} tokens"
        raise ValueError(f"{found} with an id starting with {id_prefix!r} in {path}")
    gone = matches[0]
    kept = [line for line in path.read_text().splitlines() if not line.strip().lower().startswith(gone.sha256)]
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write("".join(f"{line}\n" for line in kept))
    os.replace(temp, path)
    return gone
