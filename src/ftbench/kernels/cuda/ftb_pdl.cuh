// Programmatic dependent launch (PDL), shared by every kernel of kernels/cuda.
//
// Inside CUDA graphs on sm_90 and newer, the runtime launches kernels with programmatic stream
// serialization (kernels/nvrtc.py `launch`): a kernel's blocks may start while the previous
// kernel on the stream is still finishing. So every kernel calls ftb_pdl::begin() before it
// reads or writes memory that another kernel touches; its wait returns once the previous grid
// has completed and its writes are visible, and its trigger lets the next kernel start early in
// the same way (which is safe, because that kernel waits too). A kernel may instead wait first
// and allow the next one later: the GEMVs do so after their loads, so that the next kernel's
// early start overlaps their drain rather than their whole run. Waiting transitively covers
// every earlier kernel: the previous one could not complete before its own wait returned. Both
// instructions are no-ops in a plain launch and before sm_90.
//
// Included as text: kernels/nvrtc.py inlines it for NVRTC, nvcc finds it next to the sources.

#pragma once

namespace ftb_pdl {

__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_next_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// What a kernel does first.
__device__ __forceinline__ void begin() {
  wait_for_previous_grid();
  allow_next_grid();
}

}  // namespace ftb_pdl
