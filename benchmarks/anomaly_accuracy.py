"""Precision and recall of the anomaly alerts against the simulator's ground truth.

The simulated Line C (`simulators.glass_line.GlassLine`) runs for `--hours`
with sensor faults injected at random (`random_faults`: spike, step, drift,
stuck, nan, burnout; every fault is labelled). Its samples go through the
config's validation and anomaly detection in event-time order, one second per
batch, without Beam (the same `ReadingValidator` and `AnomalyDetector` the
pipeline runs in its DoFns). Then:

- a raised alert on a tag *detects* a fault on that tag when it starts inside
  the fault, or within `--grace` seconds after its end (a drift or a step is
  also seen when it ends and the value snaps back);
- recall = faults detected / faults injected (per kind too);
- precision = raised alerts that detect a fault / raised alerts;
- reversal false alarms = raised alerts that detect nothing and start within
  120 s of a `furnace.firing_side` toggle: the classic false alarm, which must
  be 0;
- consequential alerts: on another tag while `furnace.firing_side` itself is
  faulty (stuck: the line reverses but the signal says it does not, so the
  reversal's gas dip and pressure spike are unexplained). They are reported
  apart, and counted as false in the precision.

Device and tag silence are not scored: the simulated line never goes silent.

Usage::

    python -m benchmarks anomaly_accuracy --hours 12 --faults-per-hour 4 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import DataIngestionConfig, parse_config
from records import RAISED, Alert, AlertRule, Reading
from simulators.glass_line import TAG_BY_NAME, FaultLabel, GlassLine, random_faults
from transforms.anomaly import AnomalyDetector, rejection_of
from transforms.validation import BundleCommit, ReadingValidator

_DEVICE = "iot"
_REVERSAL_MARGIN_SECONDS = 120.0
_FIRING_SIDE = "furnace.firing_side"
# Warnings about the process, not detections of a sensor fault: counted apart.
_NOT_SCORED = frozenset({AlertRule.NORMAL_RANGE.value})


@dataclass
class Score:
    faults: int
    detected: int
    raised: int
    true_alerts: int
    reversal_false_alarms: int
    consequential: int
    by_kind: dict[str, tuple[int, int]]  # kind -> (detected, injected)
    false_by_rule: dict[str, int]
    false_examples: list[str]

    @property
    def recall(self) -> float:
        return self.detected / self.faults if self.faults else math.nan

    @property
    def precision(self) -> float:
        return self.true_alerts / self.raised if self.raised else math.nan


def run_line(
    config: DataIngestionConfig, seed: int, hours: float, faults_per_hour: float
) -> tuple[list[Alert], list[FaultLabel], list[float]]:
    """Alerts, ground truth and firing-reversal toggle times of one simulated run."""
    line = GlassLine(seed=seed)
    t0 = line.start_ts
    t1 = t0 + hours * 3600.0
    # The first hour of faults is left out: the detectors learn first.
    for fault in random_faults(random.Random(seed), t0 + 3600.0, t1 - 600.0, faults_per_hour):
        line.inject(fault)
    validator = ReadingValidator(config.validation)
    detector = AnomalyDetector(config.anomaly)
    alerts: list[Alert] = []
    toggles: list[float] = []
    side: float | None = None
    units = {tag: spec.unit for tag, spec in TAG_BY_NAME.items()}
    t = t0
    while t < t1:
        samples = line.samples_between(t, t + 1.0)
        t += 1.0
        batch = [
            Reading("mqtt", _DEVICE, tag, ts, value, "good", units[tag], {})
            for tag, ts, value, _ in samples
        ]
        for reading in batch:
            if reading.tag == _FIRING_SIDE:
                if side is not None and reading.value != side:
                    toggles.append(reading.ts)
                side = reading.value
        commit = BundleCommit()
        outcome = validator.check(batch, now=t, commit=commit)
        commit.commit()
        for reading in outcome.valid:
            alerts += detector.observe(reading)
        for letter in outcome.dead_letters:
            rejection = rejection_of(letter)
            if rejection is not None:
                alerts += detector.observe_rejection(rejection)
        if batch:
            alerts += detector.observe_device("mqtt", _DEVICE, max(r.ts for r in batch))
        alerts += detector.expire(t)
    return alerts, line.ground_truth(), toggles


def score(
    alerts: Sequence[Alert], truth: Sequence[FaultLabel], toggles: Sequence[float], grace: float
) -> Score:
    raised = [a for a in alerts if a.state == RAISED and a.tag and a.rule not in _NOT_SCORED]
    detected: set[int] = set()
    true_alerts = 0
    reversal_false = 0
    consequential = 0
    false_by_rule: collections.Counter[str] = collections.Counter()
    examples: list[str] = []
    for alert in raised:
        hits = [
            i
            for i, fault in enumerate(truth)
            if fault["tag"] == alert.tag and fault["start"] <= alert.start <= fault["end"] + grace
        ]
        if hits:
            true_alerts += 1
            detected.update(hits)
            continue
        false_by_rule[alert.rule] += 1
        consequential += any(
            fault["tag"] == _FIRING_SIDE and fault["start"] <= alert.start <= fault["end"] + grace
            for fault in truth
        )
        near = any(abs(alert.start - toggle) <= _REVERSAL_MARGIN_SECONDS for toggle in toggles)
        reversal_false += near
        if len(examples) < 10:
            examples.append(
                f"{alert.rule} {alert.tag} at {alert.start % 86400 / 3600:.2f} h UTC"
                f"{' (reversal)' if near else ''}: {alert.detail}"
            )
    by_kind: dict[str, list[int]] = {}
    for i, fault in enumerate(truth):
        entry = by_kind.setdefault(fault["kind"], [0, 0])
        entry[0] += i in detected
        entry[1] += 1
    return Score(
        len(truth),
        len(detected),
        len(raised),
        true_alerts,
        reversal_false,
        consequential,
        {kind: (hit, total) for kind, (hit, total) in sorted(by_kind.items())},
        dict(false_by_rule),
        examples,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks anomaly_accuracy")
    parser.add_argument("--config", default="data_ingestion_config.json")
    parser.add_argument("--hours", type=float, default=12.0)
    parser.add_argument("--faults-per-hour", type=float, default=4.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--grace", type=float, default=300.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object per seed")
    args = parser.parse_args(argv)
    config = parse_config(json.loads(Path(args.config).read_text()))
    totals = collections.Counter[str]()
    kinds: dict[str, list[int]] = {}
    for seed in args.seeds:
        alerts, truth, toggles = run_line(config, seed, args.hours, args.faults_per_hour)
        result = score(alerts, truth, toggles, args.grace)
        if args.json:
            print(json.dumps({"seed": seed, **result.__dict__}))
        else:
            print(
                f"seed {seed}: {result.faults} faults, recall {result.recall:.2f}; "
                f"{result.raised} alerts, precision {result.precision:.2f}; "
                f"{len(toggles)} reversals, {result.reversal_false_alarms} false alarms at them; "
                f"{result.consequential} alerts while firing_side was faulty; "
                f"false alerts by rule {result.false_by_rule}"
            )
            for example in result.false_examples:
                print("   false:", example)
        totals.update(
            faults=result.faults,
            detected=result.detected,
            raised=result.raised,
            true=result.true_alerts,
            reversal=result.reversal_false_alarms,
            consequential=result.consequential,
            reversals=len(toggles),
        )
        for kind, (hit, total) in result.by_kind.items():
            entry = kinds.setdefault(kind, [0, 0])
            entry[0] += hit
            entry[1] += total
    if not args.json:
        recall = totals["detected"] / max(totals["faults"], 1)
        precision = totals["true"] / max(totals["raised"], 1)
        print(
            f"all: {totals['faults']} faults over {len(args.seeds)} x {args.hours:g} h, "
            f"recall {recall:.2f}, precision {precision:.2f} ({totals['raised']} alerts), "
            f"{totals['reversals']} reversals, {totals['reversal']} false alarms at reversals, "
            f"{totals['consequential']} false alerts while firing_side was faulty"
        )
        print(
            "recall by kind: "
            + ", ".join(f"{kind} {hit}/{total}" for kind, (hit, total) in sorted(kinds.items()))
        )


if __name__ == "__main__":
    main()
