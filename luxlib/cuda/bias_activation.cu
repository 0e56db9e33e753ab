// bias_activation / fast_activation: y = act(x + bias), bias (C,) along axis 1 of x
// viewed as (outer, C, inner) in C order; and the reverse pass, with the per-channel
// bias gradient db[c] = sum of dz over every axis but 1 (block and warp reductions,
// one block per channel: deterministic, no atomics).
// Kernels are templates over T = float, double, __half (launched by name expression
// from luxlib/cuda/_bias_activation.py); A = lx_acc<T>::type is the compute type.
// The elementwise kernels move 16-byte vectors where their pointers are equally aligned
// (a scalar head and tail around them); the forward kernel may run in place (y == x),
// which the dense and conv epilogues do.
#include "common.cuh"
#include "activation.cuh"
#include "elementwise.cuh"

/* v (+ bias[c], the sum rounded to T, when has_bias) in the compute type */
template <typename T>
__device__ __forceinline__ typename lx_acc<T>::type lx_biased(const T* v, const T* bias, lx_i64 c, int has_bias)
{
    typedef typename lx_acc<T>::type A;
    A s = lx_load(v);
    if (has_bias) s = lx_round<T>(s + lx_load(bias + c));
    return s;
}

/* y[i] = act(x[i] + bias[channel(i)]); bias is read only when has_bias. y may be x (in
   place: each element is read before it is written by the same thread) */
template <typename T>
__device__ __forceinline__ void lx_bias_act_forward(const T* x, const T* bias, T* y, lx_i64 n,
                                                    const lx_divisor<lx_u64>& Cd, const lx_divisor<lx_u64>& innerd,
                                                    int has_bias, int act, typename lx_acc<T>::type p)
{
    lx_elementwise<T>(
        n, lx_vector_head<T>(n, x, y),
        [&](lx_i64 i, auto w) { return lx_load_pack<T, decltype(w)::value>(x + i); },
        [&](lx_i64 i, auto w, const auto& a) {
            constexpr int W = decltype(w)::value;
            lx_pack<T, W> b;
            lx_channel ch(i, Cd, innerd, has_bias);
            lx_with_act(act, [&](auto id) {
#pragma unroll
                for (int j = 0; j < W; j++, ch.next())
                    lx_store(b.v + j, lx_act(decltype(id)::value, lx_biased(a.v + j, bias, ch.c, has_bias), p));
            });
            lx_store_pack<T, W>(y + i, b);
        });
}

/* The forward kernels: with a bias, and without one (fast_activation and the epilogues
   without a bias: 5 launch arguments, each ~0.25 us of CuPy host time) */
template <typename T>
__global__ void bias_act_forward(const T* x, const T* __restrict__ bias, T* y, const lx_channels g, int act,
                                 typename lx_acc<T>::type p)
{
    lx_bias_act_forward(x, bias, y, g.n, LX_DIV_OF(lx_u64, g.C), LX_DIV_OF(lx_u64, g.inner), 1, act, p);
}

template <typename T>
__global__ void act_forward(const T* x, T* y, lx_i64 n, int act, typename lx_acc<T>::type p)
{
    const lx_divisor<lx_u64> one(1, 1, 0);  /* not used without a bias */
    lx_bias_act_forward(x, x, y, n, one, one, 0, act, p);
}

/* dz[i] = dy[i] * act'(src[i]) without a bias (with one, bias_act_backward_db* below): src
   is y for output-only activations, else x */
template <typename T>
__global__ void act_backward(const T* __restrict__ dy, const T* __restrict__ src, T* __restrict__ dz, lx_i64 n,
                             int act, typename lx_acc<T>::type p)
{
    lx_elementwise<T>(
        n, lx_vector_head<T>(n, dy, src, dz),
        lx_load_two(dy, src),
        [&](lx_i64 i, auto w, const auto& in) {
            constexpr int W = decltype(w)::value;
            lx_pack<T, W> d;
            lx_with_act(act, [&](auto id) {
#pragma unroll
                for (int j = 0; j < W; j++)
                    lx_store(d.v + j, lx_load(in.a.v + j) * lx_dact(decltype(id)::value, lx_load(in.b.v + j), p));
            });
            lx_store_pack<T, W>(dz + i, d);
        });
}

/* Two-stage bias gradient: with gridDim.y = S > 1 splits, block (., s) reduces the s-th
   contiguous part of every channel's reduction and writes its sum to partial[s * C + c]
   (compute type), which bias_act_db_finalize then sums in order; with S == 1 the block
   writes db[c] itself. The partition depends on the shapes and S only: deterministic. */
