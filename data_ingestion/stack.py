"""The local stack: a real Kafka broker, a real Mosquitto broker and Prism.

``stack up`` starts, idempotently, what the pipeline, the demo and the test
suite talk to on this machine, and keeps every file under ``<repo>/.stack/``:

* a single-node Apache Kafka 4.x in KRaft mode (one process is broker and
  controller) on ``127.0.0.1:9092``, its controller on the next port. The jars
  come from Maven Central through ``mvn dependency:copy-dependencies`` against
  ``stack_kafka_pom.xml`` (cached in ``.stack/kafka/libs``); the log directory
  is formatted once. Topics are auto-created with 6 partitions; every internal
  topic has replication factor 1.
* Mosquitto on ``127.0.0.1:1883``, configured so that a persistent session
  never silently loses queued QoS 1 messages: no queue limit, no in-flight
  limit (the pipeline acknowledges only after the runner commits a bundle, so
  it holds many unacknowledged messages), sessions that never expire, and
  persistence to disk.
* the Prism runner binary, built once with ``go install`` for the installed
  Beam version into ``.stack/bin/prism`` (``--prism_location``).
* with ``--secure`` (``up_secure``), beside those and never instead: a second
  Kafka with a SASL_SSL listener (SCRAM-SHA-512 user ``ingest``) on 9094 and a
  mutual-TLS listener (client certificate required) on 9095, and a second
  Mosquitto with a TLS listener (user ``ingest``, password file) on 8883 and a
  TLS listener requiring a client certificate on 8884. A throwaway CA signs
  the servers' certificate (127.0.0.1, localhost) and a client certificate; a
  second, untrusted CA signs another client certificate for negative tests.
  Passwords are random, made once, and kept in owner-only files.

Broker processes run in their own session, so they outlive the command that
started them; ``stack down`` stops them again, and only them: a pid is
signalled only while ``/proc/<pid>/cmdline`` still names this stack's config
file.

Layout::

    .stack/
      bin/prism                       the Prism binary (+ prism.version)
      kafka/libs/*.jar                broker jars (Maven)
      kafka/server.properties         generated on every start
      kafka/log4j2.xml                broker logging -> kafka/kafka.log
      kafka/data/                     KRaft metadata and topic data
      kafka/kafka.pid, kafka.out      pid; JVM stdout/stderr
      mosquitto/mosquitto.conf        generated on every start
      mosquitto/data/                 mosquitto.db (sessions, queued messages)
      mosquitto/mosquitto.pid, mosquitto.log, mosquitto.out
      secure/                         --secure: owner-only folder
        ca.pem, client.pem, client.key                trusted CA, client certificate
        untrusted-ca.pem, untrusted-client.pem/.key   what the services refuse
        server.pem, server.key, server-keystore.pem   the services' certificate
        kafka.password, mqtt.password                 user ``ingest``'s passwords
        kafka/, mosquitto/                            as above, plus mosquitto/passwd

Example::

    python -m data_ingestion stack up          # kafka: 127.0.0.1:9092 / mqtt: 127.0.0.1:1883
    python -m data_ingestion stack up --secure # also kafka_sasl_ssl: 127.0.0.1:9094 ...
    python -m data_ingestion stack status
    python -m data_ingestion stack down

    from data_ingestion import stack
    addresses = stack.up()                      # {"kafka": "127.0.0.1:9092", "mqtt": ...}
    prism = stack.ensure_prism()                # Path to .stack/bin/prism
    secure = stack.up_secure(root, stack.SecurePorts.free())  # a test's own secured services
    secure.kafka_sasl_ssl, secure.ca_file, secure.kafka_password_file

Needs ``java`` (17+), ``mvn``, ``go`` and ``mosquitto`` on the PATH
(``make system-deps`` installs Mosquitto).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import functools
import getpass
import hashlib
import importlib.metadata
import ipaddress
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict
from xml.sax.saxutils import quoteattr

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from data_ingestion.local_processes import (
    free_port,
    locked,
    owned_pid,
    port_accepts,
    read_pid,
    runs_with,
    spawn,
    terminate,
)

__all__ = [
    "SecurePorts",
    "SecureStack",
    "ServiceStatus",
    "StackError",
    "default_root",
    "down",
    "ensure_kafka_jars",
    "ensure_prism",
    "free_port",
    "kafka_answers",
    "main",
    "prism_path",
    "secure_stack",
    "start_mosquitto",
    "status",
    "up",
    "up_secure",
]

_LOGGER = logging.getLogger(__name__)

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_KAFKA_PORT = 9092
_DEFAULT_MQTT_PORT = 1883
_DEFAULT_KAFKA_VERSION = "4.1.1"
_DEFAULT_KAFKA_HEAP_OPTS = ("-Xms256m", "-Xmx512m")
_DEFAULT_KAFKA_PARTITIONS = 6
_DEFAULT_KAFKA_START_TIMEOUT_SECONDS = 120.0
_DEFAULT_MQTT_START_TIMEOUT_SECONDS = 15.0
_DEFAULT_STOP_GRACE_SECONDS = 30.0
# Mosquitto rewrites its whole database on every save: often enough that a
# crash loses little, rarely enough that a deep queue does not cost a core.
_DEFAULT_MQTT_AUTOSAVE_SECONDS = 5
_DEFAULT_POLL_SECONDS = 0.2
_DEFAULT_LOG_TAIL_LINES = 30
# The secured services (`stack up --secure`): beside the plaintext ones, never instead.
_DEFAULT_KAFKA_SASL_SSL_PORT = 9094
_DEFAULT_KAFKA_MTLS_PORT = 9095
_DEFAULT_KAFKA_SECURE_CONTROLLER_PORT = 9096
_DEFAULT_MQTT_TLS_PORT = 8883
_DEFAULT_MQTT_MTLS_PORT = 8884
_DEFAULT_SECURE_USERNAME = "ingest"
# A throwaway local CA: long enough that a checkout never meets an expiry.
_DEFAULT_CERT_VALID_DAYS = 3650
_MOSQUITTO_PBKDF2_ITERATIONS = 101

_POM = Path(__file__).with_name("stack_kafka_pom.xml")
_PRISM_MODULE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
_STORAGE_TOOL_CLASSES = ("kafka.tools.StorageTool", "org.apache.kafka.tools.StorageTool")

_ServiceName = Literal["kafka", "mqtt"]
# The secured listeners, as `status` and `stack up --secure` name them.
_SECURE_LISTENERS = {
    "kafka_sasl_ssl": f"SASL_SSL, SCRAM-SHA-512 user {_DEFAULT_SECURE_USERNAME}",
    "kafka_mtls": "SSL, client certificate required",
    "mqtt_tls": f"TLS, user {_DEFAULT_SECURE_USERNAME} with password",
    "mqtt_mtls": "TLS, client certificate required",
}


class StackError(RuntimeError):
    """A stack service could not be prepared, started or stopped."""


class ServiceStatus(TypedDict):
    """What ``status()`` reports for one service."""

    state: Literal["running", "stopped"]
    address: str | None
    pid: int | None
    log: str


def _repo_root() -> Path:
    package_parent = Path(__file__).resolve().parent.parent
    if any((package_parent / name).exists() for name in (".git", "setup.py", "Makefile")):
        return package_parent
    # An installed (non-editable) package has no repo around it.
    return Path.cwd()


def default_root() -> Path:
    """``<repo>/.stack``, where every stack file lives."""
    return _repo_root() / ".stack"


def _resolve_root(root: Path | None) -> Path:
    return (root if root is not None else default_root()).resolve()


def _log_sizes(*paths: Path) -> dict[Path, int]:
    """Where each log ends now, so a failure report shows this start only."""
    return {path: path.stat().st_size if path.exists() else 0 for path in paths}


def _log_tail(since: dict[Path, int], lines: int = _DEFAULT_LOG_TAIL_LINES) -> str:
    parts = []
    for path, offset in since.items():
        try:
            with open(path, "rb") as log:
                log.seek(offset if offset <= path.stat().st_size else 0)
                text = log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            continue
        all_lines = text.splitlines()
        # The cause is usually an ERROR far above the shutdown chatter at the end.
        errors = [line for line in all_lines if " ERROR " in line or " FATAL " in line]
        if errors:
            parts.append(f"--- errors in {path} ---\n" + "\n".join(errors[-10:]))
        if all_lines:
            parts.append(f"--- last lines of {path} ---\n" + "\n".join(all_lines[-lines:]))
    return "\n".join(parts) if parts else "(no log output)"


# --- processes ---------------------------------------------------------------


def _terminate(targets: Sequence[tuple[int, tuple[str], str]], grace_seconds: float) -> None:
    """SIGTERM every (pid, markers, label) still ours, SIGKILL what outlives the grace."""
    survivors = terminate(targets, grace_seconds)
    if survivors:
        raise StackError(f"pids {survivors} survived SIGKILL")


def _wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    proc: subprocess.Popen[bytes],
    timeout_seconds: float,
    logs: dict[Path, int],
) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not ready():
        code = proc.poll()
        if code is not None:
            raise StackError(f"{what} exited with code {code} while starting\n{_log_tail(logs)}")
        if time.monotonic() > deadline:
            raise StackError(
                f"{what} did not answer within {timeout_seconds:.0f} s\n{_log_tail(logs)}"
            )
        time.sleep(_DEFAULT_POLL_SECONDS)


def _require_free(host: str, port: int, what: str, flag: str) -> None:
    if port_accepts(host, port):
        raise StackError(
            f"{what}: {host}:{port} is already in use by a process this stack did not"
            f" start; stop it or choose another port ({flag})"
        )


def _tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` is not on the PATH: {hint}")
    return found


# --- Kafka -------------------------------------------------------------------


def _kafka_dir(root: Path) -> Path:
    return root / "kafka"


def ensure_kafka_jars(root: Path | None = None, *, version: str = _DEFAULT_KAFKA_VERSION) -> Path:
    """Resolve the broker jars through Maven into ``<root>/kafka/libs`` once.

    Skipped when the jars of ``version`` are already there. Jars are copied to a
    temporary folder first, so an interrupted download is never mistaken for a
    cached one. Returns the libs folder.
    """
    kafka_dir = _kafka_dir(_resolve_root(root))
    libs = kafka_dir / "libs"
    if (libs / f"kafka_2.13-{version}.jar").is_file():
        return libs
    mvn = _tool("mvn", "install Maven 3.8+ (apt-get install maven)")
    kafka_dir.mkdir(parents=True, exist_ok=True)
    _LOGGER.info("resolving Kafka %s jars through Maven into %s", version, libs)
    staging = tempfile.mkdtemp(dir=kafka_dir, prefix=".libs-")
    try:
        argv = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(_POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            f"-Dkafka.version={version}",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(
                f"mvn could not resolve the Kafka {version} jars (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-4000:]}"
            )
        if libs.exists():
            shutil.rmtree(libs)
        os.replace(staging, libs)
        libs.chmod(0o755)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return libs


def _storage_tool_class(libs: Path) -> str:
    # The formatter moved from core (Scala) towards tools across 3.x/4.x.
    wanted = {name.replace(".", "/") + ".class": name for name in _STORAGE_TOOL_CLASSES}
    for jar in sorted(libs.glob("*.jar")):
        with zipfile.ZipFile(jar) as archive:
            for entry in archive.namelist():
                if entry in wanted:
                    return wanted[entry]
    raise StackError(f"no Kafka StorageTool class in {libs}; remove the folder and retry")


def _kafka_properties(
    host: str, port: int, controller_port: int, data_dir: Path, partitions: int
) -> str:
    listeners = f"""\
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
"""
    return _kafka_node_properties(host, controller_port, data_dir, partitions, listeners)


def _kafka_node_properties(
    host: str, controller_port: int, data_dir: Path, partitions: int, listeners: str
) -> str:
    """A single-node KRaft broker's properties around its ``listeners`` block."""
    return f"""\
# Generated by data_ingestion/stack.py on every start: edit the module, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
controller.listener.names=CONTROLLER
{listeners}log.dirs={data_dir}

auto.create.topics.enable=true
num.partitions={partitions}
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
# Fewer than the default 50: the first consumer group comes up faster.
offsets.topic.num.partitions={partitions}
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests join and leave groups all the time: no 3 s wait for more members.
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
"""


