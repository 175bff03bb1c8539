"""Run the ingestion pipeline on a Flink cluster, submitted as an uber jar.

Beam's `FlinkRunner` with `--flink_submit_uber_jar` copies a Flink job server
jar, adds the pipeline to it and uploads the result through Flink's REST API:
no job server process outlives the submission. `flink_defaults` fills in
what a plant run needs and Beam would otherwise get wrong:

- the job server jar: the project's own (`python -m data_ingestion flink jar`
  builds it into `.stack/flink/`), preferring the official
  `beam-runners-flink-1.19-job-server` at the SDK's version where it was
  fetched, else the one assembled from `beam-runners-flink-1.19:2.62.0`. Beam
  would download a jar at run time, which this project never does.
  `--flink_job_server_jar` overrides both.
- Python workers as an EXTERNAL worker pool beside every TaskManager
  (`127.0.0.1:50000`, Beam's conventional worker pool port; the local
  cluster's pool listens there): Beam's default is Docker.
- checkpointing on (every `DEFAULT_CHECKPOINT_INTERVAL_MS`): the sources
  acknowledge upstream only when Flink completes a checkpoint (bundle
  finalisation), so without checkpoints nothing is ever acknowledged.
  Externalized checkpoints are kept when a job fails, so it can be resumed.
  Bundles end at every checkpoint barrier (`--finish_bundle_before_checkpointing`).
- the job's name in Flink is the config's `pipeline.name`.

Checkpointing and state options are the Java runner's
(`FlinkPipelineOptions` of Beam 2.62), declared here so that they parse, are
checked, and reach the runner: `--checkpointing_interval` (ms),
`--checkpointing_mode`, `--checkpoint_timeout_millis`,
`--min_pause_between_checkpoints`, `--state_backend`,
`--state_backend_storage_path`, `--externalized_checkpoints_enabled`,
`--retain_externalized_checkpoints_on_cancellation`,
`--finish_bundle_before_checkpointing`, `--max_bundle_size`, `--max_bundle_time_mills`.

Python's `result.cancel()` does not work for an uber-jar job (Beam posts to a
REST path Flink does not have); `FlinkJob` cancels through Flink's REST API
and deletes the uploaded jar, and stops a job with a savepoint. Beam's
uber-jar submission cannot start from a savepoint: `FlinkRunner` here is
Beam's with `--savepoint_path` (and `--allow_non_restored_state`) put into
Flink's run request.

Example::

    options = pipeline_options(config, ["--runner=FlinkRunner",
                                        "--flink_master=127.0.0.1:8082", "--parallelism=2"])
    result = beam.Pipeline(options=options).run()       # after build_ingest(...)
    job = FlinkJob.of(result)
    job.cancel()
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import apache_beam
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
)
from apache_beam.runners.portability import flink_runner, flink_uber_jar_job_server

__all__ = [
    "ASSEMBLED_JAR_NAME",
    "ASSEMBLED_RUNNER_VERSION",
    "FlinkRunner",
    "DEFAULT_CHECKPOINT_INTERVAL_MS",
    "DEFAULT_WORKER_POOL",
    "FLINK_MINOR",
    "FlinkJob",
    "FlinkJobOptions",
    "LOCAL_FLINK_DIR",
    "default_job_server_jar",
    "flink_defaults",
    "job_server_jar_name",
    "list_jobs",
]

_LOGGER = logging.getLogger(__name__)

# The Flink line the local cluster runs and the jars are built for.
FLINK_MINOR = "1.19"
# The newest Beam Flink runner whose dependencies are all on Maven Central here
# (2.70's beam-runners-java-job-service is missing); a skew under SDK 2.77.
ASSEMBLED_RUNNER_VERSION = "2.62.0"
# The assembled jar carries a fix of its own (the bounded SDF checkpoint state of
# data_ingestion/flink_job_server_java): a jar of another name was built without it.
ASSEMBLED_JAR_NAME = (
    f"beam-runners-flink-{FLINK_MINOR}-job-server-{ASSEMBLED_RUNNER_VERSION}-bounded-sdf-state.jar"
)
LOCAL_FLINK_DIR = Path(__file__).resolve().parent.parent / ".stack" / "flink"
DEFAULT_WORKER_POOL = "127.0.0.1:50000"
DEFAULT_CHECKPOINT_INTERVAL_MS = 2_000
_MAGIC_MASTERS = ("[local]", "[auto]")
_REST_TIMEOUT_SECONDS = 10.0
_CANCEL_TIMEOUT_SECONDS = 60.0
_POLL_SECONDS = 0.5
_TERMINAL = frozenset(("FINISHED", "CANCELED", "FAILED"))
# Flink's job states in Beam's names, where they differ (PipelineState.is_terminal).
_BEAM_STATES = {"FINISHED": "DONE", "CANCELED": "CANCELLED", "CANCELLING": "CANCELLING"}


def job_server_jar_name(beam_version: str, flink_minor: str = FLINK_MINOR) -> str:
    """The file name of a job server jar, as Maven names the official one."""
    return f"beam-runners-flink-{flink_minor}-job-server-{beam_version}.jar"


def default_job_server_jar(flink_dir: Path = LOCAL_FLINK_DIR) -> Path | None:
    """The best jar built into `flink_dir`: the SDK's own version, else the assembled one."""
    for name in (job_server_jar_name(apache_beam.__version__), ASSEMBLED_JAR_NAME):
        jar = flink_dir / name
        if jar.is_file():
            return jar
    return None


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return lowered == "true"


