"""Run the ingestion pipeline until asked to stop.

`run_until_stopped` creates the Kafka topics (at once, or in the background
while Kafka does not answer), submits the pipeline and blocks
until `stop` is set (the CLI sets it on SIGINT/SIGTERM) or the job ends; then
it cancels the job. In-flight bundles that were not committed are not lost:
their sources never acknowledged them, so the brokers redeliver on the next
start. On Prism the job server is a child of ours that a terminal's Ctrl-C
does not reach (`pipelines.prism`), so the job is cancelled before Prism
stops; then the sources are closed and what the stop left is logged once
(`pipelines.shutdown`).

A restart (the control API's, `data_ingestion.control`) sets `restart`
instead: the sources drain first (`connectors.base.drain_sources`: no new
input, what they handed out committed and acknowledged), so the cancel cuts
no bundle that carried data, and the caller starts the job again.
`build_only` builds a config's pipeline without running it, to refuse a
config whose pipeline cannot be built before the running one is touched.

Example::

    stop = threading.Event()
    run_until_stopped(config, ["--prism_location=.stack/bin/prism"], stop)
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence

import apache_beam as beam
import grpc
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.runner import PipelineResult, PipelineState
from kafka.errors import RetriableError

from connectors.base import Backoff, drain_sources
from connectors.kafka import ensure_topics
from connectors.kafka_config import KafkaSink
from pipelines.config import DataIngestionConfig
from pipelines.flink import FlinkJob, FlinkRunner
from pipelines.ingest import build_ingest
from pipelines.options import pipeline_options
from pipelines.prism import PrismServer, own_prism_args
from pipelines.shutdown import close_sources

__all__ = ["build_only", "start", "wait_until_stopped", "run_until_stopped"]

_LOGGER = logging.getLogger(__name__)

_POLL_SECONDS = 0.5

# Per submitted job: its own Prism server (if any) and when it started.
_RUNS: dict[int, tuple[PrismServer | None, float]] = {}
# Per job submitted to a Flink cluster as an uber jar: its handle on Flink's REST API.
_FLINK_JOBS: dict[int, FlinkJob] = {}


# Kafka does not answer (yet): a timeout or a refused connection. Anything else
# (a refused login, an untrusted certificate) fails the start.
_UNREACHABLE = RetriableError


def _ensure_topics_when_reachable(kafka: KafkaSink) -> None:
    """Creates the topics now or, while Kafka does not answer, as soon as it does.

    The sources must start with Kafka down: their queues and spools take what
    they read meanwhile. The sinks never create a topic themselves, so they
    wait until these exist with their configured partitions.
    """
    try:
        ensure_topics(kafka)
    except _UNREACHABLE as err:
        _LOGGER.warning(
            "kafka: %s does not answer (%s); starting anyway, the topics are created when "
            "it does", kafka.bootstrap_servers, err,
        )  # fmt: skip
        threading.Thread(
            target=_retry_ensure_topics, args=(kafka,), name="ensure-topics", daemon=True
        ).start()


def _retry_ensure_topics(kafka: KafkaSink) -> None:
    backoff = Backoff(1.0, 30.0)
    while True:
        time.sleep(backoff.next_delay())
        try:
            ensure_topics(kafka)
        except _UNREACHABLE:
            continue
        _LOGGER.info("kafka: %s answers; topics checked", kafka.bootstrap_servers)
        return


def build_only(config: DataIngestionConfig, beam_args: Sequence[str]) -> None:
    """Builds the pipeline of `config` without submitting it; raises what building raises."""
    build_ingest(beam.Pipeline(options=pipeline_options(config, beam_args)), config)


def start(config: DataIngestionConfig, beam_args: Sequence[str]) -> PipelineResult:
    """Builds and submits the pipeline; returns the running job."""
    if config.kafka.create_topics:
        _ensure_topics_when_reachable(config.kafka)
    options = pipeline_options(config, beam_args)
    args, prism = own_prism_args(beam_args, options.view_as(StandardOptions).runner)
    if prism is not None:
        options = pipeline_options(config, [*args, f"--job_endpoint={prism.start()}"])
    # Ours only adds starting from a savepoint to Beam's.
    runner = FlinkRunner() if options.view_as(StandardOptions).runner == "FlinkRunner" else None
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_ingest(pipeline, config)
    sigint_handler = signal.getsignal(signal.SIGINT)
    try:
        result = pipeline.run()
    except BaseException:
        if prism is not None:
            prism.stop()
        raise
    _RUNS[id(result)] = (prism, time.monotonic())
    flink = FlinkJob.of(result)
    if flink is not None:
        _FLINK_JOBS[id(result)] = flink
    if threading.current_thread() is threading.main_thread():
        # Beam's launcher replaces the SIGINT handler with one that kills the
        # job server at once; keep ours, which cancels the job first. The job
        # server is still stopped at exit (Beam registers that too).
        signal.signal(signal.SIGINT, sigint_handler)
    _LOGGER.info("pipeline %s: submitted (%s)", config.pipeline.name, result.state)
    return result


def _state(result: PipelineResult) -> str | None:
    """The job's state, or None once its job server is gone.

    Ctrl-C in a terminal signals the whole process group, so Prism may stop
    before we cancel; then the job cannot be asked anything. A Flink job is
    asked through the cluster's REST API (UNKNOWN while it does not answer).
    """
    flink = _FLINK_JOBS.get(id(result))
    if flink is not None:
        return flink.beam_state()
    try:
        return str(result.state)
    except (ValueError, grpc.RpcError):
        return None


def wait_until_stopped(
    result: PipelineResult,
    stop: threading.Event,
    name: str,
    *,
    restart: threading.Event | None = None,
    drain_seconds: float = 10.0,
    before_cancel: Callable[[], None] | None = None,
) -> str:
    """Blocks until `stop` or `restart` is set or the job ends, then cancels it if running.

    For a `restart` the sources drain first, for up to `drain_seconds`, and
    `before_cancel` is called (the log learns the bundles cut short are
    expected). Then it stops the job's own Prism, closes the sources and logs
    what they left.
    """
    state = "UNKNOWN"
    try:
        state = _wait(result, stop, name, restart, drain_seconds, before_cancel)
        return state
    finally:
        prism, started = _RUNS.pop(id(result), (None, time.monotonic()))
        flink = _FLINK_JOBS.pop(id(result), None)
        if prism is not None:
            prism.stop()
        close_sources(name, state, ran_seconds=time.monotonic() - started, remote=flink is not None)


def _wait(
    result: PipelineResult,
    stop: threading.Event,
    name: str,
    restart: threading.Event | None,
    drain_seconds: float,
    before_cancel: Callable[[], None] | None,
) -> str:
    while not stop.wait(_POLL_SECONDS):
        if restart is not None and restart.is_set():
            _drain(name, drain_seconds)
            if before_cancel is not None:
                before_cancel()
            break
        state = _state(result)
        if state is None and stop.wait(_POLL_SECONDS):
            return "STOPPED"  # Ctrl-C reached Prism before our handler ran
        if state == PipelineState.DONE and id(result) in _FLINK_JOBS:
            # `jobs stop --savepoint`: an end the operator asked for.
            _LOGGER.info("pipeline %s: the Flink job finished (stopped with a savepoint?)", name)
            return state
        if state is None or PipelineState.is_terminal(state):
            _LOGGER.error("pipeline %s ended: %s", name, state or "job server gone")
            return state or "UNKNOWN"
    state = _state(result)
    if state is not None and not PipelineState.is_terminal(state):
        _LOGGER.info("pipeline %s: stopping", name)
        flink = _FLINK_JOBS.get(id(result))
        if flink is not None:
            # Beam's cancel() of an uber-jar job posts to a path Flink does not have.
            flink.cancel()
        else:
            result.cancel()
        state = _state(result)
    return state or "STOPPED"


def _drain(name: str, drain_seconds: float) -> None:
    _LOGGER.info("pipeline %s: restarting; draining the sources", name)
    started = time.monotonic()
    late = drain_sources(drain_seconds)
    took = time.monotonic() - started
    if late:
        _LOGGER.warning(
            "pipeline %s: %s did not hand everything over within %.0f s; what they hold is "
            "redelivered, spooled or read from history after the restart, as after a stop",
            name, ", ".join(late), drain_seconds,
        )  # fmt: skip
    else:
        _LOGGER.info("pipeline %s: sources drained in %.1f s", name, took)


def run_until_stopped(
    config: DataIngestionConfig, beam_args: Sequence[str], stop: threading.Event
) -> str:
    """Runs until `stop` is set or the job ends; returns the final state.

    Call from the main thread: Beam's job-server launcher installs a SIGINT
    handler, which only the main thread may do.
    """
    return wait_until_stopped(start(config, beam_args), stop, config.pipeline.name)
