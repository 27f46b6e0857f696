// One-shot all-reduce over peer memory (CUDA IPC) for small messages: fp16, bf16 or fp32 in and
// out, fp32 sums. Every rank runs this kernel with the same grid at the same point of its stream;
// each block of each rank
//   1. copies its pieces of the input into its own workspace's data buffer,
//   2. tells every peer's block of the same index that it has arrived (a release store of the
//      call's epoch into the peer's arrival slot) and waits until every peer has arrived (an
//      acquire load of its own slots, bounded in time),
//   3. reads the same pieces from every rank's buffer (16-byte loads), adds them in rank order in
//      fp32 (so every rank gets bit-identical sums) and writes them to the output.
// Design and the layout: docs/runtime/parallel.md ("One-shot all-reduce"); measurements:
// docs/results/parallel.md.
//
// Workspace of one rank (one cudaMalloc, shared with the other processes by an IPC handle):
//   [ARRIVALS_OFFSET]  uint32 [MAX_BLOCKS][MAX_RANKS]  slot [b][p]: the last epoch in which
//                      rank p's block b arrived; written only by rank p
//   [EPOCHS_OFFSET]    uint32 [MAX_BLOCKS]  calls block b of this rank has finished; own
//   [STATUS_OFFSET]    uint32  0, or 1 + the rank a block gave up waiting for; own and sticky
//   [SIGNAL_BYTES]     two data buffers of `capacity` bytes; a call uses buffer (epoch & 1)
// The host zeroes it once; after that only the kernel writes it, so no host state changes per
// call and a captured CUDA graph can replay the kernel any number of times.
//
// Why one barrier per call is enough: the launcher always uses the same grid for a workspace,
// so each 16-byte piece of the data buffers always belongs to the same block index (piece v to
// block (v / THREADS) % grid). Block b of rank r writes buffer (e & 1) in call e only after its
// barrier of call e - 1 completed, which needed block b of every peer to arrive in call e - 1,
// which each did only after it had finished reading buffer (e & 1) in call e - 2. So a buffer
// is never overwritten while a peer still reads it, and no barrier at the end is needed.
// A peer can be at most one call ahead, so an arrival slot holds this epoch or the next.
//
// Requirements the launcher (ftbench/kernels/allreduce.py) checks: input and output 16-byte
// aligned, count * sizeof(T) <= capacity, capacity a multiple of 16, grid <= MAX_BLOCKS,
// THREADS threads per block, WORLD <= MAX_RANKS.
//
// Builds with NVRTC (CuPy RawModule) and with nvcc for sm_80 and newer.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ftb_pdl.cuh"

namespace ftb {

constexpr int AR_MAX_RANKS = 8;
constexpr int AR_MAX_BLOCKS = 64;
constexpr int AR_THREADS = 512;
constexpr unsigned long long AR_ARRIVALS_OFFSET = 0;
constexpr unsigned long long AR_EPOCHS_OFFSET = 2048;
constexpr unsigned long long AR_STATUS_OFFSET = 2304;
constexpr unsigned long long AR_SIGNAL_BYTES = 4096;

static_assert(AR_ARRIVALS_OFFSET + 4 * AR_MAX_BLOCKS * AR_MAX_RANKS <= AR_EPOCHS_OFFSET, "layout");
static_assert(AR_EPOCHS_OFFSET + 4 * AR_MAX_BLOCKS <= AR_STATUS_OFFSET, "layout");
static_assert(AR_STATUS_OFFSET + 4 <= AR_SIGNAL_BYTES, "layout");

// System scope: the peer may be another GPU that reads and writes over NVLink or PCIe.
__device__ __forceinline__ void store_release(unsigned* pointer, unsigned value) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(pointer), "r"(value) : "memory");
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* pointer) {
  unsigned value;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(value) : "l"(pointer) : "memory");
  return value;
}

__device__ __forceinline__ unsigned long long now_ns() {
  unsigned long long time;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(time));
  return time;
}

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(float x) { return x; }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}

// 16 bytes of elements as one value: eight fp16/bf16 or four fp32.
template <typename T>
union Piece {
  static constexpr int kCount = 16 / sizeof(T);
  uint4 bits;
  T elements[kCount];
};

// Piece v of `values` (count elements); past the end, zeros (the bits of +0.0).
template <typename T>
__device__ __forceinline__ uint4 load_piece(const T* values, long long v, long long count) {
  constexpr int n = Piece<T>::kCount;
  if ((v + 1) * n <= count) return reinterpret_cast<const uint4*>(values)[v];
  Piece<T> piece;
  piece.bits = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
  for (int i = 0; i < n; ++i) {
    if (v * n + i < count) piece.elements[i] = values[v * n + i];
  }
  return piece.bits;
}

