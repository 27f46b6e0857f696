"""Beam search as Hugging Face `generate(num_beams=w, do_sample=False)` defines it, over any engine.

`beam_search(settings, first_log_probs, step, reorder)` knows nothing of the model: the engine
gives the log-probabilities of the next token after each prompt, `step(tokens)` appends one
token to every live beam and returns the next log-probabilities, and `reorder(rows)` makes
the engine's sequence i its old sequence rows[i] (a gather of KV-cache rows and lengths; rows
repeat where beams share a parent). The NumPy references and the CUDA runtime run the same
search, so their outputs can be compared token for token.

The engine holds `batch` sequences after the prompts and batch * w beams (beam j of prompt b in
row b * w + j) after the first `reorder`, which expands each prompt into its beams.

HF's semantics (transformers 5, `GenerationMixin._beam_search`), step by step with g tokens
generated so far:

1. A beam's score is the sum of its tokens' log-softmax log-probabilities. Every running beam's
   candidates (beam score + log-prob of each token) are ranked together per prompt and the best
   2w kept (so w remain even if w of them end). At the first step only the prompt's one beam
   has candidates (HF starts beams 1..w-1 at -1e9 for this).
2. A candidate ends when its token is `eos_token_id` or it reaches `max_new_tokens`. The best
   w candidates that do not end are the running beams of the next step, best first.
3. A candidate among the top w that ends is a finished hypothesis scored sum / (g + 1) **
   length_penalty (g + 1 tokens, EOS included); the w best finished hypotheses are kept. None is
   added once the prompt's w slots are full with early_stopping=True, nor once the early-stop
   heuristic (4) says the prompt is done.
4. After the step the prompt is done when all w slots are finished and the best running beam
   cannot beat the worst of them: its score / L ** length_penalty with L = g + 1, except
   early_stopping="never" with length_penalty > 0, where L = max_new_tokens (the best a longer
   beam could reach). This is sticky.
5. The search stops when every prompt is done, or (early_stopping=True) every prompt's slots
   are full, or every candidate ended (max_new_tokens).

The result is each prompt's best finished hypothesis (num_return_sequences=1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ftbench.errors import InvalidInputError

MAX_BEAMS = 8
_NEVER = -1.0e9  # HF's "cannot be chosen" score; added, as HF adds it


@dataclass(frozen=True)
class BeamSettings:
    """What a beam search is asked to do (HF's `generate` arguments of the same names)."""

    num_beams: int
    max_new_tokens: int
    eos_token_id: int
    pad_token_id: int = 0
    length_penalty: float = 1.0
    early_stopping: bool | str = False

    def __post_init__(self) -> None:
        _check_count("num_beams", self.num_beams, MAX_BEAMS)
        _check_count("max_new_tokens", self.max_new_tokens)
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise InvalidInputError(
                f"beam search: early_stopping must be True, False or 'never', got "
                f"{self.early_stopping!r}"
            )


def _check_count(name: str, value: object, most: int | None = None) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < 1
        or value > (most or value)
    ):
        bound = f"1..{most}" if most else ">= 1"
        raise InvalidInputError(f"beam search: {name} must be an integer {bound}, got {value!r}")


@dataclass(frozen=True)
class BeamResult:
    """Each prompt's best hypothesis: `tokens` [batch, longest] (EOS included, then
    `pad_token_id`), `lengths` [batch] (tokens generated, EOS included) and `scores` [batch]
    (sum of log-probs / length ** length_penalty, HF's `sequences_scores`)."""

    tokens: np.ndarray
    lengths: np.ndarray
    scores: np.ndarray


