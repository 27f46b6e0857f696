// Fused attention for the decoder runtime, fp16 or bf16 in and out, fp32 softmax and sums.
// Design: docs/kernels/attention.md; measurements: docs/results/attention.md.
// Launchers: ftbench/kernels/attention.py.
//
// Layouts (all C-contiguous, T = __half or __nv_bfloat16, D = head dim, a multiple of 16):
//   q        [tokens, Hq, D] (context: packed sequences) or [B, Hq, D] (decode)
//   k_cache, v_cache [B, Hkv, cache_len, D]: the key of cache row b, kv head h, position p
//            is at ((b * Hkv + h) * cache_len + p) * D.
//   out      like q.
// Query head h reads kv head h / (Hq / Hkv) (grouped-query attention).
//
// ftb_context_attention  flash attention (FlashAttention-2 order) over packed sequences with
//   past_lens: a block takes BM = 16 * MT * WARPS queries of one sequence and one head, walks the
//   key tiles of BN positions up to its last query's position, S = Q K^T and O += P V on tensor
//   cores (mma.sync m16n8k16, fp32 accumulators), online softmax in fp32; S x S never exists.
//   Tiles go through shared memory with cp.async (zero-filled past the valid keys, so NaN
//   garbage in unused cache slots never reaches the sums) and are read with ldmatrix.
// ftb_decode_attention   flash-decoding for one new token per sequence: the positions of a
//   sequence are cut into chunks, one block per (chunk, kv head, sequence), and a block handles
//   every query head of its kv head (up to 16; more take several head groups), so K and V are
//   read once. Each warp streams its own 16-position steps through a private STAGES-deep
//   cp.async pipeline. The roles of the mma are swapped (positions are the 16 rows, heads the 8
//   columns): S^T = K Q^T, O^T += V^T P^T, with P^T turned into the B fragment by movmatrix.
//   Chunks of one sequence meet through the workspace: the last block to finish (an arrival
//   counter per (sequence, head group)) combines them; a single chunk writes out directly.
//   The grid is sized from a host bound on the lengths; blocks past a sequence's length exit.
//
// Builds with NVRTC (CuPy RawModule) and with nvcc for sm_80 and newer.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ftb_pdl.cuh"

namespace ftb_attention {

__device__ __forceinline__ float negative_infinity() { return __int_as_float(0xff800000); }

template <typename T>
struct Elem;

template <>
struct Elem<__half> {
  // D = A * B + D; A 16x16 row-major, B 16x8 column-major, fp32 accumulators.
  static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                             unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  // Two floats as one register of two elements, `low` in the low half.
  static __device__ __forceinline__ unsigned pack(float low, float high) {
    __half2 pair = __floats2half2_rn(low, high);
    return *reinterpret_cast<unsigned*>(&pair);
  }
  static __device__ __forceinline__ __half from_float(float value) {
    return __float2half_rn(value);
  }
};

template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                             unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ unsigned pack(float low, float high) {
    __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
    return *reinterpret_cast<unsigned*>(&pair);
  }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float value) {
    return __float2bfloat16_rn(value);
  }
};

__device__ __forceinline__ unsigned shared_address(const void* pointer) {
  return static_cast<unsigned>(__cvta_generic_to_shared(pointer));
}

// 16 bytes global -> shared, asynchronously; zeros instead when !valid (nothing is read then).
__device__ __forceinline__ void copy_async(void* shared, const void* global, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared_address(shared)),
               "l"(global), "r"(valid ? 16 : 0)
               : "memory");
}

__device__ __forceinline__ void commit_copies() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}

// Wait until at most PENDING committed groups of this thread's copies are still in flight.
template <int PENDING>
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}

// Four 8x8 matrices of 16-bit elements; lanes 8i..8i+7 give the row addresses of matrix i and
// lane l receives row l / 4, elements 2 (l % 4) and 2 (l % 4) + 1 of each (the mma fragment).
__device__ __forceinline__ void load_matrices(unsigned (&r)[4], const void* shared) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(shared))
               : "memory");
}

