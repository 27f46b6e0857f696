// The decoder's element-wise kernels: embedding, residual add + norm, QKV bias + rotary + KV-cache
// write, bias + activation (plain or gated); token selection is sampling.cu. Launchers, checks
// and the full contract: ftbench/kernels/decoder.py; design notes: docs/kernels/decoder.md.
//
// T is the model dtype (__half or __nv_bfloat16); every kernel computes in fp32. VEC elements per
// thread are loaded and stored at once: VEC = 16 / sizeof(T) when the row length and the pointers
// allow 16-byte accesses, else a smaller width (the launcher picks it), so odd sizes work at a
// lower speed. No kernel allocates or synchronises with the host: all of them can be captured in
// a CUDA graph.
//
// Builds with NVRTC (CuPy RawModule) and with nvcc for sm_80 and newer; no standard headers.

#include "ftb_elem.cuh"
#include "ftb_pdl.cuh"

namespace ftb {

// x += a[0..N) if a is not null (biases and deltas are optional).
template <typename T, int N>
__device__ __forceinline__ void add_if(float (&x)[N], const T* a) {
  if (a == nullptr) return;
  float v[N];
  load(a, v);
#pragma unroll
  for (int j = 0; j < N; ++j) x[j] += v[j];
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
  return v;
}

// The sum of v over the block (blockDim.x a multiple of 32), returned to every thread. Every warp
// adds the per-warp sums in the same order, so all threads get the same bits. The leading barrier
// lets consecutive calls share `scratch` (32 floats).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  return warp_sum(lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : 0.0f);
}

}  // namespace ftb

using namespace ftb;

// residual[t, :] = table[tokens[t] - vocab_start, :] (+ pos_table[positions[t], :]) in fp32.
// The table is one tensor-parallel rank's `rows` rows of the vocabulary, starting at token id
// vocab_start (all of it, from 0, without tensor parallelism): a token outside them contributes
// zeros, and the ranks' partial rows sum to the embedding. Grid (T), block: a multiple of 32
// threads looping over the row. hidden % VEC == 0. Positions must be < P: nothing is clamped.
template <typename T, int VEC, bool POSITIONS>
__global__ void __launch_bounds__(256)
    ftb_embed(const int* __restrict__ tokens, const int* __restrict__ positions,
              const T* __restrict__ table, const T* __restrict__ pos_table,
              float* __restrict__ residual, int hidden, int vocab_start, int rows) {
  ftb_pdl::begin();
  const int t = blockIdx.x;
  // One unsigned comparison covers both ends: ids below vocab_start wrap to large values.
  const unsigned local = static_cast<unsigned>(tokens[t] - vocab_start);
  const bool held = local < static_cast<unsigned>(rows);
  const T* row = table + static_cast<size_t>(held ? local : 0u) * hidden;
  const T* pos_row = POSITIONS ? pos_table + static_cast<size_t>(positions[t]) * hidden : nullptr;
  float* out = residual + static_cast<size_t>(t) * hidden;
  for (int i = threadIdx.x * VEC; i < hidden; i += blockDim.x * VEC) {
    float x[VEC] = {};
    if (held) load(row + i, x);
    if (POSITIONS) add_if(x, pos_row + i);
    store(out + i, x);
  }
}

