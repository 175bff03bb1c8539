"""Who may do what on the control API: roles, the routes, authentication, the audit.

The server side of `data_ingestion.control`, kept apart so that the HTTP
server (`data_ingestion.monitoring`) and the actions (`Controller`) both
build on it without importing each other. Users, roles and password hashes
are configured in `pipelines.control_config`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipelines.control_config import (
    ROLES,
    ControlConfig,
    Role,
    hash_password,
    parse_password_hash,
    verify_password,
)

__all__ = [
    "ANONYMOUS",
    "MAX_BODY_BYTES",
    "REQUIRED_ROLE",
    "Access",
    "Action",
    "AuditEntry",
    "AuthenticationFailed",
    "ControlError",
    "Identity",
    "allowed",
    "audit",
    "masked_config",
    "route",
]

_AUDIT = logging.getLogger("data_ingestion.audit")

MAX_BODY_BYTES = 4 * 1024 * 1024
_MASK = "***"
_DECOY_ITERATIONS = 100_000


class Action(enum.Enum):
    """What a request asks for; `REQUIRED_ROLE` says who may."""

    READ = "read"
    PAUSE = "pause"
    RESUME = "resume"
    ACK = "ack"
    RESTART = "restart"
    VALIDATE_CONFIG = "validate-config"
    APPLY_CONFIG = "apply-config"


# The least role that may do each action; a role may do all its predecessors may.
REQUIRED_ROLE: dict[Action, Role] = {
    Action.READ: "viewer",
    Action.PAUSE: "operator",
    Action.RESUME: "operator",
    Action.ACK: "operator",
    Action.RESTART: "operator",
    Action.VALIDATE_CONFIG: "admin",
    Action.APPLY_CONFIG: "admin",
}


def allowed(role: Role, action: Action) -> bool:
    """Whether `role` may do `action`."""
    return ROLES.index(role) >= ROLES.index(REQUIRED_ROLE[action])


_ROUTES: tuple[tuple[re.Pattern[str], Action], ...] = (
    (re.compile(r"/api/sources/([A-Za-z0-9_.-]+)/pause"), Action.PAUSE),
    (re.compile(r"/api/sources/([A-Za-z0-9_.-]+)/resume"), Action.RESUME),
    (re.compile(r"/api/alerts/([0-9a-f]{1,64})/ack"), Action.ACK),
    (re.compile(r"/api/restart()"), Action.RESTART),
    (re.compile(r"/api/config/validate()"), Action.VALIDATE_CONFIG),
    (re.compile(r"/api/config/apply()"), Action.APPLY_CONFIG),
)


def route(path: str) -> tuple[Action, str] | None:
    """(action, target) of a POST to `path`; None if it names no action."""
    for pattern, action in _ROUTES:
        match = pattern.fullmatch(path)
        if match is not None:
            return action, match.group(1)
    return None


# -- who is asking ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Identity:
    """An authenticated user (`anonymous`, role viewer, when no control section is set)."""

    name: str
    role: Role


ANONYMOUS = Identity("anonymous", "viewer")


class AuthenticationFailed(Exception):
    """Credentials were given and are wrong; the message is for the log, not the client."""


class Access:
    """Who sent a request, from its `Authorization` header.

    PBKDF2 is slow on purpose (about 0.3 s): a password that verified once is
    remembered as an HMAC under a key of this process, so the status page's
    polling costs one hash, not one PBKDF2, a request.
    """

    def __init__(self, control: ControlConfig | None) -> None:
        self.configured = control is not None
        users = control.users if control is not None else ()
        self._hashes = {u.name: (u.role, u.password_hash) for u in users if u.password_hash}
        self._tokens = [(u.name, u.role, u.token) for u in users if u.token]
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self._decoy: str | None = None

    def identify(self, authorization: str | None) -> Identity | None:
        """The caller; None without credentials; raises `AuthenticationFailed` for wrong ones."""
        if not authorization:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "basic":
            return self._basic(value.strip())
        if scheme.lower() == "bearer":
            return self._bearer(value.strip())
        raise AuthenticationFailed(f"unsupported scheme {scheme[:20]!r} (use Basic or Bearer)")

    def _basic(self, value: str) -> Identity:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationFailed("malformed Basic credentials") from None
        name, sep, password = decoded.partition(":")
        if not sep:
            raise AuthenticationFailed("malformed Basic credentials (no ':')")
        entry = self._hashes.get(name)
        mac = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        remembered = self._verified.get(name)
        if entry is not None and remembered is not None and hmac.compare_digest(remembered, mac):
            return Identity(name, entry[0])
        if entry is None:
            verify_password(password, self._decoy_hash())
            raise AuthenticationFailed(f"no user {name[:40]!r} with a password")
        if not verify_password(password, entry[1]):
            raise AuthenticationFailed(f"wrong password for {name!r}")
        self._verified[name] = mac
        return Identity(name, entry[0])

    def _decoy_hash(self) -> str:
        """Checked when the user is unknown, as slow as the slowest real one, so the
        time an answer takes does not tell who exists."""
        if self._decoy is None:
            iterations = max(
                (parse_password_hash(encoded)[0] for _, encoded in self._hashes.values()),
                default=_DECOY_ITERATIONS,
            )
            self._decoy = hash_password(secrets.token_hex(8), iterations=iterations)
        return self._decoy

    def _bearer(self, value: str) -> Identity:
        found = None
        presented = value.encode()
        for name, role, token in self._tokens:
            # Every token is compared, so timing does not tell which one was close.
            if hmac.compare_digest(token.encode(), presented) and found is None:
                found = Identity(name, role)
        if found is None:
            raise AuthenticationFailed("unknown bearer token")
        return found


# -- audit -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    """One change asked for: who, from where, what, and how it ended.

    `outcome` is `done` (carried out), `refused` (allowed, but not possible:
    an unknown source, an invalid config) or `denied` (not authenticated or
    not allowed).
    """

    user: str
    role: str
    client: str
    action: str
    target: str
    outcome: str
    status: int
    detail: str
    ts: float = dataclasses.field(default_factory=time.time)

    def line(self) -> str:
        target = f" {self.target}" if self.target else ""
        return (
            f"audit: {self.action}{target} by {self.user} ({self.role}) from {self.client}: "
            f"{self.outcome} ({self.status}) {self.detail}"
        ).rstrip()

    def record(self, pipeline: str) -> dict[str, Any]:
        from records import format_ts

        fields = dataclasses.asdict(self)
        fields.update(pipeline=pipeline, ts=format_ts(self.ts), kind="audit")
        return fields


def audit(entry: AuditEntry, sink: Callable[[AuditEntry], None] | None = None) -> None:
    """Logs `entry` (denied: WARNING) and hands it to `sink` (the health topic)."""
    level = logging.WARNING if entry.outcome == "denied" else logging.INFO
    _AUDIT.log(level, "%s", entry.line())
    if sink is not None:
        sink(entry)


# -- what the server answers ---------------------------------------------------------


class ControlError(Exception):
    """A request that cannot be done: the HTTP status, why, and every config error."""

    def __init__(self, status: int, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors or [])

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error": self.message}
        if self.errors:
            body["errors"] = self.errors
        return body


def masked_config(config: object) -> Any:
    """`config` as JSON-ready data with every `secret()` field's value shown as `***`."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        data = {}
        for field in dataclasses.fields(config):
            value = getattr(config, field.name)
            if field.metadata.get("secret") and value:
                value = {key: _MASK for key in value} if isinstance(value, Mapping) else _MASK
                data[field.name] = value
            else:
                data[field.name] = masked_config(value)
        return data
    if isinstance(config, enum.Enum):
        return config.value
    if isinstance(config, (list, tuple)):
        return [masked_config(item) for item in config]
    if isinstance(config, Mapping):
        return {str(key): masked_config(item) for key, item in config.items()}
    return config
