"""Job templates: a parameterised config, checked, rendered and submitted.

A template is a directory (`pipelines/templates/<name>/`) with two files:

- `metadata.json`, shaped like a Dataflow Flex Template's: `name`,
  `description` and `parameters`, each with `name`, `label`, `helpText`,
  `regexes` (the value must match every one in full), `isOptional` and, for
  an optional parameter, `defaultValue`;
- `config.json`, the pipeline config it renders: a normal
  `data_ingestion_config.json` whose string values may hold `{{ name }}`
  placeholders. A string that is one placeholder alone takes the type the
  config key wants (`"port": "{{ mqtt_port }}"` becomes the number 1883,
  `"enabled": "{{ features_enabled }}"` the boolean); a placeholder inside a
  longer string is replaced as text (`"{{ topic_prefix }}.readings"`). Keys
  are never rendered, and `${VAR}` references are left for the config loader,
  so secrets still come from the environment.

Checking lists every problem at once, before anything renders: unknown
parameters (with a suggestion), missing required ones, values that do not
match a regex, `--param` items that are not `KEY=VALUE`. The rendered config
is then validated by the same loader as `run` (`DataIngestionSetup`), which
lists every config error by path.

`python -m data_ingestion submit` writes the rendered config to a file (it
prints the path) and runs it with `python -m data_ingestion run`'s own code;
`--emit-jar PATH` instead has Beam's Flink job server write an executable jar
(`--output_executable_path`), which `flink run PATH` starts on any Flink 1.19
session cluster with the Python worker pool beside its TaskManagers.

Example::

    template = load_template("container_line")
    values = check_params(template, ["kafka_bootstrap_servers=10.0.0.5:9092"])
    config = render(template.config, values)      # a dict, ready for json.dump

    python -m data_ingestion submit --template container_line \\
        --param kafka_bootstrap_servers=10.0.0.5:9092 --param line_name=line-c2 --dry-run
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from data_ingestion.setup import coerce_text
from pipelines.config import DataIngestionConfig
from typed_config import ConfigError

__all__ = [
    "TEMPLATES_DIR",
    "Parameter",
    "Template",
    "TemplateError",
    "check_params",
    "emit_jar",
    "load_template",
    "render",
    "run_argv",
    "submit",
]

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "pipelines" / "templates"
_METADATA_FILE = "metadata.json"
_CONFIG_FILE = "config.json"
_DEFAULT_RENDERED_DIR = Path(".state") / "templates"
_RUNNERS = ("PrismRunner", "FlinkRunner")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FLINK_MASTER = re.compile(r"[A-Za-z0-9.-]+:[0-9]{1,5}")
_METADATA_KEYS = frozenset({"name", "description", "parameters", "streaming"})
_PARAMETER_KEYS = frozenset(
    {"name", "label", "helpText", "regexes", "isOptional", "defaultValue", "paramType"}
)

Segment = str | int


class TemplateError(ConfigError):
    """A template that cannot be used as given; `errors` holds every problem, one a line."""


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One template parameter, as `metadata.json` declares it."""

    name: str
    label: str
    help_text: str
    regexes: tuple[str, ...] = ()
    optional: bool = False
    default: str | None = None

    def problems(self, value: str) -> list[str]:
        """Why `value` is not acceptable (empty if it is)."""
        return [
            f"param {self.name}: {value!r} does not match {regex}; expected: {self.help_text}"
            for regex in self.regexes
            if re.fullmatch(regex, value) is None
        ]


@dataclasses.dataclass(frozen=True)
class Template:
    """A loaded template: its metadata and the config it renders."""

    name: str
    description: str
    directory: Path
    parameters: tuple[Parameter, ...]
    config: dict[str, Any]

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)


# ---------------------------------------------------------------- loading


