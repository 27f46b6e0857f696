"""Generation: prefill a batch of prompts, then decode one token per sequence per step.

Prompts may have different lengths; a padded batch (left or right padding, with an attention
mask) is unpadded first (`unpad`), so padding never reaches the model: each sequence's tokens sit
at positions 0..len-1 of its own KV-cache row, exactly where an unpadded run would put them.

After the prefill everything stays on the GPU: the sampled tokens are written straight into the
next step's input, positions and lengths advance on the device, and finished sequences (those
that produced a stop token) keep emitting `pad_token`. The decode step (embedding to sampling) is
captured once in a CUDA graph and replayed, so a step costs one graph launch from Python. A
prefill is graphed the same way per batch of prompt lengths (its kernels' shapes depend on them
only): the first prefill of given lengths runs eagerly, the second is captured, later ones copy
their tokens into the captured inputs and replay it, so the time to the first token is the GPU's
and not Python's launch overhead. At most `PREFILL_GRAPHS` prefill graphs are kept; the ranks
of a tensor- or pipeline-parallel run prefill eagerly.

Under pipeline parallelism every stage's rank runs the same `Generator` calls on its stage's
decoder: the last stage samples and sends the tokens to the first (`Stage.share_tokens`, inside
the captured step), stages before the last get no logits (None), and the generated tokens are
known on the first and last stages only. With micro-batches (`RankDecoder(micro_batches=m)`) the
last stage samples once per step, from the logits of every micro-batch, after the last one:
the tokens travel to the first stage once per step, as with one micro-batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftbench.errors import InvalidInputError
from ftbench.runtime.model import Decoder, StepInputs, length_bound

METHODS = ("greedy", "sample")
# With stop tokens, the host asks whether every sequence has finished this often (a sync).
FINISHED_CHECK_STEPS = 16
# Prefill graphs kept (one per batch of prompt lengths seen twice), oldest dropped first.
PREFILL_GRAPHS = 8


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy, or sampled with temperature, top-k and top-p."""

    method: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(f"sampling method must be one of {METHODS}, not {self.method}")
        if self.temperature <= 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise InvalidInputError(
                "sampling needs temperature > 0, top_k >= 0 and 0 < top_p <= 1; got "
                f"{self.temperature}, {self.top_k}, {self.top_p}"
            )


@dataclass(frozen=True)
class Generation:
    """Generated tokens [batch, steps] (pad_token after a stop), each sequence's count of
    generated tokens (its stop token included), and the GPU's timeline measured with CUDA
    events on the generator's stream: time to the first token (prefill and its sampling) and
    the time of every decode step after it, launch gaps included."""

    tokens: np.ndarray
    lengths: np.ndarray
    ttft_ms: float
    step_ms: np.ndarray