// The same, transposed: lane l receives column l / 4, rows 2 (l % 4) and 2 (l % 4) + 1.
__device__ __forceinline__ void load_matrices_transposed(unsigned (&r)[4], const void* shared) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(shared))
               : "memory");
}

// Transpose an 8x8 matrix of 16-bit elements held in mma fragment layout across the warp.
__device__ __forceinline__ unsigned transpose_fragment(unsigned x) {
  unsigned y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}

__device__ __forceinline__ unsigned load_pair(const void* global) {
  return *reinterpret_cast<const unsigned*>(global);
}

}  // namespace ftb_attention

using namespace ftb_attention;

// Context (prefill) attention. Grid (ceil(max_q_len / BM), Hq, sequences), WARPS * 32 threads,
// (BM + 2 BN) (D + 8) * sizeof(T) bytes of dynamic shared memory.
// Sequence b's queries are rows cu_seqlens[b] .. cu_seqlens[b+1]-1 of q; query i sits at
// position past_lens[b] + i and sees cache positions 0 .. past_lens[b] + i of cache row b.
template <typename T, int D, int MT, int BN, int WARPS>
__global__ void __launch_bounds__(WARPS * 32)
    ftb_context_attention(const T* __restrict__ q, const T* __restrict__ k_cache,
                          const T* __restrict__ v_cache, const int* __restrict__ cu_seqlens,
                          const int* __restrict__ past_lens, T* __restrict__ out,
                          int num_q_heads, int num_kv_heads, int cache_len, float scale_log2) {
  ftb_pdl::begin();
  static_assert(D % 16 == 0 && BN % 16 == 0, "D and BN must be multiples of 16");
  constexpr int BM = 16 * MT * WARPS;
  constexpr int STRIDE = D + 8;  // elements per shared row: 16 bytes of padding, no bank conflicts
  constexpr int PIECES = D / 8;  // 16-byte pieces per row
  constexpr int THREADS = WARPS * 32;
  extern __shared__ uint4 shared_memory[];
  T* s_q = reinterpret_cast<T*>(shared_memory);
  T* s_k = s_q + BM * STRIDE;
  T* s_v = s_k + BN * STRIDE;

  const int b = blockIdx.z, head = blockIdx.y;
  const int q_begin = cu_seqlens[b];
  const int q_len = cu_seqlens[b + 1] - q_begin;
  const int m0 = (gridDim.x - 1 - blockIdx.x) * BM;  // the longest blocks start first
  if (m0 >= q_len) return;
  const int past = past_lens[b];
  const int rows = min(BM, q_len - m0);
  const int kv_end = min(past + m0 + rows, cache_len);  // keys this block reads: [0, kv_end)
  const int tiles = (kv_end + BN - 1) / BN;
  const int kv_head = head / (num_q_heads / num_kv_heads);
  const size_t kv_offset = (static_cast<size_t>(b) * num_kv_heads + kv_head) * cache_len * D;
  const T* k_rows = k_cache + kv_offset;
  const T* v_rows = v_cache + kv_offset;
  const size_t q_stride = static_cast<size_t>(num_q_heads) * D;
  const T* q_rows = q + (static_cast<size_t>(q_begin) + m0) * q_stride + static_cast<size_t>(head) * D;

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int warp_row = warp * 16 * MT;

  for (int i = threadIdx.x; i < BM * PIECES; i += THREADS) {
    const int r = i / PIECES, piece = i % PIECES;
    const bool valid = r < rows;
    copy_async(s_q + r * STRIDE + piece * 8, q_rows + (valid ? r * q_stride : 0) + piece * 8, valid);
  }
  auto load_tile = [&](T* s_tile, const T* rows_base, int tile) {
    for (int i = threadIdx.x; i < BN * PIECES; i += THREADS) {
      const int r = i / PIECES, piece = i % PIECES;
      const int position = tile * BN + r;
      const bool valid = position < kv_end;
      copy_async(s_tile + r * STRIDE + piece * 8,
                 rows_base + static_cast<size_t>(valid ? position : 0) * D + piece * 8, valid);
    }
  };
  load_tile(s_k, k_rows, 0);
  commit_copies();

  float acc[MT][D / 8][4];
  float row_max[MT][2], row_sum[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.0f;
    row_max[mt][0] = row_max[mt][1] = negative_infinity();
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
  }
  // Lowest position among this warp's queries: tiles past it need the causal mask.
  const int warp_first_position = past + m0 + warp_row;

  for (int tile = 0; tile < tiles; ++tile) {
    wait_copies<0>();
    __syncthreads();  // K(tile) is in; every warp is done with V(tile - 1)
    load_tile(s_v, v_rows, tile);
    commit_copies();

    float s[MT][BN / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      unsigned qa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        load_matrices(qa[mt], s_q + (warp_row + mt * 16 + lane % 8 + 8 * ((lane / 8) % 2)) * STRIDE +
                                  ks * 16 + 8 * (lane / 16));
      }
#pragma unroll
      for (int n2 = 0; n2 < BN / 16; ++n2) {
        unsigned kb[4];
        load_matrices(kb, s_k + (n2 * 16 + lane % 8 + 8 * (lane / 16)) * STRIDE + ks * 16 +
                              8 * ((lane / 8) % 2));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Elem<T>::mma(s[mt][2 * n2], qa[mt], kb[0], kb[1]);
          Elem<T>::mma(s[mt][2 * n2 + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }

    const bool masked = tile * BN + BN - 1 > warp_first_position;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int position = past + m0 + warp_row + mt * 16 + g + 8 * half;  // of this row
        float tile_max = negative_infinity();
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int key = tile * BN + n * 8 + 2 * t + e;
            float value = s[mt][n][2 * half + e] * scale_log2;
            if (masked && key > position) value = negative_infinity();
            s[mt][n][2 * half + e] = value;
            tile_max = fmaxf(tile_max, value);
          }
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
        const float new_max = fmaxf(row_max[mt][half], tile_max);
        const float base = new_max == negative_infinity() ? 0.0f : new_max;
        const float alpha = exp2f(row_max[mt][half] - base);
        row_max[mt][half] = new_max;
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = exp2f(s[mt][n][2 * half + e] - base);
            s[mt][n][2 * half + e] = p;
            sum += p;
          }
        }
        row_sum[mt][half] = row_sum[mt][half] * alpha + sum;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          acc[mt][j][2 * half] *= alpha;
          acc[mt][j][2 * half + 1] *= alpha;
        }
      }
    }

    wait_copies<0>();
    __syncthreads();  // V(tile) is in; every warp is done with K(tile)
    if (tile + 1 < tiles) {
      load_tile(s_k, k_rows, tile + 1);
      commit_copies();
    }