def _resolve(name_or_dir: str | Path) -> Path:
    """A template's directory: a path to one, else `pipelines/templates/<name>`."""
    path = Path(name_or_dir)
    if (path / _METADATA_FILE).is_file():
        return path
    if _PARAMETER_NAME.fullmatch(str(name_or_dir)) and (TEMPLATES_DIR / path).is_dir():
        return TEMPLATES_DIR / path
    known = sorted(p.name for p in TEMPLATES_DIR.iterdir() if (p / _METADATA_FILE).is_file())
    raise TemplateError(
        f"template {str(name_or_dir)!r}: neither a directory with {_METADATA_FILE} nor one "
        f"of the templates in {TEMPLATES_DIR} ({', '.join(known)})"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TemplateError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise TemplateError(
            f"{path}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None


def _parameter(item: object, where: str, errors: list[str]) -> Parameter | None:
    """One `parameters[i]` entry; appends what is wrong with it to `errors`."""
    if not isinstance(item, dict):
        errors.append(f"{where}: must be an object with name, label, helpText")
        return None
    found = len(errors)
    for key in sorted(set(item) - _PARAMETER_KEYS):
        errors.append(f"{where}.{key}: unknown key{_suggestion(key, _PARAMETER_KEYS)}")
    for key in ("name", "label", "helpText"):
        if not isinstance(item.get(key), str) or not item[key]:
            errors.append(f"{where}.{key}: required, a non-empty string")
    name = item.get("name")
    if isinstance(name, str) and name and not _PARAMETER_NAME.fullmatch(name):
        errors.append(f"{where}.name: {name!r} must be letters, digits and '_' (e.g. mqtt_port)")
    regexes = item.get("regexes", [])
    if not isinstance(regexes, list) or not all(isinstance(r, str) for r in regexes):
        errors.append(f"{where}.regexes: must be a list of strings")
        regexes = []
    for index, regex in enumerate(regexes):
        try:
            re.compile(regex)
        except re.error as err:
            errors.append(f"{where}.regexes[{index}]: {regex!r} is not a regex: {err}")
    optional = item.get("isOptional", False)
    if not isinstance(optional, bool):
        errors.append(f"{where}.isOptional: must be true or false, got {optional!r}")
    default = item.get("defaultValue")
    if default is not None and not isinstance(default, str):
        errors.append(f"{where}.defaultValue: must be a string, got {default!r}")
    if len(errors) > found:
        return None
    parameter = Parameter(
        str(name), item["label"], item["helpText"], tuple(regexes), optional, default
    )  # fmt: skip
    if default is not None:
        errors.extend(f"{where}.defaultValue: {p}" for p in parameter.problems(default))
    return parameter


def _placeholders(node: object) -> set[str]:
    """Names of every `{{ name }}` in the string values below `node`."""
    if isinstance(node, dict):
        return set().union(*(_placeholders(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_placeholders(value) for value in node))
    if isinstance(node, str):
        return set(_PLACEHOLDER.findall(node))
    return set()


def _consistency(parameters: Sequence[Parameter], config: object, where: Path) -> list[str]:
    """What the metadata and the config disagree on."""
    declared = [p.name for p in parameters]
    used = _placeholders(config)
    errors = [f"{where}: parameter {n!r} is declared twice" for n in sorted(set(declared))
              if declared.count(n) > 1]  # fmt: skip
    errors += [
        f"{where / _CONFIG_FILE}: {{{{ {name} }}}} names no parameter of {_METADATA_FILE}"
        f"{_suggestion(name, declared)}"
        for name in sorted(used - set(declared))
    ]
    errors += [
        f"{where / _METADATA_FILE}: parameter {name!r} is used nowhere in {_CONFIG_FILE}"
        for name in declared
        if name not in used
    ]
    errors += [
        f"{where / _METADATA_FILE}: parameter {p.name!r} is optional but has no defaultValue"
        for p in parameters
        if p.optional and p.default is None
    ]
    return errors


def load_template(name_or_dir: str | Path) -> Template:
    """Loads a template by name (`container_line`) or directory; raises `TemplateError`."""
    directory = _resolve(name_or_dir)
    metadata = _read_json(directory / _METADATA_FILE)
    config = _read_json(directory / _CONFIG_FILE)
    where = directory / _METADATA_FILE
    if not isinstance(metadata, dict):
        raise TemplateError(f"{where}: must hold a JSON object")
    if not isinstance(config, dict):
        raise TemplateError(f"{directory / _CONFIG_FILE}: must hold a JSON object")
    errors = [
        f"{where}: {key}: unknown key{_suggestion(key, _METADATA_KEYS)}"
        for key in sorted(set(metadata) - _METADATA_KEYS)
    ]
    for key in ("name", "description"):
        if not isinstance(metadata.get(key), str) or not metadata[key]:
            errors.append(f"{where}: {key}: required, a non-empty string")
    items = metadata.get("parameters", [])
    if not isinstance(items, list):
        errors.append(f"{where}: parameters: must be a list")
        items = []
    parameters = [
        _parameter(item, f"{where}: parameters[{index}]", errors)
        for index, item in enumerate(items)
    ]
    valid = [p for p in parameters if p is not None]
    if len(valid) == len(parameters):
        errors += _consistency(valid, config, directory)
    if errors:
        raise TemplateError(errors)
    return Template(metadata["name"], metadata["description"], directory, tuple(valid), config)


# ---------------------------------------------------------------- parameters


def _suggestion(name: str, known: Sequence[str] | frozenset[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_params(template: Template, items: Sequence[str]) -> dict[str, str]:
    """Every parameter's value: the `KEY=VALUE` items given, else defaults.

    Raises `TemplateError` listing every problem: items that are not
    `KEY=VALUE`, keys given twice, unknown keys, required parameters not
    given, values that do not match a regex.
    """
    errors: list[str] = []
    given: dict[str, str] = {}
    names = [p.name for p in template.parameters]
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            errors.append(f"--param {item!r}: expected KEY=VALUE, e.g. mqtt_port=1883")
        elif key in given:
            errors.append(f"param {key}: given twice ({given[key]!r} and {value!r})")
        elif template.parameter(key) is None:
            errors.append(
                f"param {key}: template {template.directory.name} has no such parameter"
                f"{_suggestion(key, names)}"
            )
        else:
            given[key] = value
    values: dict[str, str] = {}
    for parameter in template.parameters:
        chosen = given.get(parameter.name, parameter.default)
        if chosen is None:
            errors.append(
                f"param {parameter.name}: required ({parameter.label}: {parameter.help_text})"
            )
            continue
        errors += parameter.problems(chosen)
        values[parameter.name] = chosen
    if errors:
        raise TemplateError(errors)
    return values


# ---------------------------------------------------------------- rendering


def _render_node(node: object, segments: list[Segment], values: Mapping[str, str]) -> object:
    if isinstance(node, dict):
        return {k: _render_node(v, [*segments, k], values) for k, v in node.items()}
    if isinstance(node, list):
        return [_render_node(v, [*segments, i], values) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node
    whole = _PLACEHOLDER.fullmatch(node)
    if whole is not None:
        return coerce_text(values[whole.group(1)], segments)
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], node)


def render(config: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """`config` with every `{{ name }}` replaced from `values` (see the module docstring).

    `values` must name every placeholder (`check_params` gives them all).
    """
    rendered = _render_node(dict(config), [], values)
    assert isinstance(rendered, dict)
    return rendered


# ---------------------------------------------------------------- submitting


def _default_rendered_path(template: Template) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return _DEFAULT_RENDERED_DIR / f"{template.directory.name}-{stamp}.json"


def _validate(path: Path) -> DataIngestionConfig:
    """The rendered file, loaded as `run` loads it; raises `ConfigError` listing every error."""
    from data_ingestion.setup import DataIngestionSetup

    return DataIngestionSetup(path).load_config()


def run_argv(
    config_path: Path, runner: str | None, flink_master: str | None, beam_args: Sequence[str]
) -> list[str]:
    """The `python -m data_ingestion` arguments that run a rendered config."""
    argv = ["run", "--config", str(config_path)]
    if runner is not None:
        argv += ["--runner", runner]
    if flink_master is not None:
        argv.append(f"--flink_master={flink_master}")
    return [*argv, *beam_args]


def _jar_args(jar_path: Path, beam_args: Sequence[str]) -> list[str]:
    """Beam options that make the Flink job server write an executable jar.

    `[auto]` keeps Beam off the uber-jar upload (which ignores
    `--output_executable_path`) and is what the jar should find at its launch:
    the cluster `flink run` submits it to. Its Python workers come from the
    worker pool beside each TaskManager, as for a submitted job.
    """
    args = [
        *beam_args,
        "--runner=FlinkRunner",
        "--flink_master=[auto]",
        f"--output_executable_path={jar_path.resolve()}",
    ]
    if not any(arg.startswith("--environment_type") for arg in beam_args):
        args.append("--environment_type=EXTERNAL")
    return args


def emit_jar(config: DataIngestionConfig, jar_path: Path, beam_args: Sequence[str]) -> Path:
    """Writes the pipeline of `config` as an executable Flink jar at `jar_path`.

    Beam starts its Java Flink job server, which writes the jar (the
    pipeline, its options and the staged Python package) instead of running
    the job. Nothing connects to a source or to Kafka.
    """
    import apache_beam as beam

    from pipelines.ingest import build_ingest
    from pipelines.options import pipeline_options

    jar_path.parent.mkdir(parents=True, exist_ok=True)
    pipeline = beam.Pipeline(options=pipeline_options(config, _jar_args(jar_path, beam_args)))
    build_ingest(pipeline, config)
    state = pipeline.run().wait_until_finish()
    if not jar_path.is_file():
        raise RuntimeError(f"the Flink job server ended {state} without writing {jar_path}")
    return jar_path


def _option_errors(runner: str, flink_master: str | None, jar: Path | None) -> list[str]:
    errors = []
    if flink_master is not None and not _FLINK_MASTER.fullmatch(flink_master):
        errors.append(f"--flink-master {flink_master!r}: expected HOST:PORT, e.g. 127.0.0.1:8082")
    if flink_master is not None and runner != "FlinkRunner":
        errors.append(f"--flink-master: only with --runner FlinkRunner (the runner is {runner})")
    if jar is not None and runner != "FlinkRunner":
        errors.append(f"--emit-jar: only with --runner FlinkRunner (the runner is {runner})")
    if jar is not None and flink_master is not None:
        errors.append(
            "--emit-jar with --flink-master: the jar runs on the cluster `flink run` submits "
            "it to; leave --flink-master out"
        )
    return errors


def _print_errors(heading: str, errors: Sequence[str]) -> None:
    print(heading, file=sys.stderr)
    for line in errors:
        print(f"  {line}", file=sys.stderr)


def submit(
    template_name: str,
    params: Sequence[str],
    *,
    run: Callable[[list[str]], int],
    runner: str | None = None,
    flink_master: str | None = None,
    rendered_config: Path | None = None,
    dry_run: bool = False,
    jar_path: Path | None = None,
    beam_args: Sequence[str] = (),
) -> int:
    """`python -m data_ingestion submit`: check, render, validate, then run or write a jar.

    `run` is the CLI's own entry point, called with the `run` arguments.
    Returns the exit code: 2 when the template, a parameter or the rendered
    config is invalid (every problem printed), else what `run` returns.
    """
    try:
        template = load_template(template_name)
        values = check_params(template, params)
    except TemplateError as err:
        _print_errors(f"template {template_name}: nothing submitted:", err.errors)
        return 2
    config = render(template.config, values)
    chosen = runner or str(config.get("pipeline", {}).get("runner", _RUNNERS[0]))
    errors = _option_errors(chosen, flink_master, jar_path)
    if errors:
        _print_errors(f"template {template_name}: nothing submitted:", errors)
        return 2
    path = rendered_config or _default_rendered_path(template)
    argv = run_argv(path, runner, flink_master, beam_args)
    if dry_run:
        print(json.dumps(config, indent=2, ensure_ascii=False))
        action = (
            f"would write an executable Flink jar to {jar_path} with Beam options "
            f"{shlex.join(_jar_args(jar_path, beam_args))}"
            if jar_path is not None
            else f"would run: {shlex.join(['python', '-m', 'data_ingestion', *argv])}"
        )
        print(f"dry run: would write the config above to {path}; {action}", file=sys.stderr)
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    try:
        loaded = _validate(path)
    except ConfigError as err:
        _print_errors(f"{path}: the rendered config is invalid, nothing submitted:", err.errors)
        return 2
    print(f"template {template.directory.name}: rendered config {path}", file=sys.stderr)
    if jar_path is not None:
        print(f"executable Flink jar: {emit_jar(loaded, jar_path, beam_args)}", file=sys.stderr)
        return 0
    print(f"running: python -m data_ingestion {shlex.join(argv)}", file=sys.stderr)
    return run(argv)