def _log4j2_xml(log_file: Path) -> str:
    name = quoteattr(str(log_file))
    pattern = quoteattr(str(log_file) + ".%i")
    return f"""\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by data_ingestion/stack.py: broker logs go to a file, not the terminal. -->
<Configuration status="warn" name="data-ingestion-stack-kafka">
  <Appenders>
    <RollingFile name="file" fileName={name} filePattern={pattern}>
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="20 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="info"><AppenderRef ref="file"/></Root>
    <Logger name="kafka.request.logger" level="warn"/>
    <Logger name="state.change.logger" level="warn"/>
    <Logger name="kafka.log.LogCleaner" level="warn"/>
  </Loggers>
</Configuration>
"""


def _cluster_id() -> str:
    while True:
        # Kafka's Uuid text form; one starting with '-' would read as a flag.
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    return _tool("java", "install Java 17+ (apt-get install openjdk-17-jre-headless)")


def kafka_answers(
    address: str, timeout_seconds: float = 5.0, *, security: Mapping[str, Any] | None = None
) -> bool:
    """True when a broker at ``address`` serves metadata with a live broker in it.

    ``security``: kafka-python settings for a TLS or SASL listener
    (``security_protocol``, ``ssl_cafile``, ``sasl_mechanism``, ...).
    """
    host, _, port = address.rpartition(":")
    if not port_accepts(host, int(port)):
        return False
    timeout_ms = int(timeout_seconds * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=address,
            client_id="data-ingestion-stack",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
            **(security or {}),
        )
    except KafkaError:
        return False
    try:
        return bool(admin.describe_cluster().get("brokers"))
    except KafkaError:
        return False
    finally:
        admin.close()


