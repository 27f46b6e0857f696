"""Random weights with a spec's shapes, for benchmarking without a checkpoint (and for tests)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ftbench.dtypes import numpy_dtype
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.weights import ModelWeights, from_named, weight_shapes

_NORMS = ("ln1", "ln2", "final_norm")


def random_weights(
    spec: ModelSpec,
    dtype: Any,
    seed: int = 0,
    tp: int = 1,
    xp: Any = np,
    layers: range | None = None,
) -> ModelWeights:
    """Random weights for benchmarking without a checkpoint (and for tests).

    Weights, biases and embeddings are uniform with mean 0 and std 0.02 (GPT-2's init scale;
    uniform because it is several times faster to draw than normal, which matters for
    billions of parameters); norm weights are 1 plus the same noise. The same seed gives the
    same weights. With tp > 1 they have one rank's shapes, with `layers` one pipeline stage's
    (`sharding.stage_weights`); with xp=cupy they are drawn on the GPU (a 6B model in seconds
    instead of a minute on the host).
    """
    target = numpy_dtype(dtype)
    rng = xp.random.default_rng(seed)
    named = {}
    shapes = weight_shapes(spec, tp, layers)
    for name, shape in shapes.items():
        if name == "lm_head.weight" and spec.tie_word_embeddings and "embed" in named:
            named[name] = named["embed"]
            continue
        values = rng.random(shape, dtype=np.float32)
        values -= 0.5
        values *= 0.02 * math.sqrt(12.0)  # uniform(-a, a) has std a / sqrt(3)
        if name.endswith(".weight") and name.split(".")[-2] in _NORMS:
            values += 1.0
        named[name] = values.astype(target)
    return from_named(named, spec.num_layers if layers is None else len(layers))
