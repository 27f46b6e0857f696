// Decode GEMMs: Y[m, n] = X[m, k] @ W[n, k]^T for small m (1..16), fp16 or bf16 in and out,
// fp32 accumulation. W is row-major [n, k] (torch F.linear layout), X row-major [m, k], Y
// row-major [m, n]. These kernels exist to stream W from HBM at full speed: every byte of W is
// read exactly once, with 16-byte loads that skip L1 (W is never reused), while X (small, shared
// by every block) is read through the cached path. Design: docs/kernels/gemv.md; measurements:
// docs/results/gemv.md.
//
// Requirements the launcher (ftbench/kernels/gemv.py) checks: k % 8 == 0 and 16-byte aligned
// x and w, so each lane's 8-element vector of a row is one aligned 16-byte load.
//
// Two kernel families, both templated on the element type T, the token count M (compile time)
// and the tile shape:
//   ftb_gemv_mma  tensor cores (mma.sync m16n8k16, fp32 accumulators). A warp multiplies a
//                 16-row tile of W by the M tokens of X: one mma per 256 W elements (16 rows x
//                 16 of K) for up to 8 tokens, so the arithmetic never competes with the loads.
//                 One load instruction reads 64 * GROUP contiguous bytes of 8 / GROUP rows.
//   ftb_gemv_fma  CUDA cores: each lane takes 8 consecutive elements of a row (a warp covers
//                 512 contiguous bytes per load), fp32 FMAs, warp-shuffle reduction. For M <= 4.
// Both split K twice: among the WARPS warps of a block (combined through shared memory) and
// among gridDim.y blocks (split-K, combined by the last block to finish; see finish_block).
// Both support programmatic dependent launch: they ask L2 for the first piece of each of their
// rows of W, then wait for the previous grid before reading X or writing anything, and let the
// next grid start once their loads are done, so that its prefetches overlap their drain.
//
// Builds with NVRTC (CuPy RawModule) and with nvcc for sm_80 and newer.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ftb_gemv.cuh"
#include "ftb_pdl.cuh"

namespace ftb {

// 8 elements of a 16-byte vector, widened to fp32 (the fma kernel).
template <typename T>
__device__ __forceinline__ void widen8(const uint4& v, float (&out)[8]) {
  out[0] = Ops<T>::low(v.x);
  out[1] = Ops<T>::high(v.x);
  out[2] = Ops<T>::low(v.y);
  out[3] = Ops<T>::high(v.y);
  out[4] = Ops<T>::low(v.z);
  out[5] = Ops<T>::high(v.z);
  out[6] = Ops<T>::low(v.w);
  out[7] = Ops<T>::high(v.w);
}

// One chunk of the mma kernel: UNROLL steps of 32 * GROUP elements of K for TILES 16-row tiles.
//
// The mma's A fragment gives lane (g = lane / 4, t = lane % 4) rows g and g + 8 of a tile. The
// mma sums over K in whatever order its fragments hold K, as long as A and B agree: a 16-byte
// vector of 8 consecutive elements, its elements 0..3 at the first mma's K positions {2t, 2t+1,
// 2t+8, 2t+9} and 4..7 at the second's, is a valid piece of both fragments. So with GROUP = 1 a
// lane loads its own rows directly, elements [t*8, t*8 + 8) of each 32, and one load instruction
// reads 8 rows x 64 bytes. Wider pieces of a row per instruction stream better from HBM: with
// GROUP = 2, 4, 8 the GROUP lane groups g = base + p load the same row together (64 * GROUP
// bytes, group p taking chunk p) and transpose_groups hands each row back to its owner.
// X (the B fragment) is loaded the same way, for tokens g (and g + 8 when M > 8): the lane
// groups of a token load 64 * GROUP contiguous bytes of it together (at m = 16 as many bytes as
// W, so the wide loads halve the L1 requests at GROUP = 2), tokens past M zeroed.
// Row addresses are recomputed per load (clamped to the last row, which is read but never
// written) rather than held: TILES * 2 * GROUP pointers would crowd out the loaded data.
template <typename T, int M, int TILES, int GROUP, int UNROLL, bool CHECK>
__device__ __forceinline__ void mma_chunk(float (&acc)[TILES][(M + 7) / 8][4], const T* w_lane,
                                          const int (&first_rows)[TILES][2], int n, int k,
                                          const T* x_lane, int group_base, int kc, int p,
                                          int lane_k, int k_end) {
  constexpr int MT = (M + 7) / 8;
  constexpr int STEP = 32 * GROUP;
  uint4 wv[UNROLL][TILES][2][GROUP];
  uint4 xv[UNROLL][MT][GROUP];
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    // Out of range (the tail only), load the row's first vector and zero it: no branches, so
    // the compiler keeps every load of the chunk in flight together.
    const bool in_range = !CHECK || kc + u * STEP + p * 32 + lane_k < k_end;
    const int offset = in_range ? kc + u * STEP : -(p * 32 + lane_k);
    load_w_step(wv[u], w_lane, first_rows, n, k, offset, in_range);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int j = 0; j < GROUP; ++j) {
        const int token = mt * 8 + group_base + j;
        const size_t row = min(token, M - 1);
        xv[u][mt][j] = keep_if(in_range && token < M, load_cached(x_lane + row * k + offset));
      }
    }
  }
  // A memory-ordering point: the compiler may not sink the loads above into the arithmetic
  // below, which it otherwise does to save registers, leaving few loads in flight.
  __syncwarp();
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) transpose_groups<GROUP>(xv[u][mt], p);
#pragma unroll
    for (int tile = 0; tile < TILES; ++tile) {
#pragma unroll
      for (int h = 0; h < 2; ++h) transpose_groups<GROUP>(wv[u][tile][h], p);
#pragma unroll
      for (int c = 0; c < GROUP; ++c) {
        const uint4& top = wv[u][tile][0][c];
        const uint4& bottom = wv[u][tile][1][c];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const uint4& b = xv[u][mt][c];
          Ops<T>::mma(acc[tile][mt], top.x, bottom.x, top.y, bottom.y, b.x, b.y);
          Ops<T>::mma(acc[tile][mt], top.z, bottom.z, top.w, bottom.w, b.z, b.w);
        }
      }
    }
  }
}

