// Helpers shared by the decode GEMVs: the fp16/bf16 ones (gemv.cu) and the 8-bit weight-only
// ones (weight_only.cu). Streaming and cached 16-byte loads, the L2 prefetch of a block's rows,
// the per-type tensor-core mma, the split-K combine (finish_block) and the lane-group transpose
// (transpose_groups). Design: docs/kernels/gemv.md.
//
// Included as text: kernels/nvrtc.py inlines it for NVRTC, nvcc finds it next to the sources.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace ftb {

// The loads are volatile with a memory clobber so that the compiler keeps them after
// ftb_pdl::wait_for_previous_grid and in the order written; the hardware still overlaps them.

// 16 bytes of W: read-only, not kept in L1 (it is used once), coalesced by the caller.
__device__ __forceinline__ uint4 load_stream(const void* pointer) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(pointer)
               : "memory");
  return v;
}

// 16 bytes of X: read-only and shared by every block, so cached in L1.
__device__ __forceinline__ uint4 load_cached(const void* pointer) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(pointer)
               : "memory");
  return v;
}

// v if keep, else zeros: a select, not a branch.
__device__ __forceinline__ uint4 keep_if(bool keep, const uint4& v) {
  return make_uint4(keep ? v.x : 0u, keep ? v.y : 0u, keep ? v.z : 0u, keep ? v.w : 0u);
}

// Bytes of each of its rows a block asks L2 to fetch before it waits for the previous grid:
// enough, over every block, to keep HBM busy while that grid drains (about 1 us of bandwidth
// for 4096 rows), not so much that the prefetches evict each other. Measured: see
// docs/results/gemv.md.
constexpr unsigned kPrefetchRowBytes = 2048;

// Start fetching the first kPrefetchRowBytes of rows [row0, row0 + rows) of W, from element
// k_begin on (at most to k_end), into L2, one bulk prefetch per row. Safe whatever the previous
// grid writes: L2 is the point of coherence, and nothing is read from it until after the wait.
// Bulk prefetches need sm_90; older GPUs have no PDL to overlap either.
template <typename T>
__device__ __forceinline__ void prefetch_rows_l2(const T* w, int row0, int rows, int n, int k,
                                                 int k_begin, int k_end) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (k_begin >= k_end) return;
  const unsigned slice = static_cast<unsigned>((k_end - k_begin) * sizeof(T));
  const unsigned bytes = min(slice, kPrefetchRowBytes);
  for (int r = threadIdx.x; r < rows && row0 + r < n; r += blockDim.x) {
    const T* start = w + static_cast<size_t>(row0 + r) * k + k_begin;
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(start), "r"(bytes) : "memory");
  }
#endif
}

template <typename T>
struct Ops;

template <>
struct Ops<__half> {
  // D = A * B + D; A: 16x16 (row), B: 16x8 (col), fp32 accumulators.
  static __device__ __forceinline__ void mma(float (&d)[4], unsigned a0, unsigned a1,
                                             unsigned a2, unsigned a3, unsigned b0,
                                             unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ float low(unsigned pair) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(pair & 0xffffu)));
  }
  static __device__ __forceinline__ float high(unsigned pair) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(pair >> 16)));
  }
  static __device__ __forceinline__ __half from_float(float value) {
    return __float2half_rn(value);
  }
};

template <>
struct Ops<__nv_bfloat16> {
  static __device__ __forceinline__ void mma(float (&d)[4], unsigned a0, unsigned a1,
                                             unsigned a2, unsigned a3, unsigned b0,
                                             unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
  // bf16 is the top half of an fp32: widening is a shift or a mask.
  static __device__ __forceinline__ float low(unsigned pair) { return __uint_as_float(pair << 16); }
  static __device__ __forceinline__ float high(unsigned pair) {
    return __uint_as_float(pair & 0xffff0000u);
  }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float value) {
    return __float2bfloat16_rn(value);
  }
};

// What finish_block does to a finished sum before rounding it to Y: nothing for the fp16/bf16
// GEMVs (the weight-only ones multiply by the row's scale, once per output).
struct Unscaled {
  __device__ __forceinline__ float operator()(int /*row*/, float sum) const { return sum; }
};

