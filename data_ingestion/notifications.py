"""Critical alerts to people: `glass.alerts` -> HTTP webhooks and e-mail.

The pipeline writes every alert transition (a condition raised, then
cleared) to `kafka.topics.alerts`. `Notifications` reads that topic in the
launcher process, one Kafka consumer per configured sink (see
`pipelines.notifications_config`), and sends what passes the filter:

- at least `min_severity`, rule matching `rules`;
- once: a transition seen before (the pipeline is at-least-once, so a
  retried bundle may write an alert twice) is not sent again;
- grouped: transitions that arrive within `group_seconds` of each other go
  out together, up to `digest_threshold` as one message each, more as one
  digest; at most `max_messages_per_minute` per sink, and what waits
  meanwhile goes out as one digest.

Why here and not in the pipeline: the topic is durable and ordered per key,
so a consumer that commits its offset only after the sink took the message
is at-least-once across restarts of either side, for free; a DoFn after
`DetectAnomalies` would sit behind a shuffle whose state a Prism crash loses,
would notify again on every bundle retry and every Flink restore, and its
rate limit and digest would be per worker rather than per plant. A slow or
dead sink only makes its own consumer lag: the pipeline never waits for it.
With workers elsewhere (Flink), the same runs beside the job:
`python -m data_ingestion notify --config FILE`.

Delivery: a webhook gets a JSON POST (`{"pipeline", "kind": "alert"|"digest",
"count", "text", "alerts": [alert records as on Kafka]}`, `text` also makes it
a Slack/Teams message) within `timeout_seconds`; e-mail goes over SMTP with
STARTTLS (or TLS) and login. A timeout, a refused connection, HTTP 408/429/5xx
or an SMTP 4xx is retried with capped exponential backoff for as long as it
lasts (the alerts wait in Kafka, and what piles up goes out as one digest);
any other refusal (HTTP 4xx, a wrong password, an untrusted certificate) is
logged as an error and that message dropped: retrying cannot mend a config.

Example::

    notifications = start_notifications(config)     # None without sinks
    ...
    notifications.stop()

    python -m data_ingestion notify --config data_ingestion_config.json
"""

from __future__ import annotations

import collections
import dataclasses
import email.message
import email.utils
import fnmatch
import functools
import logging
import math
import smtplib
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from connectors.base import Backoff
from connectors.kafka import producer_settings
from pipelines.notifications_config import (
    EmailSink,
    NotificationsConfig,
    Sink,
    WebhookSink,
)

if TYPE_CHECKING:
    from pipelines.config import DataIngestionConfig

__all__ = [
    "Notifications",
    "start_notifications",
    "Gate",
    "Item",
    "Message",
    "DeliveryError",
    "deliver_webhook",
    "deliver_email",
]

_LOGGER = logging.getLogger(__name__)

_SEVERITY_RANK = {"warning": 0, "alarm": 1}
_DEDUP_MEMORY = 10_000
_RATE_WINDOW_SECONDS = 60.0
_MAX_DIGEST_ALERTS = 200
_POLL_SECONDS = 0.5
_CONNECT_RETRY_SECONDS = (1.0, 30.0)
# On a sink's first start (no committed position) it begins this far back,
# so alerts of the minutes before its first start are not missed.
_FIRST_START_LOOKBACK_SECONDS = 300.0
_USER_AGENT = "glass-line-ingest"
# HTTP statuses worth another try: the endpoint is busy or briefly broken.
_RETRIABLE_HTTP = frozenset({408, 425, 429})


