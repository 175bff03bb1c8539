"""`python -m benchmarks [NAME] [options]`: run one benchmark, or all but the hour-long soak."""

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
    soak,
    spool,
    telegraf_side_by_side,
    transforms,
    workers,
)

_BENCHMARKS = {
    "mqtt_to_kafka": mqtt_to_kafka.main,
    "mqtt_burst": mqtt_to_kafka.burst_main,
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
    "workers": workers.main,
}
# Run only when named: an hour long.
_ON_REQUEST = {"soak": soak.main}

if __name__ == "__main__":
    args = sys.argv[1:]
    named = {**_BENCHMARKS, **_ON_REQUEST}
    if args and args[0] in named:
        named[args[0]](args[1:])
    else:
        for run in _BENCHMARKS.values():
            run(args)
