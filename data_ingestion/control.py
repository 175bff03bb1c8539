"""The control API of a running pipeline: the actions (`Controller`), a client and `ctl`.

The launcher's HTTP server (`data_ingestion.monitoring`) serves it beside the
probes and the status page; who may do what is `data_ingestion.access`. Users
and roles come from the config's `control` section
(`pipelines.control_config`); each request names its user with HTTP Basic (a
password, checked against its PBKDF2 hash) or Bearer (a token):

| role | GET /api/status, /metrics, /api/config, / | pause, resume, ack, restart | validate, apply config |
|---|---|---|---|
| viewer | yes | no | no |
| operator | yes | yes | no |
| admin | yes | yes | yes |

`/healthz` and `/readyz` stay open (probes). Without credentials a request
gets 401 (with `WWW-Authenticate`), with a role that lacks the right 403.
Without a `control` section reads stay open and every change is refused.
Each change (allowed or denied) is audited: a line on the
`data_ingestion.audit` logger and an `audit/1` record on the health topic.

The actions (POST, `Content-Type: application/json`):

- `/api/sources/<name>/pause` (`{"reason": "..."}` optional) and `/resume`:
  the source's connection ends and stays down (maintenance), reported
  `paused`, not unhealthy; resume connects again (`connectors.base`).
- `/api/alerts/<id>/ack`: the alert stays raised, marked acknowledged by whom.
- `/api/restart`: a clean restart of the Beam job: every source drains
  (no new input; what it handed out is committed and acknowledged), then the
  job is cancelled and started again.
- `/api/config/validate` and `/api/config/apply` (the JSON config as body):
  validated fully (also as this process would load it: `${VAR}`, `DI_`
  variables, the command line's `--set`) and the pipeline built without
  running; every error is returned (422) before anything is touched. A valid
  one is applied by the same clean restart.

Example::

    from data_ingestion.control import ControlClient

    client = ControlClient("http://127.0.0.1:9180/", user="alice", password=os.environ["PW"])
    client.pause("fh_bus", reason="thermocouple swap")
    client.resume("fh_bus")
    client.apply_config(Path("line-c.json"))

    python -m data_ingestion ctl pause fh_bus --user alice --password-env GLASS_PASSWORD
    python -m data_ingestion ctl apply-config line-c.json --token-env DEPLOY_TOKEN
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import getpass
import json
import logging
import os
import ssl
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_ingestion.access import Action, ControlError
from pipelines.control_config import ControlConfig, hash_password

if TYPE_CHECKING:  # the CLI imports this module for every command: keep it light
    from data_ingestion.monitoring import Monitor
    from pipelines.config import DataIngestionConfig

__all__ = [
    "ControlClient",
    "ControlError",
    "Controller",
    "RestartRequest",
    "add_ctl_parser",
    "run_ctl",
]

_LOGGER = logging.getLogger(__name__)

_DEFAULT_URL = "http://127.0.0.1:9180/"
# A restart drains, cancels and submits again: tens of seconds on a busy machine.
_RESTART_WAIT_SECONDS = 120.0
_CLIENT_TIMEOUT_SECONDS = _RESTART_WAIT_SECONDS + 15.0
_EXIT_OK, _EXIT_REFUSED, _EXIT_UNREACHABLE, _EXIT_DENIED = 0, 1, 2, 3


@dataclasses.dataclass
class RestartRequest:
    """A restart asked through the API, waiting for the run loop to carry it out."""

    by: str
    config: DataIngestionConfig | None = None  # None: the running one again
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    status: int = 200
    outcome: dict[str, Any] = dataclasses.field(default_factory=dict)


class Controller:
    """Carries out the control API's actions for one `DataIngestionSystem`.

    Pause and resume act on the sources of this process (`connectors.base`);
    acknowledging goes to the monitor; a restart or a new config is handed
    to the loop that runs the job (`DataIngestionSystem`), which drains the
    sources, cancels, starts again and reports back here.

    Args:
      config: the running config.
      beam_args: the launcher's Beam options (to build a new config's pipeline).
      overrides: the launcher's `--set` overrides, applied to a posted config
        as to the file (command line beats file).
      sources_in_process: whether the sources run here (Prism LOOPBACK).
    """

    def __init__(
        self,
        config: DataIngestionConfig,
        *,
        beam_args: list[str],
        overrides: Mapping[str, Any],
        sources_in_process: bool,
    ) -> None:
        self.config = config
        self.monitor: Monitor | None = None
        self.restart_asked = threading.Event()
        self.supervised = False
        self._beam_args = beam_args
        self._overrides = dict(overrides)
        self._sources_in_process = sources_in_process
        self._pending: RestartRequest | None = None
        self._lock = threading.Lock()

    # -- sources

    def _label(self, name: str) -> str:
        for kind, _, source in self.config.sources.declared():
            if source.name == name:
                if not self._sources_in_process:
                    raise ControlError(
                        409,
                        f"source {name} is read by workers in other processes (not Prism's "
                        "LOOPBACK): it cannot be paused from the launcher",
                    )
                return f"{kind}[{name}]"
        names = ", ".join(s.name for _, _, s in self.config.sources.declared()) or "none"
        raise ControlError(404, f"no source is named {name!r} (configured: {names})")

    def pause(self, name: str, by: str, reason: str = "") -> dict[str, Any]:
        from connectors.base import pause_source

        label = self._label(name)
        drain = ControlConfig.drain_of(self.config.control)
        changed = pause_source(label, by=by, reason=reason, drain_seconds=drain)
        return {"ok": True, "source": name, "state": "paused", "changed": changed}

    def resume(self, name: str, by: str) -> dict[str, Any]:
        from connectors.base import resume_source

        changed = resume_source(self._label(name), by=by)
        return {"ok": True, "source": name, "state": "resumed", "changed": changed}

    def acknowledge(self, alert_id: str, by: str) -> dict[str, Any]:
        if self.monitor is None:
            raise ControlError(409, "no monitor runs in this process: no alerts to acknowledge")
        alert = self.monitor.acknowledge(alert_id, by)
        if alert is None:
            raise ControlError(404, f"no active alert has id {alert_id!r} (see /api/status)")
        return {"ok": True, "alert": alert}

    # -- configs

    def load(self, body: bytes) -> DataIngestionConfig:
        """The config in `body`, loaded as the launcher loads its file; `ControlError` 422 else."""
        from data_ingestion.setup import DataIngestionSetup
        from pipelines.runner import build_only
        from typed_config import ConfigError

        with tempfile.TemporaryDirectory(prefix="glass-config-") as folder:
            path = Path(folder) / "posted-config.json"
            path.write_bytes(body)
            try:
                config = DataIngestionSetup(path, overrides=self._overrides).load_config()
            except ConfigError as err:
                errors = [line.replace(str(path), "posted config") for line in err.errors]
                raise ControlError(422, f"invalid config: {len(errors)} error(s)", errors) from None
        errors = self._unchangeable(config)
        if not errors:
            try:
                build_only(config, self._beam_args)
            except Exception as err:  # noqa: BLE001 - whatever building the pipeline says
                errors.append(f"pipeline: cannot be built: {type(err).__name__}: {err}")
        if errors:
            raise ControlError(422, f"invalid config: {len(errors)} error(s)", errors)
        return config

    def _unchangeable(self, config: DataIngestionConfig) -> list[str]:
        old = self.config.pipeline.runner
        if config.pipeline.runner != old:
            return [
                f"pipeline.runner: {config.pipeline.runner!r} cannot replace {old!r} in a "
                "running launcher (start the process again with it)"
            ]
        return []

    def next_start_only(self, config: DataIngestionConfig) -> list[str]:
        """Keys of `config` that a running process takes only at its next start."""
        old = self.config
        keys = []
        for name in ("enabled", "http_host", "http_port"):
            if getattr(config.monitoring, name) != getattr(old.monitoring, name):
                keys.append(f"monitoring.{name}")
        tls = (old.control.tls_certfile, old.control.tls_keyfile) if old.control else (None, None)
        new_tls = (
            (config.control.tls_certfile, config.control.tls_keyfile)
            if config.control
            else (None, None)
        )
        if tls != new_tls:
            keys.append("control.tls_certfile/tls_keyfile")
        if config.logging != old.logging:
            keys.append("logging")
        return keys

    def validate(self, body: bytes) -> dict[str, Any]:
        config = self.load(body)
        sources = [f"{kind} {source.name}" for kind, _, source in config.sources.declared()]
        return {
            "ok": True,
            "valid": True,
            "sources": sources,
            "next_start_only": self.next_start_only(config),
        }

    # -- restarts

    def restart(
        self,
        by: str,
        config: DataIngestionConfig | None = None,
        wait_seconds: float = _RESTART_WAIT_SECONDS,
    ) -> tuple[int, dict[str, Any]]:
        """Asks the run loop for a clean restart (with `config`, if given) and waits for it."""
        with self._lock:
            if not self.supervised:
                raise ControlError(409, "this process does not run the pipeline's job")
            if self._pending is not None:
                raise ControlError(409, f"a restart asked by {self._pending.by} is under way")
            request = self._pending = RestartRequest(by, config)
            self.restart_asked.set()
        if not request.done.wait(wait_seconds):
            return 202, {"ok": True, "state": "restarting", "detail": "still restarting"}
        return request.status, request.outcome

    def take_restart(self) -> RestartRequest | None:
        """For the run loop: the restart asked for, if any."""
        with self._lock:
            self.restart_asked.clear()
            return self._pending

    def finish_restart(self, request: RestartRequest, status: int, outcome: dict[str, Any]) -> None:
        with self._lock:
            self._pending = None
        request.status, request.outcome = status, outcome
        request.done.set()

    def stop_supervising(self) -> None:
        """The job ends for good: whoever waits for a restart hears it will not come."""
        with self._lock:
            self.supervised = False
            request, self._pending = self._pending, None
        if request is not None:
            request.status = 503
            request.outcome = {"ok": False, "error": "the pipeline is stopping"}
            request.done.set()

    def perform(
        self, action: Action, target: str, body: bytes, by: str
    ) -> tuple[int, dict[str, Any]]:
        """Carries out one allowed action; raises `ControlError` when it cannot be done."""
        if action is Action.PAUSE:
            reason = str(_json_object(body).get("reason", ""))[:200]
            return 200, self.pause(target, by, reason)
        if action is Action.RESUME:
            return 200, self.resume(target, by)
        if action is Action.ACK:
            return 200, self.acknowledge(target, by)
        if action is Action.RESTART:
            return self.restart(by)
        if action is Action.VALIDATE_CONFIG:
            return 200, self.validate(body)
        if action is Action.APPLY_CONFIG:
            config = self.load(body)
            later = self.next_start_only(config)
            status, outcome = self.restart(by, config)
            return status, {**outcome, "next_start_only": later}
        raise ControlError(404, f"no action {action.value}")


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError as err:
        raise ControlError(400, f"body is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ControlError(400, "body must be a JSON object")
    return data


# -- the client ----------------------------------------------------------------------


class ControlClient:
    """The control API from Python.

    Args:
      url: the pipeline's status page (`http://127.0.0.1:9180/`, `https://...`).
      user, password: HTTP Basic credentials; or `token` for Bearer.
      cafile: a PEM CA file to trust for an `https://` server (a self-signed one).
      timeout_seconds: per request; a restart waits up to 120 s on the server.

    Methods return the server's JSON; a refusal raises `ControlError` (its
    `status`, `message` and, for a config, every `errors` line); no answer
    raises `OSError`.
    """

    def __init__(
        self,
        url: str = _DEFAULT_URL,
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        cafile: str | None = None,
        timeout_seconds: float = _CLIENT_TIMEOUT_SECONDS,
    ) -> None:
        if token is not None and user is not None:
            raise ValueError("give user and password, or token, not both")
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        self.url = url.rstrip("/")
        self._authorization: str | None = None
        if token is not None:
            self._authorization = f"Bearer {token}"
        elif user is not None and password is not None:
            pair = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._authorization = f"Basic {pair}"
        self._context = ssl.create_default_context(cafile=cafile) if cafile else None
        self._timeout = timeout_seconds

    def __repr__(self) -> str:
        return f"ControlClient({self.url!r})"  # never the credentials

    def _call(self, method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if self._authorization is not None:
            request.add_header("Authorization", self._authorization)
        if method == "POST":
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(
                request, timeout=self._timeout, context=self._context
            ) as answer:
                text = answer.read()
                if "json" not in answer.headers.get("Content-Type", ""):
                    return text.decode()
                return json.loads(text)
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                data = json.loads(raw)
            except ValueError:
                data = {"error": raw.decode(errors="replace")[:200] or err.reason}
            raise ControlError(
                err.code, str(data.get("error", err.reason)), data.get("errors")
            ) from None

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/status")
        return result

    def config(self) -> dict[str, Any]:
        """The running config, secrets masked."""
        result: dict[str, Any] = self._call("GET", "/api/config")
        return result

    def metrics(self) -> str:
        result: str = self._call("GET", "/metrics")
        return result

    def pause(self, source: str, reason: str = "") -> dict[str, Any]:
        body = json.dumps({"reason": reason}).encode()
        result: dict[str, Any] = self._call("POST", f"/api/sources/{source}/pause", body)
        return result

    def resume(self, source: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/api/sources/{source}/resume", b"{}")
        return result

    def ack(self, alert_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/api/alerts/{alert_id}/ack", b"{}")
        return result

    def restart(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/api/restart", b"{}")
        return result

    def validate_config(self, config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/api/config/validate", _config_body(config))
        return result

    def apply_config(self, config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/api/config/apply", _config_body(config))
        return result


def _config_body(config: Mapping[str, Any] | str | Path) -> bytes:
    """A config as it is posted: a file's bytes as written (the server parses them)."""
    if isinstance(config, Mapping):
        return json.dumps(config).encode()
    return Path(config).read_bytes()