def _start_kafka_node(
    kafka_dir: Path,
    libs: Path,
    properties_text: str,
    *,
    host: str,
    ports: Sequence[tuple[int, str, str]],
    format_args: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], dict[Path, int]]:
    """Start one broker from ``properties_text`` (formatting its storage the first
    time, with ``format_args``); do not wait for it.

    ``ports`` are ``(port, what, flag)``: each must be free, else the error names
    the flag that moves it.
    """
    data_dir = kafka_dir / "data"
    properties = kafka_dir / "server.properties"
    log4j = kafka_dir / "log4j2.xml"
    output = kafka_dir / "kafka.out"
    for port, what, flag in ports:
        _require_free(host, port, what, flag)
    data_dir.mkdir(parents=True, exist_ok=True)
    properties.write_text(properties_text)
    log4j.write_text(_log4j2_xml(kafka_dir / "kafka.log"))
    java = _java()
    jvm = [java, *_DEFAULT_KAFKA_HEAP_OPTS, f"-Dlog4j2.configurationFile={log4j}"]
    classpath = ["-cp", str(libs / "*")]
    if not (data_dir / "meta.properties").exists():
        tool = _storage_tool_class(libs)
        argv = [*jvm, *classpath, tool, "format", "-t", _cluster_id(), "-c", str(properties)]
        result = subprocess.run(
            [*argv, *format_args], cwd=kafka_dir, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise StackError(
                f"formatting the Kafka log directory {data_dir} failed:\n"
                f"{(result.stdout + result.stderr)[-4000:]}"
            )
    # Without this log4j2 closes its file in its own shutdown hook, before Kafka
    # has logged (or finished) its controlled shutdown.
    argv = [*jvm, "-Dlog4j2.shutdownHookEnabled=false", "-XX:+UseG1GC", *classpath]
    argv += ["kafka.Kafka", str(properties)]
    logs = _log_sizes(kafka_dir / "kafka.log", output)
    proc = spawn(argv, cwd=kafka_dir, output=output, detach=True)
    (kafka_dir / "kafka.pid").write_text(f"{proc.pid}\n")
    return proc, logs


def _start_kafka(
    root: Path, *, host: str, port: int, controller_port: int
) -> tuple[subprocess.Popen[bytes], str, dict[Path, int]]:
    """Start the plaintext broker (formatting its storage the first time); do not wait for it."""
    kafka_dir = _kafka_dir(root)
    libs = ensure_kafka_jars(root)
    properties = _kafka_properties(
        host, port, controller_port, kafka_dir / "data", _DEFAULT_KAFKA_PARTITIONS
    )
    ports = [(port, "kafka", "--kafka-port"), (controller_port, "kafka controller", "--kafka-port")]
    proc, logs = _start_kafka_node(kafka_dir, libs, properties, host=host, ports=ports)
    return proc, f"{host}:{port}", logs


def _advertised_listeners(properties: Path) -> dict[str, str]:
    """``{"PLAINTEXT": "host:port", ...}`` from a broker's ``advertised.listeners``."""
    try:
        lines = properties.read_text().splitlines()
    except FileNotFoundError:
        return {}
    for line in lines:
        if line.startswith("advertised.listeners="):
            entries = line.split("=", 1)[1].split(",")
            return dict(entry.strip().split("://", 1) for entry in entries if "://" in entry)
    return {}


def _kafka_address(root: Path) -> str | None:
    return _advertised_listeners(_kafka_dir(root) / "server.properties").get("PLAINTEXT")


# --- Mosquitto ---------------------------------------------------------------


def _mosquitto_config(host: str, port: int, workdir: Path) -> str:
    listeners = f"listener {port} {host}\nallow_anonymous true\n"
    return _mosquitto_broker_config(listeners, workdir)


def _mosquitto_broker_config(listeners: str, workdir: Path) -> str:
    """A broker's config around its ``listeners`` block."""
    data = workdir / "data"
    return f"""\
# Generated by data_ingestion/stack.py: edit the module, not this file.
{listeners}
# Nothing queued for a persistent QoS 1 session is dropped: the pipeline holds
# its acks until a bundle commits, and offline subscribers catch up on reconnect.
set_tcp_nodelay true
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 0
persistence true
persistence_location {data}/
autosave_interval {_DEFAULT_MQTT_AUTOSAVE_SECONDS}
log_dest file {workdir / "mosquitto.log"}
log_type error
log_type warning
log_type notice
connection_messages true
log_timestamp_format %Y-%m-%dT%H:%M:%S
# Root drops to user "mosquitto", which cannot write here; no effect otherwise.
user {getpass.getuser()}
"""


def start_mosquitto(
    port: int,
    workdir: Path,
    *,
    host: str = _DEFAULT_HOST,
    detach: bool = False,
    timeout_seconds: float = _DEFAULT_MQTT_START_TIMEOUT_SECONDS,
) -> subprocess.Popen[bytes]:
    """Start a Mosquitto broker with the stack's no-drop config; wait until it accepts.

    Config, persistence (``workdir/data``) and logs live in ``workdir``; starting
    again with the same ``workdir`` resumes the saved sessions and queues. The
    caller owns the process (``terminate()`` saves the database, ``kill()`` is a
    crash). ``detach=True`` runs it in its own session so it outlives the caller.

    Example::

        proc = start_mosquitto(free_port(), Path("/tmp/broker"))
        ...
        proc.terminate(); proc.wait()
    """
    workdir = workdir.resolve()
    return _start_mosquitto_with(
        _mosquitto_config(host, port, workdir),
        workdir,
        host=host,
        ports=[(port, "--mqtt-port")],
        detach=detach,
        timeout_seconds=timeout_seconds,
    )


def _start_mosquitto_with(
    config_text: str,
    workdir: Path,
    *,
    host: str,
    ports: Sequence[tuple[int, str]],
    detach: bool,
    timeout_seconds: float,
) -> subprocess.Popen[bytes]:
    """Start Mosquitto with ``config_text`` in ``workdir``; wait until every
    ``(port, flag)`` accepts connections."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).is_file():
        raise StackError("`mosquitto` is not installed: run `make system-deps`")
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    config = workdir / "mosquitto.conf"
    config.write_text(config_text)
    for port, flag in ports:
        _require_free(host, port, "mosquitto", flag)
    output = workdir / "mosquitto.out"
    logs = _log_sizes(workdir / "mosquitto.log", output)
    proc = spawn([mosquitto, "-c", str(config)], cwd=workdir, output=output, detach=detach)
    try:
        _wait_until(
            lambda: all(port_accepts(host, port) for port, _ in ports),
            what=f"mosquitto on {host}:{','.join(str(port) for port, _ in ports)}",
            proc=proc,
            timeout_seconds=timeout_seconds,
            logs=logs,
        )
    except StackError:
        proc.kill()
        proc.wait()
        raise
    return proc


def _listener_addresses(config: Path) -> list[str]:
    """``host:port`` of every ``listener <port> <host>`` line of a mosquitto.conf."""
    try:
        lines = config.read_text().splitlines()
    except FileNotFoundError:
        return []
    addresses = []
    for line in lines:
        fields = line.split()
        if len(fields) == 3 and fields[0] == "listener":
            addresses.append(f"{fields[2]}:{fields[1]}")
    return addresses


def _mqtt_address(root: Path) -> str | None:
    addresses = _listener_addresses(root / "mosquitto" / "mosquitto.conf")
    return addresses[0] if addresses else None


# --- the secured services (stack up --secure) --------------------------------


@dataclasses.dataclass(frozen=True)
class SecurePorts:
    """Where the secured Kafka and Mosquitto listen (on the stack's host)."""

    kafka_sasl_ssl: int = _DEFAULT_KAFKA_SASL_SSL_PORT
    kafka_mtls: int = _DEFAULT_KAFKA_MTLS_PORT
    kafka_controller: int = _DEFAULT_KAFKA_SECURE_CONTROLLER_PORT
    mqtt_tls: int = _DEFAULT_MQTT_TLS_PORT
    mqtt_mtls: int = _DEFAULT_MQTT_MTLS_PORT

    @classmethod
    def free(cls, host: str = _DEFAULT_HOST) -> SecurePorts:
        """Five distinct ports nothing listens on now (for tests)."""
        ports: set[int] = set()
        while len(ports) < len(dataclasses.fields(cls)):
            ports.add(free_port(host))
        return cls(*sorted(ports))


@dataclasses.dataclass(frozen=True)
class SecureStack:
    """The secured services' addresses and the files a client needs for them.

    Passwords stay in their files (owner-only), never in this object, so that
    printing it shows no secret: read ``kafka_password_file`` into the
    environment and reference it as ``${KAFKA_PASSWORD}`` in the config.
    """

    kafka_sasl_ssl: str  # SASL_SSL, SCRAM-SHA-512 user `username`
    kafka_mtls: str  # SSL, a client certificate signed by `ca_file` required
    mqtt_tls: str  # TLS, user `username` from a password file
    mqtt_mtls: str  # TLS, a client certificate signed by `ca_file` required
    username: str
    ca_file: Path
    client_cert_file: Path
    client_key_file: Path
    # A second CA nobody trusts, and a client certificate it signed: negative tests.
    untrusted_ca_file: Path
    untrusted_cert_file: Path
    untrusted_key_file: Path
    kafka_password_file: Path
    mqtt_password_file: Path


def _secure_dir(root: Path) -> Path:
    return root / "secure"


def _write_private(path: Path, data: bytes) -> None:
    # Keys and passwords: readable by their owner only, from the first byte on.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _issue(
    common_name: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    usages: Sequence[x509.ObjectIdentifier] = (),
) -> x509.Certificate:
    """A certificate for ``key``: a self-signed CA without ``issuer``, else a leaf it signs.

    A leaf for ``SERVER_AUTH`` names 127.0.0.1 and localhost.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=_DEFAULT_CERT_VALID_DAYS))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
        # Strict verifiers (OpenSSL 3, Python 3.13) want the CA flag and usages marked.
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=issuer is not None,
                content_commitment=False,
                key_encipherment=issuer is not None,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=issuer is None,
                crl_sign=issuer is None,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), False)
    if ExtendedKeyUsageOID.SERVER_AUTH in usages:
        loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(_DEFAULT_HOST))]
        builder = builder.add_extension(x509.SubjectAlternativeName(loopback), False)
    return builder.sign(issuer_key, hashes.SHA256())


def _ensure_certificates(secure_dir: Path) -> bool:
    """Create the throwaway CA, certificates and passwords once; True if it did.

    ``ca.pem`` signs ``server.pem`` (127.0.0.1 and localhost; also the broker's
    own client certificate, hence both usages) and ``client.pem`` (CN
    ``ingest``); ``untrusted-ca.pem`` signs ``untrusted-client.pem``. Keys are
    unencrypted PKCS#8 PEM, which Kafka's PEM key store, OpenSSL and Python's
    ``ssl`` all read.
    """
    wanted = [
        "ca.pem", "server.pem", "server.key", "server-keystore.pem", "client.pem",
        "client.key", "untrusted-ca.pem", "untrusted-client.pem", "untrusted-client.key",
        "kafka.password", "mqtt.password",
    ]  # fmt: skip
    if all((secure_dir / name).is_file() for name in wanted):
        return False
    _LOGGER.info("creating a throwaway CA, certificates and passwords in %s", secure_dir)
    secure_dir.mkdir(parents=True, exist_ok=True)
    secure_dir.chmod(0o700)
    ca_key, untrusted_key, server_key, client_key, intruder_key = (_new_key() for _ in range(5))
    ca = _issue("data-ingestion stack CA", ca_key, None)
    untrusted_ca = _issue("untrusted CA", untrusted_key, None)
    both = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    server = _issue("localhost", server_key, (ca, ca_key), both)
    client_only = (ExtendedKeyUsageOID.CLIENT_AUTH,)
    client = _issue(_DEFAULT_SECURE_USERNAME, client_key, (ca, ca_key), client_only)
    intruder = _issue("intruder", intruder_key, (untrusted_ca, untrusted_key), client_only)
    (secure_dir / "ca.pem").write_bytes(_cert_pem(ca))
    (secure_dir / "untrusted-ca.pem").write_bytes(_cert_pem(untrusted_ca))
    (secure_dir / "server.pem").write_bytes(_cert_pem(server))
    (secure_dir / "client.pem").write_bytes(_cert_pem(client))
    (secure_dir / "untrusted-client.pem").write_bytes(_cert_pem(intruder))
    _write_private(secure_dir / "server.key", _key_pem(server_key))
    # Kafka's PEM key store: the key, then its certificate chain, in one file.
    _write_private(secure_dir / "server-keystore.pem", _key_pem(server_key) + _cert_pem(server))
    _write_private(secure_dir / "client.key", _key_pem(client_key))
    _write_private(secure_dir / "untrusted-client.key", _key_pem(intruder_key))
    # Letters and digits only: safe inside Kafka's --add-scram [name=...,password=...].
    for name in ("kafka.password", "mqtt.password"):
        _write_private(secure_dir / name, secrets.token_hex(16).encode() + b"\n")
    return True


def _read_password(path: Path) -> str:
    return path.read_text().strip()


def _mosquitto_password_file(username: str, password: str) -> bytes:
    """One ``mosquitto_passwd`` line for ``username`` (mosquitto 2's ``$7$`` format:
    PBKDF2-SHA512, 101 iterations, 12-byte salt), so the tool need not be installed."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), salt, _MOSQUITTO_PBKDF2_ITERATIONS, 64
    )
    encode = base64.b64encode
    line = f"{username}:$7${_MOSQUITTO_PBKDF2_ITERATIONS}${encode(salt).decode()}$"
    return (line + encode(digest).decode() + "\n").encode()


