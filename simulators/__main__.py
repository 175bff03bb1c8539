"""`python -m simulators`: the simulated glass line for the config's MQTT, OPC UA, Modbus, cameras.

Live (paced by plant time, until Ctrl-C or `--duration` wall seconds): the line
is published to every MQTT broker of the config, served by an OPC UA server
on the port of every local `sources.opcua[i].endpoint`, by the simulated
Modbus field devices on every local Modbus port they own (5020-5023; tags read
over OPC UA or Modbus are not published over MQTT) and by the simulated MIK-1
camera on the port of every local `http://` `sources.camera[i].url` (see
`simulators.run_simulation`)::

    python -m simulators --config data_ingestion_config.json --speedup 10 --duration 60
    python -m simulators --config data_ingestion_config.json --faults-per-hour 6 \\
        --ground-truth faults.json

One OPC UA server on its own, with fault commands on stdin, is
`python -m simulators.opcua_line` (see its module doc).

A counted burst (exactly N messages per broker, a fraction malformed; prints
what was sent as one JSON line per broker)::

    python -m simulators --config data_ingestion_config.json --burst 10000 --invalid-fraction 0.2
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

from simulators import run_burst, run_simulation

_LOGGER = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators", description=__doc__.split("\n", 1)[0].split(": ", 1)[1]
    )
    parser.add_argument("--config", required=True, help="the pipeline's JSON config file")
    parser.add_argument(
        "--duration", type=float, default=None, help="wall seconds (default: until Ctrl-C)"
    )
    parser.add_argument(
        "--speedup", type=float, default=1.0, help="plant seconds per wall second (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="model seed (default 0)")
    parser.add_argument("--payload-form", choices=("single", "multi", "mixed"), default="mixed")
    parser.add_argument(
        "--faults-per-hour", type=float, default=0.0, help="random sensor faults per plant hour"
    )
    parser.add_argument("--ground-truth", metavar="FILE", help="write injected faults here (JSON)")
    parser.add_argument(
        "--burst", type=int, metavar="N", help="publish exactly N messages and exit"
    )
    parser.add_argument(
        "--invalid-fraction", type=float, default=0.0, help="share of malformed burst messages"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="burst messages per second (default: flat out)"
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    # asyncua logs every OPC UA connection and request at INFO.
    logging.getLogger("asyncua").setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.burst is not None:
        results = run_burst(
            args.config,
            args.burst,
            invalid_fraction=args.invalid_fraction,
            rate_per_second=args.rate,
            seed=args.seed,
            payload_form=args.payload_form,
        )
        for broker, result in results.items():
            summary: dict[str, Any] = {
                "broker": broker,
                "messages": result.messages,
                "valid_messages": result.valid_messages,
                "valid_readings": result.valid_readings,
                "invalid_messages": result.invalid_messages,
                "invalid_by_kind": result.invalid_by_kind,
                "elapsed_seconds": round(result.elapsed_seconds, 3),
                "messages_per_second": round(result.messages_per_second),
            }
            print(json.dumps(summary))
        return 0
    stop = threading.Event()

    def handle(signum: int, frame: Any) -> None:
        _LOGGER.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    run_simulation(
        args.config,
        duration_seconds=args.duration,
        speedup=args.speedup,
        stop_event=stop,
        seed=args.seed,
        payload_form=args.payload_form,
        fault_rate_per_hour=args.faults_per_hour,
        ground_truth_path=args.ground_truth,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
