"""Callers: API tokens, their roles, and who is calling (no FastAPI here; api/deps.py uses it).

A tokens file holds one token per line as "<sha256 hex of the token> <role>" ('#' comments and
blank lines allowed); the plain token is never stored. MNIST_JOBS_API_TOKENS ("token:role,...")
adds plain tokens for tests. With neither set the API is open: every caller is an implicit admin.
A caller is known by its token id, the first 12 hex digits of the token's sha256.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings
from service.errors import Forbidden, Unauthorized

ID_LENGTH = 12  # hex digits of the sha256 that name a token (jobs.submitted_by)


class Role(enum.IntEnum):
    """Each role may do what the ones below it may."""

    read = 1  # list, read, download
    submit = 2  # also submit, and cancel its own jobs
    admin = 3  # also cancel and delete any job


@dataclass(frozen=True)
class KnownToken:
    sha256: str  # hex digest of the plain token
    role: Role

    @property
    def id(self) -> str:
        return self.sha256[:ID_LENGTH]


@dataclass(frozen=True)
class Caller:
    """Who is calling: a token's id and role, or the open mode's anonymous admin (id None)."""

    id: str | None
    role: Role

    def require(self, role: Role) -> None:
        if self.role < role:
            raise Forbidden(f"a {self.role.name} token may not do this; it needs the {role.name} role")

    def require_owner(self, submitted_by: str | None) -> None:
        """Admins may change any job; a submit token only the jobs it submitted."""
        self.require(Role.submit)
        if self.role < Role.admin and submitted_by != self.id:
            raise Forbidden("this job was submitted by another token; only an admin may change it")


OPEN = Caller(id=None, role=Role.admin)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_role(name: str) -> Role:
    try:
        return Role[name]
    except KeyError:
        raise ValueError(f"unknown role {name!r}: one of {', '.join(r.name for r in Role)}") from None


def parse_file(text: str) -> list[KnownToken]:
    """The lines of a tokens file; ValueError names the first bad line."""
    tokens = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2 or len(fields[0]) != 64 or any(c not in "0123456789abcdef" for c in fields[0].lower()):
            raise ValueError(f"line {number}: expected '<sha256 hex of the token> <role>'")
        tokens.append(KnownToken(fields[0].lower(), parse_role(fields[1])))
    return tokens


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


def authenticate(tokens: Iterable[KnownToken], presented: str) -> Caller:
    """The caller holding `presented`. Its digest is compared with every known one in constant time."""
    presented_sha256 = digest(presented)
    found: KnownToken | None = None
    for known in tokens:
        if hmac.compare_digest(known.sha256, presented_sha256) and found is None:
            found = known
    if found is None:
        raise Unauthorized("the bearer token is not known to this server")
    return Caller(id=found.id, role=found.role)


class TokenStore:
    """The tokens the API accepts. The file is read again when it changes (a stat per call), so
    `mnist-jobs tokens create/revoke` take effect without a restart. A file that cannot be read
    or parsed accepts no file token (fail closed) until it is fixed."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.api_tokens_file
        self.plain = parse_plain(settings.api_tokens or "")
        self._stamp: tuple[int, int, int] | None = None
        self._from_file: list[KnownToken] = []
        self.error: str | None = None

    def tokens(self) -> list[KnownToken]:
        if self.path is None:
            return self.plain
        try:
            stat = self.path.stat()
            stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if stamp != self._stamp:
                self._from_file, self._stamp, self.error = parse_file(self.path.read_text()), stamp, None
        except (OSError, ValueError) as exc:
            self._from_file, self._stamp, self.error = [], None, f"{self.path}: {exc}"
        return self.plain + self._from_file


# The tokens file, as `mnist-jobs tokens` edits it.


def create(path: Path, role: Role) -> tuple[str, KnownToken]:
    """A new token: the plain token (shown once, never stored) and what the file now holds."""
    token = secrets.token_urlsafe(32)
    known = KnownToken(digest(token), role)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as file:
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            file.write("\n")
        file.write(f"{known.sha256} {role.name}\n")
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
