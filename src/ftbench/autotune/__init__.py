"""GEMM autotuning: problems, backends, candidate verification, the sweep and the tuned cache."""
