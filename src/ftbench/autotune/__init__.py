"""GEMM autotuning: the plan of what to tune, candidate verification and the resumable sweep."""
