"""Decide which readings can be trusted; dead-letter the rest with a reason.

`ValidateReadings` takes batches of `Reading` (`list[Reading]` elements) and
returns `{VALID: batches of the readings that passed, DEAD_LETTER: one
DeadLetter per rejected reading}`. Good readings pass unchanged.

Rules (first cut; codes are stable, see `records.Reason`):

- `missing_value`: the reading has no value;
- `not_finite`: NaN or +/-inf (a flow meter's diagnostic NaN, a broken decode);
- `out_of_range`: outside the tag's hard limits `validation.rules[tag].min/max`
  (physically or instrumentally impossible, glass-line.md §2.1).

Each rule's hits are counted as Beam metrics (`validation/<reason>`).

Example::

    rules = ValidationConfig(rules={"furnace.crown_temp_*": ValidationRule(0, 1700)})
    checked = batches | ValidateReadings(rules)
    checked[VALID] | WriteToKafka(...); checked[DEAD_LETTER] | WriteToKafka(...)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from records import DeadLetter, Reading, Reason, reading_to_json
from transforms.validation_config import ValidationConfig, ValidationRule

__all__ = ["ValidateReadings", "check_reading", "VALID", "DEAD_LETTER"]

VALID = "valid"
DEAD_LETTER = "dead_letter"


def check_reading(reading: Reading, rule: ValidationRule | None) -> tuple[Reason, str] | None:
    """The first rule `reading` breaks, as (reason, detail), or None if valid."""
    value = reading.value
    if value is None:
        return Reason.MISSING_VALUE, f"{reading.tag} has no value"
    if not math.isfinite(value):
        return Reason.NOT_FINITE, f"{reading.tag} value is {value}"
    if rule is not None:
        if rule.min is not None and value < rule.min:
            return (
                Reason.OUT_OF_RANGE,
                f"{reading.tag} = {value} is below the hard limit {rule.min}",
            )
        if rule.max is not None and value > rule.max:
            return (
                Reason.OUT_OF_RANGE,
                f"{reading.tag} = {value} is above the hard limit {rule.max}",
            )
    return None


class _ValidateDoFn(beam.DoFn):
    def __init__(self, config: ValidationConfig) -> None:
        self._config = config
        self._rules: dict[str, ValidationRule | None] = {}
        self._passed = Metrics.counter("validation", "passed")
        self._rejected = {reason: Metrics.counter("validation", reason.value) for reason in Reason}

    def _rule(self, tag: str) -> ValidationRule | None:
        # Pattern matching per reading would dominate the cost: memoise per tag.
        try:
            return self._rules[tag]
        except KeyError:
            rule = self._rules[tag] = self._config.rule_for(tag)
            return rule

    def process(
        self, batch: list[Reading] | Reading
    ) -> Iterator[list[Reading] | beam.pvalue.TaggedOutput]:
        readings = batch if isinstance(batch, list) else [batch]
        valid = []
        for reading in readings:
            problem = check_reading(reading, self._rule(reading.tag))
            if problem is None:
                valid.append(reading)
                continue
            reason, detail = problem
            self._rejected[reason].inc()
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER,
                DeadLetter(
                    reading.source,
                    reading.device,
                    reason.value,
                    detail,
                    reading.ts,
                    reading_to_json(reading).decode(),
                    "text",
                ),
            )
        if valid:
            self._passed.inc(len(valid))
            yield valid


class ValidateReadings(beam.PTransform):
    """Splits reading batches into `VALID` batches and `DEAD_LETTER` records."""

    def __init__(self, config: ValidationConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, batches: beam.PCollection) -> dict[str, beam.PCollection]:
        outputs = batches | "CheckRules" >> beam.ParDo(_ValidateDoFn(self._config)).with_outputs(
            DEAD_LETTER, main=VALID
        )
        return {VALID: outputs[VALID], DEAD_LETTER: outputs[DEAD_LETTER]}