#pragma unroll
    for (int ks = 0; ks < BN / 16; ++ks) {
      // The accumulators of two adjacent 8-key tiles are the A fragment of a 16-key step.
      unsigned pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = Elem<T>::pack(s[mt][2 * ks][0], s[mt][2 * ks][1]);
        pa[mt][1] = Elem<T>::pack(s[mt][2 * ks][2], s[mt][2 * ks][3]);
        pa[mt][2] = Elem<T>::pack(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
        pa[mt][3] = Elem<T>::pack(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
      }
#pragma unroll
      for (int n2 = 0; n2 < D / 16; ++n2) {
        unsigned vb[4];
        load_matrices_transposed(vb, s_v + (ks * 16 + lane % 8 + 8 * ((lane / 8) % 2)) * STRIDE +
                                         n2 * 16 + 8 * (lane / 16));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Elem<T>::mma(acc[mt][2 * n2], pa[mt], vb[0], vb[1]);
          Elem<T>::mma(acc[mt][2 * n2 + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
  }

  // Normalise, stage this warp's rows in its own (no longer needed) rows of s_q, store 16 bytes
  // at a time.
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float sum = row_sum[mt][half];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float scale = sum > 0.0f ? __fdividef(1.0f, sum) : 0.0f;  // sum >= 1 for real rows
      T* row = s_q + (warp_row + mt * 16 + g + 8 * half) * STRIDE;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<unsigned*>(row + j * 8 + 2 * t) =
            Elem<T>::pack(acc[mt][j][2 * half] * scale, acc[mt][j][2 * half + 1] * scale);
      }
    }
  }
  __syncwarp();
  T* out_rows = out + (static_cast<size_t>(q_begin) + m0) * q_stride + static_cast<size_t>(head) * D;
  for (int i = lane; i < 16 * MT * PIECES; i += 32) {
    const int r = warp_row + i / PIECES, piece = i % PIECES;
    if (r < rows) {
      *reinterpret_cast<uint4*>(out_rows + r * q_stride + piece * 8) =
          *reinterpret_cast<const uint4*>(s_q + r * STRIDE + piece * 8);
    }
  }
}

