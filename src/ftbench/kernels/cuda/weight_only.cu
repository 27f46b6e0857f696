// Weight-only decode GEMMs: Y[m, n] = X[m, k] @ (Wq[n, k] * scale[n])^T for small m (1..16),
// with 8-bit weights Wq (int8, symmetric, or fp8 E4M3) and one scale per output channel (fp32 or
// fp16), X and Y fp16 or bf16, fp32 accumulation. The layouts are gemv.cu's: Wq row-major [n, k]
// (torch F.linear layout, one byte an element), X row-major [m, k], Y row-major [m, n]. Also the
// quantiser that makes Wq and its scales from an fp16/bf16 weight (per-output-channel absmax).
//
// The point is gemv.cu's, at half the bytes: stream Wq from HBM at full speed. Every byte of Wq
// is read once, with 16-byte streaming loads (16 weights a load); the weights become fp16/bf16
// pairs in registers right before the tensor-core mma that uses them, and the scale multiplies the
// finished fp32 sum of each output once (finish_block's epilogue) instead of every weight.
// Design: docs/kernels/weight_only.md.
//
// Requirements the launcher (ftbench/kernels/weight_only.py) checks: k % 16 == 0 and 16-byte
// aligned x and Wq, so each lane's 16 weights of a row are one aligned 16-byte load; fp8 weights
// need compute capability 8.9 or newer (the E4M3 conversion instructions), and an instance with
// fp8 weights does not compile for older targets.
//
// Builds with NVRTC (CuPy RawModule) and with nvcc for sm_80 and newer.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "ftb_elem.cuh"
#include "ftb_gemv.cuh"
#include "ftb_pdl.cuh"

#if defined(__CUDACC_RTC__)
typedef signed char int8_t;  // NVRTC has no <cstdint>; nvcc's implicit headers define it
#endif

// Whether this compilation target converts E4M3 in hardware (sm_89 and newer; nvcc's host pass,
// which compiles no device code, says yes). Without it the fp8 conversions below do not exist,
// and an fp8 instance fails to compile with the primary templates' message.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 890
#define FTB_FP8_CONVERSIONS
#endif

