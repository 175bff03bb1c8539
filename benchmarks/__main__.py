"""`python -m benchmarks [NAME] [options]`: run one benchmark, or all of them."""

from __future__ import annotations

import sys

from benchmarks import (
    anomaly_accuracy,
    camera_detection_quality,
    camera_to_kafka,
    cost_budget,
    flink_vs_prism,
    idle_cost,
    modbus_to_kafka,
    monitoring_overhead,
    mqtt_to_kafka,
    opcua_to_kafka,
    spool,
    telegraf_side_by_side,
    transforms,
)

_BENCHMARKS = {
    "mqtt_to_kafka": mqtt_to_kafka.main,
    "opcua_to_kafka": opcua_to_kafka.main,
    "modbus_to_kafka": modbus_to_kafka.main,
    "transforms": transforms.main,
    "anomaly_accuracy": anomaly_accuracy.main,
    "monitoring_overhead": monitoring_overhead.main,
    "camera_detection_quality": camera_detection_quality.main,
    "camera_to_kafka": camera_to_kafka.main,
    "spool": spool.main,
    "idle_cost": idle_cost.main,
    "cost_budget": cost_budget.main,
    "flink_vs_prism": flink_vs_prism.main,
    "telegraf_side_by_side": telegraf_side_by_side.main,
}

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] in _BENCHMARKS:
        _BENCHMARKS[args[0]](args[1:])
    else:
        for run in _BENCHMARKS.values():
            run(args)
