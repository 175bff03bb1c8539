"""Alert notifications against a real HTTP server and a real SMTP server (aiosmtpd
with STARTTLS and login), fed by a real Kafka topic and, at the end, by the real
pipeline raising and clearing `device_silent` while its MQTT broker is down.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from kafka import KafkaProducer

from data_ingestion.notifications import (
    DeliveryError,
    Item,
    Message,
    Notifications,
    deliver_email,
    deliver_webhook,
)
from data_ingestion.stack import free_port
from data_ingestion.testing import (
    PipelineProcess,
    pipeline_config,
    publish,
    self_signed_certificate,
    wait_until,
)
from pipelines.config import parse_config
from pipelines.notifications_config import EmailSink, WebhookSink

pytestmark = pytest.mark.integration

_SMTP_USER = "ingest"
_SMTP_PASSWORD = "smtp-pw-" + uuid.uuid4().hex[:8]
_HOOK_TOKEN = "hook-token-" + uuid.uuid4().hex[:8]


# ---------------------------------------------------------------- the servers


class WebhookServer:
    """A real HTTP server that records each POST and answers from a script.

    `answers` is consumed one per request (status, delay seconds); when it is
    empty every request gets 200 at once.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, float]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server interface
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with owner.lock:
                    status, delay = owner.answers.pop(0) if owner.answers else (200, 0.0)
                    owner.requests.append(
                        {"path": self.path, "headers": dict(self.headers),
                         "body": orjson.loads(body), "status": status}
                    )  # fmt: skip
                time.sleep(delay)
                self.send_response(status)
                if status == 503:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = f"/hooks/{_HOOK_TOKEN}") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r["body"] for r in self.requests if r["status"] == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def webhook_server() -> Iterator[WebhookServer]:
    server = WebhookServer()
    yield server
    server.close()


class MailServer:
    """aiosmtpd on a free port: STARTTLS required, login required over TLS."""

    def __init__(self, tmp_path: Path) -> None:
        import ssl

        self.cert, key = self_signed_certificate(tmp_path, "smtp")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.mails: list[dict[str, Any]] = []
        owner = self

        class Handler:
            async def handle_DATA(
                self, server: Any, session: Any, envelope: Any
            ) -> str:  # noqa: N802
                owner.mails.append(
                    {"tls": session.ssl is not None, "login": session.auth_data,
                     "to": envelope.rcpt_tos, "content": envelope.content.decode()}
                )  # fmt: skip
                return "250 OK"

        def authenticate(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> AuthResult:
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
                _SMTP_USER.encode(), _SMTP_PASSWORD.encode(),
            )  # fmt: skip
            # handled=False: aiosmtpd answers a refusal itself (535).
            return AuthResult(
                success=ok, handled=False, auth_data=data.login.decode() if ok else None
            )

        self.port = free_port()
        self.controller = Controller(
            Handler(),
            hostname="127.0.0.1",
            port=self.port,
            tls_context=context,
            require_starttls=True,
            authenticator=authenticate,
            auth_require_tls=True,
        )
        self.controller.start()

    def sink(self, **overrides: Any) -> EmailSink:
        settings: dict[str, Any] = {
            "name": "shift", "host": "127.0.0.1", "port": self.port,
            "from_address": "ingest@plant.example", "to": ("lead@plant.example",),
            "username": _SMTP_USER, "password": _SMTP_PASSWORD, "ca_file": str(self.cert),
            "timeout_seconds": 5.0,
        }  # fmt: skip
        settings.update(overrides)
        return EmailSink(**settings)

    def close(self) -> None:
        self.controller.stop()


@pytest.fixture()
def mail_server(tmp_path: Path) -> Iterator[MailServer]:
    server = MailServer(tmp_path)
    yield server
    server.close()


def _alert(state: str = "raised", device: str = "iot") -> dict[str, Any]:
    return {
        "source": "mqtt", "device": device, "tag": "", "rule": "device_silent",
        "severity": "alarm", "state": state, "start": "2026-12-07T10:00:00.000Z",
        "end": None if state == "raised" else "2026-12-07T10:05:00.000Z", "value": None,
        "expected_low": None, "expected_high": None, "detail": "no reading", "meta": {},
    }  # fmt: skip


def _message() -> Message:
    return Message((Item(_alert()),), digest=False)


# ---------------------------------------------------------------- delivery