namespace ftb {

// Four 8-bit weights (one 32-bit word, weight 0 in the low byte) to two registers of T pairs:
// `lo` holds weights 0 and 1, `hi` weights 2 and 3, the first of each in the low half (the mma
// fragment's order). Every conversion is exact: int8 values and E4M3 values are all fp16 and
// bf16 numbers.
template <typename T, typename Q>
struct Dequant {
  static_assert(sizeof(Q) == 0, "no conversion of these weights on this target (fp8: sm_89+)");
};

__device__ __forceinline__ unsigned sub_f16x2(unsigned a, unsigned b) {
  unsigned d;
  asm("sub.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

// int8 -> fp16 with no conversion instruction: with its sign bit flipped a byte is q + 128
// (0..255), and the fp16 bit pattern 0x6400 | b is 1024 + b exactly (fp16's spacing at 1024 is
// 1), so one byte permute puts two biased bytes under the exponent 0x64 and one subtraction of
// 1152 (0x6480) gives q: 5 instructions for 4 weights.
template <>
struct Dequant<__half, int8_t> {
  static __device__ __forceinline__ void pairs(unsigned word, unsigned& lo, unsigned& hi) {
    const unsigned biased = word ^ 0x80808080u;
    lo = sub_f16x2(__byte_perm(biased, 0x64646464u, 0x4140), 0x64806480u);
    hi = sub_f16x2(__byte_perm(biased, 0x64646464u, 0x4342), 0x64806480u);
  }
};

// int8 -> bf16: bf16 has too few mantissa bits for the fp16 trick, so each byte goes through
// fp32 (0x4B000000 | b is 2^23 + b exactly; subtracting 2^23 + 128 gives q) and a pair keeps the
// top halves of its two fp32 values, exact because |q| <= 128 has at most 8 significant bits:
// 11 instructions for 4 weights.
template <>
struct Dequant<__nv_bfloat16, int8_t> {
  static __device__ __forceinline__ unsigned widened(unsigned biased, unsigned selector) {
    return __float_as_uint(__uint_as_float(__byte_perm(biased, 0x4B000000u, selector)) -
                           8388736.0f);
  }
  static __device__ __forceinline__ void pairs(unsigned word, unsigned& lo, unsigned& hi) {
    const unsigned biased = word ^ 0x80808080u;
    lo = __byte_perm(widened(biased, 0x7650), widened(biased, 0x7651), 0x7632);
    hi = __byte_perm(widened(biased, 0x7652), widened(biased, 0x7653), 0x7632);
  }
};

#if defined(FTB_FP8_CONVERSIONS)
// Two E4M3 bytes (the low 16 bits of `bits`) to an fp16 pair: one cvt.rn.f16x2.e4m3x2.
__device__ __forceinline__ unsigned e4m3x2_to_f16x2(unsigned bits) {
  const __half2_raw pair =
      __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(bits & 0xffffu), __NV_E4M3);
  return static_cast<unsigned>(pair.x) | (static_cast<unsigned>(pair.y) << 16);
}

// fp8 E4M3 -> fp16 (sm_89+): two conversion instructions for 4 weights.
template <>
struct Dequant<__half, __nv_fp8_e4m3> {
  static __device__ __forceinline__ void pairs(unsigned word, unsigned& lo, unsigned& hi) {
    lo = e4m3x2_to_f16x2(word);
    hi = e4m3x2_to_f16x2(word >> 16);
  }
};

// fp8 E4M3 -> bf16 (sm_89+): there is no E4M3 -> bf16 conversion before sm_100, so through fp16
// and fp32, keeping the top halves (exact: an E4M3 value has 4 significant bits).
template <>
struct Dequant<__nv_bfloat16, __nv_fp8_e4m3> {
  static __device__ __forceinline__ unsigned f16x2_to_bf16x2(unsigned pair) {
    const float first = Ops<__half>::low(pair), second = Ops<__half>::high(pair);
    return __byte_perm(__float_as_uint(first), __float_as_uint(second), 0x7632);
  }
  static __device__ __forceinline__ void pairs(unsigned word, unsigned& lo, unsigned& hi) {
    lo = f16x2_to_bf16x2(e4m3x2_to_f16x2(word));
    hi = f16x2_to_bf16x2(e4m3x2_to_f16x2(word >> 16));
  }
};
#endif

// finish_block's epilogue: a row's finished sum times the row's scale.
template <typename S>
struct RowScale {
  const S* scale;
  __device__ __forceinline__ float operator()(int row, float sum) const {
    return sum * Elem<S>::to_float(scale[row]);
  }
};

// Word i of a 16-byte vector (i a compile-time constant once unrolled).
__device__ __forceinline__ unsigned word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// One chunk: UNROLL steps of 64 * GROUP elements of K for TILES 16-row tiles.
//
// A 16-byte load of Wq is 16 consecutive weights of a row, four mmas' worth for one lane: each
// m16n8k16 takes 4 elements of each of the lane's rows g and g + 8 (lane g = lane / 4,
// t = lane % 4, at K positions {2t, 2t+1, 2t+8, 2t+9}). As gemv.cu's mma_chunk explains, any
// assignment of K to those positions works if A and B agree, so lane t takes elements
// [t*16, t*16 + 16) of each 64 of its rows, and mma j (j = 0..3) gets weights 4j..4j+3 from word
// j of the vector and X elements 4j..4j+3 of token g from the same K (the lane's 32 bytes of X
// are two 16-byte loads). One load instruction reads 8 rows x 64 bytes of Wq; with GROUP > 1 the
// GROUP lane groups g = base + p read 64 * GROUP bytes of one row together (group p taking chunk
// p) and transpose_groups hands each row back to its owner. X is loaded straight into the lanes
// that use it, without that transpose: two X loads per Wq load, from L1.
template <typename T, typename Q, int M, int TILES, int GROUP, int UNROLL, bool CHECK>
__device__ __forceinline__ void weight_only_chunk(float (&acc)[TILES][(M + 7) / 8][4],
                                                  const Q* w_lane,
                                                  const int (&first_rows)[TILES][2], int n, int k,
                                                  const T* const (&x_lanes)[(M + 7) / 8],
                                                  const bool (&tokens_in)[(M + 7) / 8], int kc,
                                                  int p, int lane_k, int k_end) {
  constexpr int MT = (M + 7) / 8;
  constexpr int STEP = 64 * GROUP;
  uint4 wv[UNROLL][TILES][2][GROUP];
  uint4 xv[UNROLL][MT][GROUP][2];
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    // Out of range (the tail only), load the row's first vector and zero it: no branches, so
    // the compiler keeps every load of the chunk in flight together.
    const bool in_range = !CHECK || kc + u * STEP + p * 64 + lane_k < k_end;
    const int offset = in_range ? kc + u * STEP : -(p * 64 + lane_k);
    load_w_step(wv[u], w_lane, first_rows, n, k, offset, in_range);
    // Slot c of a lane will hold chunk c of its row (after the transpose): X follows it.
#pragma unroll
    for (int c = 0; c < GROUP; ++c) {
      const bool chunk_in_range = !CHECK || kc + u * STEP + c * 64 + lane_k < k_end;
      const int x_offset = chunk_in_range ? kc + u * STEP + c * 64 : -lane_k;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const bool keep = chunk_in_range && tokens_in[mt];
        xv[u][mt][c][0] = keep_if(keep, load_cached(x_lanes[mt] + x_offset));
        xv[u][mt][c][1] = keep_if(keep, load_cached(x_lanes[mt] + x_offset + 8));
      }
    }
  }
  // A memory-ordering point: the compiler may not sink the loads above into the arithmetic
  // below, which it otherwise does to save registers, leaving few loads in flight.
  __syncwarp();
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
#pragma unroll
    for (int tile = 0; tile < TILES; ++tile) {
#pragma unroll
      for (int h = 0; h < 2; ++h) transpose_groups<GROUP>(wv[u][tile][h], p);
#pragma unroll
      for (int c = 0; c < GROUP; ++c) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          unsigned top_lo, top_hi, bottom_lo, bottom_hi;
          Dequant<T, Q>::pairs(word_of(wv[u][tile][0][c], j), top_lo, top_hi);
          Dequant<T, Q>::pairs(word_of(wv[u][tile][1][c], j), bottom_lo, bottom_hi);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const uint4& xs = xv[u][mt][c][j / 2];
            Ops<T>::mma(acc[tile][mt], top_lo, bottom_lo, top_hi, bottom_hi,
                        word_of(xs, 2 * (j % 2)), word_of(xs, 2 * (j % 2) + 1));
          }
        }
      }
    }
  }
}

