"""Checks that the CUDA runtime computes what it should, on tiny random models, apart from the
product: nothing in ftbench imports this package; the GPU tests and benchmarks/ do.

- `hf_check`: the runtime against Hugging Face transformers in float64, from safetensors
  checkpoints of small random HF models (GPT-J, GPT-2, LLaMA with grouped-query attention).
- `parallel_check`: tensor- and pipeline-parallel ranks against the one-GPU runtime, emulated in
  one process (`emulated_group`) or real (one process per GPU, `python -m
  ftbench.validation.parallel_check`).
- `emulated_group`: ranks as threads on one GPU behind the `runtime.parallel.Communicator`
  interface.
"""
