// Grid-stride elementwise loops that move 16-byte vectors where the pointers are
// equally aligned (a scalar head and tail around them); shared by the elementwise
// kernels of bias_activation.cu and dropout.cu.
#ifndef LUXLIB_CUDA_ELEMENTWISE_CUH
#define LUXLIB_CUDA_ELEMENTWISE_CUH
#include "common.cuh"

#define LX_GRID_STRIDE(i, n) \
    for (lx_i64 i = (lx_i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (lx_i64)gridDim.x * blockDim.x)

/* W consecutive elements, loaded and stored as one access: 16 bytes (float4, double2,
   8 halves) for W = 16 / sizeof(T), a plain element for W = 1 */
template <typename T, int W> struct alignas(W * sizeof(T)) lx_pack { T v[W]; };
template <int W> struct lx_width { static constexpr int value = W; };

/* Elements [0, head) precede the first 16-byte boundary of every pointer, or -1 when the
   pointers are not equally misaligned (or not even element-aligned): then no vectors. */
template <typename T, typename... P>
__device__ __forceinline__ lx_i64 lx_vector_head(lx_i64 n, const T* a, const P*... rest)
{
    const lx_u64 m = (lx_u64)a % 16;
    const bool same = (((lx_u64)rest % 16 == m) && ...);
    if (!same || m % sizeof(T)) return -1;
    const lx_i64 head = (lx_i64)((16 - m) % 16 / sizeof(T));
    return head < n ? head : n;
}

/* body(i, lx_width<W>()) for the elements [i, i + W) of [0, n): 16-byte vectors over the
   aligned middle part, single elements for the head and the tail (or everywhere when
   head < 0); grid-stride loops over both parts */
template <typename T, typename Body>
__device__ __forceinline__ void lx_elementwise(lx_i64 n, lx_i64 head, Body body)
{
    constexpr int V = 16 / sizeof(T);
    lx_i64 nvec = 0;
    if (head < 0) head = n;
    else nvec = (n - head) / V;
    LX_GRID_STRIDE(v, nvec) body(head + v * V, lx_width<V>());
    const lx_i64 tail = head + nvec * V;
    LX_GRID_STRIDE(k, head + (n - tail)) body(k < head ? k : tail + (k - head), lx_width<1>());
}

#endif