// Decode attention. Grid (splits, Hkv * head_groups, B), WARPS * 32 threads,
// WARPS * STAGES * 2 * 16 * (D + 8) * sizeof(T) bytes of dynamic shared memory.
// Block (split, y, b) takes positions [split * chunk, split * chunk + chunk) of sequence b
// (lengths[b] valid positions, clamped to max_length) for the up to 8 * HT query heads of head
// group y % head_groups of kv head y / head_groups.
// counters: one per (sequence, head group) block set, zero between launches (the combining block
// resets its own). partials: one row per (sequence b, query head h), row b * Hq + h, of
// acc_column + splits * D floats: [0, splits) the chunks' maxima (log2 units), [splits,
// 2 splits) their sums, from acc_column = 2 splits rounded up to 4 their D accumulators.
// (threads, 1): shared memory allows one or two blocks per SM anyway; the bound lets ptxas take
// the registers it needs instead of spilling to reach a higher occupancy.
template <typename T, int D, int HT, int WARPS, int STAGES>
__global__ void __launch_bounds__(WARPS * 32, 1)
    ftb_decode_attention(const T* __restrict__ q, const T* __restrict__ k_cache,
                         const T* __restrict__ v_cache, const int* __restrict__ lengths,
                         T* __restrict__ out, unsigned* __restrict__ counters,
                         float* __restrict__ partials, int num_q_heads, int num_kv_heads,
                         int head_groups, int cache_len, int max_length, int chunk, int splits,
                         float scale_log2) {
  ftb_pdl::begin();
  static_assert(D % 16 == 0 && STAGES >= 2, "D must be a multiple of 16, STAGES at least 2");
  constexpr int HEADS = 8 * HT;
  constexpr int STRIDE = D + 8;
  constexpr int PIECES = D / 8;
  constexpr int THREADS = WARPS * 32;
  constexpr int STEP = 2 * 16 * STRIDE;  // shared elements of one step: 16 rows of K, then of V
  static_assert((2 + D) * HEADS * 4 <= STAGES * STEP * static_cast<int>(sizeof(T)),
                "a warp's partial result must fit in its pipeline's shared memory");
  extern __shared__ uint4 shared_memory[];
  __shared__ unsigned arrival;

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int split = blockIdx.x, b = blockIdx.z;
  const int kv_head = blockIdx.y / head_groups;
  const int group = num_q_heads / num_kv_heads;
  const int group_head = (blockIdx.y % head_groups) * HEADS;
  const int head0 = kv_head * group + group_head;
  const int heads = min(HEADS, group - group_head);
  const int length = min(lengths[b], max_length);
  const int active = length > 0 ? (length + chunk - 1) / chunk : 0;

  if (active == 0) {  // nothing to attend to: zeros, written once
    if (split == 0) {
      for (int i = threadIdx.x; i < heads * D; i += THREADS) {
        out[(static_cast<size_t>(b) * num_q_heads + head0) * D + i] = Elem<T>::from_float(0.0f);
      }
    }
    return;
  }
  if (split >= active) return;
  const int start = split * chunk;
  const int end = min(start + chunk, length);

  // B fragments of Q^T (d x heads) for every 16-wide step of d: lane (g, t) holds head g.
  unsigned qb[D / 16][HT][2];
#pragma unroll
  for (int ht = 0; ht < HT; ++ht) {
    const bool valid = ht * 8 + g < heads;
    const T* q_row = q + (static_cast<size_t>(b) * num_q_heads + head0 + ht * 8 + g) * D;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      qb[ks][ht][0] = valid ? load_pair(q_row + ks * 16 + 2 * t) : 0u;
      qb[ks][ht][1] = valid ? load_pair(q_row + ks * 16 + 8 + 2 * t) : 0u;
    }
  }

  const size_t kv_offset = (static_cast<size_t>(b) * num_kv_heads + kv_head) * cache_len * D;
  const T* k_rows = k_cache + kv_offset;
  const T* v_rows = v_cache + kv_offset;
  T* s_pipeline = reinterpret_cast<T*>(shared_memory) + warp * STAGES * STEP;
  // The warp takes the 16-position steps warp, warp + WARPS, ... of [start, end).
  const int steps = (end - start + 15) / 16;
  const int my_steps = warp < steps ? (steps - warp + WARPS - 1) / WARPS : 0;
  auto issue = [&](int i) {
    const int first = start + (warp + i * WARPS) * 16;
    T* s_k = s_pipeline + (i % STAGES) * STEP;
    T* s_v = s_k + 16 * STRIDE;
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {  // 16 rows x PIECES pieces, D / 16 per lane
      const int r = (lane + 32 * k) / PIECES, piece = (lane + 32 * k) % PIECES;
      const bool valid = first + r < end;
      const size_t offset = static_cast<size_t>(valid ? first + r : 0) * D + piece * 8;
      copy_async(s_k + r * STRIDE + piece * 8, k_rows + offset, valid);
      copy_async(s_v + r * STRIDE + piece * 8, v_rows + offset, valid);
    }
  };

  float acc[D / 16][HT][4];  // O^T: lane (g, t) holds d = g, g + 8 for heads 2t, 2t + 1
  float run_max[HT][2], run_sum[HT][2];