// One chunk of the fma kernel: UNROLL steps of 256 elements of K for ROWS rows.
template <typename T, int M, int ROWS, int UNROLL, bool CHECK>
__device__ __forceinline__ void fma_chunk(float (&acc)[ROWS][M], const T* const (&w_rows)[ROWS],
                                          const T* const (&x_rows)[M], int kc, int lane_k,
                                          int k_end) {
  uint4 wv[UNROLL][ROWS];
  uint4 xv[UNROLL][M];
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    const bool in_range = !CHECK || kc + u * 256 + lane_k < k_end;
    const int offset = in_range ? kc + u * 256 : -lane_k;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) wv[u][r] = keep_if(in_range, load_stream(w_rows[r] + offset));
#pragma unroll
    for (int token = 0; token < M; ++token) {
      xv[u][token] = keep_if(in_range, load_cached(x_rows[token] + offset));
    }
  }
  __syncwarp();  // keeps every load above in flight together (see mma_chunk)
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    float wf[ROWS][8];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) widen8<T>(wv[u][r], wf[r]);
#pragma unroll
    for (int token = 0; token < M; ++token) {
      float xf[8];
      widen8<T>(xv[u][token], xf);
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][token] = fmaf(wf[r][e], xf[e], acc[r][token]);
      }
    }
  }
}

}  // namespace ftb

// Tensor-core GEMV. Block: WARPS warps on the same ROWS rows (ROWS / 16 tiles), splitting the
// block's K range [blockIdx.y * k_per_split, + k_per_split) in chunks of 32 * GROUP * UNROLL
// elements; one load instruction reads 64 * GROUP contiguous bytes of each of 8 / GROUP rows.
// Grid: (ceil(n / ROWS), split_k). Rows past n are clamped on load and never written.
template <typename T, int M, int ROWS, int WARPS, int GROUP, int UNROLL>
__global__ void __launch_bounds__(WARPS * 32, 1)
    ftb_gemv_mma(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                 float* __restrict__ partial, unsigned* __restrict__ counters, int n, int k,
                 int k_per_split) {
  static_assert(M >= 1 && M <= 16, "M must be 1..16");
  static_assert(ROWS % 16 == 0, "the mma kernel works on 16-row tiles");
  static_assert(GROUP == 1 || GROUP == 2 || GROUP == 4 || GROUP == 8, "GROUP: 1, 2, 4 or 8");
  constexpr int TILES = ROWS / 16;
  constexpr int MT = (M + 7) / 8;
  constexpr int CHUNK = 32 * GROUP * UNROLL;
  __shared__ float red[WARPS][M][ROWS];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int p = g % GROUP, group_base = g - p;
  const int lane_k = t * 8;
  const int row0 = blockIdx.x * ROWS;
  const int k_begin = blockIdx.y * k_per_split;
  const int k_end = min(k, k_begin + k_per_split);

  // Load j of (tile, h) reads row first_rows[tile][h] + j, chunk p of each step.
  const T* w_lane = w + p * 32 + lane_k;
  int first_rows[TILES][2];
  ftb::tile_first_rows(first_rows, row0, group_base);
  const T* x_lane = x + p * 32 + lane_k;

  float acc[TILES][MT][4];
  ftb::zero_accumulators(acc);
  int kc = k_begin + warp * CHUNK;
  ftb::prefetch_rows_l2(w, row0, ROWS, n, k, k_begin, k_end);
  ftb_pdl::wait_for_previous_grid();
  for (; kc + CHUNK <= k_end; kc += WARPS * CHUNK) {
    ftb::mma_chunk<T, M, TILES, GROUP, UNROLL, false>(acc, w_lane, first_rows, n, k, x_lane,
                                                      group_base, kc, p, lane_k, k_end);
  }
  if (kc < k_end) {
    ftb::mma_chunk<T, M, TILES, GROUP, UNROLL, true>(acc, w_lane, first_rows, n, k, x_lane,
                                                     group_base, kc, p, lane_k, k_end);
  }
  // Let the next grid start (and prefetch) while this one drains; see ftb_pdl.cuh.
  ftb_pdl::allow_next_grid();

  ftb::store_mma_sums(red, acc, warp, g, t);
  ftb::finish_block<T, M, ROWS, WARPS>(red, y, partial, counters, n, row0);
}

