// Read-only bandwidth probe: every byte of `data` is read once with 16-byte loads, four loads in
// flight per thread; one word per block is written so the compiler cannot drop the loads.
#include <cstdint>

extern "C" __global__ void __launch_bounds__(512)
read_probe(const uint4* __restrict__ data, unsigned long long vectors, unsigned int* __restrict__ sink)
{
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned int acc = 0;
    for (; i + 3 * stride < vectors; i += 4 * stride) {
        const uint4 a = __ldcs(data + i);
        const uint4 b = __ldcs(data + i + stride);
        const uint4 c = __ldcs(data + i + 2 * stride);
        const uint4 d = __ldcs(data + i + 3 * stride);
        acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w;
        acc ^= c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < vectors; i += stride) {
        const uint4 a = __ldcs(data + i);
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        acc ^= __shfl_xor_sync(0xffffffffu, acc, offset);
    }
    if (threadIdx.x % 32 == 0) {
        atomicXor(sink + blockIdx.x, acc);
    }
}
