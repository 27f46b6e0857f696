"""CUDA kernels with thin, checked Python launchers, and the GEMM dispatch."""