// CUDA-core GEMV for small M. Block: WARPS warps on the same ROWS rows, splitting the block's
// K range in chunks of 256 * UNROLL elements; lane l reads elements [l*8, l*8 + 8) of each
// 256-element step. Grid: (ceil(n / ROWS), split_k).
template <typename T, int M, int ROWS, int WARPS, int UNROLL>
__global__ void __launch_bounds__(WARPS * 32, 1)
    ftb_gemv_fma(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                 float* __restrict__ partial, unsigned* __restrict__ counters, int n, int k,
                 int k_per_split) {
  static_assert(M >= 1 && M <= 16, "M must be 1..16");
  constexpr int CHUNK = 256 * UNROLL;
  __shared__ float red[WARPS][M][ROWS];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int lane_k = lane * 8;
  const int row0 = blockIdx.x * ROWS;
  const int k_begin = blockIdx.y * k_per_split;
  const int k_end = min(k, k_begin + k_per_split);

  const T* w_rows[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    w_rows[r] = w + static_cast<size_t>(min(row0 + r, n - 1)) * k + lane_k;
  }
  const T* x_rows[M];
#pragma unroll
  for (int token = 0; token < M; ++token) x_rows[token] = x + static_cast<size_t>(token) * k + lane_k;

  float acc[ROWS][M];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
#pragma unroll
    for (int token = 0; token < M; ++token) acc[r][token] = 0.0f;
  }
  int kc = k_begin + warp * CHUNK;
  ftb::prefetch_rows_l2(w, row0, ROWS, n, k, k_begin, k_end);
  ftb_pdl::wait_for_previous_grid();
  for (; kc + CHUNK <= k_end; kc += WARPS * CHUNK) {
    ftb::fma_chunk<T, M, ROWS, UNROLL, false>(acc, w_rows, x_rows, kc, lane_k, k_end);
  }
  if (kc < k_end) ftb::fma_chunk<T, M, ROWS, UNROLL, true>(acc, w_rows, x_rows, kc, lane_k, k_end);
  // Let the next grid start (and prefetch) while this one drains; see ftb_pdl.cuh.
  ftb_pdl::allow_next_grid();

#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
#pragma unroll
    for (int token = 0; token < M; ++token) {
      float v = acc[r][token];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane == 0) red[warp][token][r] = v;
    }
  }
  ftb::finish_block<T, M, ROWS, WARPS>(red, y, partial, counters, n, row0);
}

// The read-bandwidth ceiling for these kernels: every 16-byte vector of src read once with the
// same streaming load as W, in the fma kernel's pattern (each warp reads UNROLL consecutive
// 512-byte pieces at once, warps striding over the buffer); one word per thread is written to
// sink (grid * block words) so the loads cannot be dropped.
extern "C" __global__ void __launch_bounds__(256)
    ftb_read_probe(const uint4* __restrict__ src, long long vectors, unsigned* __restrict__ sink) {
  constexpr int UNROLL = 8;
  constexpr int PIECE = 32 * UNROLL;  // vectors one warp reads per step
  const int lane = threadIdx.x % 32;
  const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x / 32);
  const long long first = static_cast<long long>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  unsigned folded = 0u;
  long long piece = first;
  for (; (piece + 1) * PIECE <= vectors; piece += warps) {
    uint4 v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) v[u] = ftb::load_stream(src + piece * PIECE + u * 32 + lane);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) folded ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (long long i = piece * PIECE + lane; i < vectors; i += 32) {
    const uint4 v = ftb::load_stream(src + i);
    folded ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  sink[static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x] = folded;
}
