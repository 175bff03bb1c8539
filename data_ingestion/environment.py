"""`python setup.py` without a command: is this machine ready to run the project?

It checks, and prints, what a fresh checkout needs: the Python version, each
package of `requirements.txt` at its pinned version (and, as warnings, those of
`requirements-dev.txt`), the tools the local stack runs on (Java for the Kafka
broker, Maven for its jars, Go to build Prism, Mosquitto) and
`data_ingestion_config.json`, through `check-config` itself. Every line says
what was found where, or what is missing and how to get it; the exit code is 1
if something required is missing or the config is invalid. With a command
(`python setup.py sdist`, `pip install .`) `setup.py` is plain setuptools.

Only the standard library is imported here, so the check runs before
`pip install -r requirements.txt` too; the config is checked in a child
process, which needs the packages.

Example::

    $ python setup.py
    Checking this machine for glass-line-ingest (/work/main)

    Python
      ok       python                 3.11.7  /work/main/.venv/bin/python
    Packages (requirements.txt)
      ok       apache-beam            2.77.0
      missing  pyserial               not installed: python -m pip install -r requirements.txt
    ...
    Tools of the local stack
      missing  java                   not found: install Java 17+ (apt-get install ...)
    ...
    Not ready: pyserial (missing), java (missing). Fix them as shown, then run
    `python setup.py` again.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

__all__ = ["Finding", "Status", "check_environment", "main"]

_REPO = Path(__file__).resolve().parents[1]
_DEFAULT_CONFIG = _REPO / "data_ingestion_config.json"
# setup.py's python_requires.
_MIN_PYTHON = (3, 11)
_MIN_JAVA = (17,)
_MIN_MAVEN = (3, 8)
_MIN_GO = (1, 22)
# A JVM (mvn -v) starts in about a second; a hung tool must not hang the check.
_TOOL_TIMEOUT_SECONDS = 60.0
_NAME_WIDTH = 26

_REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?:==\s*(\S+))?")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# ok: present; warning: usable, but not as pinned or not needed to run;
# missing: required and absent (or too old); invalid: the config has errors.
Status = Literal["ok", "warning", "missing", "invalid"]
_FAILING: tuple[Status, ...] = ("missing", "invalid")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One line of the report: a name, its status, and what was found or how to get it."""

    name: str
    status: Status
    detail: str


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def _python() -> Finding:
    found = _dotted(tuple(sys.version_info[:3]))
    if sys.version_info[:2] >= _MIN_PYTHON:
        return Finding("python", "ok", f"{found}  {sys.executable}")
    wanted = _dotted(_MIN_PYTHON)
    return Finding(
        "python",
        "missing",
        f"{found} is too old, {wanted}+ needed: apt-get install python{wanted} "
        f"python{wanted}-venv, then python{wanted} -m venv .venv",
    )


def _packages(requirements: Path, *, required: bool) -> list[Finding]:
    """One finding per requirement line (`name[extra]==version`) of `requirements`."""
    install = f"{Path(sys.executable).name} -m pip install -r {requirements.name}"
    absent: Status = "missing" if required else "warning"
    findings = []
    for raw in requirements.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue  # a comment, or an option such as `-r requirements.txt`
        match = _REQUIREMENT.match(line)
        if match is None:
            continue
        name, pinned = match.groups()
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            findings.append(Finding(name, absent, f"not installed: {install}"))
            continue
        if pinned is not None and installed != pinned:
            detail = f"{installed}, but {requirements.name} pins {pinned}: {install}"
            findings.append(Finding(name, "warning", detail))
        else:
            findings.append(Finding(name, "ok", installed))
    return findings


def _run_version(argv: list[str]) -> str | None:
    """Everything `argv` prints (stdout and stderr), or None if it cannot be run."""
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=_TOOL_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return _ANSI.sub("", result.stdout + result.stderr)


def _tool(
    name: str,
    path: str | None,
    version_argv: list[str],
    parse: Callable[[str], tuple[int, ...] | None],
    minimum: tuple[int, ...] | None,
    fix: str,
) -> Finding:
    """`name` at `path` (None: not found), its version checked against `minimum`."""
    if path is None or not Path(path).is_file():
        return Finding(name, "missing", f"not found: {fix}")
    output = _run_version([path, *version_argv])
    version = None if output is None else parse(output)
    if version is None:
        shown = "no answer" if output is None else (output.strip().splitlines() or ["nothing"])[0]
        detail = f"{path}: `{name} {' '.join(version_argv)}` gave no version ({shown})"
        return Finding(name, "warning", detail)
    if minimum is not None and version < minimum:
        detail = f"{_dotted(version)} at {path} is too old, {_dotted(minimum)}+ needed: {fix}"
        return Finding(name, "missing", detail)
    return Finding(name, "ok", f"{_dotted(version)}  {path}")


