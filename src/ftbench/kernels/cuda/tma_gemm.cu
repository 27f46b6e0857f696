// Streaming tensor-core GEMM for small and medium m on Hopper (sm_90a): Y[m, n] = X[m, k] @
// W[n, k]^T, fp16 or bf16 in and out, fp32 accumulation, all row-major (torch F.linear layout).
// Design and measurements: docs/kernels/tma_gemm.md.
//
// For m up to a few hundred tokens these GEMMs are bound by reading W from HBM, and the work is
// to keep HBM streaming from the first cycle to the last while the tensor cores keep up. A
// block computes a BM x BN tile of Y^T (BM rows of W by BN tokens) over a slice of K:
//   - one producer warp streams W and X tiles into a ring of STAGES shared-memory stages with
//     the bulk tensor copy engine (TMA, 128-byte swizzle, zero-filled past the matrix edges),
//     each stage KBOXES boxes of 64 elements of K, completing on an mbarrier;
//   - BM / 64 consumer warpgroups each multiply 64 rows of W by the BN tokens with wgmma
//     (A = W and B = X both K-major from shared memory, accumulators in registers), releasing
//     a stage as soon as the wgmma that read it has finished;
//   - split-K runs over the blocks of a thread-block cluster (gridDim.z = cluster size): each
//     block stages its fp32 partial tile in its own shared memory, and after a cluster barrier
//     block r adds rank 0..S-1's partials for its 1/S of the rows (distributed shared memory,
//     always in rank order, so results do not depend on timing) and writes them to Y. No
//     workspace, no atomics, one launch.
// Programmatic dependent launch: before waiting for the previous grid, the producer asks L2 for
// the block's first `prefetch_stages` stages of W (a prefetch, so correct whatever the previous
// grid writes); every thread then waits before any load of X or store of Y, and a block lets
// the next grid start once its main loop is done.
//
// Requirements the launcher (ftbench/kernels/tma_gemm.py) checks: k % 8 == 0 (16-byte row
// strides for TMA), 16-byte aligned x, w and y, k_per_split a multiple of 64 * KBOXES.
//
// Builds with NVRTC or nvcc for sm_90a only (wgmma and TMA).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ftb_pdl.cuh"

// A CUtensorMap, passed by value as a __grid_constant__ parameter.
struct alignas(64) FtbTensorMap {
  unsigned long long words[16];
};

namespace ftb_tma {

using u64 = unsigned long long;

constexpr int kBoxK = 64;                // elements of K per TMA box: one 128-byte swizzled row
constexpr int kBoxRowBytes = kBoxK * 2;  // fp16 / bf16
constexpr int kStagePad = 4;             // floats of padding per staged row of Y^T (no bank conflicts)
constexpr int kBarrierBytes = 1024;      // the mbarriers, before the 1024-byte aligned tiles
constexpr int kMaxSplits = 8;            // blocks of a cluster along K (the portable limit)

__device__ __forceinline__ unsigned shared_address(const void* pointer) {
  return static_cast<unsigned>(__cvta_generic_to_shared(pointer));
}

__device__ __forceinline__ void barrier_init(u64* barrier, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(shared_address(barrier)),
               "r"(count));
}

__device__ __forceinline__ void barrier_expect_bytes(u64* barrier, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(
                   shared_address(barrier)),
               "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void barrier_arrive(u64* barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(shared_address(barrier))
               : "memory");
}

__device__ __forceinline__ void barrier_wait(u64* barrier, unsigned parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(shared_address(barrier)),
      "r"(parity)
      : "memory");
}

// Box (inner, outer) of `map` into shared memory, completing on `barrier`.
__device__ __forceinline__ void tma_load(void* destination, const FtbTensorMap* map, int inner,
                                         int outer, u64* barrier) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];" ::"r"(shared_address(destination)),
      "l"(map), "r"(inner), "r"(outer), "r"(shared_address(barrier))
      : "memory");
}

__device__ __forceinline__ void tma_prefetch_l2(const FtbTensorMap* map, int inner, int outer) {
  asm volatile("cp.async.bulk.prefetch.tensor.2d.L2.global [%0, {%1, %2}];" ::"l"(map),
               "r"(inner), "r"(outer)
               : "memory");
}