def _secure_kafka_properties(host: str, ports: SecurePorts, secure_dir: Path) -> str:
    sasl, mtls, controller = ports.kafka_sasl_ssl, ports.kafka_mtls, ports.kafka_controller
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    listeners = f"""\
listeners=SASL_SSL://{host}:{sasl},SSL://{host}:{mtls},CONTROLLER://{host}:{controller}
advertised.listeners=SASL_SSL://{host}:{sasl},SSL://{host}:{mtls}
# The controller link never leaves this process: plaintext on loopback.
listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:PLAINTEXT
# The broker's own connections go through the mutual-TLS listener.
inter.broker.listener.name=SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}
listener.name.ssl.ssl.client.auth=required
ssl.keystore.type=PEM
ssl.keystore.location={secure_dir / "server-keystore.pem"}
ssl.truststore.type=PEM
ssl.truststore.location={secure_dir / "ca.pem"}
"""
    data_dir = secure_dir / "kafka" / "data"
    return _kafka_node_properties(host, controller, data_dir, _DEFAULT_KAFKA_PARTITIONS, listeners)


def _secure_mosquitto_config(host: str, ports: SecurePorts, secure_dir: Path) -> str:
    workdir = secure_dir / "mosquitto"
    tls = (
        f"cafile {secure_dir / 'ca.pem'}\n"
        f"certfile {secure_dir / 'server.pem'}\n"
        f"keyfile {secure_dir / 'server.key'}\n"
    )
    listeners = f"""\
# Each listener has its own authentication.
per_listener_settings true
# TLS; username and password from the password file.
listener {ports.mqtt_tls} {host}
{tls}allow_anonymous false
password_file {workdir / "passwd"}
# TLS; a client certificate signed by the CA, its CN is the username.
listener {ports.mqtt_mtls} {host}
{tls}require_certificate true
use_identity_as_username true
allow_anonymous false
"""
    return _mosquitto_broker_config(listeners, workdir)


