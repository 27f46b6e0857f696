// Token selection, greedy or sampled: one block per row b of logits [B, stride]; columns >= vocab
// are padding. Launchers, checks and the full contract: ftbench/kernels/sampling.py; design
// notes: docs/kernels/decoder.md.
//
// T is the logits' dtype (__half, __nv_bfloat16 or float); every kernel computes in fp32. VEC
// elements per thread are loaded at once: VEC = 16 / sizeof(T) when the row stride and the
// pointer allow 16-byte accesses, else 1 (the launcher picks it). No kernel allocates or
// synchronises with the host: all of them can be captured in a CUDA graph.
//
// Builds with NVRTC (CuPy RawModule) and with nvcc for sm_80 and newer; no standard headers.

#include "ftb_elem.cuh"
#include "ftb_pdl.cuh"

namespace ftb {

// Keys order values as unsigned integers (larger value, larger key): sign-magnitude bits with the
// sign flipped, negatives inverted. 16-bit types get 16-bit keys, so a radix select over them
// takes two 8-bit digits instead of four. NaN gets key 0 (below everything).
__device__ __forceinline__ unsigned orderable32(unsigned bits) {
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

template <typename T>
struct Key;

template <>
struct Key<__half> {
  static constexpr int BITS = 16;
  static __device__ __forceinline__ unsigned of(float v) {
    // v came from a half, so converting back is exact; + 0.0f turns -0 into +0.
    const unsigned bits = __half_as_ushort(__float2half_rn(v + 0.0f));
    return (bits & 0x8000u) ? (~bits & 0xffffu) : (bits | 0x8000u);
  }
};

template <>
struct Key<__nv_bfloat16> {
  static constexpr int BITS = 16;
  // A bf16 is the top half of an fp32, so the top half of the fp32 key is the bf16 key.
  static __device__ __forceinline__ unsigned of(float v) {
    return orderable32(__float_as_uint(v + 0.0f)) >> 16;
  }
};

template <>
struct Key<float> {
  static constexpr int BITS = 32;
  static __device__ __forceinline__ unsigned of(float v) {
    return orderable32(__float_as_uint(v + 0.0f));
  }
};

constexpr int SELECT_UNROLL = 4;  // vector loads per thread in flight in a pass over a row
constexpr int SAMPLE_THREADS = 512;
constexpr int SAMPLE_WARPS = SAMPLE_THREADS / 32;
constexpr unsigned long long WEIGHT_ONE = 1ull << 32;

// Calls f(i, value, valid) for every column i < n of row, VEC columns per load, SELECT_UNROLL
// loads in flight. Every thread runs the same number of calls (invalid ones have valid = false),
// so f may use warp-collective operations. Thread t meets its columns in a fixed order; the
// draw relies on that order. Full VEC-wide loads stay inside the row because stride % VEC == 0.
template <typename T, int VEC, typename F>
__device__ __forceinline__ void for_each_column(const T* __restrict__ row, int n, F&& f) {
  const int step = blockDim.x * VEC;
  for (int base = 0; base < n; base += step * SELECT_UNROLL) {
    float v[SELECT_UNROLL][VEC];
#pragma unroll
    for (int u = 0; u < SELECT_UNROLL; ++u) {
      const int i = base + u * step + threadIdx.x * VEC;
      if (i < n) load(row + i, v[u]);
    }
#pragma unroll
    for (int u = 0; u < SELECT_UNROLL; ++u) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const int i = base + u * step + threadIdx.x * VEC + j;
        f(i, i < n ? v[u][j] : 0.0f, i < n);
      }
    }
  }
}

// The better of two (value, index) candidates: larger value, then lower index; NaN never wins.
__device__ __forceinline__ bool better(float v, int i, float best, int best_index) {
  return v > best || (v == best && i < best_index);
}

// Block argmax; every thread gets the result. Index INT_MAX means no candidate (all NaN).
__device__ __forceinline__ void block_argmax(float& value, int& index, float* scratch_values,
                                             int* scratch_indices) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float v = __shfl_xor_sync(FULL_MASK, value, offset);
    const int i = __shfl_xor_sync(FULL_MASK, index, offset);
    if (better(v, i, value, index)) value = v, index = i;
  }
  const int lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) {
    scratch_values[threadIdx.x >> 5] = value;
    scratch_indices[threadIdx.x >> 5] = index;
  }
  __syncthreads();
  const int warps = blockDim.x >> 5;
  value = -__int_as_float(0x7f800000);
  index = 0x7fffffff;
  for (int w = 0; w < warps; ++w) {
    if (better(scratch_values[w], scratch_indices[w], value, index)) {
      value = scratch_values[w], index = scratch_indices[w];
    }
  }
}