// One block per output row i (row r = rows ? rows[i] : i of the residual):
//   residual[r] += delta0[r] + delta1[r] + delta_bias0 + delta_bias1   (each optional, DT)
//   out[i] = LayerNorm(residual[r]) * weight + bias, or RMSNorm(residual[r]) * weight
// The row lives in registers (ITEMS vectors of VEC per thread) from the load to the store:
// residual is read once and written once (only if something was added), statistics are fp32
// two-pass (mean, then the mean of squared deviations) with warp-shuffle block reductions.
// Needs hidden <= blockDim.x * ITEMS * VEC and hidden % VEC == 0.
template <typename T, int VEC, int ITEMS>
__global__ void __launch_bounds__(512)
    ftb_residual_norm(float* __restrict__ residual, T* __restrict__ out,
                      const T* __restrict__ weight, const T* __restrict__ bias,
                      const T* __restrict__ delta0, const T* __restrict__ delta1,
                      const T* __restrict__ delta_bias0, const T* __restrict__ delta_bias1,
                      const int* __restrict__ rows, int hidden, float eps, int rmsnorm) {
  ftb_pdl::begin();
  __shared__ float scratch[32];
  const size_t r = rows ? rows[blockIdx.x] : blockIdx.x;
  float* res = residual + r * hidden;
  const size_t offset = r * hidden;
  const bool update = delta0 || delta1 || delta_bias0 || delta_bias1;
  float x[ITEMS][VEC];
  float sum = 0.0f;
#pragma unroll
  for (int item = 0; item < ITEMS; ++item) {
    const int i = (threadIdx.x + item * blockDim.x) * VEC;
    if (i >= hidden) continue;
    load(res + i, x[item]);
    if (update) {
      add_if(x[item], delta0 ? delta0 + offset + i : nullptr);
      add_if(x[item], delta1 ? delta1 + offset + i : nullptr);
      add_if(x[item], delta_bias0 ? delta_bias0 + i : nullptr);
      add_if(x[item], delta_bias1 ? delta_bias1 + i : nullptr);
      store(res + i, x[item]);
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum += x[item][j];
  }
  const float mean = rmsnorm ? 0.0f : block_sum(sum, scratch) / hidden;
  float squares = 0.0f;
#pragma unroll
  for (int item = 0; item < ITEMS; ++item) {
    if ((threadIdx.x + item * blockDim.x) * VEC >= hidden) continue;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float d = x[item][j] - mean;
      squares += d * d;
    }
  }
  const float inv_std = rsqrtf(block_sum(squares, scratch) / hidden + eps);
  T* y = out + static_cast<size_t>(blockIdx.x) * hidden;
#pragma unroll
  for (int item = 0; item < ITEMS; ++item) {
    const int i = (threadIdx.x + item * blockDim.x) * VEC;
    if (i >= hidden) continue;
    float w[VEC], b[VEC] = {};
    load(weight + i, w);
    if (bias) load(bias + i, b);
#pragma unroll
    for (int j = 0; j < VEC; ++j) x[item][j] = (x[item][j] - mean) * inv_std * w[j] + b[j];
    store(y + i, x[item]);
  }
}

