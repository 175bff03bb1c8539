"""The `notifications` section of the config: who hears about critical alerts, and how.

Every alert transition on `kafka.topics.alerts` that is at least
`min_severity` and whose rule matches `rules` goes to each configured sink:
HTTP webhooks (a JSON POST) and e-mail over SMTP. Transitions that arrive
within `group_seconds` of each other are sent together: up to
`digest_threshold` of them one message each, more as one digest; a sink
sends at most `max_messages_per_minute`, and what waits meanwhile goes out as
one digest. See `data_ingestion.notifications` for how they are delivered.

Example::

    "notifications": {
      "min_severity": "alarm",
      "webhooks": [{"name": "ops", "url": "https://hooks.example.com/T0/B0/${HOOK_TOKEN}",
                    "headers": {"Authorization": "Bearer ${OPS_TOKEN}"}}],
      "email": [{"name": "shift", "host": "smtp.plant.example", "port": 587,
                 "username": "ingest", "password": "${SMTP_PASSWORD}",
                 "from_address": "ingest@plant.example", "to": ["shift-lead@plant.example"]}]
    }

    >>> from typed_config import load_section
    >>> config = load_section(NotificationsConfig, {"webhooks": [
    ...     {"name": "ops", "url": "http://127.0.0.1:8080/hook"}]}, "notifications")
    >>> (config.min_severity, config.webhooks[0].timeout_seconds, config.sinks()[0][0])
    ('alarm', 5.0, 'webhook')
    >>> config.webhooks[0]
    WebhookSink(name='ops', timeout_seconds=5.0, backoff_initial_seconds=1.0, backoff_max_seconds=60.0, ca_file=None)
"""

from __future__ import annotations

import dataclasses
import functools
import urllib.parse
from typing import Literal

from typed_config import (
    check_credentials,
    check_file,
    check_name,
    check_range,
    check_unique,
    join_path,
    secret,
)

__all__ = ["NotificationsConfig", "WebhookSink", "EmailSink", "Sink"]

_DEFAULT_WEBHOOK_TIMEOUT_SECONDS = 5.0
_DEFAULT_SMTP_TIMEOUT_SECONDS = 10.0
_DEFAULT_BACKOFF_INITIAL_SECONDS = 1.0
_DEFAULT_BACKOFF_MAX_SECONDS = 60.0
_DEFAULT_SMTP_PORT = 587
_DEFAULT_GROUP_SECONDS = 5.0
_DEFAULT_DIGEST_THRESHOLD = 3
_DEFAULT_MAX_MESSAGES_PER_MINUTE = 6


def _check_backoff(path: str, initial: float, maximum: float) -> list[str]:
    errors = check_range(join_path(path, "backoff_initial_seconds"), initial, above=0)
    if not errors and maximum < initial:
        errors.append(
            f"{join_path(path, 'backoff_max_seconds')}: {maximum:g} is less than "
            f"backoff_initial_seconds {initial:g}"
        )
    return errors


@dataclasses.dataclass(frozen=True)
class WebhookSink:
    """An HTTP(S) endpoint that receives each notification as a JSON POST.

    `url` and `headers` are secrets (a chat webhook's URL is its password):
    logs name the sink and its host only.
    """

    name: str
    url: str = secret(dataclasses.MISSING)
    headers: dict[str, str] = secret(default_factory=dict)
    timeout_seconds: float = _DEFAULT_WEBHOOK_TIMEOUT_SECONDS
    backoff_initial_seconds: float = _DEFAULT_BACKOFF_INITIAL_SECONDS
    backoff_max_seconds: float = _DEFAULT_BACKOFF_MAX_SECONDS
    # Trusted CA for an https URL signed by a plant CA; default: the system's.
    ca_file: str | None = None

    @property
    def label(self) -> str:
        return f"webhook[{self.name}]"

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc.rpartition("@")[2]

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_name(at("name"), self.name)
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            # The value is a secret: say what is wrong with it, not what it is.
            errors.append(f"{at('url')}: must be an http:// or https:// URL with a host")
        errors += check_range(at("timeout_seconds"), self.timeout_seconds, above=0)
        errors += _check_backoff(path, self.backoff_initial_seconds, self.backoff_max_seconds)
        errors += check_file(at("ca_file"), self.ca_file)
        return errors