def unpad(input_ids: Any, attention_mask: Any = None) -> list[np.ndarray]:
    """Each row's tokens without padding. The mask (1 = token, 0 = padding) may pad on the left
    or the right but must mark one contiguous run of at least one token per row."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise InvalidInputError("input_ids must be a 2-D integer array [batch, seq]")
    if attention_mask is None:
        return list(ids)
    mask = np.asarray(attention_mask).astype(bool)
    if mask.shape != ids.shape:
        raise InvalidInputError(f"attention_mask {mask.shape} must match input_ids {ids.shape}")
    rows = []
    for index, (row, keep) in enumerate(zip(ids, mask, strict=True)):
        where = np.flatnonzero(keep)
        if where.size == 0 or where[-1] - where[0] + 1 != where.size:
            raise InvalidInputError(
                f"attention_mask row {index} must mark one contiguous run of tokens (left or "
                "right padding)"
            )
        rows.append(row[where])
    return rows


class Generator:
    """Prefill and decode for one `Decoder`, on its own CUDA stream (or `stream`: emulated
    tensor-parallel ranks share their group's, `runtime.parallel`).

    Decode steps of one kind (teacher-forced, or generating with given sampling settings) run
    eagerly the first time, are captured in a CUDA graph the second time and replayed after.
    The device state a graph reads (next tokens, positions, lengths, finished flags) is kept
    per batch size and refilled in place by each prefill, so graphs stay valid across batches.
    """

    def __init__(self, decoder: Decoder, *, use_graph: bool = True, stream: Any = None) -> None:
        import cupy

        self.decoder = decoder
        self.use_graph = use_graph
        self.stream = stream if stream is not None else cupy.cuda.Stream(non_blocking=True)
        self.state: _DecodeState | None = None
        self._states: dict[int, _DecodeState] = {}
        self._graphs: dict[tuple, tuple[Any, Any]] = {}
        self._stop_arrays: dict[tuple[int, ...], Any] = {}
        self._warm: set[tuple] = set()
        # The captured prefills' inputs, by key: a replay refills only their tokens.
        self._prefill_steps: dict[tuple, StepInputs] = {}
        self._longest = 0

    def prefill(self, prompts: Sequence[Sequence[int]], all_logits: bool = False) -> Any:
        """Start a new batch: run the prompts into a fresh KV cache; the logits [batch, vocab
        rows] of each prompt's last token (a view the next step overwrites). all_logits=True
        returns every prompt token's logits instead, [tokens, vocab rows], packed prompt after
        prompt (for checking; needs no more tokens in all than the decoder's max_batch)."""
        import cupy

        lengths = [len(prompt) for prompt in prompts]
        batch = len(prompts)
        # Graphed on one GPU only: ranks of a parallel run prefill eagerly, as they always did.
        graphed = self.decoder.comm is None and self.decoder.stage.count == 1
        key = ("prefill", tuple(lengths), all_logits) if graphed else None
        step = self._prefill_steps.get(key)
        if step is None:
            step = self.prefill_inputs(prompts, all_logits)
        else:
            with self._on_stream():
                step.tokens.set(self._prefill_host(prompts, all_logits)[0]["tokens"])
        with self._on_stream():
            if key is None:
                logits = self.decoder.forward(step)
            else:
                logits = self._replay(key, lambda: self.decoder.forward(step), step)
            if batch not in self._states:
                self._states[batch] = _DecodeState.allocate(cupy, batch)
            self.state = self._states[batch]
            self.state.positions.set(np.asarray(lengths, dtype=np.int32))
            self.state.finished.fill(0)
        self._longest = max(lengths)
        return logits

    def prefill_inputs(self, prompts: Sequence[Sequence[int]], all_logits: bool = False):
        """The `StepInputs` of a prefill of `prompts` (checked), on the device."""
        import cupy

        host, max_q_len = self._prefill_host(prompts, all_logits)
        with self._on_stream():
            return StepInputs(
                **{name: cupy.asarray(array) for name, array in host.items()},
                decode=False,
                max_q_len=max_q_len,
                host_cu_seqlens=tuple(host["cu_seqlens"].tolist()),
            )

    def _prefill_host(
        self, prompts: Sequence[Sequence[int]], all_logits: bool
    ) -> tuple[dict[str, np.ndarray], int]:
        """A prefill's `StepInputs` arrays on the host (checked), and its longest prompt."""
        decoder, vocab = self.decoder, self.decoder.spec.vocab_size
        lengths = np.array([len(prompt) for prompt in prompts], dtype=np.int32)
        if not 1 <= len(prompts) <= decoder.max_batch or lengths.min() < 1:
            raise InvalidInputError(
                f"prefill takes 1 to {decoder.max_batch} non-empty prompts, got {len(prompts)}"
            )
        if lengths.max() > decoder.max_seq_len or lengths.sum() > decoder.max_tokens:
            raise InvalidInputError(
                f"prompts of up to {lengths.max()} tokens ({lengths.sum()} in all) do not fit "
                f"this decoder (max_seq_len {decoder.max_seq_len}, max_tokens "
                f"{decoder.max_tokens})"
            )
        tokens = np.concatenate([np.asarray(prompt, dtype=np.int64) for prompt in prompts])
        if tokens.min() < 0 or tokens.max() >= vocab:
            raise InvalidInputError(f"token ids must be in 0..{vocab - 1}")
        batch = len(prompts)
        cu_seqlens = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        host = {
            "tokens": tokens.astype(np.int32),
            "seq_ids": np.repeat(np.arange(batch, dtype=np.int32), lengths),
            "positions": np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]),
            "cu_seqlens": cu_seqlens,
            "past_lens": np.zeros(batch, np.int32),
            "lengths": lengths,
            "last_rows": np.arange(len(tokens), dtype=np.int32)
            if all_logits
            else cu_seqlens[1:] - 1,
        }
        return host, int(lengths.max())

    def decode(self, tokens: Any) -> Any:
        """One step with the given next token per sequence (teacher forcing); the logits."""
        import cupy

        state = self._require_state()
        with self._on_stream():
            state.next_tokens[...] = cupy.asarray(tokens, dtype=cupy.int32)
            return self._step(("logits", state.batch), self._advance)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling = Sampling(),
        stop_tokens: Sequence[int] = (),
        pad_token: int = 0,
    ) -> Generation:
        """Prefill `prompts`, then generate up to `max_new_tokens` tokens per sequence. A
        sequence stops after emitting one of `stop_tokens`; `pad_token` fills its row after."""
        import cupy

        if max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        longest = max((len(prompt) for prompt in prompts), default=0)
        if longest + max_new_tokens - 1 > self.decoder.max_seq_len:
            raise InvalidInputError(
                f"{longest} prompt tokens + {max_new_tokens} new ones exceed max_seq_len "
                f"{self.decoder.max_seq_len}"
            )
        stops = tuple(int(token) for token in stop_tokens)
        if stops and self.decoder.stage.count > 1:
            raise InvalidInputError(
                "stop tokens are not supported under pipeline parallelism: only the last stage "
                "knows which sequences finished"
            )
        with self._on_stream():
            stop_array = self._stop_array(stops)
            out = cupy.full((len(prompts), max_new_tokens), pad_token, cupy.int32)
        marks = [_mark(self.stream)]
        logits = self.prefill(prompts)
        state = self.state
        with self._on_stream():
            state.sample_step.fill(0)
            self._sample(logits, sampling, stop_array, pad_token)
            out[:, 0] = state.next_tokens
            marks.append(_mark(self.stream))
            key = ("generate", state.batch, sampling, stops, pad_token)
            for index in range(1, max_new_tokens):
                if stops and index % FINISHED_CHECK_STEPS == 0 and bool(state.finished.all()):
                    break

                def body(bound: int) -> None:
                    self._sample(self._advance(bound), sampling, stop_array, pad_token)

                self._step(key, body)
                out[:, index] = state.next_tokens
                marks.append(_mark(self.stream))
            self.decoder.wait("a generation's steps")
            tokens = cupy.asnumpy(out)
        times = np.array([cupy.cuda.get_elapsed_time(a, b) for a, b in itertools.pairwise(marks)])
        return Generation(
            tokens=tokens,
            lengths=_generated_lengths(tokens, stops),
            ttft_ms=float(times[0]),
            step_ms=times[1:],
        )

    @contextlib.contextmanager
    def _on_stream(self) -> Iterator[None]:
        """Run on the generator's stream, ordered after the caller's stream on entry and before
        it on exit, so inputs the caller just wrote are seen and outputs are read only once
        they are written, whatever stream the caller uses."""
        import cupy

        caller = cupy.cuda.get_current_stream()
        self.stream.wait_event(caller.record())
        with self.stream:
            yield
        caller.wait_event(self.stream.record())

    def _require_state(self) -> _DecodeState:
        if self.state is None:
            raise InvalidInputError("decode() needs a prefill() first")
        return self.state

    def _advance(self, bound: int) -> Any:
        """A decode step's body up to the logits: length = position + 1, forward, position =
        length (all on the device); `bound`: a host bound on the lengths (`length_bound`)."""
        import cupy

        state = self._require_state()
        cupy.add(state.positions, 1, out=state.lengths)
        logits = self.decoder.forward(dataclasses.replace(state.step, max_length=bound))
        state.positions[...] = state.lengths
        return logits

    def _sample(self, logits: Any, sampling: Sampling, stops: Any, pad: int) -> None:
        """Choose the next tokens into the decode input (on the last pipeline stage, which has
        the logits; it hands them to the first); the random stream advances through a device
        counter, so a replayed graph draws new numbers every step."""
        from ftbench.kernels.sampling import sample

        state = self._require_state()
        if logits is not None:
            sample(
                logits, state.next_tokens, vocab_size=self.decoder.spec.vocab_size,
                method=sampling.method, temperature=sampling.temperature, top_k=sampling.top_k,
                top_p=sampling.top_p, seed=sampling.seed, step=state.sample_step,
                finished=state.finished, stop_tokens=stops, pad_token=pad,
            )  # fmt: skip
        self.decoder.stage.share_tokens(state.next_tokens)
        state.sample_step += 1

    def _stop_array(self, stops: tuple[int, ...]) -> Any:
        """A device array of the stop tokens, kept for the graphs that read it."""
        import cupy

        if stops not in self._stop_arrays:
            array = cupy.asarray(np.asarray(stops, dtype=np.int32)) if stops else None
            self._stop_arrays[stops] = array
        return self._stop_arrays[stops]

    def _step(self, key: tuple, body: Any) -> Any:
        """Run a decode step's `body(bound)` on the stream, `bound` the step's `length_bound`:
        eagerly the first time for `key` and bound (compiling kernels, resolving GEMMs),
        captured in a CUDA graph the second time, then replayed."""
        if self._longest >= self.decoder.max_seq_len:
            raise InvalidInputError(
                f"the KV cache holds {self.decoder.max_seq_len} tokens per sequence; one more "
                "decode step would go past it"
            )
        self._longest += 1
        bound = length_bound(self._longest, self.decoder.max_seq_len)
        return self._replay((*key, bound), lambda: body(bound))

    def _replay(self, key: tuple, body: Any, prefill: StepInputs | None = None) -> Any:
        """`body()` on the stream: eagerly the first time for `key` (compiling kernels,
        resolving GEMMs), captured in a CUDA graph the second time, then replayed. A prefill
        passes its inputs, which are kept with its graph (see `prefill`)."""
        if not self.use_graph:
            return body()
        if key in self._graphs:
            graph, result = self._graphs[key]
            graph.launch(self.stream)
            return result
        if key not in self._warm:
            self._warm.add(key)
            return body()
        if prefill is not None:
            self._drop_old_prefills()
        self.stream.begin_capture()
        try:
            result = body()
        finally:
            graph = self.stream.end_capture()
        self._graphs[key] = (graph, result)
        if prefill is not None:
            self._prefill_steps[key] = prefill
        graph.launch(self.stream)
        return result

    def _drop_old_prefills(self) -> None:
        """Make room for one more prefill graph, dropping the oldest (after the stream has
        finished any launch of it)."""
        kept = [key for key in self._graphs if key[0] == "prefill"]
        if len(kept) < PREFILL_GRAPHS:
            return
        self.stream.synchronize()
        for key in kept[: len(kept) - PREFILL_GRAPHS + 1]:
            del self._graphs[key], self._prefill_steps[key]
            self._warm.discard(key)


