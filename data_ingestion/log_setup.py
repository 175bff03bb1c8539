"""The process's log setup, from the config's `logging` section (`pipelines.logging_config`).

One handler on stderr, text or JSON lines, for every part of the process: the
connectors, the transforms (on Prism the Python worker runs in the launching
process), Beam, Prism's own output (`pipelines.prism`), kafka-python, asyncua.

- Levels: `level` is the root level; `loggers` sets any logger's level by name
  (`{"connectors.opcua": "DEBUG", "apache_beam": "INFO"}`). The chatty
  libraries (`apache_beam`, `kafka`, `asyncua`) stay at WARNING unless named
  there: at INFO they log every type hint and every connection step. The
  level comes, highest precedence first, from `--log-level`, `DI_LOGGING__LEVEL`
  (the environment, like every other key), the file, the default INFO.
- `format`: `text` (`2026-12-07 10:00:00,123 INFO connectors.mqtt: ...`) or
  `json`, one object per line for log shippers:
  `{"ts": "2026-12-07T10:00:00.123Z", "level": "INFO", "logger": "connectors.mqtt",
  "message": "...", "thread": "...", "exc": "Traceback ..."}`.
- Known noise is demoted to DEBUG, each rule with its reason (`_NOISE`); an
  unknown WARNING or ERROR always shows. Once a stop was asked for
  (`note_stopping`), what Beam's worker and Prism say about the bundles the
  cancel cut short is DEBUG too, tracebacks a worker thread prints straight
  to stderr included; uncaught exceptions go through the log.
- Secrets never reach the log: every value of a config field declared with
  `typed_config.secret()` (passwords, SMTP and webhook credentials) is
  replaced by `***` in each message and traceback, whoever logged it.

Example::

    "logging": {"level": "INFO", "format": "json",
                "loggers": {"connectors.opcua": "DEBUG"}}

    configure_logging(config.logging, level=args.log_level)   # the CLI does this
    protect_secrets(config)             # DataIngestionSystem.initialize does this
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

import orjson

from pipelines.logging_config import (
    DEFAULT_FORMAT,
    DEFAULT_LEVEL,
    LOG_LEVELS,
    LoggingConfig,
)
from typed_config import secret_values

__all__ = [
    "configure_logging",
    "protect_secrets",
    "mask_secrets",
    "note_stopping",
]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# At INFO these log every type hint (Beam), connection step (kafka-python) or
# request (asyncua); the connectors log what matters to an operator.
_QUIET_LIBRARIES = ("apache_beam", "kafka", "asyncua")
_MASK = "***"
# A shorter "secret" would mask ordinary words and numbers all over the log.
_MIN_SECRET_CHARS = 4
_ENV_LEVEL = "DI_LOGGING__LEVEL"
_ENV_FORMAT = "DI_LOGGING__FORMAT"


# ---------------------------------------------------------------- secrets


class _SecretMask:
    """Replaces every registered secret in a text by `***`."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            self._secrets |= {text for text in secrets if len(text) >= _MIN_SECRET_CHARS}
            # Longest first, so a secret that contains another is masked whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub(_MASK, text)


_SECRETS = _SecretMask()


def mask_secrets(text: str) -> str:
    """`text` with every secret of the loaded configs replaced by `***`."""
    return _SECRETS(text)


