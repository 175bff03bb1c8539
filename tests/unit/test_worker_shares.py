"""`run --workers N`: how sources are shared, what a worker runs, how answers merge."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from data_ingestion.monitoring import Monitor
from data_ingestion.status import format_status
from data_ingestion.worker_status import merge_metrics, merge_status
from data_ingestion.workers import Worker, parse_worker, share_of, worker_config
from pipelines.config import DataIngestionConfig, parse_config, to_dict
from typed_config import ConfigError


def _config(**extra: object) -> DataIngestionConfig:
    return parse_config(
        {
            "sources": {
                "mqtt": [{"name": "iot_a", "topics": ["a/#"]}, {"name": "iot_b", "topics": ["b/#"]}],
                "opcua": [{"name": "furnace", "endpoint": "opc.tcp://127.0.0.1:4840",
                           "nodes": [{"node_id": "i=1", "tag": "furnace.crown_temp_z1"}]}],
                "modbus": [{"name": "fh_bus", "host": "127.0.0.1", "units": [{"unit_id": 1,
                            "registers": [{"tag": "forehearth.zone1_temp", "address": 1}]}]}],
            },
            "monitoring": {"status_tags": ["furnace.crown_temp_z1"]},
            **extra,
        }
    )  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [("1/1", (1, 1)), ("2/3", (2, 3)), ("3/3", (3, 3))])
def test_parse_worker_reads_index_and_count(text: str, expected: tuple[int, int]) -> None:
    assert parse_worker(text) == expected


@pytest.mark.parametrize("text", ["0/2", "3/2", "2", "a/b", "1/0", ""])
def test_parse_worker_refuses_what_is_not_i_of_n(text: str) -> None:
    with pytest.raises(ValueError, match="expected I/N"):
        parse_worker(text)


def _names(config: DataIngestionConfig, index: int, count: int) -> list[str]:
    return [source.name for _, _, source in share_of(config, index, count).declared()]


def test_sources_are_dealt_round_robin_in_config_order() -> None:
    config = _config()
    assert _names(config, 1, 2) == ["iot_a", "furnace"]
    assert _names(config, 2, 2) == ["iot_b", "fh_bus"]
    assert _names(config, 1, 1) == ["iot_a", "iot_b", "furnace", "fh_bus"]


def _opcua(name: str, *tags: str) -> dict[str, object]:
    nodes = [{"node_id": f"s={tag}", "tag": tag} for tag in tags]
    return {"name": name, "endpoint": "opc.tcp://127.0.0.1:4840", "nodes": nodes}


def test_sources_feeding_one_glass_feature_share_a_worker() -> None:
    # Specific energy needs gas flow and pull rate; crown stability the crown and the
    # firing side: split over workers, neither would ever be computed.
    config = parse_config(
        {
            "sources": {
                "opcua": [
                    _opcua("combustion", "combustion.gas_flow"),
                    _opcua("batch_house", "batch.cullet_ratio"),
                    _opcua("furnace", "furnace.pull_rate", "furnace.firing_side"),
                    _opcua("crown_tcs", "furnace.crown_temp_z3"),
                    _opcua("lehr", "lehr_c.zone2_temp"),
                ]
            }
        }
    )
    assert _names(config, 1, 2) == ["combustion", "furnace", "crown_tcs"]
    assert _names(config, 2, 2) == ["batch_house", "lehr"]
    apart = parse_config({**to_dict(config), "features": {"enabled": False}})
    assert _names(apart, 1, 2) == ["combustion", "furnace", "lehr"]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_every_source_has_exactly_one_worker(count: int) -> None:
    config = _config()
    shares = [name for index in range(1, count + 1) for name in _names(config, index, count)]
    assert sorted(shares) == sorted(s.name for _, _, s in config.sources.declared())


def test_a_worker_keeps_its_sources_and_leaves_notifications_to_the_supervisor() -> None:
    config = _config(
        notifications={"webhooks": [{"name": "ops", "url": "https://ops.example/hook"}]}
    )
    worker = worker_config(config, 2, 2)
    assert [s.name for s in worker.sources.mqtt] == ["iot_b"]
    assert [s.name for s in worker.sources.modbus] == ["fh_bus"]
    assert worker.sources.opcua == ()
    assert worker.notifications.sinks() == []
    assert config.notifications.sinks() != []
    assert worker.kafka == config.kafka and worker.validation == config.validation


def _metrics(count: int) -> str:
    registry = CollectorRegistry()
    received = Counter("glass_received", "Readings received", ["source"], registry=registry)
    latency = Histogram("glass_latency_seconds", "Latency", buckets=(0.1, 1.0), registry=registry)
    received.labels(source="iot").inc(count)
    latency.observe(0.5)
    return generate_latest(registry).decode()


def test_metrics_of_two_workers_keep_one_help_per_family_and_a_worker_label() -> None:
    merged = merge_metrics([(1, _metrics(3)), (2, _metrics(5))])
    lines = merged.splitlines()
    assert lines.count("# HELP glass_received_total Readings received") == 1
    assert 'glass_received_total{worker="1",source="iot"} 3.0' in lines
    assert 'glass_received_total{worker="2",source="iot"} 5.0' in lines
    assert 'glass_latency_seconds_bucket{worker="2",le="1.0"} 1.0' in lines
    # A family's samples follow its own HELP and TYPE, not another family's.
    help_at = lines.index("# HELP glass_latency_seconds Latency")
    parts = (
        "glass_latency_seconds_bucket",
        "glass_latency_seconds_count",
        "glass_latency_seconds_sum",
    )
    buckets = [i for i, line in enumerate(lines) if line.startswith(parts)]
    assert min(buckets) > help_at
    assert all(not lines[i].startswith("# HELP") for i in range(help_at + 1, max(buckets)))


def _worker(index: int, sources: list[str]) -> Worker:
    return Worker(index, 2, ["true"], sources, port=0)


def test_status_lists_every_workers_sources_and_names_a_silent_worker() -> None:
    config = _config()
    one = Monitor(worker_config(config, 1, 2), sources_in_process=False).status()
    two = Monitor(worker_config(config, 2, 2), sources_in_process=False).status()
    workers = [_worker(1, ["iot_a", "furnace"]), _worker(2, ["iot_b", "fh_bus"])]

    merged = merge_status([(workers[0], one), (workers[1], two)])
    assert [s["name"] for s in merged["sources"]] == ["iot_a", "furnace", "iot_b", "fh_bus"]
    assert set(merged["history"]["sources"]) == {"iot_a", "furnace", "iot_b", "fh_bus"}
    assert [w["sources"] for w in merged["workers"]] == [["iot_a", "furnace"], ["iot_b", "fh_bus"]]
    assert [t["tag"] for t in merged["tags"]] == ["furnace.crown_temp_z1"]
    assert merged["ready"] is False
    # Neither job runs: both workers' reasons, each named by its worker.
    assert {reason.split(": ")[0] for reason in merged["reasons"]} == {"worker 1/2", "worker 2/2"}
    text = format_status(merged).splitlines()
    assert "worker 2 (pid None, not started, restarts 0): iot_b, fh_bus" in text

    half = merge_status([(workers[0], one), (workers[1], None)])
    assert [s["name"] for s in half["sources"]] == ["iot_a", "furnace"]
    assert half["reasons"][0] == "worker 2/2: not answering (not started)"


def test_pipeline_workers_is_checked_with_the_runner() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"pipeline": {"workers": 0}})
    assert raised.value.errors == ["pipeline.workers: must be >= 1, got 0"]
    with pytest.raises(ConfigError) as raised:
        parse_config({"pipeline": {"workers": 2, "runner": "FlinkRunner"}})
    assert raised.value.errors == [
        "pipeline.workers: 2 workers are for Prism; on Flink set --parallelism instead "
        "(or workers 1)"
    ]
    assert parse_config({"pipeline": {"workers": 2}}).pipeline.workers == 2
