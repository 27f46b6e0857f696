// Element types and vector access, shared by the decoder's element-wise kernels (decoder.cu) and
// token selection (sampling.cu).
//
// Elem<T> converts __half, __nv_bfloat16 and float to and from fp32 (every kernel computes in
// fp32); Pack<T, N> moves N elements in one load or store of at most 16 bytes.
//
// Included as text: kernels/nvrtc.py inlines it for NVRTC, nvcc finds it next to the sources.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace ftb {

constexpr unsigned FULL_MASK = 0xffffffffu;

template <typename T>
struct Elem;

template <>
struct Elem<__half> {
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};

template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) {
    return __float2bfloat16_rn(v);
  }
};

template <>
struct Elem<float> {
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
};

// N elements accessed as one load or store (16 bytes at most per instruction).
template <typename T, int N>
struct alignas(sizeof(T) * N > 16 ? 16 : sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ void load(const T* pointer, float (&out)[N]) {
  const Pack<T, N> pack = *reinterpret_cast<const Pack<T, N>*>(pointer);
#pragma unroll
  for (int j = 0; j < N; ++j) out[j] = Elem<T>::to_float(pack.v[j]);
}

template <typename T, int N>
__device__ __forceinline__ void store(T* pointer, const float (&in)[N]) {
  Pack<T, N> pack;
#pragma unroll
  for (int j = 0; j < N; ++j) pack.v[j] = Elem<T>::from_float(in[j]);
  *reinterpret_cast<Pack<T, N>*>(pointer) = pack;
}

}  // namespace ftb