#pragma unroll
  for (int ht = 0; ht < HT; ++ht) {
#pragma unroll
    for (int mt = 0; mt < D / 16; ++mt) acc[mt][ht][0] = acc[mt][ht][1] = acc[mt][ht][2] = acc[mt][ht][3] = 0.0f;
    run_max[ht][0] = run_max[ht][1] = negative_infinity();
    run_sum[ht][0] = run_sum[ht][1] = 0.0f;
  }

#pragma unroll
  for (int i = 0; i < STAGES - 1; ++i) {
    if (i < my_steps) issue(i);
    commit_copies();
  }
  for (int i = 0; i < my_steps; ++i) {
    wait_copies<STAGES - 2>();
    __syncwarp();  // step i is in for every lane; every lane is done with step i - 1
    if (i + STAGES - 1 < my_steps) issue(i + STAGES - 1);
    commit_copies();
    const T* s_k = s_pipeline + (i % STAGES) * STEP;
    const T* s_v = s_k + 16 * STRIDE;
    const int first = start + (warp + i * WARPS) * 16;

    // S^T (16 positions x 8 heads per head tile) = K Q^T.
    float s[HT][4];
#pragma unroll
    for (int ht = 0; ht < HT; ++ht) s[ht][0] = s[ht][1] = s[ht][2] = s[ht][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      unsigned ka[4];
      load_matrices(ka, s_k + (lane % 8 + 8 * ((lane / 8) % 2)) * STRIDE + ks * 16 + 8 * (lane / 16));
#pragma unroll
      for (int ht = 0; ht < HT; ++ht) Elem<T>::mma(s[ht], ka, qb[ks][ht][0], qb[ks][ht][1]);
    }

    // Online softmax per head (a column): lanes with the same t hold the same heads.
    const bool low_valid = first + g < end, high_valid = first + g + 8 < end;
    unsigned pb[HT][2];
#pragma unroll
    for (int ht = 0; ht < HT; ++ht) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float low = low_valid ? s[ht][e] * scale_log2 : negative_infinity();
        const float high = high_valid ? s[ht][2 + e] * scale_log2 : negative_infinity();
        float step_max = fmaxf(low, high);
        step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 4));
        step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 8));
        step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 16));
        const float new_max = fmaxf(run_max[ht][e], step_max);
        const float base = new_max == negative_infinity() ? 0.0f : new_max;
        const float alpha = exp2f(run_max[ht][e] - base);
        run_max[ht][e] = new_max;
        s[ht][e] = exp2f(low - base);
        s[ht][2 + e] = exp2f(high - base);
        run_sum[ht][e] = run_sum[ht][e] * alpha + s[ht][e] + s[ht][2 + e];
