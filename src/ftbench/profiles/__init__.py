"""Model architectures (`ModelSpec`), workloads and the GEMM problems they issue."""