template <typename T>
__device__ __forceinline__ void lx_db_result(T* db, typename lx_acc<T>::type* partial, lx_i64 C, lx_i64 c,
                                             typename lx_acc<T>::type acc)
{
    if (gridDim.y == 1) lx_store(db + c, acc);
    else partial[(lx_i64)blockIdx.y * C + c] = acc;
}

/* [begin, end): this block's part of [0, m), split in gridDim.y contiguous parts */
__device__ __forceinline__ void lx_split_range(lx_i64 m, lx_i64* begin, lx_i64* end)
{
    const lx_i64 per = (m + gridDim.y - 1) / gridDim.y;
    *begin = per * blockIdx.y;
    *end = *begin + per < m ? *begin + per : m;
}

/* an element of dy and of src, and its index */
template <typename T> struct lx_dy_src { T dy, src; lx_i64 i; };

/* The same dz, and db[c] = sum of dz over (outer, inner) for channel c = blockIdx.x
   (split over blockIdx.y): the channel's runs of `inner` elements, C * inner apart, walked
   by lx_for_chunk (no division per element; LX_UNROLL elements loaded ahead). blockDim.x: a
   multiple of 32, at most 1024. */
template <typename T>
__global__ void bias_act_backward_db(const T* __restrict__ dy, const T* __restrict__ src,
                                     const T* __restrict__ bias, T* __restrict__ dz, T* __restrict__ db,
                                     typename lx_acc<T>::type* __restrict__ partial, const lx_channels g,
                                     int add_bias, int act, typename lx_acc<T>::type p)
{
    typedef typename lx_acc<T>::type A;
    __shared__ A scratch[LX_WARP];
    const lx_i64 c = blockIdx.x, outer = g.outer, C = g.C.d, inner = g.inner.d;
    lx_i64 k0, k1;
    lx_split_range(outer * inner, &k0, &k1);
    A acc = 0;
    lx_for_chunk(
        c * inner, k0, k1, LX_DIV_OF(lx_u64, g.inner), C * inner,
        [&](lx_i64 i) { return lx_dy_src<T>{dy[i], src[i], i}; },
        [&](lx_i64, const lx_dy_src<T>& e) {
            const A s = lx_biased(&e.src, bias, c, add_bias);
            const T g = lx_to_elem<T>(lx_load(&e.dy) * lx_dact(act, s, p));
            dz[e.i] = g;
            acc += lx_load(&g);
        });
    acc = lx_block_sum(acc, scratch);
    if (threadIdx.x == 0) lx_db_result(db, partial, C, c, acc);
}

/* inner == 1 (x is (outer, C)): blocks of (32, LX_ROWS) threads, threadIdx.x along
   channels (coalesced), threadIdx.y along rows (of the blockIdx.y-th split of the rows),
   then a reduction over y in shared memory */
#define LX_ROWS 8
template <typename T>
__global__ void bias_act_backward_db_rows(const T* __restrict__ dy, const T* __restrict__ src,
                                          const T* __restrict__ bias, T* __restrict__ dz,
                                          T* __restrict__ db, typename lx_acc<T>::type* __restrict__ partial,
                                          lx_i64 outer, lx_i64 C, int add_bias, int act,
                                          typename lx_acc<T>::type p)
{
    typedef typename lx_acc<T>::type A;
    __shared__ A part[LX_ROWS][LX_WARP + 1];
    const lx_i64 c = (lx_i64)blockIdx.x * LX_WARP + threadIdx.x;
    lx_i64 r0, r1;
    lx_split_range(outer, &r0, &r1);
    A acc = 0;
    if (c < C) {
        for (lx_i64 r = r0 + threadIdx.y; r < r1; r += LX_ROWS) {
            const lx_i64 i = r * C + c;
            const A s = lx_biased(src + i, bias, c, add_bias);
            const T g = lx_to_elem<T>(lx_load(dy + i) * lx_dact(act, s, p));
            dz[i] = g;
            acc += lx_load(&g);
        }
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int r = 1; r < LX_ROWS; r++) acc += part[r][threadIdx.x];
        lx_db_result(db, partial, C, c, acc);
    }
}

/* db[c] = sum over s of partial[s * C + c], in order of s (the second stage) */
template <typename T>
__global__ void bias_act_db_finalize(const typename lx_acc<T>::type* __restrict__ partial, T* __restrict__ db,
                                     lx_i64 splits, lx_i64 C)
{
    typedef typename lx_acc<T>::type A;
    LX_GRID_STRIDE(c, C) {
        A acc = 0;
        for (lx_i64 s = 0; s < splits; s++) acc += partial[s * C + c];
        lx_store(db + c, acc);
    }
}