class DeliveryError(Exception):
    """A message the sink did not take; `retriable` says whether trying again may help."""

    def __init__(self, reason: str, *, retriable: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.retriable = retriable
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class Item:
    """One alert transition (its record as on Kafka) and where it was read."""

    record: dict[str, Any]
    partition: int = 0
    offset: int = 0


def _identity(record: dict[str, Any]) -> tuple[Any, ...]:
    # A condition is (device, tag, rule, start); raise and clear are its two transitions.
    return tuple(record.get(key) for key in ("device", "tag", "rule", "start", "state"))


def describe(record: dict[str, Any]) -> str:
    """One line for people: `RAISED alarm device_silent on device iot: no reading for 65 s`."""
    tag, device = record.get("tag") or "", record.get("device") or "?"
    where = f"{tag} ({record.get('source')} {device})" if tag else f"device {device}"
    when = f"since {record.get('start')}"
    if record.get("state") == "cleared":
        when = f"from {record.get('start')} to {record.get('end')}"
    detail = record.get("detail") or ""
    return (
        f"{str(record.get('state', '?')).upper()} {record.get('severity', '?')} "
        f"{record.get('rule', '?')} on {where}{': ' + detail if detail else ''} ({when})"
    )


@dataclasses.dataclass(frozen=True)
class Message:
    """What one send carries: one transition, or a digest of several."""

    items: tuple[Item, ...]
    digest: bool

    @property
    def records(self) -> list[dict[str, Any]]:
        return [item.record for item in self.items]

    def text(self, pipeline: str) -> str:
        if not self.digest:
            return f"{pipeline}: {describe(self.items[0].record)}"
        states = collections.Counter(record.get("state") for record in self.records)
        lines = [
            f"{pipeline}: {len(self.items)} alert changes "
            f"({states['raised']} raised, {states['cleared']} cleared)"
        ]
        lines += [f"- {describe(record)}" for record in self.records[:_MAX_DIGEST_ALERTS]]
        if len(self.items) > _MAX_DIGEST_ALERTS:
            lines.append(f"- ... and {len(self.items) - _MAX_DIGEST_ALERTS} more")
        return "\n".join(lines)

    def webhook_body(self, pipeline: str) -> bytes:
        records = self.records
        return orjson.dumps(
            {
                "pipeline": pipeline,
                "kind": "digest" if self.digest else "alert",
                "count": len(records),
                "text": self.text(pipeline),
                "alerts": records[:_MAX_DIGEST_ALERTS],
                "omitted": max(0, len(records) - _MAX_DIGEST_ALERTS),
            }
        )

    def email(self, pipeline: str, sink: EmailSink) -> email.message.EmailMessage:
        prefix = sink.subject_prefix if sink.subject_prefix is not None else f"[{pipeline}]"
        if self.digest:
            states = collections.Counter(record.get("state") for record in self.records)
            subject = (
                f"{len(self.items)} alert changes: {states['raised']} raised, "
                f"{states['cleared']} cleared"
            )
        else:
            record = self.items[0].record
            where = record.get("tag") or f"device {record.get('device')}"
            subject = (
                f"{str(record.get('state')).upper()} {record.get('severity')} "
                f"{record.get('rule')} {where}"
            )
        mail = email.message.EmailMessage()
        mail["Subject"] = f"{prefix} {subject}".strip()
        mail["From"] = sink.from_address
        mail["To"] = ", ".join(sink.to)
        mail["Date"] = email.utils.formatdate(localtime=False)
        mail["Message-ID"] = email.utils.make_msgid(domain=sink.from_address.rpartition("@")[2])
        body = (
            self.text(pipeline)
            + "\n\n"
            + orjson.dumps(self.records[:_MAX_DIGEST_ALERTS], option=orjson.OPT_INDENT_2).decode()
        )
        mail.set_content(body + "\n")
        return mail


class Gate:
    """Which alert transitions become which messages, and when. No I/O, no clock:
    every method takes `now` (monotonic seconds).

    `offer` keeps a transition that passes the filter and was not seen
    before; `next_message` hands out what is due (after `group_seconds`,
    within the rate limit), one message per transition up to
    `digest_threshold` pending, else one digest of all; `sent` counts a
    message the sink took; `requeue` puts back one it did not, to be tried
    (with whatever arrived meanwhile) not before `until`.
    """

    def __init__(self, config: NotificationsConfig, *, memory: int = _DEDUP_MEMORY) -> None:
        self._config = config
        self._min_rank = _SEVERITY_RANK[config.min_severity]
        self._memory = memory
        self._seen: collections.OrderedDict[tuple[Any, ...], None] = collections.OrderedDict()
        self._pending: list[Item] = []
        self._first_at: float | None = None
        self._hold_until = -math.inf
        self._sent_at: collections.deque[float] = collections.deque()

    @property
    def pending(self) -> tuple[Item, ...]:
        return tuple(self._pending)

    def wanted(self, record: dict[str, Any]) -> bool:
        rank = _SEVERITY_RANK.get(str(record.get("severity")), -1)
        rule = str(record.get("rule", ""))
        return rank >= self._min_rank and any(
            fnmatch.fnmatchcase(rule, pattern) for pattern in self._config.rules
        )

    def offer(self, item: Item, now: float) -> bool:
        """True if `item` will be notified; False if filtered out or seen before."""
        if not self.wanted(item.record):
            return False
        key = _identity(item.record)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self._memory:
            self._seen.popitem(last=False)
        if not self._pending:
            self._first_at = now
        self._pending.append(item)
        return True

    def _due_at(self, now: float) -> float:
        if not self._pending or self._first_at is None:
            return math.inf
        due = max(self._first_at + self._config.group_seconds, self._hold_until)
        sent = self._sent_at
        while sent and sent[0] <= now - _RATE_WINDOW_SECONDS:
            sent.popleft()
        if len(sent) >= self._config.max_messages_per_minute:
            due = max(due, sent[0] + _RATE_WINDOW_SECONDS)
        return due

    def wait_seconds(self, now: float) -> float:
        """How long until `next_message` may have something (inf: nothing pending)."""
        return max(0.0, self._due_at(now) - now)

    def next_message(self, now: float) -> Message | None:
        if self._due_at(now) > now:
            return None
        if len(self._pending) <= self._config.digest_threshold:
            item = self._pending.pop(0)
            message = Message((item,), digest=False)
        else:
            message = Message(tuple(self._pending), digest=True)
            self._pending = []
        if not self._pending:
            self._first_at = None
        return message

    def sent(self, now: float) -> None:
        self._sent_at.append(now)

    def requeue(self, message: Message, *, until: float) -> None:
        self._pending[:0] = message.items
        self._first_at = -math.inf
        self._hold_until = until


# ---------------------------------------------------------------- delivery


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


def deliver_webhook(sink: WebhookSink, body: bytes) -> None:
    """POSTs `body` (JSON) to the sink's URL; raises `DeliveryError` unless a 2xx came back."""
    request = urllib.request.Request(
        sink.url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": _USER_AGENT, **sink.headers},
    )
    context = _tls_context(sink.ca_file) if sink.url.lower().startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=sink.timeout_seconds, context=context) as got:
            got.read()
    except urllib.error.HTTPError as err:
        retry_after: float | None = None
        try:
            retry_after = float(err.headers.get("Retry-After", ""))
        except (TypeError, ValueError):
            pass
        retriable = err.code in _RETRIABLE_HTTP or err.code >= 500
        raise DeliveryError(
            f"HTTP {err.code} {err.reason}", retriable=retriable, retry_after=retry_after
        ) from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLCertVerificationError):
            raise DeliveryError(
                f"TLS certificate not trusted ({err.reason.verify_message}); set ca_file",
                retriable=False,
            ) from None
        raise DeliveryError(f"no answer ({err.reason})", retriable=True) from None
    except (TimeoutError, OSError) as err:
        raise DeliveryError(f"no answer ({err or type(err).__name__})", retriable=True) from None


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def deliver_email(sink: EmailSink, mail: email.message.EmailMessage) -> None:
    """Sends `mail` through the sink's SMTP server; raises `DeliveryError` if it is refused."""
    context = _tls_context(sink.ca_file)
    try:
        smtp: smtplib.SMTP
        if sink.security == "ssl":
            smtp = smtplib.SMTP_SSL(
                sink.host, sink.port, timeout=sink.timeout_seconds, context=context
            )
        else:
            smtp = smtplib.SMTP(sink.host, sink.port, timeout=sink.timeout_seconds)
        with smtp:
            if sink.security == "starttls":
                smtp.starttls(context=context)
            if sink.username is not None:
                smtp.login(sink.username, sink.password or "")
            smtp.send_message(mail)
    except smtplib.SMTPAuthenticationError as err:
        raise DeliveryError(
            f"login as {sink.username!r} refused ({err.smtp_code})", retriable=False
        ) from None
    except smtplib.SMTPNotSupportedError as err:
        raise DeliveryError(f"the server does not offer it: {err}", retriable=False) from None
    except smtplib.SMTPRecipientsRefused as err:
        codes = {code for code, _ in err.recipients.values()}
        raise DeliveryError(
            f"recipients refused ({', '.join(map(str, sorted(codes)))})",
            retriable=all(400 <= code < 500 for code in codes),
        ) from None
    except smtplib.SMTPResponseException as err:
        raise DeliveryError(
            f"SMTP {err.smtp_code} {_text(err.smtp_error)}",
            retriable=400 <= err.smtp_code < 500,
        ) from None
    except ssl.SSLCertVerificationError as err:
        raise DeliveryError(
            f"TLS certificate not trusted ({err.verify_message}); set ca_file", retriable=False
        ) from None
    except (smtplib.SMTPException, OSError) as err:
        raise DeliveryError(f"no answer ({err or type(err).__name__})", retriable=True) from None


