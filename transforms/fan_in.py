"""Reduce each source's batches in its own stage, then merge: `per_input`.

Prism does not fuse a Flatten with the steps after it, so every element of
every flattened input crosses the runner's data plane: pickled, sent over
gRPC, unpickled. Flattening the validated reading batches of several sources
before features and anomaly detection made each reading cost about three
times the CPU of a single-source pipeline (2 MQTT sources, 20 readings per
message: 48 us of Python per reading against 17.7; py-spy showed the pickle
coder and Reading construction on top). So the transforms whose first step
shrinks a batch (partial statistics per tag and slice, shard splits, crown
samples) accept one PCollection per source and run that step in each
source's fused stage; only its small output is flattened.

Example::

    partials = per_input(
        (valid_a, valid_b), "Partials",
        lambda batches, suffix: batches
        | f"PreAggregate{suffix}" >> beam.ParDo(_PreAggregateDoFn(...)),
    )
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apache_beam as beam

__all__ = ["Inputs", "per_input"]

# One PCollection, or one per source (a tuple or list of them). `Any` as far as
# Beam can tell: it takes a transform's `expand` annotation for its input type
# hint, and warns at each pipeline build about anything but a PCollection.
Inputs = Any


def per_input(
    inputs: Inputs, label: str, step: Callable[[beam.PCollection, str], beam.PCollection]
) -> beam.PCollection:
    """`step(pcollection, suffix)` on each input, its outputs flattened as `label`.

    `suffix` is "" for a single PCollection and "[n]" for the n-th of several:
    the step appends it to its own labels, which must be unique per input.
    """
    if isinstance(inputs, beam.PCollection):
        return step(inputs, "")
    if not inputs:
        raise ValueError(f"{label}: no inputs")
    outputs = [step(pcollection, f"[{n}]") for n, pcollection in enumerate(inputs)]
    if len(outputs) == 1:
        return outputs[0]
    return tuple(outputs) | label >> beam.Flatten()