def _java_version(output: str) -> tuple[int, ...] | None:
    match = re.search(r'version "([^"]+)"', output)
    if match is None:
        return None
    version = _version_tuple(match.group(1))
    # Java 8 and older call themselves 1.8.
    return version[1:] if version[:1] == (1,) else version


def _search(pattern: str) -> Callable[[str], tuple[int, ...] | None]:
    def parse(output: str) -> tuple[int, ...] | None:
        match = re.search(pattern, output)
        return None if match is None else _version_tuple(match.group(1))

    return parse


def _java_path() -> str | None:
    # As `stack up` finds it (data_ingestion.stack): JAVA_HOME first.
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java")


def _tools() -> list[Finding]:
    # The paths are looked up as data_ingestion.stack looks them up.
    go = shutil.which("go") or "/usr/local/go/bin/go"
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return [
        _tool(
            "java",
            _java_path(),
            ["-version"],
            _java_version,
            _MIN_JAVA,
            "install Java 17+ (apt-get install openjdk-17-jre-headless); "
            "the local Kafka broker runs on it",
        ),
        _tool(
            "mvn",
            shutil.which("mvn"),
            ["-v"],
            _search(r"Apache Maven (\S+)"),
            _MIN_MAVEN,
            "install Maven 3.8+ (apt-get install maven); `stack jars` fetches the Kafka jars",
        ),
        _tool(
            "go",
            go,
            ["version"],
            _search(r"go version go(\S+)"),
            _MIN_GO,
            "install Go 1.22+ from https://go.dev/dl/ into /usr/local/go (Debian's is too "
            "old); `stack prism` builds Prism with it",
        ),
        _tool(
            "mosquitto",
            mosquitto,
            ["-h"],
            _search(r"mosquitto version (\S+)"),
            None,
            "apt-get install mosquitto (or `make system-deps`); the local MQTT broker",
        ),
    ]


def _config(path: Path, packages_present: bool) -> Finding:
    """`path` through `python -m data_ingestion check-config`, as a pipeline would load it."""
    if not path.is_file():
        return Finding(path.name, "missing", f"no such file: {path}")
    if not packages_present:
        return Finding(path.name, "missing", "not checked: install the packages above first")
    result = subprocess.run(
        [sys.executable, "-m", "data_ingestion", "check-config", _shown(path)],
        cwd=_REPO,  # relative paths in a config start at the working directory
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return Finding(path.name, "ok", result.stdout.strip())
    errors = result.stderr.strip().splitlines() or [f"check-config exited {result.returncode}"]
    indent = "\n" + " " * (_NAME_WIDTH + 13)
    detail = f'{len(errors)} error(s), fix them (README, "Configuration"):'
    return Finding(path.name, "invalid", detail + indent + indent.join(errors))


def _shown(path: Path) -> str:
    """`path` relative to the checkout when it is inside it."""
    path = path.resolve()
    return str(path.relative_to(_REPO)) if path.is_relative_to(_REPO) else str(path)


def check_environment(config: Path = _DEFAULT_CONFIG) -> list[tuple[str, list[Finding]]]:
    """(heading, findings) of every check, in report order."""
    packages = _packages(_REPO / "requirements.txt", required=True)
    present = all(finding.status != "missing" for finding in packages)
    return [
        ("Python", [_python()]),
        ("Packages (requirements.txt)", packages),
        (
            "Development packages (requirements-dev.txt: tests and lint)",
            [
                finding
                for finding in _packages(_REPO / "requirements-dev.txt", required=False)
                if finding.name not in {p.name for p in packages}
            ],
        ),
        ("Tools of the local stack (python -m data_ingestion stack up)", _tools()),
        ("Config", [_config(config, present)]),
    ]


def main(config: Path = _DEFAULT_CONFIG) -> int:
    """Prints the report; 1 if something required is missing or the config is invalid."""
    print(f"Checking this machine for glass-line-ingest ({_REPO})")
    print("(setuptools commands take arguments: python setup.py --help-commands)")
    failing = []
    for heading, findings in check_environment(config):
        print(f"\n{heading}")
        for finding in findings:
            print(f"  {finding.status:<8} {finding.name:<{_NAME_WIDTH}} {finding.detail}")
            if finding.status in _FAILING:
                failing.append(f"{finding.name} ({finding.status})")
    print()
    if failing:
        print(
            f"Not ready: {', '.join(failing)}. Fix them as shown, then run `python setup.py` again."
        )
        return 1
    print("Everything required is present.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