class FlinkJobOptions(PipelineOptions):
    """The Java Flink runner's checkpoint and bundle options, so that Python parses them.

    Unset (None) options are not sent: the runner's or the cluster's default applies.
    """

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument(
            "--checkpointing_interval",
            type=int,
            default=None,
            help=f"ms between checkpoints (default {DEFAULT_CHECKPOINT_INTERVAL_MS} on Flink): "
            "sources acknowledge upstream when a checkpoint completes",
        )
        parser.add_argument(
            "--checkpointing_mode", choices=["EXACTLY_ONCE", "AT_LEAST_ONCE"], default=None
        )
        parser.add_argument("--checkpoint_timeout_millis", type=int, default=None)
        parser.add_argument("--min_pause_between_checkpoints", type=int, default=None)
        parser.add_argument(
            "--state_backend",
            choices=["rocksdb", "filesystem"],
            default=None,
            help="default: the cluster's state.backend.type",
        )
        parser.add_argument(
            "--state_backend_storage_path",
            default=None,
            help="checkpoint directory for --state_backend (default: the cluster's "
            "state.checkpoints.dir)",
        )
        parser.add_argument(
            "--externalized_checkpoints_enabled",
            type=_flag,
            default=None,
            help="true|false: keep the last checkpoints when the job fails (default true)",
        )
        parser.add_argument(
            "--retain_externalized_checkpoints_on_cancellation", type=_flag, default=None
        )
        parser.add_argument(
            "--finish_bundle_before_checkpointing",
            type=_flag,
            default=None,
            help="true|false: end every bundle at the checkpoint barrier (default true on "
            "Flink; see pipelines.flink)",
        )
        parser.add_argument("--max_bundle_size", type=int, default=None)
        parser.add_argument("--max_bundle_time_mills", type=int, default=None)
        parser.add_argument(
            "--savepoint_path",
            default=None,
            help="start the job from this savepoint (or retained checkpoint) directory",
        )
        parser.add_argument(
            "--allow_non_restored_state",
            type=_flag,
            default=None,
            help="true|false: start from a savepoint that holds state of operators the "
            "pipeline no longer has (default false)",
        )