#pragma unroll
        for (int mt = 0; mt < D / 16; ++mt) {
          acc[mt][ht][e] *= alpha;
          acc[mt][ht][2 + e] *= alpha;
        }
      }
      // P^T's fragment (positions x heads) transposed is the B fragment (positions = k).
      pb[ht][0] = transpose_fragment(Elem<T>::pack(s[ht][0], s[ht][1]));
      pb[ht][1] = transpose_fragment(Elem<T>::pack(s[ht][2], s[ht][3]));
    }

    // O^T (d x heads) += V^T P^T, 16 values of d at a time.
#pragma unroll
    for (int mt = 0; mt < D / 16; ++mt) {
      unsigned va[4];
      load_matrices_transposed(va, s_v + (lane % 8 + 8 * (lane / 16)) * STRIDE + mt * 16 +
                                       8 * ((lane / 8) % 2));
#pragma unroll
      for (int ht = 0; ht < HT; ++ht) Elem<T>::mma(acc[mt][ht], va, pb[ht][0], pb[ht][1]);
    }
  }
  wait_copies<0>();
  __syncwarp();

  // Each warp leaves (max, sum, acc) per head in its own pipeline memory; the block combines.
  float* stats = reinterpret_cast<float*>(s_pipeline);  // [HEADS] max, [HEADS] sum, [HEADS][D]
#pragma unroll
  for (int ht = 0; ht < HT; ++ht) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float sum = run_sum[ht][e];
      sum += __shfl_xor_sync(0xffffffffu, sum, 4);
      sum += __shfl_xor_sync(0xffffffffu, sum, 8);
      sum += __shfl_xor_sync(0xffffffffu, sum, 16);
      const int h = ht * 8 + 2 * t + e;
      if (g == 0) {
        stats[h] = run_max[ht][e];
        stats[HEADS + h] = sum;
      }