// Largest code of each 8-bit format (a row's absmax maps to it), and four fp32 values, already
// divided by the scale, to four codes (value 0 in the low byte).
template <typename Q>
struct Codes {
  static_assert(sizeof(Q) == 0, "no quantisation to these codes on this target (fp8: sm_89+)");
};

template <>
struct Codes<int8_t> {
  static constexpr float kMax = 127.0f;
  // Round to nearest, ties to even (as NumPy's rint).
  static __device__ __forceinline__ unsigned code(float v) {
    return static_cast<unsigned>(max(-127, min(127, __float2int_rn(v)))) & 0xffu;
  }
  static __device__ __forceinline__ unsigned pack4(float a, float b, float c, float d) {
    return code(a) | (code(b) << 8) | (code(c) << 16) | (code(d) << 24);
  }
};

#if defined(FTB_FP8_CONVERSIONS)
template <>
struct Codes<__nv_fp8_e4m3> {
  static constexpr float kMax = 448.0f;
  // cvt.rn.satfinite.e4m3x2.f32 (sm_89+): round to nearest even, saturating at +-448.
  static __device__ __forceinline__ unsigned pack4(float a, float b, float c, float d) {
    const unsigned low = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
    const unsigned high = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, __NV_E4M3);
    return low | (high << 16);
  }
};
#endif

}  // namespace ftb