def check_rows(rows: object, sequences: int) -> np.ndarray:
    """The rows of a `reorder` call: a non-empty 1-D integer array, each in 0..sequences-1."""
    rows = np.asarray(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or len(rows) == 0:
        raise InvalidInputError("reorder() takes a 1-D integer array of rows")
    if rows.min() < 0 or rows.max() >= sequences:
        raise InvalidInputError(
            f"reorder() rows must be in 0..{sequences - 1}, got {rows.min()} to {rows.max()}"
        )
    return rows


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float64."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of each row's k highest scores, best first (ties: the lower index first)."""
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def beam_search(
    settings: BeamSettings,
    first_log_probs: np.ndarray,
    step: Callable[[np.ndarray], np.ndarray],
    reorder: Callable[[np.ndarray], None],
) -> BeamResult:
    """Beam search from `first_log_probs` [batch, vocab] (the token after each prompt); see the
    module docstring for `step` ([batch * w] tokens -> [batch * w, vocab] log-probs) and
    `reorder`."""
    first = np.asarray(first_log_probs, np.float64)
    batch, vocab = first.shape
    width, steps = settings.num_beams, settings.max_new_tokens
    keep = 2 * width  # HF: (1 + number of EOS tokens) * w candidates
    if vocab < keep:
        raise InvalidInputError(f"beam search with {width} beams needs a vocabulary of >= {keep}")
    penalty, early = settings.length_penalty, settings.early_stopping
    prompts = np.arange(batch)[:, None]

    log_probs = first[:, None, :]  # [batch, beams, vocab]: one beam per prompt at first
    running_scores = np.zeros((batch, 1))
    running = np.zeros((batch, 1, 0), np.int64)  # each running beam's tokens
    finished = np.full((batch, width, steps), settings.pad_token_id, np.int64)
    finished_lengths = np.zeros((batch, width), np.int64)
    finished_scores = np.full((batch, width), _NEVER)
    is_finished = np.zeros((batch, width), bool)
    undecided = np.ones(batch, bool)  # HF's is_early_stop_heuristic_unsatisfied
    for generated in range(steps):
        beams = log_probs.shape[1]
        totals = (log_probs + running_scores[:, :, None]).reshape(batch, beams * vocab)
        top = _best(totals, keep)
        top_scores = totals[prompts, top]  # [batch, 2w]
        parents, tokens = top // vocab, top % vocab
        candidates = np.concatenate([running[prompts, parents], tokens[:, :, None]], axis=2)
        ends = (tokens == settings.eos_token_id) | (generated + 1 >= steps)

        # The best w candidates that do not end run on.
        still = top_scores + ends * _NEVER
        chosen = _best(still, width)
        running, running_scores = candidates[prompts, chosen], still[prompts, chosen]
        running_parents = parents[prompts, chosen]

        # The top w candidates that end are hypotheses, unless the prompt takes no more.
        hypothesis_scores = top_scores / (generated + 1) ** penalty
        full = is_finished.all(axis=1) & (early is True)
        hypothesis_scores = hypothesis_scores + (full * _NEVER)[:, None]
        hypothesis_scores = hypothesis_scores + (~undecided * _NEVER)[:, None]
        just_ended = ends & (np.arange(keep) < width)
        hypothesis_scores = hypothesis_scores + ~just_ended * _NEVER
        padded = np.full((batch, keep, steps), settings.pad_token_id, np.int64)
        padded[:, :, : generated + 1] = candidates
        merged_scores = np.concatenate([finished_scores, hypothesis_scores], axis=1)
        kept = _best(merged_scores, width)
        finished = np.concatenate([finished, padded], axis=1)[prompts, kept]
        finished_lengths = np.concatenate(
            [finished_lengths, np.full((batch, keep), generated + 1)], axis=1
        )[prompts, kept]
        finished_scores = merged_scores[prompts, kept]
        is_finished = np.concatenate([is_finished, just_ended], axis=1)[prompts, kept]

        # The early-stop heuristic, then whether anything is left to do.
        never = early == "never" and penalty > 0
        best_length = steps if never else generated + 1
        best_running = running_scores[:, :1] / best_length**penalty
        worst_finished = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), _NEVER)
        undecided &= (best_running > worst_finished).any(axis=1)
        open_beams = not (is_finished.all() and early is True)
        if not (undecided.any() and open_beams and not ends.all()):
            break
        reorder((prompts * beams + running_parents).reshape(-1))
        log_probs = np.asarray(step(running[:, :, -1].reshape(-1)), np.float64)
        log_probs = log_probs.reshape(batch, width, vocab)
    lengths = finished_lengths[:, 0]
    return BeamResult(finished[:, 0, : lengths.max()], lengths, finished_scores[:, 0])
