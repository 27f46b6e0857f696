"""A serving benchmark's request stream: how long each request's prompt and output are, and when
it arrives.

Lengths come from a distribution or from a local ShareGPT-format file:
- `Fixed(tokens)`; `Uniform(low, high)`, integers with both ends included;
- `Normal(mean, std)`, as trtllm-bench's token-norm-dist: a normal sample rounded up
  (ceil), then clipped to [1, the stream's maximum];
- `ShareGpt(path)`: a JSON list of {"conversations": [{"from": "human" | "gpt", "value": str},
  ...]}; each conversation whose first turn is human and second is gpt gives one (prompt,
  output) pair, counted by a callable (text -> its number of tokens, e.g. `lambda text:
  len(tokenizer.encode(text))`) or, without one, estimated as ceil(characters / 4)
  (`estimate_tokens`: about 4 characters per token of English BPE text; an estimate, say so
  where it is used). Pairs with an empty side or above the maximum lengths are dropped
  (ShareGPT holds very long conversations; the output maximum applies only where the file's
  outputs are used); the stream draws the pairs in a seeded order, each once before any
  repeats. Nothing is fetched: the file must be local.

Arrivals (seconds from the first request, which arrives at 0):
- `InfiniteRate()`: every request at 0;
- `FixedRate(rate)`: request i at i / rate;
- `Gamma(rate, burstiness)`: gaps drawn from a gamma distribution of shape `burstiness` and mean
  1 / rate, as vLLM's bench serve (burstiness 1 is a Poisson process, `poisson(rate)`; below 1
  burstier, above 1 more regular).

One seed makes a stream reproducible; prompt lengths, output lengths and arrivals draw from
independent child streams of it, so changing the arrivals keeps the lengths. `parse_lengths` and
`parse_arrivals` read the command-line forms ("normal:512,256", "uniform:100,900", "fixed:128" or
"128", "sharegpt:PATH"; "inf", "4.5" (a fixed rate), "poisson:4", "gamma:4,0.5"), and every
distribution and arrival process has a `name` in that form (a ShareGPT file by its file name
alone: the same file elsewhere is the same workload). `arrivals_for(rate, burstiness)` is
`ftbench serve-bench`'s --rate and --burstiness: all at once at an infinite rate, else gamma
gaps (burstiness 1: Poisson), evenly spaced at an infinite burstiness (the gamma's limit).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ftbench.errors import InvalidInputError

# Characters per token of English text under a BPE tokenizer, for `estimate_tokens`.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Request:
    """One request: `prompt_len` tokens in, exactly `output_len` generated, arriving at
    `arrival_s` seconds after the stream's first request."""

    id: int
    prompt_len: int
    output_len: int
    arrival_s: float


class LengthDistribution(Protocol):
    def sample(self, rng: np.random.Generator, count: int, max_len: int) -> np.ndarray:
        """`count` lengths in 1..max_len (int64)."""
        ...


@dataclass(frozen=True)
class Fixed:
    tokens: int

    def __post_init__(self) -> None:
        _check_range("fixed", self.tokens, self.tokens)

    @property
    def name(self) -> str:
        return f"fixed:{self.tokens}"

    def sample(self, rng: np.random.Generator, count: int, max_len: int) -> np.ndarray:
        _check_maximum("fixed", self.tokens, max_len)
        return np.full(count, self.tokens, dtype=np.int64)


@dataclass(frozen=True)
class Uniform:
    """Integers from `low` to `high`, both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        _check_range("uniform", self.low, self.high)

    @property
    def name(self) -> str:
        return f"uniform:{self.low},{self.high}"

    def sample(self, rng: np.random.Generator, count: int, max_len: int) -> np.ndarray:
        _check_maximum("uniform", self.high, max_len)
        return rng.integers(self.low, self.high, size=count, endpoint=True, dtype=np.int64)


@dataclass(frozen=True)
class Normal:
    """ceil(normal(mean, std)) clipped to [1, max_len], as trtllm-bench's token-norm-dist."""

    mean: float
    std: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std >= 0):
            raise InvalidInputError(
                f"normal lengths need a finite mean and std >= 0, got {self.mean}, {self.std}"
            )
        if self.mean < 1:
            raise InvalidInputError(f"normal lengths need a mean of at least 1, got {self.mean}")

    @property
    def name(self) -> str:
        return f"normal:{_text(self.mean)},{_text(self.std)}"

    def sample(self, rng: np.random.Generator, count: int, max_len: int) -> np.ndarray:
        _check_maximum("normal", self.mean, max_len)
        drawn = np.ceil(rng.normal(self.mean, self.std, size=count))
        return np.clip(drawn, 1, max_len).astype(np.int64)


