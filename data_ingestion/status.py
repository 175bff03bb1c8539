"""`python -m data_ingestion status`: a running pipeline's health in a terminal.

Reads the pipeline's `/api/status` (the data behind its status page) and
prints one line per source, the Kafka sink, and why it is not ready::

    $ python -m data_ingestion status --url http://127.0.0.1:9180/
    line-c (PrismRunner) job RUNNING: NOT READY
    source         kind    state         last data  recv/s  dead/s    written  reconn  buffer
    furnace        opcua   ok            0 s ago     38.0    0.00      11234       0      0 %
    iot            mqtt    disconnected  12 s ago     0.0    0.00       2301       1      0 %
    kafka 127.0.0.1:9092: accepting (written 13535, send errors 0)
    not ready: source iot (mqtt): disconnected for 12 s (connection lost)

Exit status: 0 ready, 1 not ready, 2 no answer.
"""

from __future__ import annotations

import sys
import urllib.error
from typing import Any

__all__ = ["print_status", "format_status"]

_NOT_READY = 1
_UNREACHABLE = 2


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def format_status(status: dict[str, Any]) -> str:
    """The text `status` prints for one `/api/status` answer."""
    verdict = "ready" if status["ready"] else "NOT READY"
    lines = [f"{status['pipeline']} ({status['runner']}) job {status['job_state']}: {verdict}"]
    name_width = max([len("source")] + [len(s["name"]) for s in status["sources"]])
    lines.append(
        f"{'source':{name_width}}  {'kind':6}  {'state':12}  {'last data':>10}  {'recv/s':>7}  "
        f"{'dead/s':>7}  {'written':>9}  {'reconn':>6}  {'buffer':>6}"
    )
    for s in status["sources"]:
        lines.append(
            f"{s['name']:{name_width}}  {s['kind']:6}  {s['state']:12}  "
            f"{_age(s['last_received_age_seconds']):>10}  {s['rate_per_second']:7.1f}  "
            f"{s['dead_letters_per_second']:7.2f}  {s['written']:9d}  {s['reconnects']:6d}  "
            f"{100 * s['buffer_fill']:5.0f} %"
        )
    kafka = status["kafka"]
    state = "accepting" if kafka["healthy"] else f"FAILING ({kafka['reason']})"
    lines.append(
        f"kafka {kafka['bootstrap_servers']}: {state} (written {kafka['written']}, "
        f"send errors {kafka['send_errors']})"
    )
    # `run --workers N`: which process reads what, and how often it was restarted.
    lines += [
        f"worker {w['worker']} (pid {w['pid']}, {w['state']}, restarts {w['restarts']}): "
        + (", ".join(w["sources"]) or "no sources")
        for w in status.get("workers", [])
    ]
    lines += [f"not ready: {reason}" for reason in status["reasons"]]
    return "\n".join(lines)


def print_status(url: str | None, config_path: str | None) -> int:
    """Prints the status of the pipeline at `url` (or at the address in its config)."""
    from data_ingestion.monitoring import fetch_status

    if url is None:
        from data_ingestion.setup import DataIngestionSetup
        from typed_config import ConfigError

        try:
            monitoring = DataIngestionSetup(config_path).load_config().monitoring
        except ConfigError as err:
            print(f"{config_path}: invalid configuration:", file=sys.stderr)
            for line in err.errors:
                print(f"  {line}", file=sys.stderr)
            return _UNREACHABLE
        url = f"http://{monitoring.http_host}:{monitoring.http_port}/"
    try:
        status = fetch_status(url)
    except urllib.error.HTTPError as err:
        if err.code not in (401, 403):
            raise
        print(
            f"the pipeline at {url} lets only its control users read its status: "
            "python -m data_ingestion ctl status --url URL --user NAME --password-env VAR",
            file=sys.stderr,
        )
        return _UNREACHABLE
    except OSError as err:
        print(
            f"no pipeline answers at {url} ({getattr(err, 'reason', err)}): is it running, "
            "with monitoring.enabled, on that port?",
            file=sys.stderr,
        )
        return _UNREACHABLE
    print(format_status(status))
    return 0 if status["ready"] else _NOT_READY
