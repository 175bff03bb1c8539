"""WriteToKafka with both clients: same records, keys, headers, partitions."""

from __future__ import annotations

import apache_beam as beam
import orjson
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from connectors.kafka import WriteToKafka
from connectors.kafka_config import KafkaSink, KafkaTopics
from data_ingestion.testing import TopicReader, wait_until
from records import DeadLetter, Reading, format_ts

pytestmark = pytest.mark.integration

_READINGS = [
    Reading(
        "mqtt",
        "iot",
        f"furnace.tc_{i % 7}",
        1_795_802_400.0 + i / 1000,
        1500.0 + i,
        "good",
        "degC",
        {"topic": "plant/furnace"},
    )
    for i in range(200)
]
_LETTER = DeadLetter(
    "mqtt", "iot", "undecodable", "topic plant/x: not JSON", 1_795_802_400.5, "oops", "text"
)


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_records_keys_headers_and_partitions_follow_the_contract(
    client: str, kafka_bootstrap: str, kafka_topic_factory
) -> None:
    topic = kafka_topic_factory(partitions=4)
    config = KafkaSink(bootstrap_servers=kafka_bootstrap, client=client)  # type: ignore[arg-type]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        p | beam.Create([_READINGS[:100], _READINGS[100:], _LETTER]) | WriteToKafka(
            config, topic=topic
        )

    reader = TopicReader(kafka_bootstrap, topic)
    wait_until(lambda: len(reader.messages) >= 201, timeout=60, step=lambda: reader.poll(500))
    reader.close()
    readings = {m.key: m for m in reader.messages if dict(m.headers)["schema"] == b"reading/1"}
    assert len(reader.messages) == 201
    first = next(m for m in reader.messages if orjson.loads(m.value).get("value") == 1500.0)
    assert orjson.loads(first.value) == {
        "source": "mqtt",
        "device": "iot",
        "tag": "furnace.tc_0",
        "ts": format_ts(1_795_802_400.0),
        "value": 1500.0,
        "quality": "good",
        "unit": "degC",
        "meta": {"topic": "plant/furnace"},
    }
    assert first.key == b"iot/furnace.tc_0"
    assert first.timestamp == 1_795_802_400_000
    assert dict(first.headers) == {"source": b"mqtt", "schema": b"reading/1"}
    # Kafka's default (murmur2, as the Java client) partitioning, whichever client.
    assert len(readings) == 7
    assert {key: m.partition for key, m in readings.items()} == _partitions_by_murmur2(
        list(readings), 4
    )
    letter = next(m for m in reader.messages if dict(m.headers)["schema"] == b"deadletter/1")
    assert letter.key == b"iot"
    assert orjson.loads(letter.value)["reason"] == "undecodable"


def _partitions_by_murmur2(keys: list[bytes], partitions: int) -> dict[bytes, int]:
    from kafka.partitioner.default import murmur2

    return {key: (murmur2(key) & 0x7FFFFFFF) % partitions for key in keys}


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_a_record_that_does_not_encode_is_dead_lettered_and_the_rest_delivered(
    client: str, kafka_bootstrap: str, kafka_topic_factory
) -> None:
    topic, dead_letter = kafka_topic_factory(), kafka_topic_factory()
    config = KafkaSink(
        bootstrap_servers=kafka_bootstrap,
        client=client,  # type: ignore[arg-type]
        topics=KafkaTopics(dead_letter=dead_letter),
    )
    # A connector that put a value no JSON holds into a record's meta.
    broken = _READINGS[0]._replace(tag="furnace.odd", meta={"probe": object()})  # type: ignore[dict-item]
    batch = [*_READINGS[:10], broken, *_READINGS[10:20]]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        # Built inside the sink's stage, as a connector's records are: Create would
        # encode them with the records' schema, which refuses the odd value first.
        p | beam.Create([None]) | beam.Map(lambda _: batch) | WriteToKafka(config, topic=topic)

    readings, letters = TopicReader(kafka_bootstrap, topic), TopicReader(
        kafka_bootstrap, dead_letter
    )
    wait_until(lambda: len(readings.records) >= 20 and letters.records, timeout=60,
               step=lambda: (readings.poll(500), letters.poll(500)))  # fmt: skip
    readings.close()
    letters.close()
    assert len(readings.records) == 20
    (letter,) = letters.records
    assert letter["reason"] == "unencodable" and letter["device"] == "iot"
    assert topic in letter["detail"] and "furnace.odd" in letter["payload"]


def test_a_short_delivery_timeout_makes_a_working_kafka_python_producer(
    kafka_bootstrap: str,
) -> None:
    # kafka-python refuses delivery_timeout_ms under linger + its 30 s request
    # timeout; the config accepts 5 s, so the producer must be buildable with it.
    from kafka import KafkaProducer

    from connectors.kafka import producer_settings

    config = KafkaSink(
        bootstrap_servers=kafka_bootstrap, client="kafka-python", delivery_timeout_seconds=5
    )
    assert config.validate("kafka") == []
    settings = producer_settings(config)
    settings.pop("partitioner")
    producer = KafkaProducer(**settings)
    producer.close()
    too_short = KafkaSink(
        bootstrap_servers=kafka_bootstrap, linger_ms=500, delivery_timeout_seconds=0.5
    )
    assert too_short.validate("kafka") == [
        "kafka.delivery_timeout_seconds: 0.5 s leaves no time to send after linger_ms (500 ms): "
        "make it longer"
    ]