def flink_defaults(
    options: PipelineOptions, job_name: str, *, flink_dir: Path = LOCAL_FLINK_DIR
) -> None:
    """Fills in, in place, what the caller left unset for a Flink run (see module docstring).

    Raises FileNotFoundError when no job server jar is given or built.
    """
    flink = options.view_as(FlinkRunnerOptions)
    if not flink.flink_job_server_jar:
        jar = default_job_server_jar(flink_dir)
        if jar is None:
            raise FileNotFoundError(
                f"no Flink job server jar in {flink_dir}: build it once with "
                "`python -m data_ingestion flink jar` (or `make flink`), or pass "
                "--flink_job_server_jar=PATH"
            )
        flink.flink_job_server_jar = str(jar)
        # Beam derives nothing else from it for an uber jar; say which line it is.
        flink.flink_version = FLINK_MINOR
    cluster = flink.flink_master not in _MAGIC_MASTERS
    if cluster:
        flink.flink_submit_uber_jar = True
    portable = options.view_as(PortableOptions)
    if portable.environment_type is None and cluster:
        portable.environment_type = "EXTERNAL"
    if portable.environment_type == "EXTERNAL" and portable.environment_config is None:
        portable.environment_config = DEFAULT_WORKER_POOL
    job = options.view_as(FlinkJobOptions)
    if job.checkpointing_interval is None:
        job.checkpointing_interval = DEFAULT_CHECKPOINT_INTERVAL_MS
    if job.externalized_checkpoints_enabled is None:
        job.externalized_checkpoints_enabled = True
    if job.finish_bundle_before_checkpointing is None:
        # Otherwise a bundle still open at a checkpoint has its output held in
        # operator state until the next bundle of that operator ends: the
        # source's one Impulse-driven start bundle has no next, so about every
        # other job start never started its sources (runner 2.62, 3 of 5 runs).
        job.finish_bundle_before_checkpointing = True
    google = options.view_as(GoogleCloudOptions)
    if google.job_name is None:
        google.job_name = job_name


def _rest(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=_REST_TIMEOUT_SECONDS) as response:
        text = response.read()
    return json.loads(text) if text else None


@dataclasses.dataclass
class FlinkJob:
    """A job on a Flink cluster, driven through the cluster's REST API.

    `rest_url` is `http://host:port`; `jar_id` the uploaded uber jar, deleted
    once the job is cancelled.
    """

    rest_url: str
    job_id: str
    jar_id: str | None = None

    @classmethod
    def of(cls, result: Any) -> FlinkJob | None:
        """The Flink job behind an uber-jar submission's result; None for any other run.

        Beam keeps the Flink job id inside its in-process job service
        (`FlinkUberJarJobServer`), which it does not expose.
        """
        service = getattr(result, "_job_service", None)
        beam_job = getattr(service, "_jobs", {}).get(getattr(result, "_job_id", None))
        job_id = getattr(beam_job, "_flink_job_id", None)
        if beam_job is None or job_id is None:
            return None
        return cls(
            beam_job._master_url.rstrip("/"), job_id, getattr(beam_job, "_flink_jar_id", None)
        )

    def state(self) -> str | None:
        """Flink's state of the job (RUNNING, CANCELED, ...); None when the REST API does not answer."""
        try:
            return str(_rest("GET", f"{self.rest_url}/jobs/{self.job_id}")["state"])
        except (OSError, ValueError, KeyError) as err:
            _LOGGER.debug("flink: no state for job %s: %s", self.job_id, err)
            return None

    def beam_state(self) -> str:
        """The state in Beam's names; UNKNOWN while the REST API does not answer.

        The job runs on the cluster whether or not its REST API answers now: a
        launcher must not take a silent API for the end of the job.
        """
        state = self.state()
        if state is None:
            return "UNKNOWN"
        return _BEAM_STATES.get(state, state)

    def cancel(self, timeout_seconds: float = _CANCEL_TIMEOUT_SECONDS) -> str | None:
        """Cancels the job, waits until Flink says it ended, deletes its jar; returns the state."""
        state = self.state()
        if state is not None and state not in _TERMINAL:
            _rest("PATCH", f"{self.rest_url}/jobs/{self.job_id}?mode=cancel")
            deadline = time.monotonic() + timeout_seconds
            while state not in _TERMINAL and time.monotonic() < deadline:
                time.sleep(_POLL_SECONDS)
                state = self.state()
            if state not in _TERMINAL:
                _LOGGER.warning(
                    "flink: job %s still %s %.0f s after the cancel", self.job_id, state,
                    timeout_seconds,
                )  # fmt: skip
        self.delete_jar()
        return state

    def stop_with_savepoint(
        self, directory: str | None, timeout_seconds: float = _CANCEL_TIMEOUT_SECONDS
    ) -> str:
        """Stops the job with a savepoint into `directory` (None: the cluster's
        `state.savepoints.dir`); returns the savepoint's path.

        Flink completes the savepoint, the sources acknowledge what it holds
        (bundle finalisation), then the job ends FINISHED. Raises RuntimeError
        when the savepoint fails or does not complete in time: the job then
        keeps running.
        """
        body: dict[str, Any] = {"drain": False}
        if directory is not None:
            body["targetDirectory"] = directory
        url = f"{self.rest_url}/jobs/{self.job_id}"
        trigger = _rest("POST", f"{url}/stop", body)["request-id"]
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            status = _rest("GET", f"{url}/savepoints/{trigger}")
            if status["status"]["id"] == "COMPLETED":
                operation = status.get("operation") or {}
                if "location" not in operation:
                    cause = operation.get("failure-cause", {}).get("stack-trace", "")
                    raise RuntimeError(
                        f"flink: the savepoint of job {self.job_id} failed: "
                        f"{cause.splitlines()[0] if cause else operation}"
                    )
                return str(operation["location"])
            time.sleep(_POLL_SECONDS)
        raise RuntimeError(
            f"flink: the savepoint of job {self.job_id} did not complete in {timeout_seconds:.0f} s"
        )

    def delete_jar(self) -> None:
        jar_id, self.jar_id = self.jar_id, None
        if jar_id is None:
            return
        try:
            _rest("DELETE", f"{self.rest_url}/jars/{jar_id}")
        except (OSError, ValueError) as err:
            # Beam may have deleted it already when it saw the job end.
            _LOGGER.debug("flink: jar %s not deleted: %s", jar_id, err)