// The weight-only GEMV. Block: WARPS warps on the same ROWS rows (ROWS / 16 tiles), splitting
// the block's K range [blockIdx.y * k_per_split, + k_per_split) in chunks of 64 * GROUP * UNROLL
// elements; one load instruction reads 64 * GROUP contiguous bytes of each of 8 / GROUP rows.
// Grid: (ceil(n / ROWS), split_k). Rows past n are clamped on load and never written. T: X and Y
// (__half, __nv_bfloat16); Q: Wq (int8_t, __nv_fp8_e4m3); S: scale (float, __half).
template <typename T, typename Q, typename S, int M, int ROWS, int WARPS, int GROUP, int UNROLL>
__global__ void __launch_bounds__(WARPS * 32, 1)
    ftb_weight_only_mma(const T* __restrict__ x, const Q* __restrict__ w,
                        const S* __restrict__ scale, T* __restrict__ y,
                        float* __restrict__ partial, unsigned* __restrict__ counters, int n,
                        int k, int k_per_split) {
  static_assert(M >= 1 && M <= 16, "M must be 1..16");
  static_assert(ROWS % 16 == 0, "the mma kernel works on 16-row tiles");
  static_assert(GROUP == 1 || GROUP == 2 || GROUP == 4 || GROUP == 8, "GROUP: 1, 2, 4 or 8");
  static_assert(sizeof(Q) == 1, "8-bit weights");
  constexpr int TILES = ROWS / 16;
  constexpr int MT = (M + 7) / 8;
  constexpr int CHUNK = 64 * GROUP * UNROLL;
  __shared__ float red[WARPS][M][ROWS];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int p = g % GROUP, group_base = g - p;
  const int lane_k = t * 16;
  const int row0 = blockIdx.x * ROWS;
  const int k_begin = blockIdx.y * k_per_split;
  const int k_end = min(k, k_begin + k_per_split);

  // Load j of (tile, h) reads row first_rows[tile][h] + j, chunk p of each step.
  const Q* w_lane = w + p * 64 + lane_k;
  int first_rows[TILES][2];
  ftb::tile_first_rows(first_rows, row0, group_base);
  // The lane's token of each n8 tile (clamped to M - 1 and zeroed past it).
  const T* x_lanes[MT];
  bool tokens_in[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int token = mt * 8 + g;
    x_lanes[mt] = x + static_cast<size_t>(min(token, M - 1)) * k + lane_k;
    tokens_in[mt] = token < M;
  }

  float acc[TILES][MT][4];
  ftb::zero_accumulators(acc);
  int kc = k_begin + warp * CHUNK;
  ftb::prefetch_rows_l2(w, row0, ROWS, n, k, k_begin, k_end);
  ftb_pdl::wait_for_previous_grid();
  for (; kc + CHUNK <= k_end; kc += WARPS * CHUNK) {
    ftb::weight_only_chunk<T, Q, M, TILES, GROUP, UNROLL, false>(
        acc, w_lane, first_rows, n, k, x_lanes, tokens_in, kc, p, lane_k, k_end);
  }
  if (kc < k_end) {
    ftb::weight_only_chunk<T, Q, M, TILES, GROUP, UNROLL, true>(
        acc, w_lane, first_rows, n, k, x_lanes, tokens_in, kc, p, lane_k, k_end);
  }
  // Let the next grid start (and prefetch) while this one drains; see ftb_pdl.cuh.
  ftb_pdl::allow_next_grid();

  ftb::store_mma_sums(red, acc, warp, g, t);
  ftb::finish_block<T, M, ROWS, WARPS>(red, y, partial, counters, n, row0,
                                       ftb::RowScale<S>{scale});
}

