// Grid-stride elementwise loops that move 16-byte vectors where the pointers are
// equally aligned (a scalar head and tail around them), and the channel index of a
// per-channel operand; shared by the elementwise kernels of bias_activation.cu and
// dropout.cu.
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

/* Whether every pointer is 16-byte aligned */
template <typename... P> __device__ __forceinline__ bool lx_aligned16(const P*... p)
{
    return ((((lx_u64)p) % 16 == 0) && ...);
}

/* the W elements at p, read (or, below, written) as one access (the emulation checks the
   alignment a GPU needs: lx_emu_check_aligned) */
template <typename T, int W>
__device__ __forceinline__ lx_pack<T, W> lx_load_pack(const T* p)
{
#ifdef LUXLIB_CUDA_EMU
    lx_emu_check_aligned(p, sizeof(lx_pack<T, W>));
    lx_pack<T, W> v;
    memcpy(&v, p, sizeof v);  /* reported above; the CPU then reads it anyway */
    return v;
#else
    return *reinterpret_cast<const lx_pack<T, W>*>(p);
#endif
}

template <typename T, int W>
__device__ __forceinline__ void lx_store_pack(T* p, const lx_pack<T, W>& v)
{
#ifdef LUXLIB_CUDA_EMU
    lx_emu_check_aligned(p, sizeof(lx_pack<T, W>));
    memcpy(p, &v, sizeof v);
#else
    *reinterpret_cast<lx_pack<T, W>*>(p) = v;
#endif
}

/* n elements viewed as (outer, C, inner) around a per-channel operand, one struct argument
   (_modules.CHANNELS: one launch argument for six scalars, each ~0.25 us of CuPy host time) */
struct lx_channels {
    lx_i64 n, outer;
    lx_div_args C, inner;
};

/* the channel (i / inner) % C of consecutive elements (x viewed as (outer, C, inner)): the
   first by multiply-shift divisions (lx_divisor), the next ones stepped without any; all 0
   unless `divide` */
struct lx_channel {
    lx_i64 c, r, C, inner;
    __device__ __forceinline__ lx_channel(lx_i64 i, const lx_divisor<lx_u64>& Cd, const lx_divisor<lx_u64>& innerd,
                                          int divide)
        : C((lx_i64)Cd.d), inner((lx_i64)innerd.d)
    {
        c = r = 0;
        if (divide) {
            const lx_u64 q = innerd.div((lx_u64)i);
            r = i - (lx_i64)q * inner;
            c = (lx_i64)Cd.mod(q);
        }
    }
    __device__ __forceinline__ void next()
    {
        if (++r == inner) {
            r = 0;
            if (++c == C) c = 0;
        }
    }
};

/* The load of lx_elementwise for kernels with two input arrays a and b: their packs at i */
template <typename T> __device__ __forceinline__ auto lx_load_two(const T* a, const T* b)
{
    return [=](lx_i64 i, auto w) {
        constexpr int W = decltype(w)::value;
        return lx_two<lx_pack<T, W>>{lx_load_pack<T, W>(a + i), lx_load_pack<T, W>(b + i)};
    };
}

/* For the elements [i, i + W) of [0, n): in = load(i, lx_width<W>()) reads the inputs,
   store(i, lx_width<W>(), in) computes and writes the outputs. 16-byte vectors over the
   aligned middle part, LX_UNROLL of them per thread and step (LX_UNROLL grid strides
   apart, so each warp access stays contiguous; all loads, then all stores: in place,
   every element is still read before the same thread writes it), the rest of the vectors
   one per step; single elements for the head and the tail (everywhere when head < 0). */
template <typename T, typename Load, typename Store>
__device__ __forceinline__ void lx_elementwise(lx_i64 n, lx_i64 head, Load load, Store store)
{
    constexpr int V = 16 / sizeof(T);
    typedef decltype(load(lx_i64(0), lx_width<V>())) In;
    lx_i64 nvec = 0;
    if (head < 0) head = n;
    else nvec = (n - head) / V;
    const lx_i64 stride = (lx_i64)gridDim.x * blockDim.x;
    lx_i64 v = (lx_i64)blockIdx.x * blockDim.x + threadIdx.x;
    for (; v + (LX_UNROLL - 1) * stride < nvec; v += LX_UNROLL * stride) {
        In in[LX_UNROLL];
#pragma unroll
        for (int u = 0; u < LX_UNROLL; u++) in[u] = load(head + (v + u * stride) * V, lx_width<V>());
#pragma unroll
        for (int u = 0; u < LX_UNROLL; u++) store(head + (v + u * stride) * V, lx_width<V>(), in[u]);
    }
    for (; v < nvec; v += stride) store(head + v * V, lx_width<V>(), load(head + v * V, lx_width<V>()));
    const lx_i64 tail = head + nvec * V;
    LX_GRID_STRIDE(k, head + (n - tail)) {
        const lx_i64 i = k < head ? k : tail + (k - head);
        store(i, lx_width<1>(), load(i, lx_width<1>()));
    }
}

#endif
