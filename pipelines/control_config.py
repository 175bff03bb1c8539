"""Who may control a running pipeline, and how its HTTP server is secured (`control`).

The launcher's HTTP server (`monitoring.http_host:http_port`) carries a
control API beside `/healthz`, `/readyz`, `/metrics` and the status page
(`data_ingestion.control`). This section lists its users: each has a role
and either a password hash (HTTP Basic) or a bearer token (HTTP Bearer):

| role | may |
|---|---|
| `viewer` | read the status, `/metrics` and the config (secrets masked) |
| `operator` | also pause and resume a source, acknowledge an alert, restart the pipeline |
| `admin` | also validate and apply a new config |

Without a `control` section reads stay open, as before, and every change
action is refused. With one, every request except `/healthz` and `/readyz`
needs a user. Passwords are stored as PBKDF2-SHA256 hashes
(`pbkdf2_sha256$ITERATIONS$SALT$HASH`, made by
`python -m data_ingestion ctl hash-password`); tokens are secrets, best
taken from the environment (`"token": "${CI_TOKEN}"`).

Credentials must not cross a network in clear: when users are configured and
`monitoring.http_host` is not a loopback address, `tls_certfile` and
`tls_keyfile` are required, unless `allow_plain_http` says TLS ends before
this server (a reverse proxy on the same host).

Config keys::

    "control": {"users": [
                  {"name": "shift", "role": "viewer", "password_hash": "pbkdf2_sha256$600000$..."},
                  {"name": "alice", "role": "operator", "password_hash": "pbkdf2_sha256$..."},
                  {"name": "deploy", "role": "admin", "token": "${DEPLOY_TOKEN}"}],
                "tls_certfile": "/etc/glass/ingest.crt", "tls_keyfile": "/etc/glass/ingest.key",
                "allow_plain_http": false, "drain_seconds": 10}

Example::

    >>> encoded = hash_password("correct horse", iterations=1000, salt=b"0123456789abcdef")
    >>> encoded
    'pbkdf2_sha256$1000$MDEyMzQ1Njc4OWFiY2RlZg$cBg8D2DungRB9k76szThf5ehfyBz991ay6PT8Srwk4M'
    >>> verify_password("correct horse", encoded), verify_password("wrong", encoded)
    (True, False)
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import ipaddress
import os
import re
from typing import Literal

from typed_config import check_file, check_name, check_range, check_unique, join_path, secret

__all__ = [
    "DEFAULT_DRAIN_SECONDS",
    "ROLES",
    "ControlConfig",
    "ControlUser",
    "Role",
    "hash_password",
    "is_loopback",
    "parse_password_hash",
    "verify_password",
]

Role = Literal["viewer", "operator", "admin"]
# Least to most: each role may do what the ones before it may.
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")

HASH_SCHEME = "pbkdf2_sha256"
# OWASP's 2023 figure for PBKDF2-HMAC-SHA256; about 0.3 s of one core here.
_DEFAULT_ITERATIONS = 600_000
# Below this a stolen hash is cheap to crack; tests may hash faster with `iterations`.
_MIN_ITERATIONS = 100_000
_SALT_BYTES = 16
_HASH_BYTES = 32
_MIN_TOKEN_CHARS = 16
DEFAULT_DRAIN_SECONDS = 10.0
_MAX_DRAIN_SECONDS = 600.0
_B64 = re.compile(r"[A-Za-z0-9_-]+")
_MAKE_HASH = "make one with `python -m data_ingestion ctl hash-password`"
_MAKE_TOKEN = "make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(
    password: str, *, iterations: int = _DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """`pbkdf2_sha256$ITERATIONS$SALT$HASH` (salt and hash unpadded URL-safe base64)."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, _HASH_BYTES)
    return f"{HASH_SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def parse_password_hash(encoded: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, hash) of an encoded hash; ValueError naming what is wrong."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != HASH_SCHEME:
        raise ValueError(f"not a {HASH_SCHEME}$ITERATIONS$SALT$HASH string")
    if not parts[1].isdigit():
        raise ValueError("its ITERATIONS is not a whole number")
    if not all(_B64.fullmatch(part) for part in parts[2:]):
        raise ValueError("its SALT or HASH is not base64")
    try:
        salt, digest = _unb64(parts[2]), _unb64(parts[3])
    except (binascii.Error, ValueError):
        raise ValueError("its SALT or HASH is not base64") from None
    if not salt or len(digest) != _HASH_BYTES:
        raise ValueError(f"its HASH must be {_HASH_BYTES} bytes and its SALT not empty")
    return int(parts[1]), salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches `encoded`, compared in constant time."""
    iterations, salt, expected = parse_password_hash(encoded)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def is_loopback(host: str) -> bool:
    """Whether a server bound to `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere


@dataclasses.dataclass(frozen=True)
class ControlUser:
    """One user of the control API: a role and one way to prove who it is."""

    name: str
    role: Role = dataclasses.field(metadata={"noun": "role"})
    # HTTP Basic: a PBKDF2-SHA256 hash of the password (never the password).
    password_hash: str | None = secret()
    # HTTP Bearer: a long random token, best from the environment (`${DEPLOY_TOKEN}`).
    token: str | None = secret()

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_name(at("name"), self.name)
        if (self.password_hash is None) == (self.token is None):
            errors.append(
                f"{path}: give exactly one of password_hash (HTTP Basic; {_MAKE_HASH}) and "
                "token (HTTP Bearer)"
            )
        if self.password_hash is not None:
            try:
                iterations, _, _ = parse_password_hash(self.password_hash)
            except ValueError as err:
                errors.append(f"{at('password_hash')}: {err} (not shown: a secret; {_MAKE_HASH})")
            else:
                if iterations < _MIN_ITERATIONS:
                    errors.append(
                        f"{at('password_hash')}: {iterations} iterations are too few to resist "
                        f"cracking (at least {_MIN_ITERATIONS}; {_MAKE_HASH})"
                    )
        if self.token is not None and len(self.token) < _MIN_TOKEN_CHARS:
            errors.append(
                f"{at('token')}: shorter than {_MIN_TOKEN_CHARS} characters (not shown: a "
                f"secret; {_MAKE_TOKEN})"
            )
        return errors


@dataclasses.dataclass(frozen=True)
class ControlConfig:
    """The control API's users, the HTTP server's TLS, and how a restart hands over."""

    users: tuple[ControlUser, ...] = ()
    # Both or neither: PEM files; the key must not be encrypted.
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    # True: serve plain HTTP beyond loopback anyway (TLS ends at a proxy on this host).
    allow_plain_http: bool = False
    # How long a restart waits for the sources to hand what they hold to Kafka
    # before the job is cancelled (what is left then is redelivered or spooled).
    drain_seconds: float = DEFAULT_DRAIN_SECONDS

    @staticmethod
    def drain_of(control: ControlConfig | None) -> float:
        """How long a restart drains under `control` (the config's section, or None)."""
        return DEFAULT_DRAIN_SECONDS if control is None else control.drain_seconds

    @property
    def tls(self) -> bool:
        return self.tls_certfile is not None and self.tls_keyfile is not None

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = []
        if not self.users:
            errors.append(
                f"{at('users')}: empty: add at least one user, or leave out the control section "
                "(reads then stay open and every change action is refused)"
            )
        errors += check_unique(at("users"), [user.name for user in self.users], "name")
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            given, missing = ("tls_certfile", "tls_keyfile")
            if self.tls_certfile is None:
                given, missing = missing, given
            errors.append(f"{at(missing)}: required with {given} (give both PEM files, or neither)")
        errors += check_file(at("tls_certfile"), self.tls_certfile)
        errors += check_file(at("tls_keyfile"), self.tls_keyfile)
        errors += check_range(at("drain_seconds"), self.drain_seconds, 0, _MAX_DRAIN_SECONDS)
        return errors

    def check_against(self, path: str, http_host: str, http_host_path: str) -> list[str]:
        """Credentials in clear beyond this machine: refused unless asked for."""
        if not self.users or self.tls or self.allow_plain_http or is_loopback(http_host):
            return []
        return [
            f"{path}: users are configured and {http_host_path} {http_host!r} is reachable "
            "from other machines, so passwords and tokens would cross the network in clear: "
            f"set {join_path(path, 'tls_certfile')} and {join_path(path, 'tls_keyfile')}, or "
            f"{join_path(path, 'allow_plain_http')}: true when TLS ends at a proxy on this host"
        ]
