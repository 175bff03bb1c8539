"""OPC UA security through the whole pipeline: Basic256Sha256 SignAndEncrypt and a user login.

The plant's server runs in its own process with only a SignAndEncrypt endpoint
and no anonymous login. One pipeline reads it as three sources:

- `secure`: a client certificate generated on first use, the password from the
  environment (`${OPCUA_PASSWORD}`): readings flow;
- `wrongpass`: a wrong password: refused, logged once, no crash loop;
- `untrusted`: a pinned server certificate that is not the server's: refused.

The pipeline stays up throughout and no password appears in its log.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from asyncua.crypto import cert_gen
from cryptography.x509.oid import ExtendedKeyUsageOID

from data_ingestion.testing import PipelineProcess, TopicReader, pipeline_config, wait_until
from simulators.opcua_line import OpcUaLineProcess, opcua_nodes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "s3cret-furnace"


def _source(name: str, endpoint: str, pki: Path, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "endpoint": endpoint,
        "security_policy": "Basic256Sha256",
        "security_mode": "SignAndEncrypt",
        "certificate_file": str(pki / f"{name}.der"),
        "private_key_file": str(pki / f"{name}.pem"),
        "generate_certificate": True,
        "username": "ingest",
        "password": "${OPCUA_PASSWORD}",
        "reconnect_max_seconds": 2,
        "nodes": opcua_nodes()[:3],
        **extra,
    }


def _foreign_certificate(pki: Path) -> Path:
    """A certificate of some other server, to pin where the real one belongs."""
    cert, key = pki / "other-server.der", pki / "other-server.pem"
    asyncio.run(
        cert_gen.setup_self_signed_certificate(
            key, cert, "urn:other:server", "localhost", [ExtendedKeyUsageOID.SERVER_AUTH], {}
        )
    )
    return cert


def test_sign_and_encrypt_with_a_user_login_and_clear_refusals(
    tmp_path: Path,
    kafka_bootstrap: str,
    private_mosquitto: object,
    prism_binary: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    server = OpcUaLineProcess(
        args=[
            "--security",
            "sign-encrypt",
            "--cert-dir",
            str(tmp_path / "server-pki"),
            "--user",
            f"ingest:{PASSWORD}",
            "--no-anonymous",
        ]
    ).start()
    config_path, topics = pipeline_config(
        tmp_path, kafka_bootstrap=kafka_bootstrap, mqtt_port=private_mosquitto.port  # type: ignore[attr-defined]
    )
    config = json.loads(config_path.read_text())
    config["sources"]["opcua"] = [
        _source("secure", server.endpoint, pki),
        _source("wrongpass", server.endpoint, pki, password="not-the-password"),
        _source(
            "untrusted",
            server.endpoint,
            pki,
            server_certificate_file=str(_foreign_certificate(pki)),
        ),
    ]
    config_path.write_text(json.dumps(config))
    monkeypatch.setenv("OPCUA_PASSWORD", PASSWORD)
    pipeline = PipelineProcess(config_path, prism_binary, tmp_path / "pipeline.log")
    readings = TopicReader(kafka_bootstrap, topics["readings"])
    try:
        pipeline.start()
        wait_until(
            lambda: any(r["device"] == "secure" for r in readings.records),
            timeout=180,
            step=lambda: readings.poll(500),
            describe=lambda: pipeline.log_tail(80),
        )
        log = pipeline.log_tail(2000)
        for name in ("wrongpass", "untrusted"):

            def refused(name: str = name) -> bool:
                return f"opcua[{name}]: cannot connect" in pipeline.log_tail(2000)

            wait_until(refused, timeout=60, describe=lambda: pipeline.log_tail(80))
        # Refusals are retried with backoff, logged once per state change.
        time.sleep(5)
        readings.poll(500)
        log = pipeline.log_tail(5000)
        assert log.count("opcua[wrongpass]: cannot connect") == 1
        assert "BadUserAccessDenied" in log
        assert log.count("opcua[untrusted]: cannot connect") == 1
        assert pipeline.alive()
        assert {r["device"] for r in readings.records} == {"secure"}
        assert PASSWORD not in log and "not-the-password" not in log
        assert (pki / "secure.der").is_file() and (pki / "secure.pem").is_file()
        assert pipeline.terminate() == 0
    finally:
        readings.close()
        if pipeline.alive():
            pipeline.terminate()
        server.stop()
