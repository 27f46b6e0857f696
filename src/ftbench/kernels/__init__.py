"""CUDA kernels (`cuda/*.cu`) and their checked launchers, cuBLAS through ctypes, NVRTC builds."""
