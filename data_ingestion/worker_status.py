"""One status page, /healthz, /readyz, /metrics and control API in front of `run --workers N`.

Each worker serves the usual monitoring endpoints (`data_ingestion.monitoring`)
on a loopback port of its own; `WorkerFront` serves
`monitoring.http_host:http_port` (with the config's TLS) and answers from
theirs: health is every worker's, `/api/status` lists every worker's sources
(and the workers), `/metrics` carries each worker's samples with a `worker`
label. Requests are passed on with their `Authorization` header, so each
worker checks the caller as it would alone, and audits what it does. Control
actions go where they apply: a source's pause or resume to the worker that
owns it, a restart to all; applying a new config is refused (each worker owns
a share of the sources: change the file and restart `run`).

Example::

    front = WorkerFront(config, workers)   # workers: data_ingestion.workers.Worker
    front.start()
    ...
    front.stop()
"""

from __future__ import annotations

import collections
import json
import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from data_ingestion.access import Action, masked_config, route
from data_ingestion.monitoring import MonitorServer, server_tls, static_page
from pipelines.config import DataIngestionConfig

if TYPE_CHECKING:
    import http.server

__all__ = ["WorkerFront", "merge_metrics", "merge_status"]

_LOGGER = logging.getLogger(__name__)

_ASK_TIMEOUT_SECONDS = 5.0
_PASSED_HEADERS = ("Authorization", "Content-Type")
_KEPT_HEADERS = ("content-type", "www-authenticate")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?( .*)$")


