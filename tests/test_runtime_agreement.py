"""Comparing two runtimes' logits (`runtime.agreement`), without a GPU."""

import numpy as np
import pytest

from ftbench.profiles.catalog import load_builtin
from ftbench.runtime.agreement import (
    PROMPT_LENGTHS,
    STEPS,
    agreement,
    decoder_args,
    teacher_forced_inputs,
)


def test_agreement_is_the_relative_error_per_position_and_the_top1_match_rate():
    expected = [np.array([[3.0, 4.0, 0.0], [0.0, 1.0, 0.0]]), np.array([[1.0, 0.0, 0.0]])]
    ours = [np.array([[3.0, 4.0, 0.5], [0.0, 1.0, 0.0]]), np.array([[0.0, 1.0, 0.0]])]
    result = agreement(ours, expected)
    # errors per position: 0.5 / 5, 0, sqrt(2) / 1; top-1 agrees at the first two
    assert result.positions == 3
    assert result.max_rel_logit_err == pytest.approx(np.sqrt(2))
    assert result.mean_rel_logit_err == pytest.approx((0.1 + np.sqrt(2)) / 3)
    assert result.top1_agreement == pytest.approx(2 / 3)


def test_teacher_forced_inputs_are_seeded_ragged_prompts_within_the_vocabulary():
    spec = load_builtin("gptj-6b")
    prompts, continuations = teacher_forced_inputs(spec)
    again, _ = teacher_forced_inputs(spec)
    assert [len(p) for p in prompts] == list(PROMPT_LENGTHS)
    assert continuations.shape == (len(PROMPT_LENGTHS), STEPS)
    assert all(np.array_equal(a, b) for a, b in zip(prompts, again, strict=True))
    assert max(int(p.max()) for p in prompts) < spec.vocab_size
    # an all-logits prefill returns a row per prompt token; the cache holds prompt and steps
    assert decoder_args() == {"max_batch": sum(PROMPT_LENGTHS), "max_seq_len": 17 + STEPS + 1}