@dataclass(frozen=True)
class ShareGpt:
    """A local ShareGPT-format JSON file (see the module docstring)."""

    path: Path

    @property
    def name(self) -> str:
        return f"sharegpt:{Path(self.path).name}"


def _check_range(kind: str, low: int, high: int) -> None:
    if not 1 <= low <= high:
        raise InvalidInputError(f"{kind} lengths need 1 <= low <= high, got {low} and {high}")


def _check_maximum(kind: str, length: float, max_len: int) -> None:
    if length > max_len:
        raise InvalidInputError(
            f"{kind} lengths reach {length} tokens, above the maximum {max_len}"
        )


def _text(number: float) -> str:
    """A number as its name writes it: 512 for 512.0, else Python's shortest exact repr."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def estimate_tokens(text: str) -> int:
    """An estimate of `text`'s tokens without a tokenizer: ceil(characters / CHARS_PER_TOKEN)."""
    return -(-len(text) // CHARS_PER_TOKEN)


@dataclass(frozen=True)
class InfiniteRate:
    name = "inf"

    def times(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return np.zeros(count)


@dataclass(frozen=True)
class FixedRate:
    """`rate` requests per second, evenly spaced."""

    rate: float

    def __post_init__(self) -> None:
        _check_rate(self.rate)

    @property
    def name(self) -> str:
        return _text(self.rate)

    def times(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return np.arange(count) / self.rate


@dataclass(frozen=True)
class Gamma:
    """Gaps of mean 1 / rate drawn from gamma(shape=burstiness, scale=1 / (rate * burstiness))."""

    rate: float
    burstiness: float = 1.0

    def __post_init__(self) -> None:
        _check_rate(self.rate)
        if not (math.isfinite(self.burstiness) and self.burstiness > 0):
            raise InvalidInputError(f"burstiness must be positive, got {self.burstiness}")

    @property
    def name(self) -> str:
        if self.burstiness == 1:
            return f"poisson:{_text(self.rate)}"
        return f"gamma:{_text(self.rate)},{_text(self.burstiness)}"

    def times(self, rng: np.random.Generator, count: int) -> np.ndarray:
        gaps = rng.gamma(self.burstiness, 1 / (self.rate * self.burstiness), size=count - 1)
        return np.concatenate([[0.0], np.cumsum(gaps)])[:count]


def poisson(rate: float) -> Gamma:
    """A Poisson process of `rate` requests per second: exponential gaps, burstiness 1."""
    return Gamma(rate, 1.0)


Arrivals = InfiniteRate | FixedRate | Gamma


def arrivals_for(rate: float, burstiness: float = 1.0) -> Arrivals:
    """Requests at `rate` per second (infinite: all at once) with gaps of gamma shape
    `burstiness` (1: Poisson; infinite: evenly spaced)."""
    if math.isnan(burstiness) or burstiness <= 0:
        raise InvalidInputError(f"burstiness must be positive, got {burstiness}")
    if rate == math.inf:
        return InfiniteRate()
    if burstiness == math.inf:
        return FixedRate(rate)
    return Gamma(rate, burstiness)


def _check_rate(rate: float) -> None:
    if not (math.isfinite(rate) and rate > 0):
        raise InvalidInputError(
            f"a request rate must be positive and finite (use 'inf' for all at once), got {rate}"
        )


def request_stream(
    count: int,
    prompt: LengthDistribution | ShareGpt,
    output: LengthDistribution | ShareGpt,
    arrivals: Arrivals,
    seed: int,
    max_prompt_len: int,
    max_output_len: int,
    count_tokens: Callable[[str], int] = estimate_tokens,
) -> list[Request]:
    """`count` requests, ids 0..count-1 in arrival order. With ShareGpt as `prompt`, prompts come
    from its pairs and `output` is either the same file (the pairs' own outputs) or a
    distribution that replaces them; ShareGpt as `output` alone is an error."""
    if count < 1:
        raise InvalidInputError(f"a request stream needs at least 1 request, got {count}")
    if min(max_prompt_len, max_output_len) < 1:
        raise InvalidInputError(
            f"maximum lengths must be positive, got {max_prompt_len} and {max_output_len}"
        )
    prompt_rng, output_rng, arrival_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(3)
    )
    if isinstance(prompt, ShareGpt):
        output_limit = max_output_len if output == prompt else sys.maxsize
        pairs = sharegpt_pairs(prompt.path, count_tokens, max_prompt_len, output_limit)
        drawn = pairs[_cycled_permutation(prompt_rng, len(pairs), count)]
        prompts, outputs = drawn[:, 0], drawn[:, 1]
        if output != prompt:
            if isinstance(output, ShareGpt):
                raise InvalidInputError("prompts and outputs come from one ShareGPT file")
            outputs = output.sample(output_rng, count, max_output_len)
    elif isinstance(output, ShareGpt):
        raise InvalidInputError("ShareGPT output lengths need ShareGPT prompts (the same file)")
    else:
        prompts = prompt.sample(prompt_rng, count, max_prompt_len)
        outputs = output.sample(output_rng, count, max_output_len)
    times = arrivals.times(arrival_rng, count)
    return [Request(i, int(prompts[i]), int(outputs[i]), float(times[i])) for i in range(count)]


def _cycled_permutation(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """`count` indices into `size` items: seeded permutations end to end, so each item is drawn
    once before any is drawn twice."""
    rounds = -(-count // size)
    return np.concatenate([rng.permutation(size) for _ in range(rounds)])[:count]


def sharegpt_pairs(
    path: Path, count_tokens: Callable[[str], int], max_prompt_len: int, max_output_len: int
) -> np.ndarray:
    """The (prompt, output) token counts [pairs, 2] of a ShareGPT file's usable conversations,
    in file order (see the module docstring for which are used and which dropped)."""
    try:
        entries = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InvalidInputError(f"cannot read ShareGPT file {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"ShareGPT file {path} is not valid JSON: {exc}") from exc
    if not isinstance(entries, list) or not entries:
        raise InvalidInputError(f"ShareGPT file {path} must hold a non-empty JSON list")
    pairs = []
    for index, entry in enumerate(entries):
        turns = _turns(path, index, entry)
        if len(turns) < 2 or turns[0][0] != "human" or turns[1][0] != "gpt":
            continue
        lengths = (count_tokens(turns[0][1]), count_tokens(turns[1][1]))
        if 1 <= lengths[0] <= max_prompt_len and 1 <= lengths[1] <= max_output_len:
            pairs.append(lengths)
    if not pairs:
        raise InvalidInputError(
            f"ShareGPT file {path} has no human-then-gpt conversation within {max_prompt_len} "
            f"prompt and {max_output_len} output tokens"
        )
    return np.array(pairs, dtype=np.int64)


def _turns(path: Path, index: int, entry: object) -> list[tuple[str, str]]:
    conversations = entry.get("conversations") if isinstance(entry, dict) else None
    if not isinstance(conversations, list):
        raise InvalidInputError(f"ShareGPT file {path}: entry {index} has no 'conversations' list")
    turns = []
    for turn in conversations:
        if not (
            isinstance(turn, dict)
            and isinstance(turn.get("from"), str)
            and isinstance(turn.get("value"), str)
        ):
            raise InvalidInputError(
                f"ShareGPT file {path}: entry {index} has a turn without string 'from' and 'value'"
            )
        turns.append((turn["from"], turn["value"]))
    return turns


def parse_lengths(text: str) -> LengthDistribution | ShareGpt:
    """ "fixed:N" (or "N"), "uniform:LOW,HIGH", "normal:MEAN,STD" or "sharegpt:PATH"."""
    if text.isascii() and text.isdigit():
        return Fixed(int(text))
    kind, _, args = text.partition(":")
    if kind == "sharegpt" and args:
        return ShareGpt(Path(args))
    forms = {"fixed": (Fixed, int, 1), "uniform": (Uniform, int, 2), "normal": (Normal, float, 2)}
    if kind not in forms:
        raise InvalidInputError(
            f"lengths {text!r}: expected fixed:N, uniform:LOW,HIGH, normal:MEAN,STD, "
            "sharegpt:PATH or N (fixed)"
        )
    make, number, arity = forms[kind]
    return make(*_numbers(text, args, number, arity))


def parse_arrivals(text: str) -> Arrivals:
    """ "inf", "RATE" (fixed rate, requests per second), "poisson:RATE" or
    "gamma:RATE,BURSTINESS"."""
    if text == "inf":
        return InfiniteRate()
    kind, _, args = text.partition(":")
    if kind == "poisson":
        return poisson(*_numbers(text, args, float, 1))
    if kind == "gamma":
        return Gamma(*_numbers(text, args, float, 2))
    try:
        return FixedRate(float(text))
    except ValueError:
        raise InvalidInputError(
            f"arrivals {text!r}: expected inf, RATE, poisson:RATE or gamma:RATE,BURSTINESS"
        ) from None


def _numbers(text: str, args: str, number: type, arity: int) -> list:
    parts = args.split(",")
    try:
        if len(parts) != arity:
            raise ValueError
        return [number(part) for part in parts]
    except ValueError:
        kind = "integers" if number is int else "numbers"
        raise InvalidInputError(f"{text!r}: expected {arity} {kind} after the colon") from None
