// bias_activation / fast_activation: y = act(x + bias), bias (C,) along axis 1 of x
// viewed as (outer, C, inner) in C order; and the reverse pass, with the per-channel
// bias gradient db[c] = sum of dz over every axis but 1 (block and warp reductions,
// one block per channel: deterministic, no atomics).
// Kernels are templates over T = float, double, __half (launched by name expression
// from luxlib/cuda/_bias_activation.py); A = lx_acc<T>::type is the compute type.
#include "common.cuh"
#include "activation.cuh"

#define LX_GRID_STRIDE(i, n) \
    for (lx_i64 i = (lx_i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (lx_i64)gridDim.x * blockDim.x)

template <typename T>
__device__ __forceinline__ typename lx_acc<T>::type lx_biased(const T* x, const T* bias, lx_i64 i,
                                                              lx_i64 C, lx_i64 inner, int has_bias)
{
    typedef typename lx_acc<T>::type A;
    A v = lx_load(x + i);
    if (has_bias) v = lx_round<T>(v + lx_load(bias + (i / inner) % C));  /* x + bias in T */
    return v;
}

/* y[i] = act(x[i] + bias[channel(i)]); bias is read only when has_bias */
template <typename T>
__global__ void bias_act_forward(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y,
                                 lx_i64 n, lx_i64 C, lx_i64 inner, int has_bias, int act,
                                 typename lx_acc<T>::type p)
{
    LX_GRID_STRIDE(i, n) {
        lx_store(y + i, lx_act(act, lx_biased(x, bias, i, C, inner, has_bias), p));
    }
}

/* dz[i] = dy[i] * act'(s), s = src[i] (+ bias[channel(i)] when add_bias): src is y for
   output-only activations, else x (then the pre-activation is recomputed) */
template <typename T>
__global__ void bias_act_backward(const T* __restrict__ dy, const T* __restrict__ src,
                                  const T* __restrict__ bias, T* __restrict__ dz,
                                  lx_i64 n, lx_i64 C, lx_i64 inner, int add_bias, int act,
                                  typename lx_acc<T>::type p)
{
    LX_GRID_STRIDE(i, n) {
        lx_store(dz + i, lx_load(dy + i) * lx_dact(act, lx_biased(src, bias, i, C, inner, add_bias), p));
    }
}

/* The same dz, and db[c] = sum of dz over (outer, inner) for channel c = blockIdx.x.
   blockDim.x: a multiple of 32, at most 1024. */
template <typename T>
__global__ void bias_act_backward_db(const T* __restrict__ dy, const T* __restrict__ src,
                                     const T* __restrict__ bias, T* __restrict__ dz, T* __restrict__ db,
                                     lx_i64 outer, lx_i64 C, lx_i64 inner, int add_bias, int act,
                                     typename lx_acc<T>::type p)
{
    typedef typename lx_acc<T>::type A;
    __shared__ A scratch[LX_WARP];
    const lx_i64 c = blockIdx.x;
    const lx_i64 m = outer * inner;
    A acc = 0;
    for (lx_i64 k = threadIdx.x; k < m; k += blockDim.x) {
        const lx_i64 o = k / inner, j = k - o * inner;
        const lx_i64 i = (o * C + c) * inner + j;
        A s = lx_load(src + i);
        if (add_bias) s = lx_round<T>(s + lx_load(bias + c));
        const T g = lx_to_elem<T>(lx_load(dy + i) * lx_dact(act, s, p));
        dz[i] = g;
        acc += lx_load(&g);
    }
    acc = lx_block_sum(acc, scratch);
    if (threadIdx.x == 0) lx_store(db + c, acc);
}

/* inner == 1 (x is (outer, C)): blocks of (32, LX_ROWS) threads, threadIdx.x along
   channels (coalesced), threadIdx.y along rows, then a reduction over y in shared memory */
#define LX_ROWS 8
template <typename T>
__global__ void bias_act_backward_db_rows(const T* __restrict__ dy, const T* __restrict__ src,
                                          const T* __restrict__ bias, T* __restrict__ dz,
                                          T* __restrict__ db, lx_i64 outer, lx_i64 C, int add_bias,
                                          int act, typename lx_acc<T>::type p)
{
    typedef typename lx_acc<T>::type A;
    __shared__ A part[LX_ROWS][LX_WARP + 1];
    const lx_i64 c = (lx_i64)blockIdx.x * LX_WARP + threadIdx.x;
    A acc = 0;
    if (c < C) {
        for (lx_i64 r = threadIdx.y; r < outer; r += LX_ROWS) {
            const lx_i64 i = r * C + c;
            A s = lx_load(src + i);
            if (add_bias) s = lx_round<T>(s + lx_load(bias + c));
            const T g = lx_to_elem<T>(lx_load(dy + i) * lx_dact(act, s, p));
            dz[i] = g;
            acc += lx_load(&g);
        }
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int r = 1; r < LX_ROWS; r++) acc += part[r][threadIdx.x];
        lx_store(db + c, acc);
    }
}