template <typename T>
__device__ __forceinline__ void store_piece(T* values, long long v, long long count, uint4 bits) {
  constexpr int n = Piece<T>::kCount;
  if ((v + 1) * n <= count) {
    reinterpret_cast<uint4*>(values)[v] = bits;
    return;
  }
  Piece<T> piece;
  piece.bits = bits;
#pragma unroll
  for (int i = 0; i < n; ++i) {
    if (v * n + i < count) values[v * n + i] = piece.elements[i];
  }
}

}  // namespace ftb

// output[i] = sum over ranks p of rank p's input[i], i < count. `workspaces[p]` is rank p's
// workspace in this process's address space (its own allocation for p == rank, an opened IPC
// handle otherwise). `input` may equal `output` (in place). A block that waits longer than
// `timeout_ns` for a peer records 1 + that peer's rank in this rank's status and leaves; once
// the status is set, every later call returns at once (the group is broken: the host reads the
// status after the fact and raises).
template <typename T, int WORLD>
__global__ void __launch_bounds__(ftb::AR_THREADS, 1)
    ftb_allreduce_one_shot(const T* input, T* output, const unsigned long long* workspaces,
                           int rank, long long count, unsigned long long capacity,
                           unsigned long long timeout_ns) {
  ftb_pdl::begin();
  using namespace ftb;
  constexpr int n = Piece<T>::kCount;
  const long long pieces = (count + n - 1) / n;
  const long long first = static_cast<long long>(blockIdx.x) * AR_THREADS + threadIdx.x;
  const long long stride = static_cast<long long>(gridDim.x) * AR_THREADS;
  // The status, the epoch and this thread's first piece of input are independent loads: issue
  // them together, so that the call pays one memory latency for them rather than three.
  unsigned char* own = reinterpret_cast<unsigned char*>(workspaces[rank]);
  volatile unsigned* status = reinterpret_cast<volatile unsigned*>(own + AR_STATUS_OFFSET);
  unsigned* epochs = reinterpret_cast<unsigned*>(own + AR_EPOCHS_OFFSET);
  const unsigned broken = *status;
  const unsigned epoch = epochs[blockIdx.x] + 1u;
  const uint4 head = first < pieces ? load_piece(input, first, count) : make_uint4(0u, 0u, 0u, 0u);
  if (__syncthreads_or(broken != 0u)) return;
  const unsigned long long data = AR_SIGNAL_BYTES + (epoch & 1u) * capacity;

  uint4* mine = reinterpret_cast<uint4*>(own + data);
  if (first < pieces) mine[first] = head;
  for (long long v = first + stride; v < pieces; v += stride) mine[v] = load_piece(input, v, count);

  // The barrier. After __syncthreads the block's copies are ordered before the release stores
  // (release is cumulative); the acquire loads, then __syncthreads, order the peers' copies
  // before every thread's reads below.
  __syncthreads();
  bool gave_up = false;
  if (threadIdx.x < WORLD) {
    const int peer = threadIdx.x;
    unsigned char* peer_workspace = reinterpret_cast<unsigned char*>(workspaces[peer]);
    const unsigned slot = blockIdx.x * AR_MAX_RANKS;
    store_release(reinterpret_cast<unsigned*>(peer_workspace + AR_ARRIVALS_OFFSET) + slot + rank,
                  epoch);
    const unsigned* arrived = reinterpret_cast<const unsigned*>(own + AR_ARRIVALS_OFFSET) + slot + peer;
    const unsigned long long start = now_ns();
    while (static_cast<int>(load_acquire(arrived) - epoch) < 0) {
      if (*status != 0u || now_ns() - start > timeout_ns) {
        atomicCAS(const_cast<unsigned*>(status), 0u, 1u + peer);
        gave_up = true;
        break;
      }
    }
  }
  if (__syncthreads_or(gave_up)) return;

  const uint4* buffers[WORLD];
#pragma unroll
  for (int p = 0; p < WORLD; ++p) {
    buffers[p] = reinterpret_cast<const uint4*>(reinterpret_cast<const unsigned char*>(workspaces[p]) + data);
  }
  for (long long v = first; v < pieces; v += stride) {
    Piece<T> loaded[WORLD];
#pragma unroll
    for (int p = 0; p < WORLD; ++p) loaded[p].bits = buffers[p][v];
    float sums[n];
#pragma unroll
    for (int i = 0; i < n; ++i) sums[i] = to_float(loaded[0].elements[i]);
#pragma unroll
    for (int p = 1; p < WORLD; ++p) {
#pragma unroll
      for (int i = 0; i < n; ++i) sums[i] += to_float(loaded[p].elements[i]);
    }
    Piece<T> total;
#pragma unroll
    for (int i = 0; i < n; ++i) total.elements[i] = from_float<T>(sums[i]);
    store_piece(output, v, count, total.bits);
  }
  if (threadIdx.x == 0) epochs[blockIdx.x] = epoch;
}
