"""The GEMM vocabulary shared by the tuner and the runtime.

`GemmProblem` (one shape), `Candidate` (one way to run it), the backends that turn a candidate
into a runner (cuBLAS, cuBLASLt, CUTLASS, the project's GEMVs), the tuned-cache file format with
its one loader, and `GemmDispatch`, through which every linear layer of the runtime runs.
"""