// wgmma shared-memory descriptor of a K-major tile written by TMA with the 128-byte swizzle:
// rows of 128 bytes, 8-row groups 1024 bytes apart, tile start 1024-byte aligned. Stepping 16
// elements along K inside the swizzled row is +32 bytes on the start address (+2 encoded).
__device__ __forceinline__ u64 descriptor(const void* tile) {
  const u64 address = shared_address(tile);
  return ((address & 0x3FFFF) >> 4) | (1ull << 16) | (u64{1024 >> 4} << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int PENDING>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(PENDING) : "memory");
}

// The compiler sees wgmma write the accumulators when it is issued, not when it completes:
// this pins them (no reads moved before the wait, no copies made while it runs).
template <int N>
__device__ __forceinline__ void keep_in_registers(float (&values)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(values[i])::"memory");
}

__device__ __forceinline__ void cluster_sync() {
  asm volatile(
      "barrier.cluster.arrive.release;\n"
      "barrier.cluster.wait.acquire;" ::
          : "memory");
}

__device__ __forceinline__ unsigned cluster_rank() {
  unsigned rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  return rank;
}

__device__ __forceinline__ unsigned dynamic_shared_bytes() {
  unsigned bytes;
  asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(bytes));
  return bytes;
}

// 4 floats at `local` (this block's shared memory) in block `rank` of the cluster.
__device__ __forceinline__ float4 load_cluster(const float* local, unsigned rank) {
  unsigned remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;"
               : "=r"(remote)
               : "r"(shared_address(local)), "r"(rank));
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(remote));
  return v;
}

template <typename T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ __half from_float<__half>(float value) {
  return __float2half_rn(value);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float value) {
  return __float2bfloat16_rn(value);
}

// D[64 x N] += A[64 x 16] B[16 x N]: A and B K-major in shared memory (descriptors), D in
// registers: d[4j + i] holds row 16 * warp + lane / 4 + 8 * (i / 2), column 8j + 2 (lane % 4)
// + i % 2 of the warpgroup's tile. One specialization per N and element type.
template <typename T, int N>
struct Wgmma;