// Rows already finished emit pad_token. Returns true (for the whole block) if row b is one.
__device__ __forceinline__ bool skip_finished(int b, const unsigned char* finished, int* tokens,
                                              int pad_token) {
  if (finished == nullptr || finished[b] == 0) return false;
  if (threadIdx.x == 0) tokens[b] = pad_token;
  return true;
}

// Thread 0: write the token; a stop token finishes the row (the stop token itself is emitted).
__device__ __forceinline__ void emit(int b, int token, int* tokens, unsigned char* finished,
                                     const int* stop_tokens, int num_stop) {
  if (threadIdx.x != 0) return;
  tokens[b] = token;
  for (int s = 0; s < num_stop; ++s) {
    if (stop_tokens[s] == token) finished[b] = 1;
  }
}

// Histograms over 8-bit digits in shared memory, updated with native 32-bit shared atomics.
// Logits crowd into a few bins of the top digits; when every adding lane of a warp hits one bin
// (common at the lower digits), the warp adds up first and one lane does the atomic. bin < 0:
// the lane adds nothing. (A first version grouped lanes by bin with __match_any_sync and a
// shuffle tree, and kept 64-bit sums: its passes were compute bound at 50 us per 50k logits.)
__device__ __forceinline__ void add_count(unsigned* hist, int bin) {
  const unsigned adding = __ballot_sync(FULL_MASK, bin >= 0);
  if (adding == 0) return;
  const int leader = __ffs(adding) - 1;
  const int leader_bin = __shfl_sync(FULL_MASK, bin, leader);
  if (__all_sync(FULL_MASK, bin < 0 || bin == leader_bin)) {
    if ((threadIdx.x & 31) == leader) atomicAdd(&hist[leader_bin], __popc(adding));
  } else if (bin >= 0) {
    atomicAdd(&hist[bin], 1u);
  }
}

// Weights (<= 2^32) are added as two 16-bit halves into 32-bit histograms, low and high, one
// pair per warp (fewer warps contend for a bin); a bin's weight is high * 2^16 + low. A warp
// adds at most V / 16 values below 2^16 + 1 to a bin, so V <= 2^20 cannot overflow.
__device__ __forceinline__ void add_weight(unsigned* warp_low, unsigned* warp_high, int bin,
                                           unsigned long long weight) {
  const unsigned adding = __ballot_sync(FULL_MASK, bin >= 0);
  if (adding == 0) return;
  const unsigned low = bin >= 0 ? static_cast<unsigned>(weight & 0xffffu) : 0u;
  const unsigned high = bin >= 0 ? static_cast<unsigned>(weight >> 16) : 0u;
  const int leader = __ffs(adding) - 1;
  const int leader_bin = __shfl_sync(FULL_MASK, bin, leader);
  if (__all_sync(FULL_MASK, bin < 0 || bin == leader_bin)) {
    const unsigned low_sum = __reduce_add_sync(FULL_MASK, low);
    const unsigned high_sum = __reduce_add_sync(FULL_MASK, high);
    if ((threadIdx.x & 31) == leader) {
      atomicAdd(&warp_low[leader_bin], low_sum);
      atomicAdd(&warp_high[leader_bin], high_sum);
    }
  } else if (bin >= 0) {
    atomicAdd(&warp_low[bin], low);
    atomicAdd(&warp_high[bin], high);
  }
}

// Run by all of warp 0. Walking the 256 bins from the top, with `above` already counted, find
// the first bin d where above + hist[255] + ... + hist[d] >= target (the caller guarantees one
// exists). Writes d to *bin and above + hist[255] + ... + hist[d + 1] to *new_above.
template <typename C>
__device__ __forceinline__ void select_bin(const C* hist, C above, C target, int* bin,
                                           C* new_above) {
  const int lane = threadIdx.x & 31;
  C counts[8], lane_total = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) lane_total += counts[j] = hist[255 - 8 * lane - j];
  C inclusive = lane_total;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const C other = __shfl_up_sync(FULL_MASK, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  const unsigned hits = __ballot_sync(FULL_MASK, above + inclusive >= target);
  const int owner = hits ? __ffs(hits) - 1 : 31;
  if (lane != owner) return;
  C running = above + inclusive - lane_total;
  int chosen = 255 - 8 * lane - 7;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (running + counts[j] >= target) {
      chosen = 255 - 8 * lane - j;
      break;
    }
    running += counts[j];
  }
  *bin = chosen;
  *new_above = running;
}