def list_jobs(rest_url: str) -> list[dict[str, Any]]:
    """The cluster's jobs, newest first: id, name, state, start (epoch ms), duration (ms)."""
    jobs = _rest("GET", f"{rest_url.rstrip('/')}/jobs/overview")["jobs"]
    return sorted(
        (
            {
                "id": job["jid"],
                "name": job["name"],
                "state": job["state"],
                "start": job["start-time"],
                "duration": job["duration"],
            }
            for job in jobs
        ),
        key=lambda job: -int(job["start"]),
    )


class _RestoringFlinkBeamJob(flink_uber_jar_job_server.FlinkBeamJob):
    """Beam's uber-jar job, started from a savepoint when one is given.

    Beam's run request names only the entry class, and the runner inside the
    jar ignores `savepointPath` for an uber jar (it is submitted as `[auto]`):
    the savepoint has to travel in Flink's own run request.
    """

    restore: dict[str, Any] = {}

    def post(self, path: str, **kwargs: Any) -> Any:
        if path.endswith("/run") and self.restore:
            kwargs["json"] = {**kwargs.get("json", {}), **self.restore}
        return super().post(path, **kwargs)


class _RestoringJobServer(flink_uber_jar_job_server.FlinkUberJarJobServer):
    def __init__(self, master_url: str, options: PipelineOptions, restore: dict[str, Any]):
        super().__init__(master_url, options)
        self._restore = restore

    def create_beam_job(
        self, job_id: str, job_name: str, pipeline: Any, options: Any
    ) -> flink_uber_jar_job_server.FlinkBeamJob:
        job = _RestoringFlinkBeamJob(
            self._master_url, self.executable_jar(), job_id, job_name, pipeline, options,
            artifact_port=self._artifact_port,
        )  # fmt: skip
        job.restore = self._restore
        return job


class FlinkRunner(flink_runner.FlinkRunner):
    """Beam's FlinkRunner that can also start an uber-jar job from a savepoint
    (`--savepoint_path`, `--allow_non_restored_state`)."""

    def default_job_server(self, options: PipelineOptions) -> Any:
        job = options.view_as(FlinkJobOptions)
        flink = options.view_as(FlinkRunnerOptions)
        if job.savepoint_path is None or not flink.flink_submit_uber_jar:
            return super().default_job_server(options)
        restore: dict[str, Any] = {"savepointPath": job.savepoint_path}
        if job.allow_non_restored_state is not None:
            restore["allowNonRestoredState"] = job.allow_non_restored_state
        master = self.add_http_scheme(flink.flink_master)
        # As Beam's: the runner inside the jar must see `[auto]`, or it submits again.
        flink.flink_master = "[auto]"
        return _RestoringJobServer(master, options, restore)
