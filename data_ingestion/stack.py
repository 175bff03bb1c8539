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

Example::

    python -m data_ingestion stack up          # kafka: 127.0.0.1:9092 / mqtt: 127.0.0.1:1883
    python -m data_ingestion stack status
    python -m data_ingestion stack down

    from data_ingestion import stack
    addresses = stack.up()                      # {"kafka": "127.0.0.1:9092", "mqtt": ...}
    prism = stack.ensure_prism()                # Path to .stack/bin/prism

Needs ``java`` (17+), ``mvn``, ``go`` and ``mosquitto`` on the PATH
(``make system-deps`` installs Mosquitto).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import getpass
import importlib.metadata
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal, TypedDict
from xml.sax.saxutils import quoteattr

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

__all__ = [
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
    "start_mosquitto",
    "status",
    "up",
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

_POM = Path(__file__).with_name("stack_kafka_pom.xml")
_PRISM_MODULE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
_STORAGE_TOOL_CLASSES = ("kafka.tools.StorageTool", "org.apache.kafka.tools.StorageTool")

_ServiceName = Literal["kafka", "mqtt"]


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


def free_port(host: str = _DEFAULT_HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


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


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    # `make test` and a test fixture may both call up(): one at a time.
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "stack.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- processes ---------------------------------------------------------------


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The command name in parentheses may itself contain spaces or parentheses.
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def _cmdline(pid: int) -> list[str]:
    """The live process's arguments; empty when gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _is_ours(pid: int, marker: str) -> bool:
    # The config path is in the arguments of exactly this stack's broker; a
    # reused pid or another stack's broker does not name it.
    return marker in _cmdline(pid)


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _owned_pid(pid_file: Path, marker: str) -> int | None:
    pid = _read_pid(pid_file)
    if pid is not None and _is_ours(pid, marker):
        return pid
    return None


def _spawn(
    argv: Sequence[str], *, cwd: Path, output: Path, detach: bool
) -> subprocess.Popen[bytes]:
    with open(output, "ab") as out:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C in the terminal that ran `make demo` and
            # the exit of that command leave the broker running.
            start_new_session=detach,
            close_fds=True,
        )


def _still_running(pid: int, marker: str) -> bool:
    if _is_zombie(pid):
        # Our own exited child (up() and down() in one process): reap it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return _is_ours(pid, marker)


def _terminate(targets: Sequence[tuple[int, str]], grace_seconds: float) -> None:
    """SIGTERM every (pid, marker) still ours, SIGKILL what outlives the grace."""
    alive = [(pid, marker) for pid, marker in targets if _still_running(pid, marker)]
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid, _ in alive:
            if signum == signal.SIGKILL:
                _LOGGER.warning("pid %d did not stop within %.0f s: killing it", pid, grace_seconds)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        deadline = time.monotonic() + grace_seconds
        while alive and time.monotonic() < deadline:
            time.sleep(_DEFAULT_POLL_SECONDS)
            alive = [(pid, marker) for pid, marker in alive if _still_running(pid, marker)]
    if alive:
        raise StackError(f"pids {[pid for pid, _ in alive]} survived SIGKILL")


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
    if _port_accepts(host, port):
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
    return f"""\
# Generated by data_ingestion/stack.py on every start: edit the module, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir}

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


def kafka_answers(address: str, timeout_seconds: float = 5.0) -> bool:
    """True when a broker at ``address`` serves metadata with a live broker in it."""
    host, _, port = address.rpartition(":")
    if not _port_accepts(host, int(port)):
        return False
    timeout_ms = int(timeout_seconds * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=address,
            client_id="data-ingestion-stack",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
    except KafkaError:
        return False
    try:
        return bool(admin.describe_cluster().get("brokers"))
    except KafkaError:
        return False
    finally:
        admin.close()


def _start_kafka(
    root: Path, *, host: str, port: int, controller_port: int
) -> tuple[subprocess.Popen[bytes], str, dict[Path, int]]:
    """Start the broker (formatting its storage the first time); do not wait for it."""
    kafka_dir = _kafka_dir(root)
    libs = ensure_kafka_jars(root)
    data_dir = kafka_dir / "data"
    properties = kafka_dir / "server.properties"
    log4j = kafka_dir / "log4j2.xml"
    output = kafka_dir / "kafka.out"
    _require_free(host, port, "kafka", "--kafka-port")
    _require_free(host, controller_port, "kafka controller", "--kafka-port")
    data_dir.mkdir(parents=True, exist_ok=True)
    properties.write_text(
        _kafka_properties(host, port, controller_port, data_dir, _DEFAULT_KAFKA_PARTITIONS)
    )
    log4j.write_text(_log4j2_xml(kafka_dir / "kafka.log"))
    java = _java()
    jvm = [java, *_DEFAULT_KAFKA_HEAP_OPTS, f"-Dlog4j2.configurationFile={log4j}"]
    classpath = ["-cp", str(libs / "*")]
    if not (data_dir / "meta.properties").exists():
        tool = _storage_tool_class(libs)
        argv = [*jvm, *classpath, tool, "format", "-t", _cluster_id(), "-c", str(properties)]
        result = subprocess.run(argv, cwd=kafka_dir, capture_output=True, text=True, check=False)
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
    proc = _spawn(argv, cwd=kafka_dir, output=output, detach=True)
    (kafka_dir / "kafka.pid").write_text(f"{proc.pid}\n")
    return proc, f"{host}:{port}", logs


def _kafka_address(root: Path) -> str | None:
    properties = _kafka_dir(root) / "server.properties"
    try:
        lines = properties.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        if line.startswith("advertised.listeners=PLAINTEXT://"):
            return line.split("//", 1)[1].strip()
    return None


# --- Mosquitto ---------------------------------------------------------------


def _mosquitto_config(host: str, port: int, workdir: Path) -> str:
    data = workdir / "data"
    return f"""\
# Generated by data_ingestion/stack.py: edit the module, not this file.
# Nothing queued for a persistent QoS 1 session is dropped: the pipeline holds
# its acks until a bundle commits, and offline subscribers catch up on reconnect.
listener {port} {host}
allow_anonymous true
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
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).is_file():
        raise StackError("`mosquitto` is not installed: run `make system-deps`")
    workdir = workdir.resolve()
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    config = workdir / "mosquitto.conf"
    config.write_text(_mosquitto_config(host, port, workdir))
    _require_free(host, port, "mosquitto", "--mqtt-port")
    output = workdir / "mosquitto.out"
    logs = _log_sizes(workdir / "mosquitto.log", output)
    proc = _spawn([mosquitto, "-c", str(config)], cwd=workdir, output=output, detach=detach)
    try:
        _wait_until(
            lambda: _port_accepts(host, port),
            what=f"mosquitto on {host}:{port}",
            proc=proc,
            timeout_seconds=timeout_seconds,
            logs=logs,
        )
    except StackError:
        proc.kill()
        proc.wait()
        raise
    return proc


def _mqtt_address(root: Path) -> str | None:
    try:
        lines = (root / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) == 3 and fields[0] == "listener":
            return f"{fields[2]}:{fields[1]}"
    return None


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
    with _locked(root):
        started: list[tuple[int, str]] = []
        kafka_logs: dict[Path, int] = {}
        try:
            kafka_proc: subprocess.Popen[bytes] | None = None
            kafka_pid = _owned_pid(*pids["kafka"])
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
                started.append((kafka_proc.pid, _kafka_marker(root)))
            mqtt_pid = _owned_pid(*pids["mqtt"])
            if mqtt_pid is not None:
                addresses["mqtt"] = _report_running(
                    "mqtt", _mqtt_address(root), mqtt_pid, f"{host}:{mqtt_port}"
                )
            else:
                proc = start_mosquitto(mqtt_port, root / "mosquitto", host=host, detach=True)
                started.append((proc.pid, _mqtt_marker(root)))
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


def down(root: Path | None = None, *, grace_seconds: float = _DEFAULT_STOP_GRACE_SECONDS) -> None:
    """Stop what ``up`` started from ``root``: SIGTERM, then SIGKILL after the grace.

    A pid file whose process is gone, or is no longer this stack's broker (the
    pid was reused), is removed without signalling anything.
    """
    root = _resolve_root(root)
    with _locked(root):
        targets = []
        for name, (pid_file, marker) in _pid_files(root).items():
            pid = _read_pid(pid_file)
            if pid is None:
                continue
            if _is_ours(pid, marker):
                _LOGGER.info("stopping %s (pid %d)", name, pid)
                targets.append((pid, marker))
            else:
                _LOGGER.info("%s is not running (pid %d is not ours)", name, pid)
        _terminate(targets, grace_seconds)
        for pid_file, _ in _pid_files(root).values():
            pid_file.unlink(missing_ok=True)


def status(root: Path | None = None) -> dict[str, ServiceStatus]:
    """What runs where: ``{"kafka": {...}, "mqtt": {...}}`` (state, address, pid, log)."""
    root = _resolve_root(root)
    logs = {"kafka": _kafka_dir(root) / "kafka.log", "mqtt": root / "mosquitto" / "mosquitto.log"}
    address = {"kafka": _kafka_address(root), "mqtt": _mqtt_address(root)}
    report: dict[str, ServiceStatus] = {}
    for name, (pid_file, marker) in _pid_files(root).items():
        pid = _owned_pid(pid_file, marker)
        report[name] = ServiceStatus(
            state="running" if pid is not None else "stopped",
            address=address[name] if pid is not None else None,
            pid=pid,
            log=str(logs[name]),
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
        "--root", type=Path, default=None, help="stack folder (default <repo>/.stack)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``stack up|down|status|prism|jars [--kafka-port N] [--mqtt-port N] [--root DIR]``."""
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
        elif args.action == "down":
            down(root)
        elif args.action == "status":
            report = status(root)
            for name, service in report.items():
                where = f"{service['address']} pid {service['pid']}" if service["pid"] else "-"
                print(f"{name:<6} {service['state']:<8} {where:<28} log {service['log']}")
            return 0 if all(s["state"] == "running" for s in report.values()) else 3
        elif args.action == "prism":
            print(ensure_prism(root))
        elif args.action == "jars":
            print(ensure_kafka_jars(root))
    except StackError as err:
        print(f"stack {args.action}: {err}", file=sys.stderr)
        return 1
    return 0