// clang-format off
#define FTB_WGMMA_N16(CTYPE, PTX)                                                   \
  template <>                                                                       \
  struct Wgmma<CTYPE, 16> {                                                         \
    static __device__ __forceinline__ void run(float (&d)[8], u64 a, u64 b) {       \
      asm volatile(                                                                 \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"                              \
          "wgmma.mma_async.sync.aligned.m64n16k16.f32." PTX "." PTX " {"            \
          "%0, %1, %2, %3, %4, %5, %6, %7"                                          \
          "}, %8, %9, p, 1, 1, 0, 0;\n}\n"                                          \
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), \
            "+f"(d[6]), "+f"(d[7])                                                  \
          : "l"(a), "l"(b), "r"(1));                                                \
    }                                                                               \
  };

#define FTB_WGMMA_N32(CTYPE, PTX)                                                     \
  template <>                                                                         \
  struct Wgmma<CTYPE, 32> {                                                           \
    static __device__ __forceinline__ void run(float (&d)[16], u64 a, u64 b) {        \
      asm volatile(                                                                   \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"                                \
          "wgmma.mma_async.sync.aligned.m64n32k16.f32." PTX "." PTX " {"              \
          "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "                        \
          "%12, %13, %14, %15"                                                        \
          "}, %16, %17, p, 1, 1, 0, 0;\n}\n"                                          \
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),   \
            "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), \
            "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])                        \
          : "l"(a), "l"(b), "r"(1));                                                  \
    }                                                                                 \
  };

#define FTB_WGMMA_N64(CTYPE, PTX)                                                         \
  template <>                                                                             \
  struct Wgmma<CTYPE, 64> {                                                               \
    static __device__ __forceinline__ void run(float (&d)[32], u64 a, u64 b) {            \
      asm volatile(                                                                       \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                    \
          "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTX "." PTX " {"                  \
          "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "                            \
          "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "                  \
          "%24, %25, %26, %27, %28, %29, %30, %31"                                        \
          "}, %32, %33, p, 1, 1, 0, 0;\n}\n"                                              \
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),       \
            "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),     \
            "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), \
            "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
            "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), \
            "+f"(d[30]), "+f"(d[31])                                                      \
          : "l"(a), "l"(b), "r"(1));                                                      \
    }                                                                                     \
  };

#define FTB_WGMMA_N128(CTYPE, PTX)                                                        \
  template <>                                                                             \
  struct Wgmma<CTYPE, 128> {                                                              \
    static __device__ __forceinline__ void run(float (&d)[64], u64 a, u64 b) {            \
      asm volatile(                                                                       \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                    \
          "wgmma.mma_async.sync.aligned.m64n128k16.f32." PTX "." PTX " {"                 \
          "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "                            \
          "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "                  \
          "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "                  \
          "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                  \
          "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, "                  \
          "%60, %61, %62, %63"                                                            \
          "}, %64, %65, p, 1, 1, 0, 0;\n}\n"                                              \
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),       \
            "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),     \
            "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), \
            "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
            "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), \
            "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), \
            "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), \
            "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
            "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), \
            "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), \
            "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                            \
          : "l"(a), "l"(b), "r"(1));                                                      \
    }                                                                                     \
  };

#define FTB_WGMMA_N256(CTYPE, PTX)                                                              \
  template <>                                                                                   \
  struct Wgmma<CTYPE, 256> {                                                                    \
    static __device__ __forceinline__ void run(float (&d)[128], u64 a, u64 b) {                 \
      asm volatile(                                                                             \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                         \
          "wgmma.mma_async.sync.aligned.m64n256k16.f32." PTX "." PTX " {"                       \
          "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "                                  \
          "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "                        \
          "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "                        \
          "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                        \
          "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, "                        \
          "%60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, "                        \
          "%72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, "                        \
          "%84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "                        \
          "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, "                \
          "%108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, "            \
          "%120, %121, %122, %123, %124, %125, %126, %127"                                      \
          "}, %128, %129, p, 1, 1, 0, 0;\n}\n"                                                  \
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),             \
            "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),           \
            "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),       \
            "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),       \
            "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),       \
            "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),       \
            "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),       \
            "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),       \
            "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),       \
            "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),       \
            "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]),       \
            "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),       \
            "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]),       \
            "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),       \
            "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]),       \
            "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),       \
            "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]),     \
            "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), \
            "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), \
            "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
            "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), \
            "+f"(d[126]), "+f"(d[127])                                                          \
          : "l"(a), "l"(b), "r"(1));                                                            \
    }                                                                                           \
  };

FTB_WGMMA_N16(__half, "f16")
FTB_WGMMA_N32(__half, "f16")
FTB_WGMMA_N64(__half, "f16")
FTB_WGMMA_N128(__half, "f16")
FTB_WGMMA_N256(__half, "f16")
FTB_WGMMA_N16(__nv_bfloat16, "bf16")
FTB_WGMMA_N32(__nv_bfloat16, "bf16")
FTB_WGMMA_N64(__nv_bfloat16, "bf16")
FTB_WGMMA_N128(__nv_bfloat16, "bf16")
FTB_WGMMA_N256(__nv_bfloat16, "bf16")
// clang-format on

// Shared memory of one block: the mbarriers, then (1024-byte aligned) the stage ring, which the
// epilogue reuses for the fp32 tile of Y^T. The launcher computes the same sum.
template <int BM, int BN, int STAGES, int KBOXES>
struct TileLayout {
  static constexpr int kWBytes = KBOXES * BM * kBoxRowBytes;  // one stage of W
  static constexpr int kXBytes = KBOXES * BN * kBoxRowBytes;  // one stage of X
  static constexpr int kRingBytes = STAGES * (kWBytes + kXBytes);
  static constexpr int kStagedBytes = BN * (BM + kStagePad) * 4;
  static constexpr int kTileBytes = kRingBytes > kStagedBytes ? kRingBytes : kStagedBytes;
  static constexpr int kBytes = kBarrierBytes + 1024 + kTileBytes;  // + alignment slack
  // Two blocks per SM when their registers fit (about 48 besides the accumulators), so that
  // the next grid can start while this one drains.
  static constexpr int kThreads = BM * 2 + 32;
  static constexpr int kMinBlocks = 2 * kThreads * (BN / 2 + 48) <= 65536 ? 2 : 1;
};

}  // namespace ftb_tma