// Block-wide exclusive prefix sum of one u64 per thread, in thread order; also the total.
__device__ __forceinline__ unsigned long long block_exclusive_scan(unsigned long long x,
                                                                   unsigned long long* scratch,
                                                                   unsigned long long* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned long long inclusive = x;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const unsigned long long other = __shfl_up_sync(FULL_MASK, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  unsigned long long before = 0, sum = 0;
  const int warps = blockDim.x >> 5;
  for (int w = 0; w < warps; ++w) {
    if (w == warp) before = sum;
    sum += scratch[w];
  }
  *total = sum;
  return before + inclusive - x;
}

// Run by all of warp 0: find the column where the running kept weight first exceeds `draw`,
// among the columns thread `owner` met in for_each_column (in the same order), whose weights
// start at `before`. The warp takes 32 of the owner's VEC-wide chunks at a time, scans their
// weights and lets the lane holding the crossing walk its chunk; the result goes to *token.
template <typename T, int VEC, typename Kept, typename Weight>
__device__ __forceinline__ void walk_owner(const T* __restrict__ row, int n, int owner,
                                           unsigned long long before, unsigned long long draw,
                                           Kept&& kept, Weight&& weight_of, int* token) {
  const int lane = threadIdx.x & 31;
  const int step = blockDim.x * VEC;
  const int chunks = (n + step * SELECT_UNROLL - 1) / (step * SELECT_UNROLL) * SELECT_UNROLL;
  unsigned long long running = before;
  for (int first = 0; first < chunks; first += 32) {
    const int chunk = first + lane;
    const int start = chunk / SELECT_UNROLL * step * SELECT_UNROLL +
                      chunk % SELECT_UNROLL * step + owner * VEC;
    float v[VEC];
    unsigned long long weight = 0;
    if (chunk < chunks && start < n) {
      load(row + start, v);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if (start + j < n && kept(v[j])) weight += weight_of(v[j]);
      }
    }
    unsigned long long inclusive = weight;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const unsigned long long other = __shfl_up_sync(FULL_MASK, inclusive, offset);
      if (lane >= offset) inclusive += other;
    }
    const unsigned crossed = __ballot_sync(FULL_MASK, running + inclusive > draw);
    if (crossed) {
      if (lane == __ffs(crossed) - 1) {
        unsigned long long at = running + inclusive - weight;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          if (start + j < n && kept(v[j])) {
            at += weight_of(v[j]);
            if (at > draw) {
              *token = start + j;
              break;
            }
          }
        }
      }
      return;
    }
    running += __shfl_sync(FULL_MASK, inclusive, 31);
  }
}

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
__device__ __forceinline__ uint4 philox(uint4 counter, uint2 key) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const unsigned hi0 = __umulhi(0xD2511F53u, counter.x), lo0 = 0xD2511F53u * counter.x;
    const unsigned hi1 = __umulhi(0xCD9E8D57u, counter.z), lo1 = 0xCD9E8D57u * counter.z;
    counter = make_uint4(hi1 ^ counter.y ^ key.x, lo1, hi0 ^ counter.w ^ key.y, lo0);
    key.x += 0x9E3779B9u;
    key.y += 0xBB67AE85u;
  }
  return counter;
}

}  // namespace ftb

using namespace ftb;

// Greedy: tokens[b] = the lowest index of the largest logit in columns [0, vocab) of row b.
// NaN logits are never chosen (a row of NaN only gives token 0).
template <typename T, int VEC>
__global__ void __launch_bounds__(1024)
    ftb_greedy(const T* __restrict__ logits, int stride, int vocab, int* __restrict__ tokens,
               unsigned char* __restrict__ finished, const int* __restrict__ stop_tokens,
               int num_stop, int pad_token) {
  ftb_pdl::begin();
  __shared__ float scratch_values[32];
  __shared__ int scratch_indices[32];
  const int b = blockIdx.x;
  if (skip_finished(b, finished, tokens, pad_token)) return;
  float best = -__int_as_float(0x7f800000);
  int best_index = 0x7fffffff;
  for_each_column<T, VEC>(logits + static_cast<size_t>(b) * stride, vocab,
                          [&](int i, float v, bool valid) {
                            if (valid && better(v, i, best, best_index)) best = v, best_index = i;
                          });
  block_argmax(best, best_index, scratch_values, scratch_indices);
  emit(b, best_index == 0x7fffffff ? 0 : best_index, tokens, finished, stop_tokens, num_stop);
}