// Per-output-channel absmax quantisation: codes[n, k] (Q) and scales[n] (fp32) from w[n, k]
// (T), with scale = absmax / kMax and code = round(w / scale) in fp32 (IEEE division, round to
// nearest even); a row of zeros gets scale 0 and codes 0. One block of 256 threads per row,
// each taking 16 elements at a time (k % 16 == 0): the row is read twice, the second time from
// L1 or L2 (a row is at most tens of KB), so HBM sees w once and the codes once.
template <typename T, typename Q>
__global__ void __launch_bounds__(256)
    ftb_quantize_rows(const T* __restrict__ w, Q* __restrict__ codes,
                      float* __restrict__ scales, int k) {
  constexpr int THREADS = 256, VECTOR = 16;
  __shared__ float warp_max[THREADS / 32];
  ftb_pdl::begin();
  const size_t row_start = static_cast<size_t>(blockIdx.x) * k;
  float absmax = 0.0f;
  for (int i = threadIdx.x * VECTOR; i < k; i += THREADS * VECTOR) {
    float v[VECTOR / 2], u[VECTOR / 2];
    ftb::load(w + row_start + i, v);
    ftb::load(w + row_start + i + VECTOR / 2, u);
#pragma unroll
    for (int e = 0; e < VECTOR / 2; ++e) absmax = fmaxf(absmax, fmaxf(fabsf(v[e]), fabsf(u[e])));
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    absmax = fmaxf(absmax, __shfl_xor_sync(ftb::FULL_MASK, absmax, offset));
  }
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = absmax;
  __syncthreads();
#pragma unroll
  for (int i = 0; i < THREADS / 32; ++i) absmax = fmaxf(absmax, warp_max[i]);
  const float scale = absmax / ftb::Codes<Q>::kMax;
  if (threadIdx.x == 0) scales[blockIdx.x] = scale;
  for (int i = threadIdx.x * VECTOR; i < k; i += THREADS * VECTOR) {
    float v[VECTOR / 2], u[VECTOR / 2];
    ftb::load(w + row_start + i, v);
    ftb::load(w + row_start + i + VECTOR / 2, u);
#pragma unroll
    for (int e = 0; e < VECTOR / 2; ++e) {
      v[e] = absmax > 0.0f ? v[e] / scale : 0.0f;
      u[e] = absmax > 0.0f ? u[e] / scale : 0.0f;
    }
    uint4 packed;
    packed.x = ftb::Codes<Q>::pack4(v[0], v[1], v[2], v[3]);
    packed.y = ftb::Codes<Q>::pack4(v[4], v[5], v[6], v[7]);
    packed.z = ftb::Codes<Q>::pack4(u[0], u[1], u[2], u[3]);
    packed.w = ftb::Codes<Q>::pack4(u[4], u[5], u[6], u[7]);
    *reinterpret_cast<uint4*>(codes + row_start + i) = packed;
  }
}

// out[n, k] (T) = codes[n, k] * scales[n], rounded to T once from the fp32 product: what a GEMM
// of more rows than the weight-only kernels take multiplies by (`GemmDispatch`'s prefill path).
// One thread per 16 codes (one 16-byte load, two 16-byte stores of fp16/bf16); k % 16 == 0, so
// a thread's codes lie in one row.
template <typename T, typename Q>
__global__ void __launch_bounds__(256)
    ftb_dequantize_rows(const Q* __restrict__ codes, const float* __restrict__ scales,
                        T* __restrict__ out, int k, long long vectors) {
  constexpr int VECTOR = 16;
  ftb_pdl::begin();
  const long long v = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= vectors) return;
  const long long start = v * VECTOR;
  const float scale = scales[start / k];
  const uint4 word = *reinterpret_cast<const uint4*>(codes + start);
  float first[VECTOR / 2], second[VECTOR / 2];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    unsigned lo, hi;
    ftb::Dequant<T, Q>::pairs(ftb::word_of(word, i), lo, hi);
    float* half = i < 2 ? first : second;
    const int at = (i % 2) * 4;
    half[at + 0] = ftb::Ops<T>::low(lo) * scale;
    half[at + 1] = ftb::Ops<T>::high(lo) * scale;
    half[at + 2] = ftb::Ops<T>::low(hi) * scale;
    half[at + 3] = ftb::Ops<T>::high(hi) * scale;
  }
  ftb::store(out + start, first);
  ftb::store(out + start + VECTOR / 2, second);
}