@dataclass
class _DecodeState:
    """The device arrays a decode step reads and writes, for one batch size."""

    batch: int
    next_tokens: Any
    positions: Any
    lengths: Any
    finished: Any
    sample_step: Any
    step: StepInputs

    @classmethod
    def allocate(cls, cupy: Any, batch: int) -> _DecodeState:
        rows = cupy.arange(batch, dtype=cupy.int32)
        next_tokens = cupy.zeros(batch, cupy.int32)
        positions = cupy.zeros(batch, cupy.int32)
        lengths = cupy.zeros(batch, cupy.int32)
        step = StepInputs(
            tokens=next_tokens,
            seq_ids=rows,
            positions=positions,
            cu_seqlens=cupy.arange(batch + 1, dtype=cupy.int32),
            past_lens=positions,
            lengths=lengths,
            last_rows=rows,
            decode=True,
            max_q_len=1,
        )
        finished = cupy.zeros(batch, cupy.uint8)
        sample_step = cupy.zeros(1, cupy.int64)
        return cls(batch, next_tokens, positions, lengths, finished, sample_step, step)


def _mark(stream: Any) -> Any:
    import cupy

    event = cupy.cuda.Event()
    event.record(stream)
    return event


def _generated_lengths(tokens: np.ndarray, stops: tuple[int, ...]) -> np.ndarray:
    """Per row: the index of its first stop token + 1, or the number of steps run."""
    lengths = np.full(len(tokens), tokens.shape[1], dtype=np.int64)
    if stops:
        hit = np.isin(tokens, stops)
        first = np.argmax(hit, axis=1)
        lengths = np.where(hit.any(axis=1), first + 1, lengths)
    return lengths