def test_a_webhook_gets_a_json_post_with_its_headers(webhook_server: WebhookServer) -> None:
    sink = WebhookSink("ops", webhook_server.url(), {"Authorization": f"Bearer {_HOOK_TOKEN}"})
    deliver_webhook(sink, _message().webhook_body("line-c"))
    (request,) = webhook_server.requests
    assert request["path"] == f"/hooks/{_HOOK_TOKEN}"
    assert request["headers"]["Authorization"] == f"Bearer {_HOOK_TOKEN}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["body"]["alerts"] == [_alert()]


@pytest.mark.parametrize(
    ("answer", "retriable", "reason"),
    [
        ((503, 0.0), True, "HTTP 503"),
        ((429, 0.0), True, "HTTP 429"),
        ((404, 0.0), False, "HTTP 404"),
        ((200, 3.0), True, "no answer"),  # slower than the sink's timeout
    ],
)
def test_a_webhook_refusal_says_whether_to_try_again(
    webhook_server: WebhookServer, answer: tuple[int, float], retriable: bool, reason: str
) -> None:
    webhook_server.answers.append(answer)
    sink = WebhookSink("ops", webhook_server.url(), timeout_seconds=1.0)
    with pytest.raises(DeliveryError) as caught:
        deliver_webhook(sink, _message().webhook_body("line-c"))
    assert (caught.value.retriable, str(caught.value).startswith(reason)) == (retriable, True)
    if answer[0] == 503:
        assert caught.value.retry_after == 1.0


def test_a_webhook_nobody_listens_on_is_tried_again() -> None:
    sink = WebhookSink("ops", f"http://127.0.0.1:{free_port()}/x", timeout_seconds=1.0)
    with pytest.raises(DeliveryError) as caught:
        deliver_webhook(sink, b"{}")
    assert caught.value.retriable


def test_an_email_goes_over_starttls_with_login(mail_server: MailServer) -> None:
    sink = mail_server.sink()
    deliver_email(sink, _message().email("line-c", sink))
    (mail,) = mail_server.mails
    assert (mail["tls"], mail["login"], mail["to"]) == (True, _SMTP_USER, ["lead@plant.example"])
    assert "Subject: [line-c] RAISED alarm device_silent device iot" in mail["content"]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"password": "wrong-password"}, "login as 'ingest' refused (535)"),
        ({"ca_file": None}, "TLS certificate not trusted"),
    ],
)
def test_an_email_the_config_cannot_send_is_not_tried_again(
    mail_server: MailServer, overrides: dict[str, Any], reason: str
) -> None:
    sink = mail_server.sink(**overrides)
    with pytest.raises(DeliveryError) as caught:
        deliver_email(sink, _message().email("line-c", sink))
    assert not caught.value.retriable
    assert str(caught.value).startswith(reason)
    assert mail_server.mails == []


def test_an_smtp_server_that_is_down_is_tried_again(tmp_path: Path) -> None:
    sink = EmailSink("m", "127.0.0.1", "a@plant.example", ("b@plant.example",), port=free_port())
    with pytest.raises(DeliveryError) as caught:
        deliver_email(sink, _message().email("line-c", sink))
    assert caught.value.retriable


# ---------------------------------------------------------------- from Kafka


def _config(topic: str, kafka: str, **notifications: Any) -> Any:
    return parse_config(
        {
            "pipeline": {"name": "line-t"},
            "kafka": {"bootstrap_servers": kafka, "topics": {"alerts": topic}},
            "notifications": {"group_seconds": 0.3, **notifications},
        }
    )


def _produce(kafka: str, topic: str, records: list[dict[str, Any]]) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka)
    for record in records:
        producer.send(topic, orjson.dumps(record), key=record["device"].encode())
    producer.flush()
    producer.close()


@pytest.mark.slow
def test_each_transition_is_notified_once_through_refusals_duplicates_and_a_restart(
    kafka_bootstrap: str, kafka_topic: str, webhook_server: WebhookServer
) -> None:
    hook = {"name": "ops", "url": webhook_server.url(),
            "backoff_initial_seconds": 0.2, "backoff_max_seconds": 0.5}  # fmt: skip
    config = _config(kafka_topic, kafka_bootstrap, webhooks=[hook], digest_threshold=3)
    webhook_server.answers += [(503, 0.0), (500, 0.0)]  # the endpoint is down at first
    notifications = Notifications(config)
    notifications.start()
    try:
        # A retried bundle wrote the raise twice.
        _produce(kafka_bootstrap, kafka_topic, [_alert(), _alert()])
        wait_until(lambda: len(webhook_server.accepted()) == 1, timeout=60)
        _produce(kafka_bootstrap, kafka_topic, [_alert("cleared")])
        wait_until(lambda: len(webhook_server.accepted()) == 2, timeout=60)
    finally:
        notifications.stop()
    states = [body["alerts"][0]["state"] for body in webhook_server.accepted()]
    assert states == ["raised", "cleared"]
    assert len(webhook_server.requests) == 4  # two refusals, then each once

    # Restarted: what was sent is committed, so nothing again; many at once: a digest.
    notifications = Notifications(config)
    notifications.start()
    try:
        _produce(kafka_bootstrap, kafka_topic, [_alert(device=f"d{i}") for i in range(5)])
        wait_until(lambda: len(webhook_server.accepted()) == 3, timeout=60)
        time.sleep(1.0)  # room for a wrong re-send to show
    finally:
        notifications.stop()
    digest = webhook_server.accepted()[2]
    assert (digest["kind"], digest["count"], len(webhook_server.accepted())) == ("digest", 5, 3)


