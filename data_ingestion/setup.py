"""Load the ingestion config: file, environment, `.env`, overrides; and `check-config`.

Precedence, lowest first:

1. the defaults in the config classes (`pipelines.config.DataIngestionConfig`);
2. the JSON file (`data_ingestion_config.json`); `${VAR}` and
   `${VAR:-default}` in its strings expand from the environment, so secrets
   stay out of it (`$${VAR}` keeps a literal `${VAR}`);
3. `DI_` variables from the environment and from `.env` (the environment wins):
   `__` separates keys and numbers index lists, so
   `DI_KAFKA__BOOTSTRAP_SERVERS=10.0.0.5:9092` sets `kafka.bootstrap_servers`
   and `DI_SOURCES__MQTT__0__PORT=1884` sets `sources.mqtt[0].port`. A value is
   read as the field's type: text for string fields, JSON otherwise (`1884`,
   `true`, `["plant/#"]`), text when it is not JSON. `DI_` names without `__`
   that name no section (`DI_TEST_KAFKA`) belong to other tools and are left alone;
4. overrides (the command line's `--set kafka.linger_ms=10`), dotted paths with
   optional indexes: `sources.mqtt.0.port`, `sources.mqtt[0].port`,
   `validation.rules["furnace.crown_temp_z2"].max`.

Every problem is reported at once, by path; one set from the environment or an
override says so: `kafka.linger_ms: must be >= 0, got -1 (set by DI_KAFKA__LINGER_MS)`.

Example::

    from data_ingestion.setup import DataIngestionSetup

    config = DataIngestionSetup("data_ingestion_config.json",
                                overrides={"kafka.linger_ms": "10"}).load_config()
    config.kafka.linger_ms          # 10

    python -m data_ingestion check-config data_ingestion_config.json
    OK: data_ingestion_config.json (1 source: mqtt iot)
"""

from __future__ import annotations

import json
import os
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

from pipelines.config import DataIngestionConfig, parse_config
from typed_config import ConfigError, join_path, type_at
from typed_config.schema import json_schema

__all__ = ["DataIngestionSetup", "check_config", "coerce_text", "config_schema", "parse_dotenv"]

_DEFAULT_CONFIG_FILE = "data_ingestion_config.json"
_DEFAULT_DOTENV_FILE = ".env"
_ENV_PREFIX = "DI_"
_ENV_SEPARATOR = "__"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
# `$${NAME}` is an escaped literal; `${NAME}` and `${NAME:-default}` expand.
_REFERENCE = re.compile(r"(\$?)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PATH_TOKEN = re.compile(r'\.?([^.\[\]"]+)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')
_MISSING: Any = object()

Segment = str | int


# ---------------------------------------------------------------- pure helpers


def parse_dotenv(text: str, source: str = _DEFAULT_DOTENV_FILE) -> dict[str, str]:
    """`NAME=value` lines of a `.env` file; `#` comments, `export` and quotes allowed."""
    values: dict[str, str] = {}
    errors = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        value = value.strip()
        if not sep or not _ENV_NAME.fullmatch(name):
            # The line is not echoed: it may hold a secret.
            errors.append(f"{source}:{number}: expected NAME=value")
            continue
        if value[:1] in ("'", '"'):
            end = value.find(value[0], 1)
            if end == -1 or value[end + 1 :].strip()[:1] not in ("", "#"):
                errors.append(f"{source}:{number}: {name}: unterminated {value[0]} quote")
                continue
            value = value[1:end]
        else:
            value = value.split(" #", 1)[0].rstrip()
        values[name] = value
    if errors:
        raise ConfigError(errors)
    return values


def _path_text(segments: Sequence[Segment]) -> str:
    text = ""
    for segment in segments:
        text = join_path(text, segment)
    return text


def _parse_path(text: str) -> list[Segment] | None:
    """Segments of `sources.mqtt[0].port` / `sources.mqtt.0.port`; None if malformed."""
    segments: list[Segment] = []
    position = 0
    while position < len(text):
        match = _PATH_TOKEN.match(text, position)
        if match is None or (position == 0 and text.startswith(".")):
            return None
        name, index, quoted = match.groups()
        if name is not None:
            segments.append(int(name) if name.isdigit() else name)
        elif index is not None:
            segments.append(int(index))
        else:
            segments.append(json.loads(quoted))
        position = match.end()
    return segments or None