// Combine the block's per-warp sums, red[warp][token][row], and write Y = epilogue(row, sum).
//
// With one block along K the sums go straight to Y. With split-K (gridDim.y > 1) each block
// writes its sums to partial[split][token][n], and the last block of its row range to arrive
// (counted in counters[blockIdx.x]) adds the gridDim.y partials in split order and writes Y:
// one launch, no atomics on data, the same result whichever block comes last. That block also
// resets its counter, so the counters are all zero again when the kernel ends.
template <typename T, int M, int ROWS, int WARPS, typename Epilogue = Unscaled>
__device__ __forceinline__ void finish_block(const float (&red)[WARPS][M][ROWS],
                                             T* __restrict__ y, float* __restrict__ partial,
                                             unsigned* __restrict__ counters, int n, int row0,
                                             const Epilogue& epilogue = Epilogue()) {
  __shared__ unsigned arrival;
  __syncthreads();
  const int splits = gridDim.y;
  for (int i = threadIdx.x; i < M * ROWS; i += WARPS * 32) {
    const int token = i / ROWS, row = row0 + i % ROWS;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) sum += red[w][token][i % ROWS];
    if (row >= n) continue;
    if (splits == 1) {
      y[static_cast<size_t>(token) * n + row] = Ops<T>::from_float(epilogue(row, sum));
    } else {
      partial[(static_cast<size_t>(blockIdx.y) * M + token) * n + row] = sum;
    }
  }
  if (splits == 1) return;
  // The barrier orders every thread's partial stores before thread 0's increment, whose release
  // half (cumulative) publishes them at GPU scope; its acquire half makes the other blocks'
  // published partials visible to thread 0, and the second barrier to the rest of the block.
  // An acq_rel atomic rather than __threadfence() on both sides of a plain one: 3-6 % faster
  // split-K launches on an H200 (docs/results/gemv.md, "Split-K's cost").
  __syncthreads();
  if (threadIdx.x == 0) {
    asm volatile("atom.add.acq_rel.gpu.u32 %0, [%1], 1;"
                 : "=r"(arrival)
                 : "l"(&counters[blockIdx.x])
                 : "memory");
  }
  __syncthreads();
  if (arrival != static_cast<unsigned>(splits - 1)) return;
  for (int i = threadIdx.x; i < M * ROWS; i += WARPS * 32) {
    const int token = i / ROWS, row = row0 + i % ROWS;
    if (row >= n) continue;
    float sum = 0.0f;
#pragma unroll 4
    for (int s = 0; s < splits; ++s) {  // unrolled: the loads go out together
      sum += __ldcg(&partial[(static_cast<size_t>(s) * M + token) * n + row]);
    }
    y[static_cast<size_t>(token) * n + row] = Ops<T>::from_float(epilogue(row, sum));
  }
  if (threadIdx.x == 0) counters[blockIdx.x] = 0u;
}

// Exchange 16-byte vectors among the GROUP lane groups g = (g & ~(GROUP-1)) + p, p < GROUP, so
// that slot j of group p, which held (row j, chunk p) of the group's rows, holds (row p, chunk j).
// Butterfly: at stage b, a vector whose slot and group differ in bit b swaps that bit of both.
template <int GROUP>
__device__ __forceinline__ void transpose_groups(uint4 (&v)[GROUP], int p) {
#pragma unroll
  for (int b = 1; b < GROUP; b *= 2) {
    const bool high = (p & b) != 0;
#pragma unroll
    for (int j0 = 0; j0 < GROUP; ++j0) {
      if (j0 & b) continue;
      const int j1 = j0 | b;
      uint4 send = high ? v[j0] : v[j1];
      uint4 got;
      got.x = __shfl_xor_sync(0xffffffffu, send.x, 4 * b);
      got.y = __shfl_xor_sync(0xffffffffu, send.y, 4 * b);
      got.z = __shfl_xor_sync(0xffffffffu, send.z, 4 * b);
      got.w = __shfl_xor_sync(0xffffffffu, send.w, 4 * b);
      v[j0] = high ? got : v[j0];
      v[j1] = high ? v[j1] : got;
    }
  }
}

// The mma kernels' bookkeeping. first_rows[tile][h] is the first of the GROUP rows that lane
// group p loads (chunk p of each) for half h of a 16-row tile: rows g and g + 8 of the mma.
template <int TILES>
__device__ __forceinline__ void tile_first_rows(int (&first_rows)[TILES][2], int row0,
                                                int group_base) {
#pragma unroll
  for (int tile = 0; tile < TILES; ++tile) {
#pragma unroll
    for (int h = 0; h < 2; ++h) first_rows[tile][h] = row0 + tile * 16 + h * 8 + group_base;
  }
}

template <int TILES, int MT>
__device__ __forceinline__ void zero_accumulators(float (&acc)[TILES][MT][4]) {
#pragma unroll
  for (int tile = 0; tile < TILES; ++tile) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[tile][mt][i] = 0.0f;
    }
  }
}

// A warp's mma sums into red[warp][token][row] for finish_block: accumulator i of tile/mt holds
// row g + 8 * (i / 2), token mt * 8 + 2t + i % 2 (the m16n8 C fragment); tokens past M dropped.
template <int M, int ROWS, int WARPS, int TILES, int MT>
__device__ __forceinline__ void store_mma_sums(float (&red)[WARPS][M][ROWS],
                                               const float (&acc)[TILES][MT][4], int warp, int g,
                                               int t) {
#pragma unroll
  for (int tile = 0; tile < TILES; ++tile) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int token = mt * 8 + 2 * t + i % 2;
        if (token < M) red[warp][token][tile * 16 + g + 8 * (i / 2)] = acc[tile][mt][i];
      }
    }
  }
}

// One step of a lane's W vectors in the mma kernels: load j of (tile, h) reads row
// first_rows[tile][h] + j (clamped to the last row, which is read but never written) at
// `offset` elements past w_lane, zeroed unless in_range (a select, so every load stays in flight).
template <typename W, int TILES, int GROUP>
__device__ __forceinline__ void load_w_step(uint4 (&wv)[TILES][2][GROUP], const W* w_lane,
                                            const int (&first_rows)[TILES][2], int n, int k,
                                            int offset, bool in_range) {
#pragma unroll
  for (int tile = 0; tile < TILES; ++tile) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int j = 0; j < GROUP; ++j) {
        const size_t row = min(first_rows[tile][h] + j, n - 1);
        wv[tile][h][j] = keep_if(in_range, load_stream(w_lane + row * k + offset));
      }
    }
  }
}

}  // namespace ftb
