"""The CuPy transformer runtime: weights, KV cache, decoder, generation, parallelism."""
