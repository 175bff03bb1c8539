"""The README's sample source configs are valid configs: the README is the contract."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipelines.config import parse_config

_README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
_SAMPLES = [
    block
    for block in re.findall(r"```json\n(.*?)```", _README, re.DOTALL)
    if block.lstrip().startswith('"sources"')
]


def test_the_readme_has_a_sample_for_each_built_connector() -> None:
    kinds = {next(iter(json.loads("{" + sample + "}")["sources"])) for sample in _SAMPLES}
    assert kinds == {"opcua", "modbus", "mqtt", "camera"}


@pytest.mark.parametrize("sample", _SAMPLES, ids=lambda sample: sample.split('"')[3])
def test_a_readme_sample_config_loads(sample: str) -> None:
    config = parse_config(json.loads("{" + sample + "}"))
    declared = config.sources.declared()
    assert len(declared) == 1 and declared[0][2].name
