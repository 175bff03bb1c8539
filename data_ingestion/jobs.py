"""`python -m data_ingestion jobs`: the pipeline's jobs on a Flink cluster.

    python -m data_ingestion jobs list [--flink-master 127.0.0.1:8082]
    python -m data_ingestion jobs cancel JOB_ID
    python -m data_ingestion jobs stop JOB_ID --savepoint DIR     # prints the savepoint's path
    python -m data_ingestion jobs resume --savepoint PATH --config data_ingestion_config.json

`stop` takes a savepoint and ends the job: the sources acknowledge what the
savepoint holds, nothing after it. `resume` is `run --runner FlinkRunner
--savepoint_path PATH`: it submits the config's pipeline again, started from
the savepoint, and stays in the foreground as `run` does. The cluster is
reached through its REST API (`--flink-master`, default the local cluster's).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import urllib.error
from typing import Any

from pipelines.flink import FlinkJob, list_jobs

__all__ = ["LOCAL_FLINK_MASTER", "add_jobs_parser", "resume_beam_args", "run_jobs"]

LOCAL_FLINK_MASTER = "127.0.0.1:8082"


def add_jobs_parser(commands: Any) -> argparse.ArgumentParser:
    """Adds `jobs list|cancel|stop|resume` to the CLI's subcommands."""
    jobs = commands.add_parser("jobs", help="list, cancel, stop (savepoint) and resume Flink jobs")
    actions = jobs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the cluster's jobs, newest first")
    cancel = actions.add_parser("cancel", help="cancel a job (no savepoint)")
    cancel.add_argument("job_id")
    stop = actions.add_parser("stop", help="stop a job with a savepoint; prints its path")
    stop.add_argument("job_id")
    stop.add_argument(
        "--savepoint",
        metavar="DIR",
        help="where the savepoint goes (default: the cluster's state.savepoints.dir)",
    )
    resume = actions.add_parser("resume", help="run the pipeline again from a savepoint")
    resume.add_argument("--savepoint", metavar="PATH", required=True)
    resume.add_argument("--config", required=True)
    resume.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    for action in (listing, cancel, stop, resume):
        action.add_argument(
            "--flink-master",
            default=LOCAL_FLINK_MASTER,
            metavar="HOST:PORT",
            help=f"the cluster's REST API (default {LOCAL_FLINK_MASTER})",
        )
    return jobs


def resume_beam_args(args: argparse.Namespace) -> list[str]:
    """The Beam options `resume` adds to a `run --runner FlinkRunner`."""
    return [f"--flink_master={args.flink_master}", f"--savepoint_path={args.savepoint}"]


def run_jobs(args: argparse.Namespace) -> int:
    """`jobs list|cancel|stop`; 0 on success, 2 when the cluster does not answer or refuses."""
    rest_url = _rest_url(args.flink_master)
    try:
        if args.action == "list":
            _print_jobs(list_jobs(rest_url))
        elif args.action == "cancel":
            _require_job(rest_url, args.job_id)
            state = FlinkJob(rest_url, args.job_id).cancel()
            print(f"{args.job_id}: {state}")
        elif args.action == "stop":
            _require_job(rest_url, args.job_id)
            print(FlinkJob(rest_url, args.job_id).stop_with_savepoint(args.savepoint))
    except urllib.error.HTTPError as err:
        print(
            f"jobs {args.action}: {rest_url} refused: {err.code} {_error_text(err)}",
            file=sys.stderr,
        )
        return 2
    except urllib.error.URLError as err:
        print(
            f"jobs {args.action}: no Flink REST API at {rest_url} ({err.reason}); the local "
            "cluster starts with `python -m data_ingestion flink up`",
            file=sys.stderr,
        )
        return 2
    except (OSError, RuntimeError) as err:
        print(f"jobs {args.action}: {err}", file=sys.stderr)
        return 2
    return 0


def _require_job(rest_url: str, job_id: str) -> None:
    """Raises RuntimeError unless the cluster (which must answer) has the job."""
    if all(job["id"] != job_id for job in list_jobs(rest_url)):
        raise RuntimeError(f"no job {job_id} on {rest_url} (`jobs list` shows them)")


def _rest_url(master: str) -> str:
    return master.rstrip("/") if "://" in master else f"http://{master}"


def _error_text(err: urllib.error.HTTPError) -> str:
    # Flink answers {"errors": [...]}; the first line of the first says enough.
    body = err.read().decode(errors="replace")
    return body.splitlines()[0][:300] if body else err.reason


def _print_jobs(jobs: list[dict[str, Any]]) -> None:
    if not jobs:
        print("no jobs")
        return
    print(f"{'JOB ID':32}  {'STATE':11}  {'STARTED (UTC)':19}  {'RUNNING':>9}  NAME")
    for job in jobs:
        started = datetime.datetime.fromtimestamp(job["start"] / 1000, datetime.UTC)
        print(
            f"{job['id']:32}  {job['state']:11}  {started:%Y-%m-%d %H:%M:%S}  "
            f"{job['duration'] / 1000:8.0f}s  {job['name']}"
        )