def _kafka_client_security(stack: SecureStack, *, mutual_tls: bool) -> dict[str, Any]:
    """kafka-python settings for the secured Kafka's mutual-TLS or SASL_SSL listener."""
    if mutual_tls:
        return {
            "security_protocol": "SSL",
            "ssl_cafile": str(stack.ca_file),
            "ssl_certfile": str(stack.client_cert_file),
            "ssl_keyfile": str(stack.client_key_file),
        }
    return {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": str(stack.ca_file),
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": stack.username,
        "sasl_plain_password": _read_password(stack.kafka_password_file),
    }


def secure_stack(root: Path | None = None) -> SecureStack | None:
    """The secured services' addresses and files, or None before ``up_secure``."""
    root = _resolve_root(root)
    secure_dir = _secure_dir(root)
    kafka = _advertised_listeners(secure_dir / "kafka" / "server.properties")
    mqtt = _listener_addresses(secure_dir / "mosquitto" / "mosquitto.conf")
    if set(kafka) != {"SASL_SSL", "SSL"} or len(mqtt) != 2:
        return None
    return SecureStack(
        kafka_sasl_ssl=kafka["SASL_SSL"],
        kafka_mtls=kafka["SSL"],
        mqtt_tls=mqtt[0],
        mqtt_mtls=mqtt[1],
        username=_DEFAULT_SECURE_USERNAME,
        ca_file=secure_dir / "ca.pem",
        client_cert_file=secure_dir / "client.pem",
        client_key_file=secure_dir / "client.key",
        untrusted_ca_file=secure_dir / "untrusted-ca.pem",
        untrusted_cert_file=secure_dir / "untrusted-client.pem",
        untrusted_key_file=secure_dir / "untrusted-client.key",
        kafka_password_file=secure_dir / "kafka.password",
        mqtt_password_file=secure_dir / "mqtt.password",
    )


