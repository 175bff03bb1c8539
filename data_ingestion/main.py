"""The system facade: load the config, start the pipeline, stop it.

Example::

    from data_ingestion.main import DataIngestionSystem

    system = DataIngestionSystem("data_ingestion_config.json")
    await system.initialize_system()   # validate config, create topics
    await system.start_system()        # pipeline running on Prism
    ...
    await system.stop_system()

`python -m data_ingestion run` is the same thing from the command line.
While the pipeline runs, `monitoring.http_host:http_port` serves `/healthz`,
`/readyz`, `/metrics` and the status page (`data_ingestion.monitoring`), and
the control API (`data_ingestion.control`): its restarts and new configs are
carried out here, by the loop that watches the job (`_supervise`): drain the
sources, cancel, start again; a new config that does not start is rolled
back to the one that ran.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data_ingestion import log_setup
from data_ingestion.control import Controller, RestartRequest
from data_ingestion.log_setup import note_stopping, protect_secrets
from data_ingestion.monitoring import Monitor
from data_ingestion.notifications import Notifications, start_notifications
from data_ingestion.setup import DataIngestionSetup
from pipelines.config import DataIngestionConfig, parse_config, to_dict
from pipelines.control_config import ControlConfig

__all__ = ["DataIngestionSystem"]

_LOGGER = logging.getLogger(__name__)

_DEFAULT_CONFIG = "data_ingestion_config.json"


def _with_prism_location(config: DataIngestionConfig, beam_args: Sequence[str]) -> list[str]:
    """Adds the project's Prism binary unless the caller named a runner setup.

    Beam would otherwise try to download Prism at run time, which this project
    never does: `make stack` (or `python -m data_ingestion stack prism`)
    builds it once.
    """
    args = list(beam_args)
    if config.pipeline.runner == "FlinkRunner" or any(
        arg.startswith("--prism_location") for arg in args
    ):
        return args
    from data_ingestion import stack

    prism = stack.prism_path()
    if not prism.exists():
        raise FileNotFoundError(
            f"no Prism binary at {prism}: build it once with "
            "`python -m data_ingestion stack prism` (or `make stack`)"
        )
    return [*args, f"--prism_location={prism}"]


def _workers_in_this_process(config: DataIngestionConfig, beam_args: Sequence[str]) -> bool:
    """True if the Beam worker runs in this process (LOOPBACK), where the monitor
    sees the sources' own numbers; Prism's default environment is LOOPBACK."""
    from apache_beam.options.pipeline_options import (
        DebugOptions,
        PortableOptions,
        StandardOptions,
    )

    from pipelines.options import pipeline_options

    options = pipeline_options(config, beam_args)
    if "use_loopback_process_worker" in (options.view_as(DebugOptions).experiments or []):
        return False
    environment = options.view_as(PortableOptions).environment_type
    if environment is None:
        return options.view_as(StandardOptions).runner == "PrismRunner"
    return str(environment).upper() == "LOOPBACK"


def _restart_over(stop: threading.Event) -> None:
    """The cancelled job is gone and its successor runs: worker errors count again.

    `note_stopping` (before a restart's cancel) demotes what Beam and Prism
    say about the bundles a cancel cuts short; unless a real stop came
    meanwhile, that ends here.
    """
    if not stop.is_set():
        log_setup.note_restarted()


class DataIngestionSystem:
    """Runs the ingestion pipeline described by one config.

    Args:
      config: a loaded `DataIngestionConfig`, a path to a JSON config, or None
        for `data_ingestion_config.json` in the working directory.
      overrides: dotted-path config overrides (the command line's `--set`).
      beam_args: extra Beam pipeline options (`--flink_master=...`).
      worker: (index, count) when this is one worker of `run --workers N`: it
        runs its share of the sources (`data_ingestion.workers`).
    """

    def __init__(
        self,
        config: DataIngestionConfig | str | Path | None = None,
        *,
        overrides: Mapping[str, Any] | None = None,
        beam_args: Sequence[str] = (),
        worker: tuple[int, int] | None = None,
    ) -> None:
        self._source = config if config is not None else _DEFAULT_CONFIG
        self._worker = worker
        self._overrides = dict(overrides or {})
        self._beam_args = list(beam_args)
        self.config: DataIngestionConfig | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.monitor: Monitor | None = None
        self.controller: Controller | None = None
        self._notifications: Notifications | None = None

    def initialize(self) -> DataIngestionConfig:
        """Loads and validates the config; raises `ConfigError` listing every problem."""
        if isinstance(self._source, DataIngestionConfig):
            # Built in Python, so never checked: the same checks as a file's.
            config = parse_config(to_dict(self._source))
        else:
            config = DataIngestionSetup(self._source, overrides=self._overrides).load_config()
        if self._worker is not None:
            from data_ingestion.workers import worker_config

            config = worker_config(config, *self._worker)
        self._beam_args = _with_prism_location(config, self._beam_args)
        # From here on no log line shows a password or token of this config.
        protect_secrets(config)
        self.config = config
        return config

    def _start_monitor(self, config: DataIngestionConfig) -> Monitor | None:
        """The health checks and their HTTP server, started before the job so /healthz
        answers while it starts."""
        from connectors import metrics

        metrics.set_enabled(config.monitoring.enabled)
        if not config.monitoring.enabled:
            return None
        in_process = _workers_in_this_process(config, self._beam_args)
        self.controller = Controller(
            config,
            beam_args=self._beam_args,
            overrides=self._overrides,
            sources_in_process=in_process,
        )
        monitor = Monitor(config, sources_in_process=in_process, controller=self.controller)
        monitor.start()
        return monitor

    def run_until(self, stop: threading.Event) -> int:
        """Runs in this thread until `stop` is set; 0 if stopped as asked."""
        from pipelines.runner import start

        config = self.config or self.initialize()
        self.monitor = self._start_monitor(config)
        self._notifications = start_notifications(config)
        try:
            return self._supervise(start(config, self._beam_args), stop)
        finally:
            if self._notifications is not None:
                self._notifications.stop()
            if self.monitor is not None:
                self.monitor.stop()

    def _supervise(self, result: Any, stop: threading.Event) -> int:
        """Watches the job until `stop`, restarting it when the control API asks.

        Returns 0 if stopped as asked or the job finished (on Flink: stopped
        with a savepoint), 1 if it ended otherwise (a streaming job that ends
        without being asked to has failed).
        """
        from pipelines.runner import wait_until_stopped

        controller = self.controller
        restart = controller.restart_asked if controller is not None else None
        if controller is not None:
            controller.supervised = True
        try:
            while True:
                config = self.config
                assert config is not None
                if self.monitor is not None:
                    self.monitor.attach(result, stopping=stop)
                drain = ControlConfig.drain_of(config.control)
                state = wait_until_stopped(
                    result, stop, config.pipeline.name, restart=restart, drain_seconds=drain,
                    before_cancel=note_stopping,
                )  # fmt: skip
                request = controller.take_restart() if controller is not None else None
                if stop.is_set() or request is None or controller is None:
                    return 0 if stop.is_set() or state == "DONE" else 1
                result = self._restart(controller, request)
                _restart_over(stop)
        finally:
            if controller is not None:
                controller.stop_supervising()

    def _restart(self, controller: Controller, request: RestartRequest) -> Any:
        """Starts the job again (with the request's config, if any); the old one is gone."""
        from pipelines.runner import start

        old = self.config
        assert old is not None
        new = request.config or old
        name = new.pipeline.name
        if self.monitor is not None:
            self.monitor.note_restarting()
        # Before anything of the new config can reach a log line.
        protect_secrets(new)
        try:
            result = start(new, self._beam_args)
        except Exception as err:
            if new is old:
                controller.finish_restart(
                    request, 500, {"ok": False, "error": f"the pipeline did not start: {err}"}
                )
                raise
            _LOGGER.error(
                "pipeline %s: the new config did not start (%s); starting the previous one",
                name, err,
            )  # fmt: skip
            result = start(old, self._beam_args)
            controller.finish_restart(
                request, 500,
                {"ok": False, "error": f"the new config did not start ({err}); the previous "
                 "config runs again"},
            )  # fmt: skip
            return result
        if new is not old:
            self._reconfigure(controller, new)
        _LOGGER.info("pipeline %s: restarted (asked by %s)", name, request.by)
        controller.finish_restart(
            request, 200, {"ok": True, "state": "restarted", "applied": new is not old}
        )
        return result

    def _reconfigure(self, controller: Controller, config: DataIngestionConfig) -> None:
        """What outlives the job takes the new config: monitor, control, notifications."""
        self.config = config
        controller.config = config
        if self.monitor is not None:
            self.monitor.reconfigure(config)
        if self._notifications is not None:
            self._notifications.stop()
        self._notifications = start_notifications(config)

    async def initialize_system(self) -> None:
        await asyncio.to_thread(self.initialize)

    async def start_system(self) -> None:
        """Submits the pipeline and returns once it runs; a thread watches it.

        Submission happens on the calling thread (call from the main thread):
        Beam's job-server launcher installs a SIGINT handler, which only the
        main thread may do. Restarts asked through the control API happen on
        the watching thread (fine with the project's own Prism server).
        """
        from pipelines.runner import start

        config = self.config or self.initialize()
        self.monitor = self._start_monitor(config)
        self._notifications = start_notifications(config)
        try:
            result = start(config, self._beam_args)
        except BaseException:
            if self._notifications is not None:
                self._notifications.stop()
            if self.monitor is not None:
                self.monitor.stop()
            raise
        if self.monitor is not None:
            self.monitor.attach(result, stopping=self._stop)
        self._thread = threading.Thread(
            target=self._supervise, args=(result, self._stop), name="data-ingestion", daemon=True
        )
        self._thread.start()

    async def stop_system(self) -> None:
        """Cancels the job; unacknowledged input is redelivered on the next start."""
        note_stopping()
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        if self._notifications is not None:
            await asyncio.to_thread(self._notifications.stop)
        if self.monitor is not None:
            self.monitor.stop()
