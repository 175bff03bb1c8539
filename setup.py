"""Packaging for the glass-line ingestion system.

Also what Beam ships to remote workers with `--setup_file` (Flink): the
workers then import `connectors`, `transforms`, `pipelines`, `records` and
`typed_config`.

`python setup.py` without a command checks this machine instead (Python,
packages, Java, Maven, Go, Mosquitto, the config): `data_ingestion.environment`.
"""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent

if __name__ == "__main__" and len(sys.argv) == 1:
    # Without a command setuptools prints only a usage error: say what the machine lacks.
    from data_ingestion.environment import main

    sys.exit(main())

from setuptools import find_packages, setup  # noqa: E402 - not needed for the check above


def _requirements() -> list[str]:
    lines = (_HERE / "requirements.txt").read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


setup(
    name="glass-line-ingest",
    version="0.1.0",
    description="Glass plant data ingestion: OPC UA, Modbus, MQTT and MIK-1 into Kafka on Beam",
    python_requires=">=3.11",
    packages=find_packages(
        include=[
            "connectors*",
            "transforms*",
            "pipelines*",
            "data_ingestion*",
            "records*",
            "simulators*",
            "typed_config*",
        ]
    ),
    package_data={"data_ingestion": ["*.xml", "status_page/*", "flink_job_server_java/**/*.java"]},
    install_requires=_requirements(),
    entry_points={"console_scripts": ["glass-ingest=data_ingestion.cli:main"]},
)
