"""`python setup.py` without a command reports what this machine has and lacks.

The report is run as a user runs it, `python setup.py` in a child process;
the PATH is narrowed to control which tools it can find.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_ingestion.environment import main

_REPO = Path(__file__).resolve().parents[2]


def _setup_py(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("JAVA_HOME", None)  # the tools are found on PATH only, as the test sets it
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "setup.py", *args],
        cwd=_REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _line(report: str, name: str) -> str:
    """The report line about `name` (`  <status> <name> <detail>`)."""
    (line,) = [
        line for line in report.splitlines() if re.match(rf"  \S+ +{re.escape(name)} ", line)
    ]
    return line


def _pinned() -> list[str]:
    lines = (_REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("==")[0].split("[")[0] for line in lines if "==" in line]


def test_it_reports_the_python_and_the_installed_version_of_each_requirement() -> None:
    result = _setup_py()
    python = ".".join(str(part) for part in sys.version_info[:3])
    assert _line(result.stdout, "python") == f"  ok       {'python':<26} {python}  {sys.executable}"
    assert len(_pinned()) > 10
    for name in _pinned():
        assert _line(result.stdout, name).split()[:3] == [
            "ok",
            name,
            importlib.metadata.version(name),
        ]
    ready = result.stdout.rstrip().endswith("Everything required is present.")
    assert result.returncode == (0 if ready else 1), result.stdout


def test_without_java_on_the_path_it_says_how_to_install_java_and_fails(tmp_path: Path) -> None:
    result = _setup_py(path=str(tmp_path))
    java = _line(result.stdout, "java")
    assert java.split()[0] == "missing"
    assert "install Java 17+ (apt-get install openjdk-17-jre-headless)" in java
    assert "install Maven 3.8+ (apt-get install maven)" in _line(result.stdout, "mvn")
    assert "java (missing)" in result.stdout.splitlines()[-1]
    assert result.returncode == 1


def test_a_tool_on_the_path_is_reported_with_its_version_and_place(tmp_path: Path) -> None:
    java = shutil.which("java")
    if java is None:
        pytest.skip("no java on this machine to put on the PATH")
    (tmp_path / "java").symlink_to(java)
    line = _line(_setup_py(path=str(tmp_path)).stdout, "java")
    assert line.split()[0] == "ok"
    assert re.fullmatch(rf"  ok +java +\d+(\.\d+)*  {re.escape(str(tmp_path / 'java'))}", line)


def test_an_invalid_config_fails_with_every_error_check_config_finds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "line-c.json"
    config.write_text(json.dumps({"kafka": {"linger_ms": "5"}, "pipelines": {}}))
    assert main(config) == 1
    report = capsys.readouterr().out
    assert _line(report, "line-c.json").split()[:3] == ["invalid", "line-c.json", "2"]
    assert 'kafka.linger_ms: must be an integer, got "5"' in report
    assert "pipelines: unknown key (did you mean 'pipeline'?)" in report
    assert "line-c.json (invalid)" in report.splitlines()[-1]


def test_with_a_command_it_is_setuptools() -> None:
    result = _setup_py("--version")
    assert (result.returncode, result.stdout.strip()) == (0, "0.1.0")
