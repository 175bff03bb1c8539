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
`/readyz`, `/metrics` and the status page (`data_ingestion.monitoring`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data_ingestion.log_setup import note_stopping, protect_secrets
from data_ingestion.monitoring import Monitor
from data_ingestion.notifications import Notifications, start_notifications
from data_ingestion.setup import DataIngestionSetup
from pipelines.config import DataIngestionConfig, parse_config, to_dict

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


class DataIngestionSystem:
    """Runs the ingestion pipeline described by one config.

    Args:
      config: a loaded `DataIngestionConfig`, a path to a JSON config, or None
        for `data_ingestion_config.json` in the working directory.
      overrides: dotted-path config overrides (the command line's `--set`).
      beam_args: extra Beam pipeline options (`--flink_master=...`).
    """

    def __init__(
        self,
        config: DataIngestionConfig | str | Path | None = None,
        *,
        overrides: Mapping[str, Any] | None = None,
        beam_args: Sequence[str] = (),
    ) -> None:
        self._source = config if config is not None else _DEFAULT_CONFIG
        self._overrides = dict(overrides or {})
        self._beam_args = list(beam_args)
        self.config: DataIngestionConfig | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.monitor: Monitor | None = None
        self._notifications: Notifications | None = None

    def initialize(self) -> DataIngestionConfig:
        """Loads and validates the config; raises `ConfigError` listing every problem."""
        if isinstance(self._source, DataIngestionConfig):
            # Built in Python, so never checked: the same checks as a file's.
            config = parse_config(to_dict(self._source))
        else:
            config = DataIngestionSetup(self._source, overrides=self._overrides).load_config()
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
        monitor = Monitor(
            config, sources_in_process=_workers_in_this_process(config, self._beam_args)
        )
        monitor.start()
        return monitor

    def run_until(self, stop: threading.Event) -> int:
        """Runs in this thread until `stop` is set; 0 if stopped as asked."""
        from pipelines.runner import start, wait_until_stopped

        config = self.config or self.initialize()
        self.monitor = self._start_monitor(config)
        notifications = start_notifications(config)
        try:
            result = start(config, self._beam_args)
            if self.monitor is not None:
                self.monitor.attach(result, stopping=stop)
            wait_until_stopped(result, stop, config.pipeline.name)
        finally:
            if notifications is not None:
                notifications.stop()
            if self.monitor is not None:
                self.monitor.stop()
        # A streaming job that ends without being asked to has failed.
        return 0 if stop.is_set() else 1

    async def initialize_system(self) -> None:
        await asyncio.to_thread(self.initialize)

    async def start_system(self) -> None:
        """Submits the pipeline and returns once it runs; a thread watches it.

        Submission happens on the calling thread (call from the main thread):
        Beam's job-server launcher installs a SIGINT handler, which only the
        main thread may do.
        """
        from pipelines.runner import start, wait_until_stopped

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
            target=wait_until_stopped,
            args=(result, self._stop, config.pipeline.name),
            name="data-ingestion",
            daemon=True,
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