def _is_text_type(hint: object) -> bool:
    """True if the field holds text, so environment values are taken verbatim."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    else:
        options = [hint]
    for option in options:
        if typing.get_origin(option) is Literal:
            if not all(isinstance(arg, str) for arg in typing.get_args(option)):
                return False
        elif option is not str:
            return False
    return True


def coerce_text(text: str, segments: Sequence[Segment]) -> object:
    """`text` as the value of the config key at `segments`: verbatim where the key
    holds text, else parsed as JSON (1883, true, ["a/#"]) when it parses."""
    hint = type_at(DataIngestionConfig, segments)
    if hint is not None and hint is not Any and _is_text_type(hint):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _set_path(data: dict[str, Any], segments: Sequence[Segment], value: object) -> str | None:
    """Sets `value` at `segments`, creating objects and lists; an error line or None."""
    node: Any = data
    for depth, segment in enumerate(segments):
        last = depth == len(segments) - 1
        where = _path_text(segments[: depth + 1])
        if isinstance(node, list):
            if not isinstance(segment, int):
                return (
                    f"{where}: {_path_text(segments[:depth]) or 'config'} is a list: use an index"
                )
            if segment > len(node):
                return (
                    f"{where}: index {segment} is past the end of "
                    f"{_path_text(segments[:depth])} (the next new item is [{len(node)}])"
                )
            if segment == len(node):
                node.append(_MISSING)
            key: Any = segment
        else:
            key = str(segment)
        if last:
            node[key] = value
            return None
        child = node.get(key, _MISSING) if isinstance(node, dict) else node[key]
        if child is _MISSING:
            child = [] if isinstance(segments[depth + 1], int) else {}
            node[key] = child
        elif not isinstance(child, (dict, list)):
            return f"{where}: is {json.dumps(child)}, so {_path_text(segments)} cannot be set"
        node = child
    return None


def _expand(
    node: object,
    segments: list[Segment],
    variables: Mapping[str, str],
    errors: list[str],
    origins: dict[str, str],
) -> object:
    """`node` with `${VAR}` references in its strings replaced from `variables`."""
    if isinstance(node, dict):
        return {
            key: _expand(value, [*segments, key], variables, errors, origins)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [
            _expand(value, [*segments, index], variables, errors, origins)
            for index, value in enumerate(node)
        ]
    if not isinstance(node, str) or "${" not in node:
        return node
    where = _path_text(segments)
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        escaped, name, default = match.groups()
        if escaped:
            return match.group(0)[1:]
        names.append(name)
        value = variables.get(name)
        if default is not None and not value:
            return default
        if value is None:
            errors.append(
                f"{where}: ${{{name}}} is not set (set it in the environment or .env, "
                f"or write ${{{name}:-default}})"
            )
            return match.group(0)
        return value

    expanded = _REFERENCE.sub(replace, node)
    if not names:
        return expanded
    origins[where] = ", ".join(f"${{{name}}}" for name in names)
    whole = _REFERENCE.fullmatch(node)
    # A lone reference may stand for a number or list: "port": "${MQTT_PORT:-1883}".
    if whole is not None and not whole.group(1):
        return coerce_text(expanded, segments)
    return expanded


def _env_settings(variables: Mapping[str, str]) -> list[tuple[list[Segment], str, str]]:
    """(segments, text, variable name) of every `DI_` setting, lists in index order."""
    sections = {name for name in typing.get_type_hints(DataIngestionConfig)}
    settings = []
    for name, text in variables.items():
        if not name.startswith(_ENV_PREFIX):
            continue
        parts = name[len(_ENV_PREFIX) :].split(_ENV_SEPARATOR)
        if len(parts) == 1 and parts[0].lower() not in sections:
            continue
        segments: list[Segment] = [int(part) if part.isdigit() else part.lower() for part in parts]
        settings.append((segments, text, name))

    def order(item: tuple[list[Segment], str, str]) -> list[tuple[int, int, str]]:
        return [(0, s, "") if isinstance(s, int) else (1, 0, s) for s in item[0]]

    return sorted(settings, key=order)


def _related(path: str, other: str) -> bool:
    """True if `other` is `path` or below it."""
    return other == path or other.startswith((f"{path}.", f"{path}["))


def _annotate(errors: list[str], origins: Mapping[str, str]) -> list[str]:
    """Appends `(set by DI_...)` to errors about a value that did not come from the file.

    The nearest origin at or above the error's path wins; an error above every
    origin (an unknown section a setting created) names the settings below it.
    """
    annotated = []
    for error in errors:
        path = error.split(": ", 1)[0]
        above = [origin for origin in origins if _related(origin, path)]
        below = [origin for origin in origins if _related(path, origin)]
        if above:
            error += f" (set by {origins[max(above, key=len)]})"
        elif below:
            error += f" (set by {', '.join(origins[origin] for origin in below)})"
        annotated.append(error)
    return annotated


# ---------------------------------------------------------------- public API


class DataIngestionSetup:
    """Loads and validates one ingestion config.

    Args:
      config_path: the JSON file; None for `data_ingestion_config.json` in the
        working directory if there is one, else the built-in defaults.
      environ: the environment for `DI_` settings and `${VAR}`; default `os.environ`.
      overrides: dotted path -> value, applied last; strings are read like
        environment values (the command line's `--set` passes text).
      dotenv_path: a `.env` file; default `.env` in the working directory if present.
    """

    def __init__(
        self,
        config_path: str | Path | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, object] | None = None,
        dotenv_path: Path | None = None,
    ) -> None:
        if config_path is None and Path(_DEFAULT_CONFIG_FILE).is_file():
            config_path = _DEFAULT_CONFIG_FILE
        self.config_path = config_path
        self._environ = dict(os.environ if environ is None else environ)
        self._overrides = dict(overrides or {})
        if dotenv_path is None and Path(_DEFAULT_DOTENV_FILE).is_file():
            dotenv_path = Path(_DEFAULT_DOTENV_FILE)
        self.dotenv_path = dotenv_path

    def _read_dotenv(self) -> dict[str, str]:
        if self.dotenv_path is None:
            return {}
        try:
            text = self.dotenv_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{self.dotenv_path}: no such file (given as dotenv_path)") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{self.dotenv_path}: cannot read: {err}") from err
        return parse_dotenv(text, str(self.dotenv_path))

    def _read_file(self) -> dict[str, Any]:
        if self.config_path is None:
            return {}
        name = str(self.config_path)
        try:
            text = Path(self.config_path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{name}: no such file") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{name}: cannot read: {err}") from err
        duplicates: list[str] = []

        def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            seen: dict[str, Any] = {}
            for key, value in pairs:
                if key in seen:
                    duplicates.append(key)
                seen[key] = value
            return seen

        try:
            data = json.loads(text, object_pairs_hook=no_duplicates)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{name}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}"
            ) from None
        if duplicates:
            raise ConfigError(
                [f"{name}: key {key!r} appears twice in one object" for key in duplicates]
            )
        if not isinstance(data, dict):
            raise ConfigError(f"{name}: must hold a JSON object {{...}}, got {type(data).__name__}")
        return data

    def load_config(self) -> DataIngestionConfig:
        """The effective config; raises `ConfigError` listing every problem."""
        dotenv = self._read_dotenv()
        variables = {**dotenv, **self._environ}
        errors: list[str] = []
        origins: dict[str, str] = {}
        data: Any = _expand(self._read_file(), [], variables, errors, origins)
        unexpanded = [(error.split(": ", 1)[0], error) for error in errors]
        errors = []

        for segments, text, name in _env_settings(variables):
            label = name if name in self._environ else f"{name} in {self.dotenv_path}"
            problem = _set_path(data, segments, coerce_text(text, segments))
            if problem is not None:
                errors.append(f"{problem} (set by {label})")
            origins[_path_text(segments)] = label
        for key, value in self._overrides.items():
            path = _parse_path(key)
            if path is None:
                errors.append(
                    f"override {key!r}: not a config path "
                    "(e.g. kafka.bootstrap_servers or sources.mqtt[0].port)"
                )
                continue
            if isinstance(value, str):
                value = coerce_text(value, path)
            problem = _set_path(data, path, value)
            if problem is not None:
                errors.append(f"{problem} (set by override {key})")
            origins[_path_text(path)] = f"override {key}"

        # A missing ${VAR} matters only if nothing later replaced its value.
        overridden = [path for path, origin in origins.items() if not origin.startswith("${")]
        missing = [
            (path, error)
            for path, error in unexpanded
            if not any(_related(other, path) for other in overridden)
        ]
        errors[:0] = [error for _, error in missing]
        try:
            config = parse_config(data)
        except ConfigError as err:
            # The missing ${VAR} is the cause; the type error it also causes is noise.
            noise = {path for path, _ in missing}
            found = [error for error in err.errors if error.split(": ", 1)[0] not in noise]
            errors += _annotate(found, origins)
            raise ConfigError(errors) from None
        if errors:
            raise ConfigError(errors)
        return config


def check_config(
    path: str,
    *,
    environ: Mapping[str, str] | None = None,
    dotenv_path: Path | None = None,
) -> int:
    """`check-config`: prints `OK: ...` and returns 0, or every error to stderr and 1."""
    try:
        config = DataIngestionSetup(path, environ=environ, dotenv_path=dotenv_path).load_config()
    except ConfigError as err:
        for line in err.errors:
            print(line, file=sys.stderr)
        return 1
    declared = config.sources.declared()
    summary = f"{len(declared)} source{'' if len(declared) == 1 else 's'}"
    if declared:
        summary += ": " + ", ".join(f"{kind} {source.name}" for kind, _, source in declared)
    print(f"OK: {path} ({summary})")
    return 0


# A lone "${VAR}" (expanded by `_expand`) may stand for a value of any type.
_STAND_IN = {
    "type": "string",
    "pattern": r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$",
    "description": "${VAR} or ${VAR:-default}: the value of an environment (or .env) "
    "variable, read as this key's type (a number, true, a JSON list...).",
}


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (`python -m data_ingestion config-schema`)."""
    return json_schema(
        DataIngestionConfig,
        title="data_ingestion_config.json",
        description="The glass-line ingestion config. Generated from the config classes by "
        "`python -m data_ingestion config-schema`; `check-config` has the last word (ranges "
        "and cross-field rules are checked there, not here).",
        stand_in=_STAND_IN,
    )