# -- `python -m data_ingestion ctl` ------------------------------------------------------


def add_ctl_parser(commands: Any) -> argparse.ArgumentParser:
    """Adds `ctl` and its actions to the CLI's subcommands."""
    ctl: argparse.ArgumentParser = commands.add_parser(
        "ctl",
        help="control a running pipeline: status, pause, resume, ack, restart, apply-config",
        description=(
            "Exit status: 0 done, 1 refused (unknown source, invalid config, ...), "
            "2 no answer or bad arguments, 3 not authenticated or not allowed."
        ),
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help=f"the status page (default: from --config, else {_DEFAULT_URL})"
    )
    common.add_argument("--config", help="the pipeline's config, for its address")
    common.add_argument("--user", help="HTTP Basic user (password from --password-env or a prompt)")
    common.add_argument(
        "--password-env", metavar="VAR", help="environment variable with the password"
    )
    common.add_argument(
        "--token-env", metavar="VAR", help="environment variable with a bearer token"
    )
    common.add_argument("--cafile", help="PEM CA file that signed the server's certificate")
    for option in ("--log-level", "--log-format"):
        common.add_argument(option, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    actions = ctl.add_subparsers(dest="ctl_command", required=True)
    actions.add_parser("status", parents=[common], help="sources, Kafka, alerts with their ids")
    pause = actions.add_parser("pause", parents=[common], help="pause a source (maintenance)")
    pause.add_argument("source")
    pause.add_argument("--reason", default="", help="shown in the status and the audit log")
    resume = actions.add_parser("resume", parents=[common], help="resume a paused source")
    resume.add_argument("source")
    ack = actions.add_parser("ack", parents=[common], help="acknowledge an alert (by its id)")
    ack.add_argument("alert_id")
    actions.add_parser("restart", parents=[common], help="drain the sources, restart the job")
    for name, what in (("apply-config", "validate and apply"), ("validate-config", "validate")):
        parser = actions.add_parser(name, parents=[common], help=f"{what} a config file")
        parser.add_argument("file")
    hashing = actions.add_parser(
        "hash-password", help="print a password hash for control.users[].password_hash"
    )
    hashing.add_argument("--password-env", metavar="VAR", help="read it from here, not a prompt")
    hashing.add_argument("--iterations", type=int, default=600_000)
    for option in ("--log-level", "--log-format"):
        hashing.add_argument(option, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return ctl


def _hash_password(args: argparse.Namespace) -> int:
    if args.password_env:
        password = os.environ.get(args.password_env)
        if not password:
            print(f"ctl: ${args.password_env} is not set or empty", file=sys.stderr)
            return _EXIT_UNREACHABLE
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("ctl: the two passwords differ", file=sys.stderr)
            return _EXIT_UNREACHABLE
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("ctl: an empty password", file=sys.stderr)
        return _EXIT_UNREACHABLE
    print(hash_password(password, iterations=args.iterations))
    return _EXIT_OK


def _client(args: argparse.Namespace) -> ControlClient:
    url = args.url
    if url is None and args.config:
        from data_ingestion.setup import DataIngestionSetup

        config = DataIngestionSetup(args.config).load_config()
        scheme = "https" if config.control is not None and config.control.tls else "http"
        url = f"{scheme}://{config.monitoring.http_host}:{config.monitoring.http_port}/"
    token = password = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise ValueError(f"${args.token_env} (--token-env) is not set or empty")
    if args.user:
        password = os.environ.get(args.password_env) if args.password_env else None
        if password is None and not args.password_env:
            password = getpass.getpass(f"password of {args.user}: ")
        if not password:
            raise ValueError(f"${args.password_env} (--password-env) is not set or empty")
    return ControlClient(
        url or _DEFAULT_URL, user=args.user, password=password, token=token, cafile=args.cafile
    )


def format_alerts(status: Mapping[str, Any]) -> list[str]:
    """One line per active alert, with the id `ctl ack` takes."""
    lines = []
    for alert in status.get("alerts", []):
        acked = alert.get("acknowledged_by")
        note = f"  acknowledged by {acked}" if acked else ""
        where = alert["device"] + (f" {alert['tag']}" if alert.get("tag") else "")
        lines.append(
            f"alert {alert.get('id', '?')}  {alert['severity']:7} {alert['rule']:18} {where} "
            f"since {alert['start']}{note}"
        )
    return lines


def _print_result(command: str, result: Mapping[str, Any]) -> None:
    if command == "status":
        from data_ingestion.status import format_status

        print(format_status(dict(result)))
        for source in result.get("sources", []):
            if source.get("paused_by"):
                print(f"paused: {source['name']} by {source['paused_by']}")
        for line in format_alerts(result):
            print(line)
        return
    print(json.dumps(result, indent=2, sort_keys=True))


def run_ctl(args: argparse.Namespace) -> int:
    """`python -m data_ingestion ctl ...`; see `add_ctl_parser` for the exit codes."""
    command = args.ctl_command
    if command == "hash-password":
        return _hash_password(args)
    try:
        client = _client(args)
    except Exception as err:  # noqa: BLE001 - a bad config or credential option: say which
        print(f"ctl: {err}", file=sys.stderr)
        return _EXIT_UNREACHABLE
    calls: dict[str, Callable[[], Any]] = {
        "status": client.status,
        "pause": lambda: client.pause(args.source, args.reason),
        "resume": lambda: client.resume(args.source),
        "ack": lambda: client.ack(args.alert_id),
        "restart": client.restart,
        "apply-config": lambda: client.apply_config(args.file),
        "validate-config": lambda: client.validate_config(args.file),
    }
    try:
        result = calls[command]()
    except ControlError as err:
        print(f"ctl {command}: refused ({err.status}): {err.message}", file=sys.stderr)
        for line in err.errors:
            print(f"  {line}", file=sys.stderr)
        return _EXIT_DENIED if err.status in (401, 403) else _EXIT_REFUSED
    except OSError as err:
        print(f"ctl {command}: no answer from {client.url} ({err})", file=sys.stderr)
        return _EXIT_UNREACHABLE
    _print_result(command, result)
    return _EXIT_OK