class _SecretFilter(logging.Filter):
    """Masks secrets in a record before any handler formats it.

    Rewrites the message (with its arguments) and the traceback in place, so
    it works on any handler: ours, or one the embedding application added.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS._pattern is None:
            return True
        message = record.getMessage()
        masked = _SECRETS(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _SECRETS(record.exc_text)
        if record.stack_info:
            record.stack_info = _SECRETS(record.stack_info)
        return True


_SECRET_FILTER = _SecretFilter()


def protect_secrets(config: object) -> None:
    """Masks `config`'s secrets in every log line from now on.

    Attaches the masking filter to every handler of the root logger (it is
    idempotent), so a program that set up its own logging is covered too.
    """
    _SECRETS.add(secret_values(config))
    for handler in logging.getLogger().handlers:
        if _SECRET_FILTER not in handler.filters:
            handler.addFilter(_SECRET_FILTER)


# ---------------------------------------------------------------- noise


# Set once a stop was asked for: what a dying gRPC stream then says is expected.
_STOPPING = threading.Event()


def note_stopping() -> None:
    """Tells the log that a stop was asked for (the CLI's signal handler calls it)."""
    _STOPPING.set()


def note_restarted() -> None:
    """A restart's successor job runs: what its workers say counts again."""
    _STOPPING.clear()


@dataclasses.dataclass(frozen=True)
class _Noise:
    """A known message (`pattern`, searched in the text) demoted to `level`, and why."""

    logger: str
    pattern: str
    level: int
    why: str
    when: Callable[[], bool] = lambda: True

    def matches(self, record: logging.LogRecord) -> bool:
        name = record.name
        if not (name == self.logger or name.startswith(self.logger + ".")):
            return False
        return re.search(self.pattern, record.getMessage()) is not None and self.when()


_NOISE = (
    _Noise(
        "apache_beam.utils.subprocess_server",
        "^Really (starting|destroying) service",
        logging.INFO,
        "Beam announces each job or expansion server it starts or stops as a warning",
    ),
    _Noise(
        "apache_beam.transforms.core",
        r"^All input pcollections must have the same window.*PCollection\[[^\]]*/(Emit|ToFeatures)\[",
        logging.DEBUG,
        "ComputeFeatures merges its windows' features, each in its own window; every consumer "
        "in the pipeline re-windows them (pipelines.ingest). Any other Flatten still warns",
    ),
    _Noise(
        "PrismRunner",
        "^empty transform",
        logging.DEBUG,
        "Prism notes the no-op reshuffle inside Beam's Create (every source has one)",
    ),
    _Noise(
        "pipelines.prism",
        "^empty transform",
        logging.DEBUG,
        "Prism notes the no-op reshuffle inside Beam's Create (every source has one)",
    ),
    _Noise(
        "kafka.net.selector",
        "blocking the event loop",
        logging.DEBUG,
        "kafka-python times each step of its I/O loop; on a busy machine the GIL, not a "
        "tight loop, makes one take over 100 ms",
    ),
    _Noise(
        "asyncua.client.ua_session",
        "^Publish iteration crashed",
        logging.DEBUG,
        "asyncua logs each failed publish of a lost session; the OPC UA source logs the "
        "loss once and reconnects",
    ),
    _Noise(
        "asyncua.client",
        "was called but connection is closed",
        logging.DEBUG,
        "asyncua closing a session whose connection is already gone",
    ),
    _Noise(
        "apache_beam.runners",
        "",
        logging.DEBUG,
        "after a stop was asked for, bundles still running fail with the cancelled job "
        "and the worker's gRPC streams end: input they held was never acknowledged",
        when=_STOPPING.is_set,
    ),
    _Noise(
        "kafka.net",
        "Error receiving network data",
        logging.DEBUG,
        "kafka-python 3.0 closing a client while its I/O loop still reads the socket",
        when=_STOPPING.is_set,
    ),
    _Noise(
        "pipelines.prism",
        r"^(Bundle Failed\. \(error='pipeline canceled'\)|state request after bundle inactive)",
        logging.DEBUG,
        "Prism failing the bundles of the job it was asked to cancel",
        when=_STOPPING.is_set,
    ),
)

# kafka-python logs this at each metadata refresh while a topic does not
# exist (yet): the first time per topic is news, every retry after it is not.
_TOPIC_MISSING = "not found in cluster metadata"


class _NoiseFilter(logging.Filter):
    """Demotes `_NOISE` to its level; shows it only where that level is enabled."""

    def __init__(self) -> None:
        super().__init__()
        self._missing_topics: set[str] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        level = self._demoted_level(record)
        if level is None:
            return True
        record.levelno, record.levelname = level, logging.getLevelName(level)
        return logging.getLogger(record.name).isEnabledFor(level)

    def _demoted_level(self, record: logging.LogRecord) -> int | None:
        if record.name == "kafka.cluster" and _TOPIC_MISSING in str(record.msg):
            topic = str(record.args[0]) if isinstance(record.args, tuple) and record.args else ""
            with self._lock:
                repeated = topic in self._missing_topics
                self._missing_topics.add(topic)
            return logging.DEBUG if repeated else None
        for noise in _NOISE:
            if noise.matches(record):
                return noise.level
        return None


# ---------------------------------------------------------------- formats


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, thread, exc, extras."""

    _STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
        "message",
        "asctime",
    }

    def format(self, record: logging.LogRecord) -> str:
        seconds, millis = divmod(int(record.created * 1000), 1000)
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        return orjson.dumps(entry).decode()


# ---------------------------------------------------------------- set-up


def _from_env(name: str, allowed: tuple[str, ...]) -> str | None:
    # Before the config is loaded (and for commands without one), a valid
    # value from the environment already counts; `check-config` reports a bad one.
    value = os.environ.get(name, "").upper() if name == _ENV_LEVEL else os.environ.get(name)
    return value if value in allowed else None


def configure_logging(
    config: LoggingConfig | None = None,
    *,
    level: str | None = None,
    log_format: str | None = None,
    stream: IO[str] | None = None,
) -> None:
    """Sets up the process's logging; call again with the loaded config to refine it.

    Args:
      config: the `logging` section; None before a config is loaded (then
        `DI_LOGGING__LEVEL` and `DI_LOGGING__FORMAT` from the environment count).
      level: `--log-level`; beats the config and the environment.
      log_format: `--log-format` (`text` or `json`); beats them too.
      stream: where the lines go; default stderr.
    """
    if config is None:
        config = LoggingConfig(
            level=_from_env(_ENV_LEVEL, LOG_LEVELS) or DEFAULT_LEVEL,  # type: ignore[arg-type]
            format=_from_env(_ENV_FORMAT, ("text", "json")) or DEFAULT_FORMAT,  # type: ignore[arg-type]
        )
    root_level = logging.getLevelName(level or config.level)
    if not isinstance(sys.stderr, _StderrAfterStop):
        sys.stderr = _StderrAfterStop(sys.stderr)
    handler = logging.StreamHandler(stream or sys.stderr._stream)
    if (log_format or config.format) == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(_NoiseFilter())
    handler.addFilter(_SECRET_FILTER)
    handler._data_ingestion = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_data_ingestion", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(root_level)
    quiet = max(logging.WARNING, root_level)
    for library in _QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(quiet)
    for name, name_level in config.loggers.items():
        logging.getLogger(name).setLevel(name_level)
    _route_uncaught_exceptions()


class _StderrAfterStop:
    """sys.stderr, except that tracebacks a worker thread prints straight to it
    once a stop was asked for go to the log at DEBUG instead.

    Beam's SDK worker prints the traceback of a failed bundle to stderr before
    logging it; a bundle still running when the job is cancelled always fails.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._dropping = threading.local()

    def write(self, text: str) -> int:
        if _STOPPING.is_set() and threading.current_thread() is not threading.main_thread():
            if "Traceback (most recent call last)" in text:
                self._dropping.newline = True
                logging.getLogger("stderr").debug("%s", text.rstrip())
                return len(text)
            if text == "\n" and getattr(self._dropping, "newline", False):
                self._dropping.newline = False
                return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _route_uncaught_exceptions() -> None:
    """Uncaught exceptions go through logging too: masked, formatted, and quiet
    for a worker thread whose gRPC stream ends because a stop was asked for."""

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        level = logging.DEBUG if _STOPPING.is_set() else logging.ERROR
        logging.getLogger("threads").log(
            level,
            "thread %s ended with an error",
            name,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        )

    def process_hook(exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc_value, traceback)
            return
        logging.getLogger("data_ingestion").critical(
            "stopped by an error", exc_info=(exc_type, exc_value, traceback)
        )

    threading.excepthook = thread_hook
    sys.excepthook = process_hook
