"""`python -m data_ingestion`: run, check-config, stack, simulate, demo.

Examples::

    python -m data_ingestion check-config data_ingestion_config.json
    python -m data_ingestion run --config data_ingestion_config.json
    python -m data_ingestion run --config line-c.json --runner PrismRunner \\
        --set kafka.bootstrap_servers=10.0.0.5:9092
    python -m data_ingestion stack up --kafka-port 9092 --mqtt-port 1883
    python -m data_ingestion simulate --config data_ingestion_config.json
    python -m data_ingestion demo --config data_ingestion_config.json

`run` passes every option it does not know to Beam (`--prism_location`,
`--flink_master`, ...) and runs until SIGINT or SIGTERM.
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


def _parse_set(items: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. kafka.linger_ms=10")
        overrides[key] = value
    return overrides


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, frame: Any) -> None:
        _LOGGER.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


def _run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from data_ingestion.main import DataIngestionSystem

    overrides = _parse_set(args.set)
    if args.runner:
        overrides["pipeline.runner"] = args.runner
    from typed_config import ConfigError

    system = DataIngestionSystem(args.config, overrides=overrides, beam_args=beam_args)
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
    stop = _stop_on_signals()
    return system.run_until(stop)


def _demo(args: argparse.Namespace, beam_args: list[str]) -> int:
    from data_ingestion.demo import run_demo

    return run_demo(args.config, beam_args, _stop_on_signals())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_ingestion", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
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

    check = commands.add_parser("check-config", help="validate a config file, print every error")
    check.add_argument("file")

    stack = commands.add_parser("stack", help="the local Kafka + Mosquitto stack", add_help=False)
    stack.add_argument("stack_args", nargs=argparse.REMAINDER)

    simulate = commands.add_parser("simulate", help="run the simulated glass line")
    simulate.add_argument("--config", required=True)
    simulate.add_argument(
        "--duration", type=float, default=None, help="seconds; default: until Ctrl-C"
    )
    simulate.add_argument("--speedup", type=float, default=1.0)

    demo = commands.add_parser("demo", help="simulator + pipeline + a view of what reaches Kafka")
    demo.add_argument("--config", required=True)

    args, beam_args = parser.parse_known_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # kafka-python logs every connection step at INFO, asyncua every request;
    # the connectors log what matters to an operator.
    quiet = max(logging.WARNING, logging.getLevelName(args.log_level))
    for chatty in ("kafka", "asyncua"):
        logging.getLogger(chatty).setLevel(quiet)
    if args.command not in ("run", "demo") and beam_args:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    if args.command == "run":
        return _run(args, beam_args)
    if args.command == "demo":
        return _demo(args, beam_args)
    if args.command == "check-config":
        from data_ingestion.setup import check_config

        return check_config(args.file)
    if args.command == "stack":
        from data_ingestion import stack as local_stack

        return local_stack.main(args.stack_args)
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