# --- Prism -------------------------------------------------------------------


def prism_path(root: Path | None = None) -> Path:
    """Where ``ensure_prism`` puts the Prism binary: ``<root>/bin/prism``."""
    return _resolve_root(root) / "bin" / "prism"


def _beam_version() -> str:
    # Not `apache_beam.version`: importing apache_beam costs seconds.
    return importlib.metadata.version("apache-beam")


def ensure_prism(root: Path | None = None, *, beam_version: str | None = None) -> Path:
    """Build the Prism runner for the installed Beam version once; return its path.

    A no-op when the binary is present (``prism.version`` beside it records the
    version it was built for; a different Beam version rebuilds it). Building
    takes about a minute with ``go install`` and a warm module cache.
    """
    binary = prism_path(root)
    version = beam_version or _beam_version()
    stamp = binary.with_name("prism.version")
    if binary.is_file():
        built_for = stamp.read_text().strip() if stamp.exists() else version
        if built_for == version:
            return binary
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).is_file():
        raise StackError("`go` is not installed: Prism is built with `go install` (Go 1.22+)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    _LOGGER.info("building Prism v%s with go install (about a minute, once)", version)
    with tempfile.TemporaryDirectory(dir=binary.parent, prefix=".gobin-") as gobin:
        env = {**os.environ, "GOBIN": gobin}
        argv = [go, "install", f"{_PRISM_MODULE}@v{version}"]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(
                f"`{' '.join(argv)}` failed (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-4000:]}"
            )
        os.replace(Path(gobin) / "prism", binary)
    stamp.write_text(f"{version}\n")
    return binary


# --- public API --------------------------------------------------------------


def _kafka_marker(root: Path) -> str:
    return str(_kafka_dir(root) / "server.properties")


def _mqtt_marker(root: Path) -> str:
    return str(root / "mosquitto" / "mosquitto.conf")


def _pid_files(root: Path) -> dict[_ServiceName, tuple[Path, str]]:
    return {
        "kafka": (_kafka_dir(root) / "kafka.pid", _kafka_marker(root)),
        "mqtt": (root / "mosquitto" / "mosquitto.pid", _mqtt_marker(root)),
    }


def _secure_pid_files(root: Path) -> dict[_ServiceName, tuple[Path, str]]:
    secure_dir = _secure_dir(root)
    return {
        "kafka": (
            secure_dir / "kafka" / "kafka.pid",
            str(secure_dir / "kafka" / "server.properties"),
        ),
        "mqtt": (
            secure_dir / "mosquitto" / "mosquitto.pid",
            str(secure_dir / "mosquitto" / "mosquitto.conf"),
        ),
    }


def _report_running(name: str, address: str | None, pid: int, wanted: str) -> str:
    _LOGGER.info("%s already running at %s (pid %d)", name, address, pid)
    if address != wanted:
        _LOGGER.warning(
            "%s runs at %s, not %s: `stack down` first to move it", name, address, wanted
        )
    return address or "?"


def up(
    kafka_port: int = _DEFAULT_KAFKA_PORT,
    mqtt_port: int = _DEFAULT_MQTT_PORT,
    root: Path | None = None,
    *,
    controller_port: int | None = None,
    host: str = _DEFAULT_HOST,
    timeout_seconds: float = _DEFAULT_KAFKA_START_TIMEOUT_SECONDS,
) -> dict[str, str]:
    """Start Kafka and Mosquitto unless they already run; return their addresses.

    Args:
        kafka_port: Kafka's client port on ``host`` (default 9092).
        mqtt_port: Mosquitto's port on ``host`` (default 1883).
        root: the stack folder (default ``<repo>/.stack``).
        controller_port: the KRaft controller port (default ``kafka_port + 1``).
        host: the loopback address both listen on (default 127.0.0.1).
        timeout_seconds: how long to wait for Kafka to answer (default 120 s).

    A service that already runs from this ``root`` is left alone and reported
    with the address it has (which may differ from the ports asked for: run
    ``down`` first to move it). Raises ``StackError`` with the log tail when a
    service does not come up.
    """
    root = _resolve_root(root)
    pids = _pid_files(root)
    addresses: dict[str, str] = {}
    with locked(root, "stack.lock"):
        started: list[tuple[int, tuple[str], str]] = []
        kafka_logs: dict[Path, int] = {}
        try:
            kafka_proc: subprocess.Popen[bytes] | None = None
            kafka_pid = owned_pid(*pids["kafka"])
            if kafka_pid is not None:
                addresses["kafka"] = _report_running(
                    "kafka", _kafka_address(root), kafka_pid, f"{host}:{kafka_port}"
                )
            else:
                kafka_proc, addresses["kafka"], kafka_logs = _start_kafka(
                    root,
                    host=host,
                    port=kafka_port,
                    controller_port=controller_port or kafka_port + 1,
                )
                started.append((kafka_proc.pid, (_kafka_marker(root),), "kafka"))
            mqtt_pid = owned_pid(*pids["mqtt"])
            if mqtt_pid is not None:
                addresses["mqtt"] = _report_running(
                    "mqtt", _mqtt_address(root), mqtt_pid, f"{host}:{mqtt_port}"
                )
            else:
                proc = start_mosquitto(mqtt_port, root / "mosquitto", host=host, detach=True)
                started.append((proc.pid, (_mqtt_marker(root),), "mqtt"))
                pids["mqtt"][0].write_text(f"{proc.pid}\n")
                addresses["mqtt"] = f"{host}:{mqtt_port}"
                _LOGGER.info("mqtt started at %s (pid %d)", addresses["mqtt"], proc.pid)
            if kafka_proc is not None:
                # Kafka needs seconds: wait for it last, while Mosquitto is up already.
                _wait_until(
                    lambda: kafka_answers(addresses["kafka"]),
                    what=f"kafka on {addresses['kafka']}",
                    proc=kafka_proc,
                    timeout_seconds=timeout_seconds,
                    logs=kafka_logs,
                )
                _LOGGER.info("kafka started at %s (pid %d)", addresses["kafka"], kafka_proc.pid)
        except BaseException:
            # Half a stack is worse than none: stop what this call started.
            _terminate(started, _DEFAULT_STOP_GRACE_SECONDS)
            raise
    return addresses


def up_secure(
    root: Path | None = None,
    ports: SecurePorts | None = None,
    *,
    host: str = _DEFAULT_HOST,
    timeout_seconds: float = _DEFAULT_KAFKA_START_TIMEOUT_SECONDS,
) -> SecureStack:
    """Start the secured Kafka and Mosquitto unless they already run; return how to reach them.

    Args:
        root: the stack folder (default ``<repo>/.stack``); the secured
            services live in ``<root>/secure``, the plaintext ones are not touched.
        ports: where they listen (default ``SecurePorts()``: 9094, 9095,
            9096, 8883, 8884; ``SecurePorts.free()`` for tests).
        host: the loopback address they listen on (default 127.0.0.1).
        timeout_seconds: how long to wait for Kafka to answer (default 120 s).

    The first call creates a throwaway CA, certificates and passwords (the
    module docstring lists them); a service already running from this ``root``
    is left alone and reported with the ports it has. Raises ``StackError``
    with the log tail when a service does not come up.
    """
    root = _resolve_root(root)
    ports = ports or SecurePorts()
    secure_dir = _secure_dir(root)
    pids = _secure_pid_files(root)
    hint = "the secured services' ports are SecurePorts(...) of stack.up_secure"
    with locked(root, "stack.lock"):
        started: list[tuple[int, tuple[str], str]] = []
        try:
            kafka_pid = owned_pid(*pids["kafka"])
            mqtt_pid = owned_pid(*pids["mqtt"])
            created = _ensure_certificates(secure_dir)
            if created and (kafka_pid is not None or mqtt_pid is not None):
                raise StackError(
                    f"the secured services run with certificates that are gone from "
                    f"{secure_dir}: `stack down`, then `stack up --secure`"
                )
            kafka_proc: subprocess.Popen[bytes] | None = None
            kafka_logs: dict[Path, int] = {}
            if kafka_pid is None:
                kafka_dir = secure_dir / "kafka"
                if created:
                    # New passwords: a log directory formatted with the old ones refuses them.
                    shutil.rmtree(kafka_dir / "data", ignore_errors=True)
                password = _read_password(secure_dir / "kafka.password")
                # The SCRAM user is written with the storage, so it exists before the
                # broker first answers: no admin step, no window without it.
                scram = f"SCRAM-SHA-512=[name={_DEFAULT_SECURE_USERNAME},password={password}]"
                kafka_proc, kafka_logs = _start_kafka_node(
                    kafka_dir,
                    ensure_kafka_jars(root),
                    _secure_kafka_properties(host, ports, secure_dir),
                    host=host,
                    ports=[
                        (ports.kafka_sasl_ssl, "kafka SASL_SSL", hint),
                        (ports.kafka_mtls, "kafka SSL", hint),
                        (ports.kafka_controller, "kafka controller", hint),
                    ],
                    format_args=["--add-scram", scram],
                )
                started.append((kafka_proc.pid, (pids["kafka"][1],), "secured kafka"))
            if mqtt_pid is None:
                workdir = secure_dir / "mosquitto"
                workdir.mkdir(parents=True, exist_ok=True)
                password = _read_password(secure_dir / "mqtt.password")
                _write_private(
                    workdir / "passwd",
                    _mosquitto_password_file(_DEFAULT_SECURE_USERNAME, password),
                )
                proc = _start_mosquitto_with(
                    _secure_mosquitto_config(host, ports, secure_dir),
                    workdir,
                    host=host,
                    ports=[(ports.mqtt_tls, hint), (ports.mqtt_mtls, hint)],
                    detach=True,
                    timeout_seconds=_DEFAULT_MQTT_START_TIMEOUT_SECONDS,
                )
                started.append((proc.pid, (pids["mqtt"][1],), "secured mqtt"))
                pids["mqtt"][0].write_text(f"{proc.pid}\n")
            secure = secure_stack(root)
            if secure is None:
                raise StackError(f"the secured services' config in {secure_dir} is incomplete")
            if kafka_proc is not None:
                # Both listeners, with the stack's own credentials: a broken key
                # store or SCRAM user fails here, not in the first test.
                for mutual_tls, address in (
                    (True, secure.kafka_mtls),
                    (False, secure.kafka_sasl_ssl),
                ):
                    security = _kafka_client_security(secure, mutual_tls=mutual_tls)
                    _wait_until(
                        functools.partial(kafka_answers, address, security=security),
                        what=f"kafka {security['security_protocol']} on {address}",
                        proc=kafka_proc,
                        timeout_seconds=timeout_seconds,
                        logs=kafka_logs,
                    )
        except BaseException:
            _terminate(started, _DEFAULT_STOP_GRACE_SECONDS)
            raise
    for name in _SECURE_LISTENERS:
        _LOGGER.info("%s at %s", name, getattr(secure, name))
    return secure


def down(root: Path | None = None, *, grace_seconds: float = _DEFAULT_STOP_GRACE_SECONDS) -> None:
    """Stop what ``up`` and ``up_secure`` started from ``root``: SIGTERM, then
    SIGKILL after the grace.

    A pid file whose process is gone, or is no longer this stack's broker (the
    pid was reused), is removed without signalling anything.
    """
    root = _resolve_root(root)
    pid_files = [
        *_pid_files(root).items(),
        *((f"secured {name}", files) for name, files in _secure_pid_files(root).items()),
    ]
    with locked(root, "stack.lock"):
        targets = []
        for name, (pid_file, marker) in pid_files:
            pid = read_pid(pid_file)
            if pid is None:
                continue
            if runs_with(pid, marker):
                _LOGGER.info("stopping %s (pid %d)", name, pid)
                targets.append((pid, (marker,), name))
            else:
                _LOGGER.info("%s is not running (pid %d is not ours)", name, pid)
        _terminate(targets, grace_seconds)
        for _, (pid_file, _) in pid_files:
            pid_file.unlink(missing_ok=True)


def status(root: Path | None = None) -> dict[str, ServiceStatus]:
    """What runs where: ``{"kafka": {...}, "mqtt": {...}}`` (state, address, pid, log).

    After ``up_secure`` (until ``down``) also one entry per secured listener:
    ``kafka_sasl_ssl``, ``kafka_mtls``, ``mqtt_tls``, ``mqtt_mtls``.
    """
    root = _resolve_root(root)
    logs = {"kafka": _kafka_dir(root) / "kafka.log", "mqtt": root / "mosquitto" / "mosquitto.log"}
    address = {"kafka": _kafka_address(root), "mqtt": _mqtt_address(root)}
    report: dict[str, ServiceStatus] = {}
    for name, (pid_file, marker) in _pid_files(root).items():
        pid = owned_pid(pid_file, marker)
        report[name] = ServiceStatus(
            state="running" if pid is not None else "stopped",
            address=address[name] if pid is not None else None,
            pid=pid,
            log=str(logs[name]),
        )
    secure = secure_stack(root)
    for process, (pid_file, marker) in _secure_pid_files(root).items():
        if not pid_file.exists():
            continue  # never started with --secure, or stopped by down
        pid = owned_pid(pid_file, marker)
        log = pid_file.with_name("kafka.log" if process == "kafka" else "mosquitto.log")
        for listener in _SECURE_LISTENERS:
            if listener.startswith(process):
                running = secure is not None and pid is not None
                report[listener] = ServiceStatus(
                    state="running" if pid is not None else "stopped",
                    address=getattr(secure, listener) if running else None,
                    pid=pid,
                    log=str(log),
                )
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_ingestion stack",
        description=(
            "The local stack: Kafka (KRaft) and Mosquitto on loopback, Prism. "
            "`status` exits 3 when a service is stopped."
        ),
    )
    parser.add_argument(
        "action",
        choices=("up", "down", "status", "prism", "jars"),
        help="up: start (idempotent); down: stop what up started; status; "
        "prism: build the Prism binary once; jars: fetch the Kafka jars once",
    )
    parser.add_argument("--kafka-port", type=int, default=_DEFAULT_KAFKA_PORT, metavar="N")
    parser.add_argument("--mqtt-port", type=int, default=_DEFAULT_MQTT_PORT, metavar="N")
    parser.add_argument(
        "--secure",
        action="store_true",
        help="up: also start the secured Kafka (SASL_SSL/SCRAM on 9094, mutual TLS on 9095) "
        "and Mosquitto (TLS + password on 8883, TLS + client certificate on 8884), with a "
        "throwaway CA, certificates and passwords in <root>/secure",
    )
    parser.add_argument(
        "--flink",
        action="store_true",
        help="up: also start the local Flink session cluster (`python -m data_ingestion flink "
        "up`: JobManager, TaskManager, Python worker pool; REST on 127.0.0.1:8082), building "
        "its job server jar first if needed; down stops it with the rest",
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="stack folder (default <repo>/.stack)"
    )
    return parser