class Worker(Protocol):
    """What the front needs of a worker (`data_ingestion.workers.Worker`)."""

    index: int
    restarts: int
    sources: list[str]

    @property
    def name(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    def state(self) -> str: ...


class Answer(NamedTuple):
    """A worker's HTTP answer (503 with a JSON error when it did not answer)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def ask(
    worker: Worker, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> Answer:
    request = urllib.request.Request(worker.url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=_ASK_TIMEOUT_SECONDS) as answer:
            return Answer(answer.status, list(answer.headers.items()), answer.read())
    except urllib.error.HTTPError as err:
        return Answer(err.code, list(err.headers.items()), err.read())
    except OSError as err:
        error = {"ok": False, "error": f"{worker.name} does not answer ({worker.state()}): {err}"}
        return Answer(503, [("Content-Type", "application/json")], json.dumps(error).encode())


def merge_metrics(texts: Sequence[tuple[int, str]]) -> str:
    """Prometheus text of several workers as one: every sample labelled `worker`.

    Samples of one family stay together under one HELP and TYPE, as the
    format requires: families are the blocks each worker's text starts with
    `# HELP`.
    """
    families: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = collections.defaultdict(list)
    for worker, text in texts:
        family = ""
        for line in text.splitlines():
            if line.startswith("# HELP "):
                family = line.split(" ", 3)[2]
                families.setdefault(family, [])
            if line.startswith("#"):
                if line not in families.setdefault(family, []):
                    families[family].append(line)
                continue
            match = _SAMPLE.match(line)
            if match is None:
                continue
            name, labels, rest = match.groups()
            inner = labels[1:-1] if labels else ""
            labelled = f'worker="{worker}"' + (f",{inner}" if inner else "")
            samples[family].append(f"{name}{{{labelled}}}{rest}")
    lines = [line for family, head in families.items() for line in [*head, *samples[family]]]
    return "\n".join(lines) + "\n"


def merge_status(statuses: Sequence[tuple[Worker, dict[str, Any] | None]]) -> dict[str, Any]:
    """The workers' `/api/status` as one; a worker that did not answer is a reason."""
    answered = [(w, s) for w, s in statuses if s is not None]
    if not answered:
        raise ValueError("no worker answered")
    first = answered[0][1]
    reasons = [f"{w.name}: not answering ({w.state()})" for w, s in statuses if s is None]
    reasons += [f"{w.name}: {reason}" for w, s in answered for reason in s["reasons"]]
    states = {s["job_state"] for _, s in answered}
    kafkas = [s["kafka"] for _, s in answered]
    ages = [k["last_ack_age_seconds"] for k in kafkas if k["last_ack_age_seconds"] is not None]
    history_sources: dict[str, Any] = {}
    dead_letter_reasons: collections.Counter[str] = collections.Counter()
    for _, status in answered:
        history_sources.update(status["history"]["sources"])
        dead_letter_reasons.update(status["dead_letter_reasons"])
    return {
        **first,
        "ready": not reasons,
        "reasons": reasons,
        "job_state": states.pop() if len(states) == 1 else "MIXED",
        "sources": [source for _, s in answered for source in s["sources"]],
        "kafka": {
            **kafkas[0],
            "healthy": all(k["healthy"] for k in kafkas),
            "reason": "; ".join(k["reason"] for k in kafkas if k["reason"]),
            "written": sum(k["written"] for k in kafkas),
            "send_errors": sum(k["send_errors"] for k in kafkas),
            "last_ack_age_seconds": min(ages) if ages else None,
        },
        "history": {**first["history"], "sources": history_sources},
        "tags": [
            _freshest(tags) for tags in zip(*(s["tags"] for _, s in answered), strict=True)
        ],
        "alerts": sorted(
            (alert for _, s in answered for alert in s["alerts"]), key=lambda a: a["age_seconds"]
        ),
        "dead_letter_reasons": dict(dead_letter_reasons.most_common()),
        "workers": [
            {"worker": w.index, "pid": w.pid, "state": w.state(), "restarts": w.restarts,
             "sources": w.sources}
            for w, _ in statuses
        ],  # fmt: skip
    }


def _freshest(tags: Sequence[dict[str, Any]]) -> dict[str, Any]:
    # Every worker lists every status tag; the one whose sources carry it has a value.
    known = [tag for tag in tags if tag["age_seconds"] is not None]
    return min(known, key=lambda tag: tag["age_seconds"]) if known else tags[0]


def _merge_health(path: str, answers: Sequence[tuple[Worker, Answer]]) -> dict[str, Any]:
    key = "alive" if path == "/healthz" else "ready"
    bodies = {}
    for worker, answer in answers:
        try:
            bodies[str(worker.index)] = answer.json()
        except ValueError:
            bodies[str(worker.index)] = {key: False, "error": answer.body.decode(errors="replace")}
    ok = all(answer.status == 200 for _, answer in answers)
    return {key: ok, "workers": bodies}


class WorkerFront:
    """Serves the config's monitoring address from the workers' own servers."""

    def __init__(self, config: DataIngestionConfig, workers: Sequence[Worker]) -> None:
        self.config = config
        self._workers = list(workers)
        self._server: MonitorServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        host, port = self.config.monitoring.http_host, self.config.monitoring.http_port
        try:
            self._server = MonitorServer((host, port), _handler(self), server_tls(self.config))
        except OSError as err:
            _LOGGER.warning(
                "workers: cannot serve on %s:%d (%s): no status page, /healthz, /readyz or "
                "/metrics for the workers; each still serves its own on 127.0.0.1",
                host, port, err.strerror,
            )  # fmt: skip
            return
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="workers-http", daemon=True
        )
        self._thread.start()
        _LOGGER.info(
            "workers: status page, /healthz, /readyz and /metrics of %d workers on %s:%d",
            len(self._workers), host, self._server.server_address[1],
        )  # fmt: skip

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def ask_all(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> list[tuple[Worker, Answer]]:
        return [(w, ask(w, method, path, headers, body)) for w in self._workers]

    def owner(self, source: str) -> Worker:
        """The worker that reads `source` (the first, which answers 404, if none does)."""
        return next((w for w in self._workers if source in w.sources), self._workers[0])

    @property
    def first(self) -> Worker:
        return self._workers[0]


def _refusal(answers: Sequence[tuple[Worker, Answer]]) -> Answer | None:
    """A worker's 401 or 403: the caller may not read, whatever the others say."""
    return next((a for _, a in answers if a.status in (401, 403)), None)


def _handler(front: WorkerFront) -> type[http.server.BaseHTTPRequestHandler]:
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "glass-ingest-workers"

        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            path = self.path.split("?", 1)[0]
            page = static_page(path)
            if page is not None:
                self._send(Answer(200, [("Content-Type", page[1])], page[0]))
                return
            answers = front.ask_all("GET", path, self._passed())
            refused = _refusal(answers)
            if refused is not None:
                self._send(refused)
            elif path in ("/healthz", "/readyz"):
                code = 200 if all(a.status == 200 for _, a in answers) else 503
                self._json(code, _merge_health(path, answers))
            elif path == "/metrics":
                texts = [(w.index, a.body.decode()) for w, a in answers if a.status == 200]
                kind = next(v for k, v in answers[0][1].headers if k.lower() == "content-type")
                self._send(Answer(200, [("Content-Type", kind)], merge_metrics(texts).encode()))
            elif path == "/api/status":
                statuses = [(w, a.json() if a.status == 200 else None) for w, a in answers]
                try:
                    self._json(200, merge_status(statuses))
                except ValueError:
                    self._json(503, {"error": "no worker answers"})
            elif path == "/api/config":
                # The workers said the caller may read; the config is the supervisor's.
                self._json(200, masked_config(front.config))
            else:
                self._send(answers[0][1])

        def do_POST(self) -> None:  # noqa: N802 - the http.server name
            path = self.path.split("?", 1)[0]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            found = route(path)
            headers = self._passed()
            if found is None:
                self._send(ask(front.first, "POST", path, headers, body))
                return
            action, target = found
            if action in (Action.PAUSE, Action.RESUME):
                self._send(ask(front.owner(target), "POST", path, headers, body))
            elif action is Action.APPLY_CONFIG:
                self._json(409, {"ok": False, "error": (
                    "run --workers: each worker owns a share of the sources, so a new config "
                    "cannot be applied to one; change the config file and restart run")})  # fmt: skip
            elif action is Action.VALIDATE_CONFIG:
                self._send(ask(front.first, "POST", path, headers, body))
            else:
                # A restart is every worker's; an alert is acknowledged where it was raised.
                answers = front.ask_all("POST", path, headers, body)
                done = [a for _, a in answers if a.status < 300]
                if action is Action.ACK and done:
                    self._send(done[0])
                elif action is Action.ACK:
                    self._send(answers[-1][1])
                else:
                    code = max(a.status for _, a in answers)
                    self._json(code, {"ok": code < 300, "workers": {
                        str(w.index): a.json() for w, a in answers}})  # fmt: skip

        def _passed(self) -> dict[str, str]:
            return {k: v for k in _PASSED_HEADERS if (v := self.headers.get(k)) is not None}

        def _json(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self._send(Answer(code, [("Content-Type", "application/json")], data))

        def _send(self, answer: Answer) -> None:
            self.send_response(answer.status)
            for key, value in answer.headers:
                if key.lower() in _KEPT_HEADERS:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            _LOGGER.debug("http: " + format, *args)

    return Handler