@dataclasses.dataclass(frozen=True)
class EmailSink:
    """An SMTP server that mails each notification to `to`."""

    name: str
    host: str
    from_address: str
    to: tuple[str, ...]
    port: int = _DEFAULT_SMTP_PORT
    # starttls: plain connection upgraded to TLS (port 587); ssl: TLS from the
    # start (465); none: no encryption (a relay on the plant network only).
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: str | None = secret()
    subject_prefix: str | None = None
    timeout_seconds: float = _DEFAULT_SMTP_TIMEOUT_SECONDS
    backoff_initial_seconds: float = _DEFAULT_BACKOFF_INITIAL_SECONDS
    backoff_max_seconds: float = _DEFAULT_BACKOFF_MAX_SECONDS
    ca_file: str | None = None

    @property
    def label(self) -> str:
        return f"email[{self.name}]"

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_name(at("name"), self.name)
        if not self.host:
            errors.append(f"{at('host')}: must not be empty (the SMTP server's name or address)")
        errors += check_range(at("port"), self.port, 1, 65_535)
        addresses = [(at("from_address"), self.from_address)] + [
            (join_path(at("to"), index), item) for index, item in enumerate(self.to)
        ]
        for where, address in addresses:
            if "@" not in address.strip("@"):
                errors.append(f"{where}: {address!r} is not an e-mail address (name@host)")
        if not self.to:
            errors.append(f"{at('to')}: must list at least one recipient")
        errors += check_credentials(path, self.username, self.password)
        if self.username is not None and self.password is None:
            errors.append(f'{at("password")}: required with a username (e.g. "${{SMTP_PASSWORD}}")')
        if self.password is not None and self.security == "none":
            errors.append(
                f"{at('security')}: 'none' would send the password in clear text "
                "(use starttls or ssl)"
            )
        errors += check_range(at("timeout_seconds"), self.timeout_seconds, above=0)
        errors += _check_backoff(path, self.backoff_initial_seconds, self.backoff_max_seconds)
        errors += check_file(at("ca_file"), self.ca_file)
        return errors


Sink = WebhookSink | EmailSink


@dataclasses.dataclass(frozen=True)
class NotificationsConfig:
    """The `notifications` section; no sinks (the default) means no notifications."""

    # alarm: only alarms (act now); warning: warnings too.
    min_severity: Literal["warning", "alarm"] = "alarm"
    # fnmatch patterns on the alert's rule (`device_silent`, `connection_lost`, `z*`).
    rules: tuple[str, ...] = ("*",)
    group_seconds: float = _DEFAULT_GROUP_SECONDS
    digest_threshold: int = _DEFAULT_DIGEST_THRESHOLD
    max_messages_per_minute: int = _DEFAULT_MAX_MESSAGES_PER_MINUTE
    # Kafka consumer group prefix; default `glass-notify.<pipeline.name>`.
    consumer_group: str | None = None
    webhooks: tuple[WebhookSink, ...] = ()
    email: tuple[EmailSink, ...] = ()

    def sinks(self) -> list[tuple[str, Sink]]:
        """(kind, sink) for every configured sink."""
        return [("webhook", hook) for hook in self.webhooks] + [
            ("email", mail) for mail in self.email
        ]

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_range(at("group_seconds"), self.group_seconds, 0)
        errors += check_range(at("digest_threshold"), self.digest_threshold, 1)
        errors += check_range(at("max_messages_per_minute"), self.max_messages_per_minute, 1)
        if not self.rules:
            errors.append(f'{at("rules")}: must list at least one pattern (["*"] for all)')
        if self.consumer_group is not None:
            errors += check_name(at("consumer_group"), self.consumer_group)
        errors += check_unique(at("webhooks"), [hook.name for hook in self.webhooks], "name")
        errors += check_unique(at("email"), [mail.name for mail in self.email], "name")
        return errors