// One block per token t. qkv[t] holds q_heads + 2 kv_heads heads of head_dim (q | k | v); a
// thread owns one VEC-wide chunk c of the head and walks the heads, so its rotary angles are
// computed once per token:
//   interleaved (GPT-J):  chunk dims d0..d0+VEC-1 < rotary_dim hold VEC/2 pairs (2i, 2i+1);
//   halves (NeoX/LLaMA):  chunk d0 < rotary_dim/2 pairs dim d0+j with d0+j+rotary_dim/2 and
//                         writes both; chunks in [rotary_dim/2, rotary_dim) have nothing to do.
// Pair i turns by position * base^(-2i/rotary_dim) (fp32, as HF computes it), or by position *
// inv_freqs[i] when given (a scaled rope's frequencies, computed on the host). q goes to
// q_out[t], k and v to the caches at [seq_ids[t], h, positions[t], :].
// blockDim.x = (head_dim / VEC) * slots; VEC divides head_dim and rotary_dim (interleaved) or
// rotary_dim / 2 (halves).
template <typename T, int VEC, bool INTERLEAVED>
__global__ void __launch_bounds__(256)
    ftb_qkv_rotary(const T* __restrict__ qkv, const T* __restrict__ bias, T* __restrict__ q_out,
                   T* __restrict__ k_cache, T* __restrict__ v_cache,
                   const int* __restrict__ seq_ids, const int* __restrict__ positions,
                   const float* __restrict__ inv_freqs, int q_heads, int kv_heads,
                   int head_dim, int rotary_dim, float rotary_base, int max_length) {
  ftb_pdl::begin();
  constexpr int PAIRS = INTERLEAVED ? VEC / 2 : VEC;
  const int t = blockIdx.x;
  const int chunks = head_dim / VEC;
  const int d0 = (threadIdx.x % chunks) * VEC;
  const int slot = threadIdx.x / chunks, slots = blockDim.x / chunks;
  const int heads = q_heads + 2 * kv_heads;
  const int half = rotary_dim / 2;
  const bool rotates = INTERLEAVED ? d0 < rotary_dim : d0 < half;
  const bool partner_chunk = !INTERLEAVED && d0 >= half && d0 < rotary_dim;
  const size_t seq = seq_ids[t];
  const int position = positions[t];
  float cosine[PAIRS], sine[PAIRS];
  if (rotates) {
#pragma unroll
    for (int j = 0; j < PAIRS; ++j) {
      const int pair = INTERLEAVED ? d0 / 2 + j : d0 + j;
      const float inv_freq =
          inv_freqs ? inv_freqs[pair]
                    : 1.0f / powf(rotary_base,
                                  static_cast<float>(2 * pair) / static_cast<float>(rotary_dim));
      sincosf(static_cast<float>(position) * inv_freq, &sine[j], &cosine[j]);
    }
  }
  const T* row = qkv + static_cast<size_t>(t) * heads * head_dim;
  for (int h = blockIdx.y * slots + slot; h < heads; h += slots * gridDim.y) {
    const bool is_v = h >= q_heads + kv_heads;
    if (!is_v && partner_chunk) continue;
    T* dst;
    if (h < q_heads) {
      dst = q_out + (static_cast<size_t>(t) * q_heads + h) * head_dim;
    } else {
      const int kv = is_v ? h - q_heads - kv_heads : h - q_heads;
      T* cache = is_v ? v_cache : k_cache;
      dst = cache + ((seq * kv_heads + kv) * max_length + position) * head_dim;
    }
    const int src = h * head_dim + d0;
    float x[VEC];
    load(row + src, x);
    add_if(x, bias ? bias + src : nullptr);
    if (!is_v && rotates) {
      if (INTERLEAVED) {
#pragma unroll
        for (int j = 0; j < PAIRS; ++j) {
          const float even = x[2 * j], odd = x[2 * j + 1];
          x[2 * j] = even * cosine[j] - odd * sine[j];
          x[2 * j + 1] = odd * cosine[j] + even * sine[j];
        }
      } else {
        float y[VEC];
        load(row + src + half, y);
        add_if(y, bias ? bias + src + half : nullptr);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float first = x[j], second = y[j];
          x[j] = first * cosine[j] - second * sine[j];
          y[j] = second * cosine[j] + first * sine[j];
        }
        store(dst + d0 + half, y);
      }
    }
    store(dst + d0, x);
  }
}

enum Activation { GELU_NEW = 0, GELU = 1, SILU = 2, RELU = 3 };

template <int ACT>
__device__ __forceinline__ float activate(float x) {
  if (ACT == GELU_NEW) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
  }
  if (ACT == GELU) return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
  if (ACT == SILU) return x / (1.0f + expf(-x));
  return fmaxf(x, 0.0f);
}

// out[t, i] = act(x[t, i] + bias[i])                                         (not gated)
// out[t, i] = act(x[t, i] + bias[i]) * (x[t, F + i] + bias[F + i])            (gated: gate | up)
// Grid (T, ceil(F / VEC / blockDim.x)). out may be x itself when not gated (each thread reads
// its elements before writing them), hence no __restrict__ on x and out.
template <typename T, int VEC, int ACT, bool GATED>
__global__ void __launch_bounds__(256)
    ftb_bias_act(const T* x, const T* __restrict__ bias, T* out, int ffn) {
  ftb_pdl::begin();
  const int i = (blockIdx.y * blockDim.x + threadIdx.x) * VEC;
  if (i >= ffn) return;
  const T* row = x + static_cast<size_t>(blockIdx.x) * (GATED ? 2 : 1) * ffn;
  float a[VEC];
  load(row + i, a);
  add_if(a, bias ? bias + i : nullptr);
#pragma unroll
  for (int j = 0; j < VEC; ++j) a[j] = activate<ACT>(a[j]);
  if (GATED) {
    float up[VEC];
    load(row + ffn + i, up);
    add_if(up, bias ? bias + ffn + i : nullptr);
#pragma unroll
    for (int j = 0; j < VEC; ++j) a[j] *= up[j];
  }
  store(out + static_cast<size_t>(blockIdx.x) * ffn + i, a);
}