# ---------------------------------------------------------------- running


class _SinkWorker:
    """One sink: its own Kafka consumer (group), gate, sender and backoff, on one thread."""

    def __init__(
        self,
        kind: str,
        sink: Sink,
        config: DataIngestionConfig,
        deliver: Callable[[Message], None],
    ) -> None:

        self.kind = kind
        self.sink = sink
        self.label = sink.label
        self._config = config
        self._deliver = deliver
        section: NotificationsConfig = config.notifications
        prefix = section.consumer_group or f"glass-notify.{config.pipeline.name}"
        self.group = f"{prefix}.{kind}.{sink.name}"
        self.gate = Gate(section)
        self._backoff = Backoff(sink.backoff_initial_seconds, sink.backoff_max_seconds)
        self._stop = threading.Event()
        self._started_at = time.time()
        self._thread = threading.Thread(target=self._run, name=self.label, daemon=True)
        self.sent = 0
        self.dropped = 0
        self._failing_since: float | None = None
        self._positions: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        self._consumer: Any = None

    @property
    def where(self) -> str:
        sink = self.sink
        return sink.host if isinstance(sink, WebhookSink) else f"{sink.host}:{sink.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    # -- the consumer

    def _consumer_settings(self) -> dict[str, Any]:
        kafka = self._config.kafka
        shared = {
            "bootstrap_servers", "security_protocol", "ssl_cafile", "ssl_certfile",
            "ssl_keyfile", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
        }  # fmt: skip
        settings = {key: value for key, value in producer_settings(kafka).items() if key in shared}
        settings.update(
            client_id=f"{kafka.client_id}-notify-{self.sink.name}",
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        return settings

    def _connect(self) -> Any:
        """A consumer assigned every partition of the alerts topic, or None once stopped."""
        topic = self._config.kafka.topics.alerts
        backoff = Backoff(*_CONNECT_RETRY_SECONDS)
        waiting = False
        while not self._stop.is_set():
            consumer = None
            try:
                consumer = KafkaConsumer(**self._consumer_settings())
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    raise KafkaError(f"topic {topic} does not exist yet")
                assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
                consumer.assign(assigned)
                self._position_first_start(consumer, assigned)
                if waiting:
                    _LOGGER.info("%s: reading %s now", self.label, topic)
                return consumer
            except KafkaError as err:
                if consumer is not None:
                    consumer.close(autocommit=False)
                if not waiting:
                    _LOGGER.info(
                        "%s: waiting for Kafka's %s (%s); notifications start once it answers",
                        self.label, topic, err,
                    )  # fmt: skip
                waiting = True
                self._stop.wait(backoff.next_delay())
        return None

    def _position_first_start(self, consumer: Any, assigned: list[Any]) -> None:
        since_ms = int((self._started_at - _FIRST_START_LOOKBACK_SECONDS) * 1000)
        fresh = [tp for tp in assigned if consumer.committed(tp) is None]
        if not fresh:
            return
        found = consumer.offsets_for_times({tp: since_ms for tp in fresh})
        ends = consumer.end_offsets(fresh)
        for tp in fresh:
            at = found.get(tp)
            consumer.seek(tp, at.offset if at is not None else ends[tp])

    def _commit(self) -> None:
        # A transition not yet sent holds its partition's offset back: after a
        # restart it is read (and sent) again.
        held: dict[int, int] = {}
        for item in self.gate.pending:
            held[item.partition] = min(held.get(item.partition, item.offset), item.offset)
        topic = self._config.kafka.topics.alerts
        offsets = {}
        for partition, position in self._positions.items():
            offset = held.get(partition, position)
            if self._committed.get(partition) != offset:
                offsets[TopicPartition(topic, partition)] = OffsetAndMetadata(offset, "", -1)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except KafkaError as err:
            _LOGGER.debug("%s: commit failed (%s); tried again", self.label, err)
            return
        for tp, committed in offsets.items():
            self._committed[tp.partition] = committed.offset

    # -- the loop

    def _run(self) -> None:
        self._consumer = self._connect()
        if self._consumer is None:
            return
        try:
            while not self._stop.is_set():
                self._step()
        except Exception:  # noqa: BLE001 - a notifier must not take the pipeline down
            _LOGGER.exception("%s: stopped by an error; no more notifications from it", self.label)
        finally:
            self._report_stop()
            self._consumer.close(autocommit=False)

    def _step(self) -> None:
        gate = self.gate
        timeout = min(gate.wait_seconds(time.monotonic()), _POLL_SECONDS)
        batches = self._consumer.poll(timeout_ms=max(10, int(timeout * 1000)))
        now = time.monotonic()
        for tp, messages in batches.items():
            for message in messages:
                self._positions[tp.partition] = message.offset + 1
                try:
                    record = orjson.loads(message.value)
                except orjson.JSONDecodeError:
                    _LOGGER.debug("%s: offset %d is not JSON; skipped", self.label, message.offset)
                    continue
                if isinstance(record, dict):
                    gate.offer(Item(record, tp.partition, message.offset), now)
        due = gate.next_message(now)
        if due is not None:
            self._send(due)
        self._commit()

    def _send(self, message: Message) -> None:
        try:
            self._deliver(message)
        except DeliveryError as err:
            if not err.retriable:
                self.dropped += len(message.items)
                _LOGGER.error(
                    "%s (%s): %s; %d alert change(s) not notified (not retried: fix the sink)",
                    self.label, self.where, err, len(message.items),
                )  # fmt: skip
                return
            delay = max(self._backoff.next_delay(), err.retry_after or 0.0)
            self.gate.requeue(message, until=time.monotonic() + delay)
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                _LOGGER.warning(
                    "%s (%s): cannot deliver (%s); retrying with backoff, the alerts wait in Kafka",
                    self.label, self.where, err,
                )  # fmt: skip
            return
        self.gate.sent(time.monotonic())
        self.sent += 1
        self._backoff.reset()
        if self._failing_since is not None:
            _LOGGER.info(
                "%s: delivering again after %.0f s",
                self.label, time.monotonic() - self._failing_since,
            )  # fmt: skip
            self._failing_since = None

    def _report_stop(self) -> None:
        waiting = len(self.gate.pending)
        tail = (
            f"; {waiting} alert change(s) not sent yet, sent at the next start "
            "(their alerts stay uncommitted in Kafka)"
            if waiting
            else ""
        )
        _LOGGER.info(
            "%s: stopped; %d message(s) sent, %d alert change(s) dropped%s",
            self.label, self.sent, self.dropped, tail,
        )  # fmt: skip


def _post(sink: WebhookSink, pipeline: str, message: Message) -> None:
    deliver_webhook(sink, message.webhook_body(pipeline))


def _mail(sink: EmailSink, pipeline: str, message: Message) -> None:
    deliver_email(sink, message.email(pipeline, sink))


class Notifications:
    """Every configured sink of `config` (a `DataIngestionConfig`), each on its own thread."""

    def __init__(self, config: DataIngestionConfig) -> None:
        self._topic = config.kafka.topics.alerts
        pipeline = config.pipeline.name
        self.workers: list[_SinkWorker] = []
        for kind, sink in config.notifications.sinks():
            deliver: Callable[[Message], None]
            if isinstance(sink, WebhookSink):
                deliver = functools.partial(_post, sink, pipeline)
            else:
                deliver = functools.partial(_mail, sink, pipeline)
            self.workers.append(_SinkWorker(kind, sink, config, deliver))

    def start(self) -> None:
        for worker in self.workers:
            worker.start()
        _LOGGER.info(
            "notifications: %s from %s",
            ", ".join(f"{w.label} ({w.where})" for w in self.workers),
            self._topic,
        )

    def stop(self) -> None:
        for worker in self.workers:
            worker._stop.set()
        for worker in self.workers:
            worker.stop()


def start_notifications(config: DataIngestionConfig) -> Notifications | None:
    """Starts the sinks of `config.notifications`; None when it has none."""
    if not config.notifications.sinks():
        return None
    notifications = Notifications(config)
    notifications.start()
    return notifications