def _flink_up(root: Path | None) -> str:
    """Starts the local Flink cluster (its jar built first); its REST address."""
    from data_ingestion import flink_stack

    try:
        flink_stack.ensure_job_server_jar(root)
        return flink_stack.up(root).rest
    except flink_stack.FlinkError as err:
        raise StackError(f"flink: {err}") from err


def main(argv: list[str] | None = None) -> int:
    """``stack up|down|status|prism|jars [--kafka-port N] [--mqtt-port N] [--secure] [--flink] [--root DIR]``."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="stack: %(message)s")
        _LOGGER.setLevel(logging.INFO)
    # The readiness probe's kafka-python client logs every connection at INFO.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    root: Path | None = args.root
    try:
        if args.action == "up":
            for name, address in up(args.kafka_port, args.mqtt_port, root).items():
                print(f"{name}: {address}")
            if args.secure:
                secure = up_secure(root)
                for name, what in _SECURE_LISTENERS.items():
                    print(f"{name}: {getattr(secure, name)}  ({what})")
                print(f"certificates and passwords: {secure.ca_file.parent}")
            if args.flink:
                print(f"flink: {_flink_up(root)}")
        elif args.action == "down":
            from data_ingestion import flink_stack

            # Stops only what `flink up` started from this root, if anything.
            flink_stack.down(root)
            down(root)
        elif args.action == "status":
            report = status(root)
            for name, service in report.items():
                where = f"{service['address']} pid {service['pid']}" if service["pid"] else "-"
                print(f"{name:<14} {service['state']:<8} {where:<28} log {service['log']}")
            return 0 if all(s["state"] == "running" for s in report.values()) else 3
        elif args.action == "prism":
            print(ensure_prism(root))
        elif args.action == "jars":
            print(ensure_kafka_jars(root))
    except StackError as err:
        print(f"stack {args.action}: {err}", file=sys.stderr)
        return 1
    return 0