# ---------------------------------------------------------------- the pipeline


@pytest.mark.slow
def test_the_pipeline_notifies_one_raise_and_one_clear_and_logs_no_secret(
    tmp_path: Path,
    kafka_bootstrap: str,
    private_mosquitto: Any,
    prism_binary: Path,
    webhook_server: WebhookServer,
    mail_server: MailServer,
) -> None:
    mqtt_password = "mqtt-pw-" + uuid.uuid4().hex[:8]
    config_path, topics = pipeline_config(
        tmp_path, kafka_bootstrap=kafka_bootstrap, mqtt_port=private_mosquitto.port
    )
    config = json.loads(config_path.read_text())
    # Back soon after the broker: the backoff would reach 16 s over the outage.
    config["sources"]["mqtt"][0].update(
        username="ingest", password=mqtt_password, reconnect_max_seconds=2
    )
    config["anomaly"]["device_silent_seconds"] = 5
    config["monitoring"] = {"http_port": free_port()}
    # DEBUG: the most log lines a secret could hide in.
    config["logging"] = {"level": "DEBUG", "loggers": {"kafka": "DEBUG"}}
    sink = mail_server.sink()
    config["notifications"] = {
        "group_seconds": 1.0,
        "webhooks": [{"name": "ops", "url": webhook_server.url(),
                      "headers": {"Authorization": f"Bearer {_HOOK_TOKEN}"}}],
        "email": [{"name": sink.name, "host": sink.host, "port": sink.port,
                   "from_address": sink.from_address, "to": list(sink.to),
                   "username": _SMTP_USER, "password": _SMTP_PASSWORD, "ca_file": sink.ca_file}],
    }  # fmt: skip
    config_path.write_text(json.dumps(config))
    log = tmp_path / "pipeline.log"
    process = PipelineProcess(config_path, prism_binary, log)

    def heartbeat(count: int) -> None:
        start = int(time.time() * 1000)
        publish(
            private_mosquitto.port,
            [("plant/test", orjson.dumps({"tag": "test.heartbeat", "value": float(i),
                                          "ts": start + i * 200})) for i in range(count)],
            rate_per_second=5,
        )  # fmt: skip

    def states() -> list[str]:
        return [body["alerts"][0]["state"] for body in webhook_server.accepted()]

    try:
        process.start()
        wait_until(
            lambda: "mqtt[iot]: connected to" in process.log_tail(2000),
            timeout=120,
            describe=process.log_tail,
        )
        heartbeat(10)
        private_mosquitto.stop()  # the broker goes away: the device falls silent
        wait_until(lambda: states() == ["raised"], timeout=120, describe=process.log_tail)
        private_mosquitto.start()
        wait_until(
            lambda: "mqtt[iot]: reconnected" in log.read_text(),
            timeout=120,
            describe=process.log_tail,
        )
        heartbeat(10)
        wait_until(
            lambda: states() == ["raised", "cleared"], timeout=120, describe=process.log_tail
        )
        wait_until(lambda: len(mail_server.mails) == 2, timeout=60)
        time.sleep(3.0)  # room for a duplicate to show
        assert states() == ["raised", "cleared"]
        raised, cleared = (body["alerts"][0] for body in webhook_server.accepted())
        assert (raised["rule"], raised["device"], cleared["start"]) == (
            "device_silent", "iot", raised["start"],
        )  # fmt: skip
        assert [m["content"].count("Subject: [line-c] ") for m in mail_server.mails] == [1, 1]
        assert process.terminate() == 0
    finally:
        if process.alive():
            process.terminate()
    text = log.read_text()
    assert "notifications: webhook[ops] (127.0.0.1:" in text
    leaked = [s for s in (mqtt_password, _SMTP_PASSWORD, _HOOK_TOKEN) if s in text]
    assert leaked == [], f"secrets in the log: {leaked}"
