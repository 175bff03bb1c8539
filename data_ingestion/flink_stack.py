"""A local Flink 1.19 session cluster, its Python workers and the Beam job server jar.

``python -m data_ingestion flink up`` starts, idempotently, a standalone Flink
session cluster on this machine, with no Docker: a JobManager, one
TaskManager (several slots) and, beside it, the Python SDK worker pool the
pipeline's EXTERNAL environment talks to. Every file lives under
``<repo>/.stack/flink/``:

* Flink itself comes from PyPI: ``apache-flink`` + ``apache-flink-libraries``
  1.19.3 carry a complete Flink distribution (``pyflink/bin``, ``lib``,
  ``opt``). They are installed ``--no-deps --target`` into ``dist/``, never
  into the Beam environment: their Python dependencies pin an old Beam, and
  only the Java distribution is used, so no Python dependency is needed.
* The REST API (and web UI), RPC, blob and data ports bind to 127.0.0.1 only.
  REST listens on 8082 by default (8081 is the camera simulator's).
  Checkpoints go to ``checkpoints/``, savepoints to ``savepoints/``; the
  state backend is ``hashmap`` (state on the TaskManager's heap, snapshots to
  those folders). Memory stays modest: JobManager 1 GiB, TaskManager 2 GiB.
* The worker pool (``flink worker-pool``) listens on 127.0.0.1:50000, the
  address `pipelines.flink` gives EXTERNAL environments by default. For every
  environment the TaskManager asks for it starts one SDK worker process with
  this interpreter, so the workers import the project as installed here (on a
  plant, the project is installed on every TaskManager host and a pool runs
  beside each TaskManager). Beam's own ``worker_pool_main`` binds every
  interface, starts ``python`` from the PATH and leaves its workers' logs at
  WARNING; this one binds loopback, uses this interpreter and logs at INFO.
* ``flink jar`` puts a Beam Flink job server jar into ``.stack/flink/``: the
  official ``beam-runners-flink-1.19-job-server`` at the installed Beam
  version when the Maven repository serves it, otherwise one shaded from
  ``beam-runners-flink-1.19:2.62.0`` (``flink_job_server_pom.xml``). The
  2.62 runner under the 2.77 SDK is a version skew Beam does not support.

Processes run in their own session (they outlive the command that started
them); ``flink down`` stops them, and only them: a pid is signalled only while
its command line still names this stack's config folder.

Layout::

    .stack/flink/
      dist/pyflink/                 FLINK_HOME (bin/, lib/, opt/)
      beam-runners-flink-1.19-job-server-<version>.jar
      build/                        the Maven build of the shaded jar
      conf/config.yaml              written on every start (+ log4j-console.properties)
      log/                          JobManager and TaskManager logs, worker-pool.log
      run/                          pid files, cluster.json (addresses)
      checkpoints/ savepoints/ tmp/ uploads/

Example::

    python -m data_ingestion flink jar       # once: the job server jar
    python -m data_ingestion flink up        # rest: http://127.0.0.1:8082 ...
    python -m data_ingestion run --config data_ingestion_config.json --runner FlinkRunner \\
        --flink_master=127.0.0.1:8082 --parallelism=2
    python -m data_ingestion flink status
    python -m data_ingestion flink down

    from data_ingestion import flink_stack
    cluster = flink_stack.up(root)           # FlinkCluster(rest="127.0.0.1:8082", ...)
    flink_stack.down(root)

Needs ``java`` (11 or 17), and for ``flink jar`` ``mvn``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

from data_ingestion.local_processes import (
    free_port,
    locked,
    owned_pid,
    port_accepts,
    spawn,
    terminate,
)
from pipelines.flink import (
    ASSEMBLED_JAR_NAME,
    ASSEMBLED_RUNNER_VERSION,
    DEFAULT_WORKER_POOL,
    FLINK_MINOR,
    LOCAL_FLINK_DIR,
    default_job_server_jar,
    job_server_jar_name,
)

__all__ = [
    "FLINK_VERSION",
    "FlinkCluster",
    "FlinkError",
    "ProcessStatus",
    "down",
    "ensure_distribution",
    "ensure_job_server_jar",
    "flink_dir",
    "main",
    "serve_worker_pool",
    "status",
    "up",
]

_LOGGER = logging.getLogger(__name__)

FLINK_VERSION = "1.19.3"
_HOST = "127.0.0.1"
_DEFAULT_REST_PORT = 8082
_DEFAULT_WORKER_POOL_PORT = int(DEFAULT_WORKER_POOL.rsplit(":", 1)[1])
_DEFAULT_SLOTS = 4
_DEFAULT_JOBMANAGER_MEMORY = "1024m"
_DEFAULT_TASKMANAGER_MEMORY = "2048m"
_DEFAULT_RETAINED_CHECKPOINTS = 3
_DEFAULT_START_TIMEOUT_SECONDS = 120.0
_DEFAULT_STOP_GRACE_SECONDS = 30.0
_POLL_SECONDS = 0.5
_REST_TIMEOUT_SECONDS = 5.0
_LOG_TAIL_LINES = 30
# Beam's default --max_cache_memory_usage_mb: state reads of the stateful
# transforms are served from the worker instead of a gRPC round trip each.
_SDK_STATE_CACHE_BYTES = 100 << 20
_OFFICIAL_GROUP = "org.apache.beam"
_POM = Path(__file__).with_name("flink_job_server_pom.xml")
# Flink 1.19.3's own config.yaml (env.java.opts.all): the module openings its
# JobManager and TaskManager need on Java 17.
_JAVA_17_OPTS = " ".join(
    [
        "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
        "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
        "--add-exports=jdk.compiler/com.sun.tools.javac.api=ALL-UNNAMED",
        "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
        "--add-exports=jdk.compiler/com.sun.tools.javac.parser=ALL-UNNAMED",
        "--add-exports=jdk.compiler/com.sun.tools.javac.tree=ALL-UNNAMED",
        "--add-exports=jdk.compiler/com.sun.tools.javac.util=ALL-UNNAMED",
        "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
        "--add-opens=java.base/java.lang=ALL-UNNAMED",
        "--add-opens=java.base/java.net=ALL-UNNAMED",
        "--add-opens=java.base/java.io=ALL-UNNAMED",
        "--add-opens=java.base/java.nio=ALL-UNNAMED",
        "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
        "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
        "--add-opens=java.base/java.text=ALL-UNNAMED",
        "--add-opens=java.base/java.time=ALL-UNNAMED",
        "--add-opens=java.base/java.util=ALL-UNNAMED",
        "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
        "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
        "--add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED",
    ]
)

_ProcessName = Literal["jobmanager", "taskmanager", "worker_pool"]
# What names each process in its command line, besides the config folder.
_MAIN_CLASSES: dict[_ProcessName, str] = {
    "jobmanager": "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint",
    "taskmanager": "org.apache.flink.runtime.taskexecutor.TaskManagerRunner",
    "worker_pool": "worker-pool",
}


class FlinkError(RuntimeError):
    """The local Flink cluster, its distribution or its jar could not be prepared or run."""


class ProcessStatus(TypedDict):
    """What ``status()`` reports for one process."""

    state: Literal["running", "stopped"]
    pid: int | None
    address: str | None
    log: str


@dataclasses.dataclass(frozen=True)
class FlinkCluster:
    """How to reach a running local cluster: ``host:port`` of REST and of the worker pool."""

    rest: str
    worker_pool: str
    slots: int

    @property
    def rest_url(self) -> str:
        return f"http://{self.rest}"

    def beam_args(self) -> list[str]:
        """The pipeline options that run a job on this cluster."""
        return [
            "--runner=FlinkRunner",
            f"--flink_master={self.rest}",
            "--environment_type=EXTERNAL",
            f"--environment_config={self.worker_pool}",
        ]


# --- folders -------------------------------------------------------------------


def flink_dir(root: Path | None = None) -> Path:
    """``<root>/flink``, where every file of the local Flink lives (root: ``<repo>/.stack``)."""
    if root is None:
        return LOCAL_FLINK_DIR.resolve()
    return root.resolve() / "flink"


def _home(base: Path) -> Path:
    return base / "dist" / "pyflink"


def _conf_dir(base: Path) -> Path:
    return base / "conf"


def _pid_file(base: Path, name: _ProcessName) -> Path:
    return base / "run" / f"{name}.pid"


def _cluster_file(base: Path) -> Path:
    return base / "run" / "cluster.json"


def _tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise FlinkError(f"`{name}` is not on the PATH: {hint}")
    return found


# --- the distribution and the jar --------------------------------------------------


def ensure_distribution(root: Path | None = None, *, version: str = FLINK_VERSION) -> Path:
    """Installs Flink ``version`` from PyPI into ``<root>/flink/dist`` once; returns FLINK_HOME.

    ``pip install --no-deps --target`` into a staging folder first, so an
    interrupted download is never mistaken for an installed one.
    """
    base = flink_dir(root)
    home = _home(base)
    marker = base / "dist" / "flink.version"
    if (home / "bin" / "jobmanager.sh").is_file() and marker.is_file():
        if marker.read_text().strip() == version:
            return home
    base.mkdir(parents=True, exist_ok=True)
    _LOGGER.info("installing Flink %s from PyPI into %s", version, base / "dist")
    staging = Path(tempfile.mkdtemp(dir=base, prefix=".dist-"))
    try:
        argv = [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
            "--target", str(staging),
            f"apache-flink=={version}", f"apache-flink-libraries=={version}",
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise FlinkError(
                f"pip could not install Flink {version} (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-4000:]}"
            )
        (staging / "flink.version").write_text(f"{version}\n")
        shutil.rmtree(base / "dist", ignore_errors=True)
        staging.rename(base / "dist")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return home


def _sdk_version() -> str:
    import apache_beam

    return str(apache_beam.__version__)


def ensure_job_server_jar(root: Path | None = None) -> Path:
    """The Beam Flink job server jar in ``<root>/flink``, fetched or built once.

    Prefers an official ``beam-runners-flink-1.19-job-server`` at the installed
    Beam version (asked of Maven once, when no jar is there yet), else shades
    ``beam-runners-flink-1.19:2.62.0`` with ``flink_job_server_pom.xml``.
    """
    base = flink_dir(root)
    existing = default_job_server_jar(base)
    if existing is not None:
        return existing
    mvn = _tool("mvn", "install Maven 3.8+ (apt-get install maven)")
    base.mkdir(parents=True, exist_ok=True)
    official = _fetch_official_jar(mvn, base)
    if official is not None:
        return official
    return _build_assembled_jar(mvn, base)


def _fetch_official_jar(mvn: str, base: Path) -> Path | None:
    version = _sdk_version()
    artifact = f"{_OFFICIAL_GROUP}:beam-runners-flink-{FLINK_MINOR}-job-server:{version}"
    staging = Path(tempfile.mkdtemp(dir=base, prefix=".jar-"))
    try:
        argv = [
            mvn, "-B", "-q", "dependency:copy", f"-Dartifact={artifact}",
            f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        jar = staging / job_server_jar_name(version)
        if result.returncode != 0 or not jar.is_file():
            _LOGGER.info(
                "the Maven repository serves no %s; assembling a job server from "
                "beam-runners-flink-%s:%s instead", artifact, FLINK_MINOR,
                ASSEMBLED_RUNNER_VERSION,
            )  # fmt: skip
            return None
        target = base / jar.name
        jar.rename(target)
        _LOGGER.info("fetched the official job server %s", target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_assembled_jar(mvn: str, base: Path) -> Path:
    target = base / ASSEMBLED_JAR_NAME
    staging = base / f".{target.name}.building"
    _LOGGER.info("shading beam-runners-flink-%s:%s into %s", FLINK_MINOR, ASSEMBLED_RUNNER_VERSION, target)  # fmt: skip
    argv = [
        mvn, "-B", "-q", "-f", str(_POM), "package",
        f"-Dbeam.version={ASSEMBLED_RUNNER_VERSION}", f"-Dflink.minor={FLINK_MINOR}",
        f"-Djobserver.build.dir={base / 'build'}", f"-Djobserver.output={staging}",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not staging.is_file():
        staging.unlink(missing_ok=True)
        raise FlinkError(
            f"mvn could not build the Flink job server (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-4000:]}"
        )
    staging.rename(target)
    return target


# --- configuration -------------------------------------------------------------------


def _config(
    base: Path,
    *,
    rest_port: int,
    rpc_port: int,
    slots: int,
    jobmanager_memory: str,
    taskmanager_memory: str,
) -> dict[str, str | int]:
    return {
        "jobmanager.rpc.address": _HOST,
        "jobmanager.rpc.port": rpc_port,
        "jobmanager.bind-host": _HOST,
        "jobmanager.memory.process.size": jobmanager_memory,
        "taskmanager.bind-host": _HOST,
        "taskmanager.host": _HOST,
        "taskmanager.numberOfTaskSlots": slots,
        "taskmanager.memory.process.size": taskmanager_memory,
        # Managed memory serves RocksDB and batch jobs; the hashmap backend keeps
        # state on the heap, where the default 40 % would be missed.
        "taskmanager.memory.managed.fraction": "0.1",
        "parallelism.default": 1,
        "rest.address": _HOST,
        # Without it the REST API and web UI listen on every interface.
        "rest.bind-address": _HOST,
        "rest.port": rest_port,
        "state.backend.type": "hashmap",
        "state.checkpoints.dir": (base / "checkpoints").as_uri(),
        "state.savepoints.dir": (base / "savepoints").as_uri(),
        "state.checkpoints.num-retained": _DEFAULT_RETAINED_CHECKPOINTS,
        "io.tmp.dirs": str(base / "tmp"),
        # Every uber-jar submission uploads ~160 MB here; `down` empties it.
        "web.upload.dir": str(base / "uploads"),
        # The console appender off, stdout and stderr to files in log/.
        "env.stdout-err.redirect-to-file": "true",
        "env.java.opts.all": _JAVA_17_OPTS,
    }


def _write_config(base: Path, home: Path, settings: dict[str, str | int]) -> Path:
    conf = _conf_dir(base)
    conf.mkdir(parents=True, exist_ok=True)
    # JSON scalars are valid YAML: no quoting rules of our own.
    lines = [f"{key}: {json.dumps(value)}" for key, value in settings.items()]
    (conf / "config.yaml").write_text(
        "# Written by data_ingestion/flink_stack.py on every `flink up`; edits are lost.\n"
        + "\n".join(lines)
        + "\n"
    )
    shutil.copyfile(home / "conf" / "log4j-console.properties", conf / "log4j-console.properties")
    for folder in ("log", "run", "checkpoints", "savepoints", "tmp", "uploads"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    return conf


# --- processes -------------------------------------------------------------------------


def _markers(base: Path, name: _ProcessName) -> tuple[str, str]:
    # Flink's processes name the config folder (--configDir), the pool its stack folder (--root).
    marker = str(base.parent if name == "worker_pool" else _conf_dir(base))
    return marker, _MAIN_CLASSES[name]


def _owned_pid(base: Path, name: _ProcessName) -> int | None:
    return owned_pid(_pid_file(base, name), *_markers(base, name))


def _address_accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return port_accepts(host, int(port))


def _require_free(port: int, what: str, flag: str) -> None:
    if port_accepts(_HOST, port):
        raise FlinkError(
            f"{what}: {_HOST}:{port} is already in use by a process this stack did not start; "
            f"stop it or choose another port ({flag})"
        )


def _terminate(targets: Sequence[tuple[int, Path, _ProcessName]], grace_seconds: float) -> None:
    """SIGTERM each (pid, folder, name) still ours, SIGKILL what outlives the grace."""
    survivors = terminate(
        [(pid, _markers(base, name), f"flink {name}") for pid, base, name in targets],
        grace_seconds,
    )
    if survivors:
        raise FlinkError(f"pids {survivors} survived SIGKILL")


def _stop_children(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=_DEFAULT_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _logs(base: Path) -> dict[_ProcessName, Path]:
    log = base / "log"

    def newest(pattern: str) -> Path:
        found = sorted(log.glob(pattern), key=lambda path: path.stat().st_mtime)
        return found[-1] if found else log / pattern.replace("*", "0")

    return {
        "jobmanager": newest("flink-*-standalonesession-*.log"),
        "taskmanager": newest("flink-*-taskexecutor-*.log"),
        "worker_pool": log / "worker-pool.log",
    }


def _log_tail(base: Path) -> str:
    parts = []
    paths = [*_logs(base).values(), *sorted((base / "log").glob("*.out"))]
    for path in paths:
        with contextlib.suppress(OSError):
            lines = path.read_text(errors="replace").splitlines()
            errors = [line for line in lines if " ERROR " in line][-10:]
            if errors:
                parts.append(f"--- errors in {path} ---\n" + "\n".join(errors))
            if lines:
                parts.append(
                    f"--- last lines of {path} ---\n" + "\n".join(lines[-_LOG_TAIL_LINES:])
                )
    return "\n".join(parts) or "(no log output)"


def _rest_overview(rest: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(
            f"http://{rest}/overview", timeout=_REST_TIMEOUT_SECONDS
        ) as response:
            overview: dict[str, Any] = json.loads(response.read())
            return overview
    except (OSError, ValueError):
        return None


def _read_cluster(base: Path) -> FlinkCluster | None:
    try:
        saved = json.loads(_cluster_file(base).read_text())
        return FlinkCluster(saved["rest"], saved["worker_pool"], int(saved["slots"]))
    except (OSError, ValueError, KeyError):
        return None


# --- up, down, status -----------------------------------------------------------------


def up(
    root: Path | None = None,
    *,
    rest_port: int | None = _DEFAULT_REST_PORT,
    worker_pool_port: int | None = _DEFAULT_WORKER_POOL_PORT,
    slots: int = _DEFAULT_SLOTS,
    jobmanager_memory: str = _DEFAULT_JOBMANAGER_MEMORY,
    taskmanager_memory: str = _DEFAULT_TASKMANAGER_MEMORY,
    timeout_seconds: float = _DEFAULT_START_TIMEOUT_SECONDS,
    home: Path | None = None,
    flink_settings: Mapping[str, str | int] | None = None,
) -> FlinkCluster:
    """Starts the JobManager, the TaskManager and the worker pool unless they run.

    Args:
        root: the stack folder (default ``<repo>/.stack``); files go to ``<root>/flink``.
        rest_port: REST API and web UI on 127.0.0.1 (default 8082; None: any free port).
        worker_pool_port: the Python worker pool on 127.0.0.1 (default 50000,
            what `pipelines.flink` expects; None: any free port).
        slots: task slots of the TaskManager (default 4).
        jobmanager_memory, taskmanager_memory: total process sizes (1024m, 2048m).
        timeout_seconds: how long to wait until every slot is registered (120 s).
        home: a Flink distribution to run (FLINK_HOME) instead of ``<root>/flink/dist``,
            e.g. the repository's for a test's private cluster.
        flink_settings: more Flink configuration entries, over this module's
            (e.g. ``env.java.opts.taskmanager``).

    A cluster already running from this folder is left alone and returned as
    it is. Raises ``FlinkError`` with the log tail when something does not start.
    """
    base = flink_dir(root)
    with locked(base, "flink.lock"):
        running = {name: _owned_pid(base, name) for name in _MAIN_CLASSES}
        cluster = _read_cluster(base)
        if all(running.values()) and cluster is not None:
            _LOGGER.info("flink already running: REST %s", cluster.rest)
            return cluster
        if any(running.values()):
            if cluster is None:
                raise FlinkError(
                    f"half a cluster runs from {base} ({running}) and its cluster.json is "
                    "gone: `flink down` first, then `flink up`"
                )
            # A TaskManager or worker pool that died: the rest keeps its jobs, ports
            # and config, so only the missing ones start again, as they were.
            missing = [name for name, pid in running.items() if pid is None]
            _LOGGER.info("flink: starting %s again", ", ".join(missing))
            _start(base, cluster, Path(_saved_home(base)), missing, timeout_seconds)
            return cluster
        _tool("java", "install Java 11 or 17 (apt-get install openjdk-17-jre-headless)")
        home = home or ensure_distribution(root)
        if rest_port is None:
            rest_port = free_port(_HOST)
        if worker_pool_port is None:
            worker_pool_port = free_port(_HOST)
        _require_free(rest_port, "flink REST", "--rest-port")
        _require_free(worker_pool_port, "flink worker pool", "--worker-pool-port")
        settings = _config(
            base,
            rest_port=rest_port,
            rpc_port=free_port(_HOST),
            slots=slots,
            jobmanager_memory=jobmanager_memory,
            taskmanager_memory=taskmanager_memory,
        )
        _write_config(base, home, {**settings, **(flink_settings or {})})
        cluster = FlinkCluster(f"{_HOST}:{rest_port}", f"{_HOST}:{worker_pool_port}", slots)
        _cluster_file(base).write_text(
            json.dumps({**dataclasses.asdict(cluster), "home": str(home)}) + "\n"
        )
        _start(base, cluster, home, list(_MAIN_CLASSES), timeout_seconds)
    _LOGGER.info(
        "flink %s started: REST %s, %d slots, worker pool %s", FLINK_VERSION, cluster.rest,
        slots, cluster.worker_pool,
    )  # fmt: skip
    return cluster


def _saved_home(base: Path) -> str:
    home: str = json.loads(_cluster_file(base).read_text())["home"]
    return home


def _start(
    base: Path,
    cluster: FlinkCluster,
    home: Path,
    names: Sequence[_ProcessName],
    timeout_seconds: float,
) -> None:
    """Starts `names` of the cluster from `home`, with the config `up` wrote."""
    env = {
        **os.environ,
        "FLINK_CONF_DIR": str(_conf_dir(base)),
        "FLINK_LOG_DIR": str(base / "log"),
        "FLINK_PID_DIR": str(base / "run"),
    }
    worker_pool_port = cluster.worker_pool.rsplit(":", 1)[1]
    commands: dict[_ProcessName, tuple[list[str], dict[str, str]]] = {
        "jobmanager": (["bash", str(home / "bin" / "jobmanager.sh"), "start-foreground"], env),
        "taskmanager": (["bash", str(home / "bin" / "taskmanager.sh"), "start-foreground"], env),
        "worker_pool": (
            [
                sys.executable, "-m", "data_ingestion.flink_stack", "worker-pool",
                "--root", str(base.parent), "--port", worker_pool_port,
            ],
            dict(os.environ),
        ),
    }  # fmt: skip
    # Our own children until `up` returns: until the scripts exec Java their
    # command lines name no marker, so they are watched and stopped by handle.
    started: list[tuple[_ProcessName, subprocess.Popen[bytes]]] = []
    try:
        for name in names:
            argv, process_env = commands[name]
            output = (
                base / "log" / ("worker-pool.log" if name == "worker_pool" else f"{name}.start.out")
            )
            process = spawn(argv, cwd=base, env=process_env, output=output)
            started.append((name, process))
            _pid_file(base, name).write_text(f"{process.pid}\n")
        _wait_ready(base, cluster, started, timeout_seconds)
    except BaseException:
        # Half a cluster is worse than none: stop what this call started.
        _stop_children([process for _, process in started])
        raise


def _wait_ready(
    base: Path,
    cluster: FlinkCluster,
    started: Sequence[tuple[_ProcessName, subprocess.Popen[bytes]]],
    timeout_seconds: float,
) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
        for name, process in started:
            code = process.poll()
            if code is not None:
                raise FlinkError(
                    f"flink {name} exited with code {code} while starting\n{_log_tail(base)}"
                )
        overview = _rest_overview(cluster.rest)
        if (
            overview is not None
            and overview.get("slots-total", 0) >= cluster.slots
            and _address_accepts(cluster.worker_pool)
        ):
            return
        if time.monotonic() > deadline:
            raise FlinkError(
                f"flink did not offer {cluster.slots} slots on {cluster.rest} within "
                f"{timeout_seconds:.0f} s\n{_log_tail(base)}"
            )
        time.sleep(_POLL_SECONDS)


def down(root: Path | None = None, *, grace_seconds: float = _DEFAULT_STOP_GRACE_SECONDS) -> None:
    """Stops what ``up`` started from ``root`` (running jobs end with the TaskManager).

    Their last externalized checkpoints stay in ``checkpoints/``; the uploaded
    jars are deleted.
    """
    base = flink_dir(root)
    with locked(base, "flink.lock"):
        targets: list[tuple[int, Path, _ProcessName]] = []
        order: tuple[_ProcessName, ...] = ("taskmanager", "worker_pool", "jobmanager")
        for name in order:
            pid = _owned_pid(base, name)
            if pid is not None:
                _LOGGER.info("stopping flink %s (pid %d)", name, pid)
                targets.append((pid, base, name))
        _terminate(targets, grace_seconds)
        for name in _MAIN_CLASSES:
            _pid_file(base, name).unlink(missing_ok=True)
        _cluster_file(base).unlink(missing_ok=True)
        shutil.rmtree(base / "uploads", ignore_errors=True)


def status(root: Path | None = None) -> dict[str, ProcessStatus]:
    """``{"jobmanager": {...}, "taskmanager": {...}, "worker_pool": {...}}``."""
    base = flink_dir(root)
    cluster = _read_cluster(base)
    logs = _logs(base)
    addresses: dict[_ProcessName, str | None] = {
        "jobmanager": cluster.rest if cluster else None,
        "taskmanager": None,
        "worker_pool": cluster.worker_pool if cluster else None,
    }
    report: dict[str, ProcessStatus] = {}
    for name in _MAIN_CLASSES:
        pid = _owned_pid(base, name)
        report[name] = ProcessStatus(
            state="running" if pid is not None else "stopped",
            pid=pid,
            address=addresses[name] if pid is not None else None,
            log=str(logs[name]),
        )
    return report


# --- the Python worker pool ---------------------------------------------------------------


def serve_worker_pool(port: int, *, host: str = _HOST, stop: threading.Event | None = None) -> None:
    """Serves Beam's external worker pool API on ``host:port`` until SIGTERM (or ``stop``).

    Each StartWorker request starts one SDK worker process
    (``flink_stack sdk-worker``) with this interpreter; StopWorker and the
    end of the pool stop it (SIGTERM, then SIGKILL after 10 s).
    """
    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
    from apache_beam.runners.worker.worker_pool_main import (
        BeamFnExternalWorkerPoolServicer,
        kill_process_gracefully,
    )

    class _Pool(BeamFnExternalWorkerPoolServicer):
        def StartWorker(  # noqa: N802 - the gRPC method's name
            self, request: Any, context: Any
        ) -> Any:
            command = [
                sys.executable, "-m", "data_ingestion.flink_stack", "sdk-worker",
                "--id", request.worker_id, "--control", request.control_endpoint.url,
            ]  # fmt: skip
            try:
                # stdout and stderr: the pool's own log.
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, close_fds=True)
            except OSError:
                return beam_fn_api_pb2.StartWorkerResponse(error=traceback.format_exc())
            self._worker_processes[request.worker_id] = process
            _LOGGER.info("worker %s started (pid %d)", request.worker_id, process.pid)
            return beam_fn_api_pb2.StartWorkerResponse()

    pool = _Pool(use_process=True)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise FlinkError(f"the worker pool cannot listen on {host}:{port}")
    server.start()
    _LOGGER.info("worker pool listening on %s:%d (%s)", host, port, sys.executable)
    stopping = stop or threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.set())
    stopping.wait()
    server.stop(grace=1)
    for worker_id, process in list(pool._worker_processes.items()):
        _LOGGER.info("stopping worker %s (pid %d)", worker_id, process.pid)
        kill_process_gracefully(process)


def _run_sdk_worker(worker_id: str, control_url: str) -> None:
    """One Beam SDK harness process; it ends when the runner closes its control channel."""
    from apache_beam.runners.worker.sdk_worker import SdkHarness

    SdkHarness(control_url, worker_id=worker_id, state_cache_size=_SDK_STATE_CACHE_BYTES).run()


# --- command line -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_ingestion flink",
        description=(
            "A local Flink 1.19 session cluster (JobManager, TaskManager, Python worker "
            "pool) and the Beam job server jar. `status` exits 3 when something is stopped."
        ),
    )
    parser.add_argument(
        "action",
        choices=("up", "down", "status", "jar", "install", "worker-pool", "sdk-worker"),
        help="up: start what is not running (a killed TaskManager again, as it was); down: "
        "stop what up started; status; jar: fetch or build the job server jar once; "
        "install: the jar and the Flink distribution, nothing started; worker-pool: serve "
        "Python workers (one per TaskManager host)",
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="stack folder (default <repo>/.stack)"
    )
    parser.add_argument("--rest-port", type=int, default=_DEFAULT_REST_PORT, metavar="N")
    parser.add_argument(
        "--worker-pool-port",
        "--port",
        dest="worker_pool_port",
        type=int,
        default=_DEFAULT_WORKER_POOL_PORT,
        metavar="N",
    )
    parser.add_argument("--slots", type=int, default=_DEFAULT_SLOTS, metavar="N")
    parser.add_argument("--host", default=_HOST, help="worker-pool: address to listen on")
    # sdk-worker: what the pool passes on from the TaskManager's request.
    parser.add_argument("--id", default="", help=argparse.SUPPRESS)
    parser.add_argument("--control", default="", help=argparse.SUPPRESS)
    return parser


def _configure_worker_logging(prefix: str) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [{prefix}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Connection chatter of every Kafka client and gRPC channel.
    logging.getLogger("kafka").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """``flink up|down|status|jar [--root DIR] [--rest-port N] [--worker-pool-port N] [--slots N]``."""
    args = _parser().parse_args(argv)
    if args.action == "sdk-worker":
        _configure_worker_logging(f"worker {args.id}")
        _run_sdk_worker(args.id, args.control)
        return 0
    if args.action == "worker-pool":
        _configure_worker_logging("pool")
        serve_worker_pool(args.worker_pool_port, host=args.host)
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="flink: %(message)s")
        _LOGGER.setLevel(logging.INFO)
    root: Path | None = args.root
    try:
        if args.action == "up":
            cluster = up(
                root, rest_port=args.rest_port, worker_pool_port=args.worker_pool_port,
                slots=args.slots,
            )  # fmt: skip
            print(f"rest: {cluster.rest_url}")
            print(f"worker_pool: {cluster.worker_pool}")
            print(f"slots: {cluster.slots}")
            print("run with: " + " ".join(cluster.beam_args()))
        elif args.action == "down":
            down(root)
        elif args.action == "status":
            report = status(root)
            for name, process in report.items():
                where = (
                    f"{process['address'] or '-'} pid {process['pid']}" if process["pid"] else "-"
                )
                print(f"{name:<12} {process['state']:<8} {where:<30} log {process['log']}")
            return 0 if all(p["state"] == "running" for p in report.values()) else 3
        elif args.action == "jar":
            print(ensure_job_server_jar(root))
        elif args.action == "install":
            print(ensure_job_server_jar(root))
            print(ensure_distribution(root))
    except FlinkError as err:
        print(f"flink {args.action}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
