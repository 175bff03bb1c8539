"""`python -m data_ingestion jobs`: what an operator sees when the cluster is not there,
and what `resume` hands to `run`."""

from __future__ import annotations

import argparse

import pytest

from data_ingestion.cli import main
from data_ingestion.jobs import resume_beam_args
from data_ingestion.stack import free_port


@pytest.mark.parametrize("action", [["list"], ["cancel", "abc"], ["stop", "abc"]])
def test_a_cluster_that_does_not_answer_is_named_with_how_to_start_one(
    action: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    master = f"127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["jobs", *action, "--flink-master", master]) == 2
    error = capsys.readouterr().err
    assert f"no Flink REST API at http://{master}" in error
    assert "python -m data_ingestion flink up" in error


def test_resume_runs_the_pipeline_from_the_savepoint_on_the_given_cluster() -> None:
    args = argparse.Namespace(flink_master="10.0.0.7:8081", savepoint="file:/sp/savepoint-1")
    assert resume_beam_args(args) == [
        "--flink_master=10.0.0.7:8081",
        "--savepoint_path=file:/sp/savepoint-1",
    ]