// Sampling, HF order: logits / temperature, keep the top_k largest (top_k > 0; ties at the k-th
// value are all kept), then the smallest top set whose probability reaches top_p (top_p < 1;
// ties at the threshold all kept), then draw from the renormalised probabilities.
//
// No sort. Weights are fixed point, w = round(exp((l - max) / temperature) * 2^32) as u64, so
// every sum below is exact and independent of summation order. Thresholds are found by radix
// select over the logits' order-preserving keys, 8 bits per pass, most significant digit first:
//   top-k: the k-th largest key, from count histograms;
//   top-p: the largest key x whose kept weight at or above x reaches top_p * Z (Z = the kept
//          weight), from weight histograms; its first pass also gives Z.
// The draw takes r = (64 random bits) * W / 2^64 in [0, W) (W = weight of the final set) and
// picks the token where the running weight passes r, walking tokens thread by thread in a fixed
// order: a block scan of per-thread weights finds the thread, and warp 0 walks its columns.
// The random bits are Philox4x32-10 keyed by seed at counter (b, step): deterministic.
// Passes over the row for fp16/bf16 logits: 1 (max and top-k's first digit) + 1 (top-k's second
// digit) + 2 (top-p) + 1 (draw); fp32 logits have 32-bit keys, so two more per threshold.
template <typename T, int VEC>
__global__ void __launch_bounds__(SAMPLE_THREADS, 1)
    ftb_sample(const T* __restrict__ logits, int stride, int vocab, int* __restrict__ tokens,
               unsigned char* __restrict__ finished, const int* __restrict__ stop_tokens,
               int num_stop, int pad_token, float inv_temperature, int top_k, double top_p,
               unsigned long long seed, unsigned long long step,
               const long long* __restrict__ step_pointer) {
  ftb_pdl::begin();
  constexpr int KEY_BITS = Key<T>::BITS;
  __shared__ unsigned count_hist[256];
  __shared__ unsigned weight_low[SAMPLE_WARPS][256], weight_high[SAMPLE_WARPS][256];
  __shared__ unsigned long long weight_hist[256];
  __shared__ float scratch_values[32];
  __shared__ int scratch_indices[32];
  __shared__ unsigned long long scratch_scan[32];
  __shared__ int chosen_bin, chosen_token, owner;
  __shared__ unsigned long long owner_before;
  __shared__ unsigned count_above;
  __shared__ unsigned long long weight_above;

  const int b = blockIdx.x;
  if (skip_finished(b, finished, tokens, pad_token)) return;
  const T* row = logits + static_cast<size_t>(b) * stride;
  const bool use_top_k = top_k > 0 && top_k < vocab;
  const bool use_top_p = top_p < 1.0;

  // Pass 1: the largest logit (and where it is), and top-k's first digit.
  for (int i = threadIdx.x; i < 256; i += blockDim.x) count_hist[i] = 0;
  __syncthreads();
  float max_value = -__int_as_float(0x7f800000);
  int max_index = 0x7fffffff;
  for_each_column<T, VEC>(row, vocab, [&](int i, float v, bool valid) {
    if (valid && better(v, i, max_value, max_index)) max_value = v, max_index = i;
    if (use_top_k) {
      add_count(count_hist,
                valid && v == v ? static_cast<int>(Key<T>::of(v) >> (KEY_BITS - 8)) : -1);
    }
  });
  block_argmax(max_value, max_index, scratch_values, scratch_indices);
  const int fallback = max_index == 0x7fffffff ? 0 : max_index;

  auto weight_of = [&](float v) -> unsigned long long {
    if (v == max_value) return WEIGHT_ONE;
    if (!(v == v)) return 0ull;
    return __float2ull_rn(expf((v - max_value) * inv_temperature) * 4294967296.0f);
  };

  // Top-k threshold: kept tokens have key >= threshold_k.
  unsigned threshold_k = 0;
  if (use_top_k) {
    unsigned prefix = 0, above = 0;
    for (int shift = KEY_BITS - 8; shift >= 0; shift -= 8) {
      if (shift != KEY_BITS - 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) count_hist[i] = 0;
        __syncthreads();
        for_each_column<T, VEC>(row, vocab, [&](int, float v, bool valid) {
          const unsigned key = Key<T>::of(v);
          const bool match = valid && v == v && (key >> (shift + 8)) == prefix;
          add_count(count_hist, match ? static_cast<int>((key >> shift) & 255u) : -1);
        });
      }
      __syncthreads();
      if (threadIdx.x < 32) {
        select_bin<unsigned>(count_hist, above, static_cast<unsigned>(top_k), &chosen_bin,
                             &count_above);
      }
      __syncthreads();
      prefix = (prefix << 8) | static_cast<unsigned>(chosen_bin);
      above = count_above;
    }
    threshold_k = prefix;
  }
  auto kept_k = [&](float v) { return !use_top_k || (v == v && Key<T>::of(v) >= threshold_k); };

  // Top-p threshold: the final set is keys >= threshold.
  unsigned threshold = threshold_k;
  if (use_top_p) {
    unsigned prefix = 0;
    unsigned long long above = 0, target = 0;
    for (int shift = KEY_BITS - 8; shift >= 0; shift -= 8) {
      for (int i = threadIdx.x; i < SAMPLE_WARPS * 256; i += blockDim.x) {
        weight_low[0][i] = weight_high[0][i] = 0;
      }
      __syncthreads();
      for_each_column<T, VEC>(row, vocab, [&](int, float v, bool valid) {
        const unsigned key = Key<T>::of(v);
        const bool match =
            valid && kept_k(v) && (shift == KEY_BITS - 8 || (key >> (shift + 8)) == prefix);
        add_weight(weight_low[threadIdx.x >> 5], weight_high[threadIdx.x >> 5],
                   match ? static_cast<int>((key >> shift) & 255u) : -1,
                   match ? weight_of(v) : 0ull);
      });
      __syncthreads();
      for (int i = threadIdx.x; i < 256; i += blockDim.x) {
        unsigned long long sum = 0;
        for (int w = 0; w < SAMPLE_WARPS; ++w) {
          sum += (static_cast<unsigned long long>(weight_high[w][i]) << 16) + weight_low[w][i];
        }
        weight_hist[i] = sum;
      }
      __syncthreads();
      if (shift == KEY_BITS - 8) {
        unsigned long long total = 0;
        for (int i = 0; i < 256; ++i) total += weight_hist[i];
        if (total == 0) {
          emit(b, fallback, tokens, finished, stop_tokens, num_stop);
          return;
        }
        // Every kept weight sum is an integer, so ">= top_p * total" is ">= ceil(...)".
        target = static_cast<unsigned long long>(ceil(top_p * static_cast<double>(total)));
        target = target < 1 ? 1 : (target > total ? total : target);
      }
      if (threadIdx.x < 32) {
        select_bin<unsigned long long>(weight_hist, above, target, &chosen_bin, &weight_above);
      }
      __syncthreads();
      prefix = (prefix << 8) | static_cast<unsigned>(chosen_bin);
      above = weight_above;
    }
    threshold = prefix;
  }
  auto kept = [&](float v) {
    return (!use_top_k && !use_top_p) || (v == v && Key<T>::of(v) >= threshold);
  };

  // Draw: each thread's kept weight, in its own column order; a block scan places the threads.
  unsigned long long mine = 0;
  for_each_column<T, VEC>(row, vocab, [&](int, float v, bool valid) {
    if (valid && kept(v)) mine += weight_of(v);
  });
  unsigned long long final_weight = 0;
  const unsigned long long before = block_exclusive_scan(mine, scratch_scan, &final_weight);
  if (threadIdx.x == 0) chosen_token = fallback;
  if (final_weight == 0) {
    emit(b, fallback, tokens, finished, stop_tokens, num_stop);
    return;
  }
  const unsigned long long current_step = step_pointer ? *step_pointer : step;
  const uint4 bits = philox(
      make_uint4(static_cast<unsigned>(b), static_cast<unsigned>(current_step),
                 static_cast<unsigned>(current_step >> 32), 0x5A3D1E57u),
      make_uint2(static_cast<unsigned>(seed), static_cast<unsigned>(seed >> 32)));
  const unsigned long long random = (static_cast<unsigned long long>(bits.x) << 32) | bits.y;
  const unsigned long long draw = __umul64hi(random, final_weight);  // uniform in [0, W)
  __syncthreads();  // thread 0's default token is in place before the walk may replace it
  // Exactly one thread's range holds the draw, since draw < W.
  if (before <= draw && draw < before + mine) owner = threadIdx.x, owner_before = before;
  __syncthreads();
  if (threadIdx.x < 32) {
    walk_owner<T, VEC>(row, vocab, owner, owner_before, draw, kept, weight_of, &chosen_token);
  }
  __syncthreads();
  emit(b, chosen_token, tokens, finished, stop_tokens, num_stop);
}