// Grid: (ceil(n / BM), ceil(m / BN), S), launched as clusters of (1, 1, S) blocks; block z
// covers K elements [z * k_per_split, (z + 1) * k_per_split). Block: BM / 64 consumer
// warpgroups, then one producer warp.
template <typename T, int BM, int BN, int STAGES, int KBOXES>
__global__ void __launch_bounds__(BM * 2 + 32, (ftb_tma::TileLayout<BM, BN, STAGES, KBOXES>::kMinBlocks))
    ftb_tma_gemm(const __grid_constant__ FtbTensorMap w_map,
                 const __grid_constant__ FtbTensorMap x_map, T* __restrict__ y, int m, int n,
                 int k, int k_per_split, int prefetch_stages) {
  using namespace ftb_tma;
  using L = TileLayout<BM, BN, STAGES, KBOXES>;
  static_assert(BM == 64 || BM == 128 || BM == 256, "BM: 64, 128 or 256 rows of W");
  static_assert(BN == 16 || BN == 32 || BN == 64 || BN == 128 || BN == 256, "BN: 16 to 256");
  static_assert(STAGES >= 2 && 2 * 8 * STAGES <= kBarrierBytes, "STAGES");
  static_assert(KBOXES == 1 || KBOXES == 2 || KBOXES == 4, "KBOXES: 1, 2 or 4");
  constexpr int kConsumerThreads = BM * 2;  // 128 per 64 rows
  constexpr int kStageK = KBOXES * kBoxK;

  extern __shared__ unsigned char shared[];
  if (dynamic_shared_bytes() < static_cast<unsigned>(L::kBytes)) __trap();  // launcher bug
  u64* full = reinterpret_cast<u64*>(shared);
  u64* empty = full + STAGES;
  const size_t tiles_address =
      (reinterpret_cast<size_t>(shared) + kBarrierBytes + 1023) & ~size_t{1023};
  unsigned char* w_tiles = reinterpret_cast<unsigned char*>(tiles_address);
  unsigned char* x_tiles = w_tiles + STAGES * L::kWBytes;
  float* staged = reinterpret_cast<float*>(w_tiles);  // [BN][BM + kStagePad], after the loop

  const int n0 = blockIdx.x * BM, m0 = blockIdx.y * BN;
  const int k_begin = blockIdx.z * k_per_split;
  const int k_end = min(k, k_begin + k_per_split);
  const int iterations = k_end > k_begin ? (k_end - k_begin + kStageK - 1) / kStageK : 0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool producer = threadIdx.x >= kConsumerThreads;

  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      barrier_init(&full[s], 1);
      barrier_init(&empty[s], kConsumerThreads);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  if (producer && lane == 0) {
    asm volatile("prefetch.tensormap [%0];" ::"l"(&w_map) : "memory");
    asm volatile("prefetch.tensormap [%0];" ::"l"(&x_map) : "memory");
    const int boxes = min(iterations, prefetch_stages) * KBOXES;
    for (int b = 0; b < boxes; ++b) tma_prefetch_l2(&w_map, k_begin + b * kBoxK, n0);
  }
  __syncthreads();
  ftb_pdl::wait_for_previous_grid();

  float acc[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;
  keep_in_registers(acc);

  if (producer) {
    if (lane == 0) {
      for (int i = 0; i < iterations; ++i) {
        const int slot = i % STAGES;
        if (i >= STAGES) barrier_wait(&empty[slot], ((i / STAGES) - 1) & 1);
        barrier_expect_bytes(&full[slot], L::kWBytes + L::kXBytes);
        for (int b = 0; b < KBOXES; ++b) {
          const int kb = k_begin + i * kStageK + b * kBoxK;
          tma_load(w_tiles + slot * L::kWBytes + b * BM * kBoxRowBytes, &w_map, kb, n0, &full[slot]);
          tma_load(x_tiles + slot * L::kXBytes + b * BN * kBoxRowBytes, &x_map, kb, m0, &full[slot]);
        }
      }
    }
    __syncwarp();
  } else {
    const int group = warp / 4;  // this warpgroup's 64 rows of the block's W tile
    for (int i = 0; i < iterations; ++i) {
      const int slot = i % STAGES;
      barrier_wait(&full[slot], (i / STAGES) & 1);
      wgmma_fence();
#pragma unroll
      for (int b = 0; b < KBOXES; ++b) {
        const u64 a = descriptor(w_tiles + slot * L::kWBytes + b * BM * kBoxRowBytes +
                                      group * 64 * kBoxRowBytes);
        const u64 x = descriptor(x_tiles + slot * L::kXBytes + b * BN * kBoxRowBytes);
#pragma unroll
        for (int step = 0; step < kBoxK / 16; ++step) Wgmma<T, BN>::run(acc, a + 2 * step, x + 2 * step);
      }
      wgmma_commit();
      wgmma_wait<1>();  // the previous stage's wgmma are done: release it to the producer
      if (i > 0) barrier_arrive(&empty[(i - 1) % STAGES]);
    }
    wgmma_wait<0>();
    keep_in_registers(acc);
  }
  ftb_pdl::allow_next_grid();
  __syncthreads();  // every wgmma has read its tiles: the ring is free for the staged tile

  if (!producer) {
    const int row = (warp / 4) * 64 + (warp % 4) * 16 + lane / 4;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int token = 8 * j + 2 * (lane % 4);
      float* top = staged + token * (BM + kStagePad) + row;
      top[0] = acc[4 * j];
      top[BM + kStagePad] = acc[4 * j + 1];
      top[8] = acc[4 * j + 2];
      top[BM + kStagePad + 8] = acc[4 * j + 3];
    }
  }
  const int splits = gridDim.z;  // the cluster's size
  if (splits > 1) {
    cluster_sync();
  } else {
    __syncthreads();
  }

  // This block's rows of the tile: a quarter-row-aligned 1/splits of them.
  const unsigned rank = splits > 1 ? cluster_rank() : 0u;
  const int slice = (BM / 4 + splits - 1) / splits * 4;
  const int row_begin = rank * slice, row_end = min(BM, row_begin + slice);
  const int quads = max(0, (row_end - row_begin) / 4);
  const bool vector_store = n % 4 == 0;
  for (int item = threadIdx.x; item < BN * quads; item += blockDim.x) {
    const int token = item / quads, row = row_begin + 4 * (item % quads);
    if (m0 + token >= m) break;  // items run token by token
    const float* source = staged + token * (BM + kStagePad) + row;
    // Every block's piece is requested before any is added: one round trip, not `splits`.
    float4 parts[kMaxSplits];
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s) {
      if (s < splits) {
        parts[s] = splits > 1 ? load_cluster(source, s) : *reinterpret_cast<const float4*>(source);
      }
    }
    float4 sum = parts[0];
#pragma unroll
    for (int s = 1; s < kMaxSplits; ++s) {
      if (s < splits) {
        sum.x += parts[s].x;
        sum.y += parts[s].y;
        sum.z += parts[s].z;
        sum.w += parts[s].w;
      }
    }
    const int column = n0 + row;
    T* out = y + static_cast<size_t>(m0 + token) * n + column;
    const T values[4] = {from_float<T>(sum.x), from_float<T>(sum.y), from_float<T>(sum.z),
                         from_float<T>(sum.w)};
    if (vector_store && column + 3 < n) {
      uint2 packed;
      memcpy(&packed, values, sizeof(packed));
      *reinterpret_cast<uint2*>(out) = packed;
    } else {
      for (int i = 0; i < 4 && column + i < n; ++i) out[i] = values[i];
    }
  }
  if (splits > 1) cluster_sync();  // no block leaves while others read its shared memory
}