#pragma unroll
      for (int mt = 0; mt < D / 16; ++mt) {
        stats[2 * HEADS + h * D + mt * 16 + g] = acc[mt][ht][e];
        stats[2 * HEADS + h * D + mt * 16 + g + 8] = acc[mt][ht][2 + e];
      }
    }
  }
  __syncthreads();

  auto warp_stats = [&](int w) {
    return reinterpret_cast<const float*>(reinterpret_cast<const T*>(shared_memory) +
                                          w * STAGES * STEP);
  };
  const int acc_column = (2 * splits + 3) & ~3;
  const size_t row_floats = static_cast<size_t>(acc_column) + static_cast<size_t>(splits) * D;
  auto workspace_row = [&](int h) {
    return partials + (static_cast<size_t>(b) * num_q_heads + head0 + h) * row_floats;
  };
  for (int i = threadIdx.x; i < heads * D; i += THREADS) {
    const int h = i / D, d = i % D;
    float block_max = negative_infinity();
#pragma unroll
    for (int w = 0; w < WARPS; ++w) block_max = fmaxf(block_max, warp_stats(w)[h]);
    float sum = 0.0f, value = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      const float factor = exp2f(warp_stats(w)[h] - block_max);
      sum += factor * warp_stats(w)[HEADS + h];
      value += factor * warp_stats(w)[2 * HEADS + h * D + d];
    }
    if (active == 1) {
      out[(static_cast<size_t>(b) * num_q_heads + head0 + h) * D + d] =
          Elem<T>::from_float(__fdividef(value, sum));
    } else {
      float* row = workspace_row(h);
      row[acc_column + split * D + d] = value;
      if (d == 0) {
        row[split] = block_max;
        row[splits + split] = sum;
      }
    }
  }
  if (active == 1) return;

  // The last of the sequence's `active` blocks to arrive combines them. The barrier orders every
  // thread's partial stores before thread 0's (cumulative) fence and the counter increment.
  __syncthreads();
  unsigned* counter = counters + static_cast<size_t>(b) * gridDim.y + blockIdx.y;
  if (threadIdx.x == 0) {
    __threadfence();
    arrival = atomicAdd(counter, 1u);
    __threadfence();
  }
  __syncthreads();
  if (arrival != static_cast<unsigned>(active - 1)) return;

  // Each chunk's weight exp2(max_k - max) / total per head, one warp per head, kept in shared
  // memory (the plan keeps 16 * splits floats within the pipeline's bytes).
  float* weights = reinterpret_cast<float*>(shared_memory);  // [heads][active]
  for (int h = warp; h < heads; h += WARPS) {
    const float* row = workspace_row(h);
    float total_max = negative_infinity();
    for (int k = lane; k < active; k += 32) total_max = fmaxf(total_max, __ldcg(row + k));
#pragma unroll
    for (int mask = 16; mask > 0; mask /= 2) {
      total_max = fmaxf(total_max, __shfl_xor_sync(0xffffffffu, total_max, mask));
    }
    float total = 0.0f;
    for (int k = lane; k < active; k += 32) {
      const float factor = exp2f(__ldcg(row + k) - total_max);
      weights[h * active + k] = factor;
      total += factor * __ldcg(row + splits + k);
    }
#pragma unroll
    for (int mask = 16; mask > 0; mask /= 2) total += __shfl_xor_sync(0xffffffffu, total, mask);
    const float inverse = __fdividef(1.0f, total);
    for (int k = lane; k < active; k += 32) weights[h * active + k] *= inverse;
  }
  __syncthreads();
  // out = sum_k weight_k acc_k, four consecutive d per thread (16-byte loads, all in flight).
  for (int i = threadIdx.x; i < heads * (D / 4); i += THREADS) {
    const int h = i / (D / 4), d = (i % (D / 4)) * 4;
    const float4* acc = reinterpret_cast<const float4*>(workspace_row(h) + acc_column + d);
    const float* weight = weights + h * active;
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
    for (int k = 0; k < active; ++k) {
      const float4 a = __ldcg(acc + k * (D / 4));
      const float f = weight[k];
      sum.x += f * a.x;
      sum.y += f * a.y;
      sum.z += f * a.z;
      sum.w += f * a.w;
    }
    *reinterpret_cast<uint2*>(out + (static_cast<size_t>(b) * num_q_heads + head0 + h) * D + d) =
        make_uint2(Elem<T>::pack(sum.x, sum.y), Elem<T>::pack(sum.z, sum.w));
  }
  if (threadIdx.x == 0) *counter = 0u;
}
