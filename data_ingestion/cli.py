"""`python -m data_ingestion`: run, submit, check-config, stack, simulate, demo.

Examples::

    python -m data_ingestion check-config data_ingestion_config.json
    python -m data_ingestion config-schema > docs/data_ingestion_config.schema.json
    python -m data_ingestion run --config data_ingestion_config.json
    python -m data_ingestion run --config line-c.json --runner PrismRunner \\
        --set kafka.bootstrap_servers=10.0.0.5:9092
    python -m data_ingestion run --config line-c.json --workers 2   # both cores
    python -m data_ingestion submit --template container_line \\
        --param kafka_bootstrap_servers=10.0.0.5:9092 --param line_name=line-c2 --dry-run
    python -m data_ingestion submit --template float_line --param kafka_bootstrap_servers=... \\
        --runner FlinkRunner --flink-master 127.0.0.1:8082
    python -m data_ingestion submit --template float_line --param kafka_bootstrap_servers=... \\
        --runner FlinkRunner --emit-jar release/float-line.jar
    python -m data_ingestion stack up --kafka-port 9092 --mqtt-port 1883
    python -m data_ingestion flink up        # a local Flink session cluster
    python -m data_ingestion simulate --config data_ingestion_config.json
    python -m data_ingestion demo --config data_ingestion_config.json
    python -m data_ingestion status --url http://127.0.0.1:9180/
    python -m data_ingestion notify --config data_ingestion_config.json
    python -m data_ingestion ctl pause fh_bus --user alice --password-env GLASS_PASSWORD
    python -m data_ingestion jobs stop JOB_ID --savepoint /data/savepoints   # on Flink

`run` passes every option it does not know to Beam (`--prism_location`,
`--flink_master`, ...) and runs until SIGINT or SIGTERM; `submit` renders a
job template (`data_ingestion.templates`), then runs it with `run`'s own code
(Beam options included), or writes an executable Flink jar. `--log-level` and
`--log-format text|json` (before or after the command) beat the config's
`logging` section and `DI_LOGGING__LEVEL` (see `data_ingestion.log_setup`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

__all__ = ["main"]

_LOGGER = logging.getLogger(__name__)

_LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def _parse_set(items: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. kafka.linger_ms=10")
        overrides[key] = value
    return overrides


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    received: list[str] = []

    def stop_now(name: str) -> None:
        from data_ingestion.log_setup import note_stopping

        note_stopping()
        _LOGGER.info("received %s: stopping", name)
        stop.set()

    def handle(signum: int, frame: Any) -> None:
        # A handler runs between two bytecodes of the main thread, maybe while it holds
        # a lock that Event.set takes (its own wait, or a first signal's set): no lock
        # here, the stop is set from a thread of its own. A terminal's Ctrl-C and
        # `timeout` (SIGTERM twice) may both signal: one stop is enough.
        if not received:
            received.append(signal.Signals(signum).name)
            threading.Thread(target=stop_now, args=received, name="stop-on-signal").start()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


def _run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from data_ingestion.main import DataIngestionSystem
    from data_ingestion.workers import parse_worker

    overrides = _parse_set(args.set)
    if args.runner:
        overrides["pipeline.runner"] = args.runner
    from typed_config import ConfigError

    try:
        worker = None if args.worker is None else parse_worker(args.worker)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    system = DataIngestionSystem(
        args.config, overrides=overrides, beam_args=beam_args, worker=worker
    )
    try:
        system.initialize()
    except ConfigError as err:
        # Nothing has connected yet: say everything that is wrong, then stop.
        print(f"{args.config}: invalid configuration, nothing started:", file=sys.stderr)
        for line in err.errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 2
    _configure_logging(args, system.config)
    # Secrets are masked: the repr leaves them out, the log masks what is left.
    _LOGGER.debug("effective config: %r", system.config)
    assert system.config is not None
    workers = args.workers or system.config.pipeline.workers
    if workers > 1 and args.worker is None:
        return _run_workers(args, system.config, workers, overrides, beam_args)
    stop = _stop_on_signals()
    from connectors.kafka import KafkaSecurityError

    try:
        return system.run_until(stop)
    except KafkaSecurityError as err:
        # The broker refused our TLS or login: its reason is the whole story.
        _LOGGER.critical("%s", err)
        return 2


def _run_workers(
    args: argparse.Namespace,
    config: Any,
    workers: int,
    overrides: dict[str, Any],
    beam_args: list[str],
) -> int:
    from data_ingestion.workers import run_workers

    if config.pipeline.runner == "FlinkRunner":
        raise SystemExit("--workers: Prism only (on Flink, use --parallelism)")
    log_args = [f"--log-level={args.log_level}"] if args.log_level else []
    log_args += [f"--log-format={args.log_format}"] if args.log_format else []
    return run_workers(
        config, args.config, workers,
        overrides=overrides, beam_args=beam_args, log_args=log_args, stop=_stop_on_signals(),
    )  # fmt: skip


def _configure_logging(args: argparse.Namespace, config: Any = None) -> None:
    from data_ingestion.log_setup import configure_logging

    configure_logging(
        None if config is None else config.logging,
        level=args.log_level,
        log_format=args.log_format,
    )


def _notify(args: argparse.Namespace) -> int:
    from data_ingestion.log_setup import protect_secrets
    from data_ingestion.notifications import start_notifications
    from data_ingestion.setup import DataIngestionSetup
    from typed_config import ConfigError

    try:
        config = DataIngestionSetup(args.config).load_config()
    except ConfigError as err:
        print(f"{args.config}: invalid configuration, nothing started:", file=sys.stderr)
        for line in err.errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    protect_secrets(config)
    _configure_logging(args, config)
    notifications = start_notifications(config)
    if notifications is None:
        print(f"{args.config}: notifications configures no webhooks or email", file=sys.stderr)
        return 2
    stop = _stop_on_signals()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        notifications.stop()
    return 0


def _config_schema() -> int:
    import json

    from data_ingestion.setup import config_schema

    print(json.dumps(config_schema(), indent=2, ensure_ascii=False))
    return 0


def _status(args: argparse.Namespace) -> int:
    from data_ingestion.status import print_status

    return print_status(args.url, args.config)


def _submit(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pathlib import Path

    from data_ingestion.templates import submit

    logging_args = [f"--log-level={args.log_level}"] if args.log_level else []
    logging_args += [f"--log-format={args.log_format}"] if args.log_format else []
    return submit(
        args.template,
        args.param,
        # The rendered config runs through `run` itself: one code path for both.
        run=lambda argv: main([*logging_args, *argv]),
        runner=args.runner,
        flink_master=args.flink_master,
        rendered_config=None if args.rendered_config is None else Path(args.rendered_config),
        dry_run=args.dry_run,
        jar_path=None if args.emit_jar is None else Path(args.emit_jar),
        beam_args=beam_args,
    )


def _jobs(args: argparse.Namespace, beam_args: list[str]) -> int:
    from data_ingestion.jobs import resume_beam_args, run_jobs

    if args.action == "resume":
        args.runner = "FlinkRunner"
        args.workers, args.worker = 1, None
        return _run(args, [*beam_args, *resume_beam_args(args)])
    if beam_args:
        raise SystemExit(f"jobs {args.action}: unrecognized arguments: {' '.join(beam_args)}")
    return run_jobs(args)


def _demo(args: argparse.Namespace, beam_args: list[str]) -> int:
    from data_ingestion.demo import run_demo

    return run_demo(
        args.config,
        beam_args,
        _stop_on_signals(),
        configure_logging=lambda config: _configure_logging(args, config),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_ingestion", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        help="beats logging.level of the config and DI_LOGGING__LEVEL (default INFO)",
    )
    parser.add_argument("--log-format", choices=["text", "json"], help="default text")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline until SIGINT/SIGTERM")
    run.add_argument("--config", required=True)
    run.add_argument("--runner", choices=["PrismRunner", "DirectRunner", "FlinkRunner"])
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted path",
    )
    run.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="N pipeline processes, each with a share of the sources "
        "(default: pipeline.workers, 1; Prism)",
    )
    # Set by `--workers` for the processes it starts.
    run.add_argument("--worker", metavar="I/N", help=argparse.SUPPRESS)

    submit = commands.add_parser(
        "submit", help="check a job template's parameters, render its config and run it"
    )
    submit.add_argument(
        "--template", required=True, help="a name in pipelines/templates/ or a directory"
    )
    submit.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="a template parameter"
    )
    submit.add_argument("--runner", choices=["PrismRunner", "FlinkRunner"])
    submit.add_argument("--flink-master", metavar="HOST:PORT", help="Flink's REST API")
    submit.add_argument(
        "--rendered-config",
        metavar="PATH",
        help="where the rendered config goes (default .state/templates/NAME-TIME.json)",
    )
    submit.add_argument(
        "--dry-run", action="store_true", help="print the rendered config and the command"
    )
    submit.add_argument(
        "--emit-jar", metavar="PATH", help="write an executable Flink jar instead of running"
    )

    check = commands.add_parser("check-config", help="validate a config file, print every error")
    check.add_argument("file")

    commands.add_parser(
        "config-schema", help="print the config file's JSON Schema (draft 2020-12), for editors"
    )

    stack = commands.add_parser("stack", help="the local Kafka + Mosquitto stack", add_help=False)
    stack.add_argument("stack_args", nargs=argparse.REMAINDER)

    flink = commands.add_parser(
        "flink", help="the local Flink session cluster and its job server jar", add_help=False
    )
    flink.add_argument("flink_args", nargs=argparse.REMAINDER)

    simulate = commands.add_parser("simulate", help="run the simulated glass line")
    simulate.add_argument("--config", required=True)
    simulate.add_argument(
        "--duration", type=float, default=None, help="seconds; default: until Ctrl-C"
    )
    simulate.add_argument("--speedup", type=float, default=1.0)

    demo = commands.add_parser("demo", help="simulator + pipeline + a view of what reaches Kafka")
    demo.add_argument("--config", required=True)

    status = commands.add_parser(
        "status",
        help="a running pipeline's sources, Kafka and readiness (exit 0 ready, 1 not, 2 unreachable)",
    )
    status.add_argument(
        "--url", help="its status page (default: monitoring.http_host:http_port of --config)"
    )
    status.add_argument(
        "--config", help="the pipeline's config, for its address (default: the defaults)"
    )

    notify = commands.add_parser(
        "notify", help="only the alert notifications of a config, until SIGINT/SIGTERM"
    )
    notify.add_argument("--config", required=True)

    from data_ingestion.control import add_ctl_parser

    add_ctl_parser(commands)
    from data_ingestion.jobs import add_jobs_parser

    add_jobs_parser(commands)

    for command in commands.choices.values():
        if command not in (stack, flink):
            # Also after the command; SUPPRESS keeps a value given before it.
            command.add_argument("--log-level", choices=_LOG_LEVELS, default=argparse.SUPPRESS)
            command.add_argument(
                "--log-format", choices=["text", "json"], default=argparse.SUPPRESS
            )

    args, beam_args = parser.parse_known_args(argv)
    _configure_logging(args)
    if args.command not in ("run", "submit", "demo", "stack", "flink", "jobs") and beam_args:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    if args.command == "run":
        return _run(args, beam_args)
    if args.command == "submit":
        return _submit(args, beam_args)
    if args.command == "demo":
        return _demo(args, beam_args)
    if args.command == "check-config":
        from data_ingestion.setup import check_config

        return check_config(args.file)
    if args.command == "config-schema":
        return _config_schema()
    if args.command == "status":
        return _status(args)
    if args.command == "notify":
        return _notify(args)
    if args.command == "ctl":
        from data_ingestion.control import run_ctl

        return run_ctl(args)
    if args.command == "jobs":
        return _jobs(args, beam_args)
    if args.command == "stack":
        from data_ingestion import stack as local_stack

        # Its own parser answers `stack --help` and reads its options in any order.
        return local_stack.main([*beam_args, *args.stack_args])
    if args.command == "flink":
        from data_ingestion import flink_stack

        return flink_stack.main([*beam_args, *args.flink_args])
    if args.command == "simulate":
        from simulators import run_simulation

        stop = _stop_on_signals()
        run_simulation(
            args.config, duration_seconds=args.duration, speedup=args.speedup, stop_event=stop
        )
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
