// batchnorm, groupnorm, instancenorm, layernorm: statistics, the fused normalize +
// affine + activation pass, and the closed-form reverse pass (doc/cuda.md, "Normalization").
//
//     xhat = (x - mean) * rstd,  z = xhat * scale + bias,  y = act(z)
//     g = dy * act',  h = g * scale
//     dx = rstd * ((h - mean(h)) - xhat * mean(h * xhat))   (batch statistics)
//     dx = rstd * h                                         (given statistics)
//
// x is C-contiguous. Reductions run over *units*: unit u has `len` elements in runs of
// `runlen` contiguous elements, run r of unit u starting at u * gstride + r * rstride.
// A unit is cut into chunks of `chunk` elements, one block per (unit, chunk) (grid
// (units, chunks); units that are the columns of an (N, C) x take the column kernels):
// every block writes double partial results, and a finalize kernel combines them in a fixed
// order, so results do not depend on the schedule (layernorm rows of at most 1024 elements
// take the fused rows kernels at the end of this file instead). The elementwise kernels find the statistics group of element i as
// (i / qdiv) % ngroups and its affine (scale/bias) index as (i / adiv) % amod.
// No kernel divides per element: divisions by these launch constants are multiply-shifts
// (lx_divisor, common.cuh; in 32 bits when every index is below 2^31), and the reductions
// step through the runs of a unit.
//
// Statistics and every sum accumulate in double for all element types; the elementwise
// arithmetic runs in the compute type A = lx_acc<T>::type. z and h are computed with
// non-contracting operations so that the backward kernels recompute them bit for bit as
// the forward did (and h - mean(h) cancels exactly for one-element groups).
#include "common.cuh"
#include "activation.cuh"
#include "elementwise.cuh"

/* The reduction units of the per-unit partial kernels, one struct argument
   (_normalization.UNITS_ARGS): `units` units of `len` elements cut into chunks of `chunk`,
   runs of `runlen`, run r of unit u at u * gstride + r * rstride; backward pass 1 takes the
   statistics of group u / sdiv and the affine index u % amod (the statistics: 1, 1). */
struct lx_units {
    lx_i64 units, len, chunk, gstride, rstride;
    lx_div_args runlen, sdiv, amod;
};

/* The index parameters of the elementwise kernels, one struct argument
   (_normalization.INDEX_ARGS): n elements; the divisors of the group (i / qdiv) % ngroups
   and the affine index (i / adiv) % amod, for indices of 32 bits (every index and
   i + gridDim.x * blockDim.x below 2^31) or, with `wide`, 64 bits; `vec`: 16-byte packs
   of elements where the pointers allow (lx_norm_elements). */
struct lx_norm_index {
    lx_i64 n;
    int wide, vec;
    lx_div_args qdiv, ngroups, adiv, amod;
};

/* The statistics' finalize (_normalization.FINALIZE_ARGS): `units` units of `len` elements
   in `nchunks` chunks of `chunk`; eps; and the running update's keep (= 1 - momentum,
   rounded to the compute type by the host), momentum and unbiased factor (lx_running_update). */
struct lx_finalize {
    lx_i64 units, nchunks, len, chunk;
    double eps, keep, momentum, unbiased;
};

/* Backward pass 1's finalize (_normalization.BWD_FINALIZE_ARGS): see norm_backward_finalize */
struct lx_bwd_finalize {
    lx_i64 groups, sdiv, nchunks, amod, units;
    int nsum;
    double count;
};

template <typename T> struct lx_norm_ops {
    typedef typename lx_acc<T>::type A;

    // xhat and z of one element; m, r: the group's mean and rstd in A; s, b: scale, bias
    static __device__ __forceinline__ A xhat(A x, A m, A r) { return lx_mul(lx_add(x, -m), r); }
    static __device__ __forceinline__ A z(A xh, A s, A b) { return lx_add(lx_mul(xh, s), b); }

    // g = dy * act'(z) (act' from y = act(z) for output-only activations)
    static __device__ __forceinline__ A g(A dy, A z, int act, A p)
    {
        return lx_mul(dy, lx_dact(act, LX_OUTPUT_ONLY(act) ? lx_act(act, z, p) : z, p));
    }
};

/* The sum of squared deviations sum(d^2) - sum(d) * mean(d) from shifted sums: rounding may
   leave it below 0 (then 0); NaN stays NaN (an infinity among the values: inf - inf), so that
   the statistics are NaN as the formulas make them (fmax would return 0) */
__device__ __forceinline__ double lx_shifted_m2(double s, double ss, double dm)
{
    const double m2 = ss - s * dm;
    return m2 < 0.0 ? 0.0 : m2;
}

__device__ __forceinline__ lx_i64 lx_chunk_end(lx_i64 k0, lx_i64 chunk, lx_i64 len)
{
    return len - k0 < chunk ? len : k0 + chunk;
}

// ---- blocks of (LX_WARP, LX_NORM_ROWS) threads --------------------------------------------
// The column kernels (x as (rows, C): threadIdx.x along the columns, so each row's loads are
// coalesced; threadIdx.y over the rows of the block's chunk, blockIdx.y) and the finalize
// kernels (threadIdx.x along the units or groups, threadIdx.y over their partial results).
#define LX_NORM_ROWS 8

/* v[k] summed over threadIdx.y in order of y, into thread y == 0's v (every thread calls it;
   acc is free again after the block's next barrier) */
template <int N>
__device__ __forceinline__ void lx_cols_sum(double (&v)[N], double (&acc)[N][LX_NORM_ROWS][LX_WARP + 1])
{
#pragma unroll
    for (int k = 0; k < N; k++) acc[k][threadIdx.y][threadIdx.x] = v[k];
    __syncthreads();
    if (threadIdx.y == 0)
        for (int r = 1; r < LX_NORM_ROWS; r++)
#pragma unroll
            for (int k = 0; k < N; k++) v[k] += acc[k][r][threadIdx.x];
}

/* Per (unit, chunk) = (u, blockIdx.y), u running over the units from blockIdx.x in steps
   of gridDim.x (block-uniform, so the barriers stay safe; the grid's x is capped): the
   chunk's mean and sum of squared deviations from it, part[2 * (u * gridDim.y + c) + {0, 1}],
   in one pass over the chunk:
   double sums of d = x - K and d * d with K the chunk's first element (shifted sums, as the
   CPU kernels: the cancellation in sum(d^2) - sum(d)^2 / n costs a relative
   (1 + (mean - K)^2 / var) * 2^-53 of the result, K being one of the values). */
template <typename T>
__global__ void norm_stats_partial(const T* __restrict__ x, double* __restrict__ part, const lx_units s)
{
    __shared__ double scratch[2][LX_WARP];
    __shared__ double sums[2];
    const lx_i64 c = blockIdx.y, k0 = c * s.chunk, k1 = lx_chunk_end(k0, s.chunk, s.len), rstride = s.rstride;
    const lx_divisor<lx_u64> rl = LX_DIV_OF(lx_u64, s.runlen);
    const lx_i64 r0 = (lx_i64)rl.div((lx_u64)k0), first = r0 * rstride + (k0 - r0 * (lx_i64)rl.d);
    for (lx_i64 u = blockIdx.x; u < s.units; u += gridDim.x) {
        const lx_i64 base = u * s.gstride;
        const double shift = (double)lx_load(x + base + first);
        double v[2] = {0, 0};  /* sum(d), sum(d^2) */
        lx_for_chunk(
            base, k0, k1, rl, rstride, [&](lx_i64 i) { return x[i]; },
            [&](lx_i64, T xv) {
                const double d = (double)lx_load(&xv) - shift;
                v[0] += d;
                v[1] += d * d;
            });
        lx_block_sums(v, scratch, sums);
        if (threadIdx.x == 0) {
            const double n = (double)(k1 - k0), dm = sums[0] / n;
            part[2 * (u * gridDim.y + c)] = shift + dm;
            part[2 * (u * gridDim.y + c) + 1] = lx_shifted_m2(sums[0], sums[1], dm);
        }
    }
}

/* Chan's merge of a partial result (count nb, mean mb, sum of squared deviations m2b) into
   v = (count, mean, M2); an empty one (nb == 0) changes nothing. Each double operation
   rounded on its own (never contracted into FMAs), as in the emulation and on the host. */
__device__ __forceinline__ void lx_chan_merge(double (&v)[3], double nb, double mb, double m2b)
{
    if (nb == 0) return;
    const double nn = v[0] + nb, d = mb - v[1];
    v[1] = lx_add(v[1], lx_mul(d, nb / nn));
    v[2] = lx_add(v[2], lx_add(m2b, lx_mul(lx_mul(d, d), v[0] * nb / nn)));
    v[0] = nn;
}

/* The mean and the biased variance of every unit from the chunks' partial results, handed
   to out(u, mean, var). Blocks of (LX_WARP, LX_NORM_ROWS) threads, 32 units a block
   (grid-stride): thread y merges chunks y, y + LX_NORM_ROWS, ... in order, then thread 0
   merges the LX_NORM_ROWS results in order of y (with at most LX_NORM_ROWS chunks: the chunks
   in order, one thread's loop of before; a fixed order for given shapes always). */
template <typename Out>
__device__ __forceinline__ void lx_stats_finalize(const double* __restrict__ part, lx_i64 units, lx_i64 nchunks,
                                                  lx_i64 len, lx_i64 chunk, Out out)
{
    __shared__ double acc[3][LX_NORM_ROWS][LX_WARP + 1];
    for (lx_i64 u0 = (lx_i64)blockIdx.x * LX_WARP; u0 < units; u0 += (lx_i64)gridDim.x * LX_WARP) {
        const lx_i64 u = u0 + threadIdx.x;
        double v[3] = {0, 0, 0};
        if (u < units)
            for (lx_i64 c = threadIdx.y; c < nchunks; c += LX_NORM_ROWS)
                lx_chan_merge(v, (double)(lx_chunk_end(c * chunk, chunk, len) - c * chunk), part[2 * (u * nchunks + c)],
                              part[2 * (u * nchunks + c) + 1]);
#pragma unroll
        for (int k = 0; k < 3; k++) acc[k][threadIdx.y][threadIdx.x] = v[k];
        __syncthreads();
        if (threadIdx.y == 0 && u < units) {
            for (int r = 1; r < LX_NORM_ROWS; r++)
                lx_chan_merge(v, acc[0][r][threadIdx.x], acc[1][r][threadIdx.x], acc[2][r][threadIdx.x]);
            out(u, v[1], v[2] / v[0]);
        }
        __syncthreads();  /* acc is read before the next tile writes it */
    }
}

/* The new running statistics of a channel from its averaged group statistics m, v (running
   statistics of type T): new_mean = keep * running_mean + momentum * m and new_var = keep *
   running_var + unbiased * v, keep = 1 - momentum rounded to T and its product with the
   running value rounded to T (NumPy's arithmetic with a Python scalar), the sums in double,
   rounded once. */
template <typename T>
__device__ __forceinline__ void lx_running_update(lx_i64 c, double m, double v, const T* __restrict__ running_mean,
                                                  const T* __restrict__ running_var, T* __restrict__ new_mean,
                                                  T* __restrict__ new_var, typename lx_acc<T>::type keep,
                                                  double momentum, double unbiased)
{
    const double rm = (double)lx_round<T>(lx_mul(keep, lx_load(running_mean + c)));
    const double rv = (double)lx_round<T>(lx_mul(keep, lx_load(running_var + c)));
    new_mean[c] = lx_from_double<T>(lx_add(rm, lx_mul(momentum, m)));
    new_var[c] = lx_from_double<T>(lx_add(rv, lx_mul(unbiased, v)));
}

/* mean[u], the biased var[u] and rstd[u] = 1 / sqrt(var[u] + eps) (lx_stats_finalize). T is
   unused (one name per element type, like every kernel of the family). */
template <typename T>
__global__ void norm_stats_finalize(const double* __restrict__ part, double* __restrict__ mean,
                                    double* __restrict__ var, double* __restrict__ rstd, const lx_finalize f)
{
    const double eps = f.eps;
    lx_stats_finalize(part, f.units, f.nchunks, f.len, f.chunk, [&](lx_i64 u, double m, double v) {
        mean[u] = m;
        var[u] = v;
        rstd[u] = 1.0 / sqrt(v + eps);
    });
}

/* batchnorm in training with running statistics (a unit per channel): mean[u] and rstd[u]
   as norm_stats_finalize, and the channel's new running statistics as norm_running_update
   computes them (one group per channel), in the same launch */
template <typename T>
__global__ void norm_stats_finalize_running(const double* __restrict__ part, double* __restrict__ mean,
                                            double* __restrict__ rstd, const T* __restrict__ running_mean,
                                            const T* __restrict__ running_var, T* __restrict__ new_mean,
                                            T* __restrict__ new_var, const lx_finalize f)
{
    const double eps = f.eps, momentum = f.momentum, unbiased = f.unbiased;
    const typename lx_acc<T>::type keep = (typename lx_acc<T>::type)f.keep;  // exact: the host rounded it
    lx_stats_finalize(part, f.units, f.nchunks, f.len, f.chunk, [&](lx_i64 u, double m, double v) {
        mean[u] = m;
        rstd[u] = 1.0 / sqrt(v + eps);
        lx_running_update(u, m, v, running_mean, running_var, new_mean, new_var, keep, momentum, unbiased);
    });
}

/* Given (running) statistics of C channels as the group statistics of `units` groups
   (group u is channel u % C): mean[u] = running_mean, rstd[u] = 1 / sqrt(running_var + eps),
   in double */
template <typename T>
__global__ void norm_given_stats(const T* __restrict__ running_mean, const T* __restrict__ running_var,
                                 double* __restrict__ mean, double* __restrict__ rstd, lx_i64 units, lx_i64 C,
                                 double eps)
{
    for (lx_i64 u = (lx_i64)blockIdx.x * blockDim.x + threadIdx.x; u < units; u += (lx_i64)gridDim.x * blockDim.x) {
        const lx_i64 c = u % C;  // once per group
        mean[u] = (double)lx_load(running_mean + c);
        rstd[u] = 1.0 / sqrt((double)lx_load(running_var + c) + eps);
    }
}

/* The new running statistics of channel c (lx_running_update) from the group statistics of
   the reps groups c, C + c, ... averaged (instancenorm: one group per (n, c)) */
template <typename T>
__global__ void norm_running_update(const double* __restrict__ mean, const double* __restrict__ var,
                                    const T* __restrict__ running_mean, const T* __restrict__ running_var,
                                    T* __restrict__ new_mean, T* __restrict__ new_var, lx_i64 C, lx_i64 reps,
                                    typename lx_acc<T>::type keep, double momentum, double unbiased)
{
    for (lx_i64 c = (lx_i64)blockIdx.x * blockDim.x + threadIdx.x; c < C; c += (lx_i64)gridDim.x * blockDim.x) {
        double m = 0, v = 0;
        for (lx_i64 r = 0; r < reps; r++) {
            m += mean[r * C + c];
            v += var[r * C + c];
        }
        lx_running_update(c, m / (double)reps, v / (double)reps, running_mean, running_var, new_mean, new_var, keep,
                          momentum, unbiased);
    }
}

/* Element e of the packs loaded for elements [i, i + W) (one array's lx_pack, or lx_two of two) */
template <typename T, int W> __device__ __forceinline__ T lx_at(const lx_pack<T, W>& p, int e) { return p.v[e]; }
template <typename T, int W> __device__ __forceinline__ lx_two<T> lx_at(const lx_two<lx_pack<T, W>>& p, int e)
{
    return {p.a.v[e], p.b.v[e]};
}

/* Elements per thread and step of lx_norm_elements' 16-byte packs (_normalization.PACKED_STEP):
   2 packs of float, 4 of double, 1 of __half. More would inline more copies of every
   activation into each kernel (one per element and step), and compile time grows faster
   than the code. */
#define LX_NORM_PACKED_STEP 8

/* out[i] = value(q, a, lx_at(in, e), id) for every element i = i0 + e of [0, n), with
   in = load(i0, lx_width<W>()) the inputs of elements [i0, i0 + W) (packs: lx_load_pack), q
   the element's group and a its affine index, id the activation; value computes in the
   compute type, out gets W elements at a time. Two paths:
   - packs: W = 16 / sizeof(T) (16-byte accesses), LX_NORM_PACKED_STEP elements per thread
     and step, 64-bit indices, when the host set `vec` (and `wide`) and every pointer of
     `aligned` is 16-byte aligned. With `vec` the host guarantees that n and qdiv are
     multiples of W, and adiv too (the W elements share a) or adiv == 1 with amod a
     multiple of W (their affine indices are a, a + 1, ...): the group and affine index
     are computed once per pack;
   - single elements, LX_UNROLL per thread and step, indices of 32 bits or, with `wide`, 64
     bits (lx_u32, lx_u64: the index type I of q and a).
   The packs of a step are LX_UNROLL (or LX_NORM_PACKED_STEP / W) grid strides apart, all
   loaded before the first is stored (a store between them would keep the next load from
   issuing); past the end a thread loads its first pack again and stores nothing. Indices
   stay below n + LX_UNROLL * the grid's threads, which the host keeps within 32 bits for
   the 32-bit path (_normalization._index_args). */
template <typename T, typename Load, typename Value>
__device__ __forceinline__ void lx_norm_elements(const lx_norm_index ix, int act, bool aligned, T* __restrict__ out,
                                                 Load load, Value value)
{
    constexpr int V = 16 / sizeof(T);
    auto run = [&](auto zero, auto w) {
        typedef decltype(zero) I;
        constexpr int W = decltype(w)::value, P = W == 1 ? LX_UNROLL : LX_NORM_PACKED_STEP / W;
        typedef decltype(load(zero, w)) In;
        const lx_divisor<I> qd = LX_DIV_OF(I, ix.qdiv), ng = LX_DIV_OF(I, ix.ngroups), ad = LX_DIV_OF(I, ix.adiv),
                            am = LX_DIV_OF(I, ix.amod);
        const I npacks = (I)ix.n / W, astep = ix.adiv.d == 1 ? 1 : 0;
        const I stride = (I)gridDim.x * blockDim.x;
        for (I v0 = (I)blockIdx.x * blockDim.x + threadIdx.x; v0 < npacks; v0 += P * stride) {
            In in[P];
#pragma unroll
            for (int u = 0; u < P; u++) {
                const I v = v0 + (I)u * stride;
                in[u] = load((v < npacks ? v : v0) * W, w);
            }
            lx_with_act(act, [&](auto id) {  /* one switch for the step */
#pragma unroll
                for (int u = 0; u < P; u++) {
                    const I v = v0 + (I)u * stride, i = v * W;
                    if (v < npacks) {
                        const I q = ng.mod(qd.div(i)), a = am.mod(ad.div(i));
                        lx_pack<T, W> o;
#pragma unroll
                        for (int e = 0; e < W; e++) o.v[e] = lx_to_elem<T>(value(q, a + (I)e * astep, lx_at(in[u], e), id));
                        lx_store_pack<T, W>(out + i, o);
                    }
                }
            });
        }
    };
    if (!ix.wide) run((lx_u32)0, lx_width<1>());
    else if (ix.vec && aligned) run((lx_u64)0, lx_width<V>());
    else run((lx_u64)0, lx_width<1>());
}

/* y = act((x - mean) * rstd * scale + bias), elementwise (grid-stride) */
template <typename T>
__global__ void norm_forward(const T* __restrict__ x, const T* __restrict__ scale, const T* __restrict__ bias,
                             const double* __restrict__ mean, const double* __restrict__ rstd, T* __restrict__ y,
                             const lx_norm_index ix, int act, typename lx_acc<T>::type p)
{
    typedef lx_norm_ops<T> O;
    typedef typename O::A A;
    lx_norm_elements(
        ix, act, lx_aligned16(x, y), y, [&](auto i, auto w) { return lx_load_pack<T, decltype(w)::value>(x + i); },
        [&](auto q, auto a, T xv, auto id) {
            const A xh = O::xhat(lx_load(&xv), (A)mean[q], (A)rstd[q]);
            return lx_act(decltype(id)::value, O::z(xh, lx_load(scale + a), lx_load(bias + a)), p);
        });
}

/* Backward pass 1, per (unit, chunk), the units strided over the blocks as in
   norm_stats_partial: sum(h), sum(h * xhat) and, unless `vec`, sum(g) and
   sum(g * xhat), at part[nsum * (u * gridDim.y + c) + {0, 1, 2, 3}] (nsum = 2 with vec, else
   4). The unit's statistics are those of group u / sdiv; its affine index is u % amod, or
   the element's index k in the unit with `vec` (layernorm: one scale/bias per element). */
template <typename T>
__global__ void norm_backward_partial(const T* __restrict__ x, const T* __restrict__ dy,
                                      const T* __restrict__ scale, const T* __restrict__ bias,
                                      const double* __restrict__ mean, const double* __restrict__ rstd,
                                      double* __restrict__ part, const lx_units s, int vec, int act,
                                      typename lx_acc<T>::type p)
{
    typedef lx_norm_ops<T> O;
    typedef typename O::A A;
    __shared__ double scratch[4][LX_WARP];
    __shared__ double sums[4];
    const lx_i64 c = blockIdx.y, k0 = c * s.chunk, k1 = lx_chunk_end(k0, s.chunk, s.len);
    const int nsum = vec ? 2 : 4;
    for (lx_i64 u = blockIdx.x; u < s.units; u += gridDim.x) {
        const lx_u64 su = LX_DIV_OF(lx_u64, s.sdiv).div(u);
        const A m = (A)mean[su], r = (A)rstd[su];
        const lx_i64 au = (lx_i64)LX_DIV_OF(lx_u64, s.amod).mod(u);
        double v[4] = {0, 0, 0, 0};  /* sum(h), sum(h * xhat), sum(g), sum(g * xhat) */
        lx_for_chunk(
            u * s.gstride, k0, k1, LX_DIV_OF(lx_u64, s.runlen), s.rstride,
            [&](lx_i64 i) { return lx_two<T>{x[i], dy[i]}; },
            [&](lx_i64 k, const lx_two<T>& in) {
                const lx_i64 a = vec ? k : au;
                const A s = lx_load(scale + a), xh = O::xhat(lx_load(&in.a), m, r);
                const A g = O::g(lx_load(&in.b), O::z(xh, s, lx_load(bias + a)), act, p);
                const double h = (double)lx_mul(g, s);
                v[0] += h;
                v[1] += h * (double)xh;
                v[2] += (double)g;
                v[3] += (double)g * (double)xh;
            });
        lx_block_sums(v, scratch, sums);  /* all four at once (with vec the last two are not written) */
        if (threadIdx.x < nsum) part[nsum * (u * gridDim.y + c) + threadIdx.x] = sums[threadIdx.x];
    }
}

/* dx of one element from its h and xhat, with batch statistics (mh, mhx: mean(h), mean(h * xhat)
   of its group); h - mean(h) first: exact cancellation for one-element groups */
template <typename A> __device__ __forceinline__ A lx_norm_dx_batch(A h, A xh, A r, A mh, A mhx)
{
    return r * ((h - mh) - xh * mhx);
}

/* dx of one element of values x and dy (mh, mhx: mean(h), mean(h * xhat) of its group q;
   batch: the statistics came from the batch), and its g and xhat; I: the index type */
template <typename T, typename I>
__device__ __forceinline__ typename lx_acc<T>::type lx_norm_dx(
    T x, T dy, typename lx_acc<T>::type s, typename lx_acc<T>::type b, typename lx_acc<T>::type m,
    typename lx_acc<T>::type r, const double* mh, const double* mhx, I q, int batch, int act,
    typename lx_acc<T>::type p, typename lx_acc<T>::type* g_out, typename lx_acc<T>::type* xh_out)
{
    typedef lx_norm_ops<T> O;
    typedef typename O::A A;
    const A xh = O::xhat(lx_load(&x), m, r);
    const A g = O::g(lx_load(&dy), O::z(xh, s, b), act, p);
    *g_out = g;
    *xh_out = xh;
    return batch ? lx_norm_dx_batch(lx_mul(g, s), xh, r, (A)mh[q], (A)mhx[q]) : r * lx_mul(g, s);
}

/* Backward pass 1's results from its partials part[(u * nchunks + c) * nsum + k]: per
   group g (units g sdiv ... g sdiv + sdiv - 1), mh[g] = sum(h) / count and mhx[g] = sum(h
   xhat) / count; and with nsum == 4, per affine element a (units r amod + a), sg[a] =
   sum(g) and sgx[a] = sum(g xhat) in T. Double sums; blocks of (LX_WARP, LX_NORM_ROWS)
   threads, 32 groups (and affine elements) a block (grid-stride): thread y adds the
   partials y, y + LX_NORM_ROWS, ... of the list (unit, chunk) in order, then lx_cols_sum
   adds the threads' sums in order of y (a fixed order for given shapes). */
template <typename T>
__global__ void norm_backward_finalize(const double* __restrict__ part, double* __restrict__ mh,
                                       double* __restrict__ mhx, T* __restrict__ sg, T* __restrict__ sgx,
                                       const lx_bwd_finalize f)
{
    __shared__ double acc[4][LX_NORM_ROWS][LX_WARP + 1];
    const lx_i64 groups = f.groups, sdiv = f.sdiv, nchunks = f.nchunks, amod = f.amod, units = f.units;
    const int nsum = f.nsum;
    const double count = f.count;
    const lx_i64 n = groups > amod ? groups : amod, per_group = sdiv * nchunks, per_affine = units / amod * nchunks;
    for (lx_i64 j0 = (lx_i64)blockIdx.x * LX_WARP; j0 < n; j0 += (lx_i64)gridDim.x * LX_WARP) {
        const lx_i64 j = j0 + threadIdx.x;
        double v[4] = {0, 0, 0, 0};  /* sum(h), sum(h xhat) of group j; sum(g), sum(g xhat) of affine element j */
        if (j < groups)
            for (lx_i64 i = threadIdx.y; i < per_group; i += LX_NORM_ROWS) {
                const double* p = part + (j * per_group + i) * nsum;  /* unit j sdiv + i / nchunks */
                v[0] += p[0];
                v[1] += p[1];
            }
        if (nsum == 4 && j < amod)
            for (lx_i64 i = threadIdx.y; i < per_affine; i += LX_NORM_ROWS) {
                const lx_i64 r = i / nchunks, c = i - r * nchunks;
                const double* p = part + ((r * amod + j) * nchunks + c) * nsum;
                v[2] += p[2];
                v[3] += p[3];
            }
        lx_cols_sum(v, acc);
        if (threadIdx.y == 0) {
            if (j < groups) {
                mh[j] = v[0] / count;
                mhx[j] = v[1] / count;
            }
            if (nsum == 4 && j < amod) {
                sg[j] = lx_from_double<T>(v[2]);
                sgx[j] = lx_from_double<T>(v[3]);
            }
        }
        __syncthreads();  /* acc is read before the next tile writes it */
    }
}

/* Backward pass 2, elementwise (grid-stride): dx */
template <typename T>
__global__ void norm_backward_dx(const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ scale,
                                 const T* __restrict__ bias, const double* __restrict__ mean,
                                 const double* __restrict__ rstd, const double* __restrict__ mh,
                                 const double* __restrict__ mhx, T* __restrict__ dx, const lx_norm_index ix,
                                 int batch, int act, typename lx_acc<T>::type p)
{
    typedef typename lx_acc<T>::type A;
    lx_norm_elements(
        ix, act, lx_aligned16(x, dy, dx), dx, lx_load_two(x, dy), [&](auto q, auto a, const lx_two<T>& in, auto id) {
            A g, xh;
            return lx_norm_dx<T>(in.a, in.b, lx_load(scale + a), lx_load(bias + a), (A)mean[q], (A)rstd[q], mh, mhx,
                                 q, batch, decltype(id)::value, p, &g, &xh);
        });
}

// ---- columns: x as (rows, C), a reduction per column (blocks of LX_WARP x LX_NORM_ROWS) ----

/* norm_stats_partial for units that are the columns of x as (rows, C) (batchnorm of (N, C)
   inputs: runs of one element, which the per-unit kernel reads a sector per element): the
   same results at the same places, unit = column, chunk = blockIdx.y of rchunk rows. */
template <typename T>
__global__ void norm_stats_cols_partial(const T* __restrict__ x, double* __restrict__ part, lx_i64 rows,
                                        lx_i64 C, lx_i64 rchunk)
{
    __shared__ double acc[2][LX_NORM_ROWS][LX_WARP + 1];
    const lx_i64 col = (lx_i64)blockIdx.x * LX_WARP + threadIdx.x, c = blockIdx.y;
    const lx_i64 r0 = c * rchunk, r1 = lx_chunk_end(r0, rchunk, rows);
    double v[2] = {0, 0}, shift = 0;  /* sum(d), sum(d^2) */
    if (col < C) {
        shift = (double)lx_load(x + r0 * C + col);
#pragma unroll 4
        for (lx_i64 row = r0 + threadIdx.y; row < r1; row += LX_NORM_ROWS) {
            const double d = (double)lx_load(x + row * C + col) - shift;
            v[0] += d;
            v[1] += d * d;
        }
    }
    lx_cols_sum(v, acc);
    if (threadIdx.y == 0 && col < C) {
        const double n = (double)(r1 - r0), dm = v[0] / n;
        part[2 * (col * gridDim.y + c)] = shift + dm;
        part[2 * (col * gridDim.y + c) + 1] = lx_shifted_m2(v[0], v[1], dm);
    }
}

/* norm_backward_partial (not vec) for units that are the columns of x as (rows, C): the
   unit's group and affine index are its column; results as there, chunk = blockIdx.y. */
template <typename T>
__global__ void norm_backward_cols_partial(const T* __restrict__ x, const T* __restrict__ dy,
                                           const T* __restrict__ scale, const T* __restrict__ bias,
                                           const double* __restrict__ mean, const double* __restrict__ rstd,
                                           double* __restrict__ part, lx_i64 rows, lx_i64 C, lx_i64 rchunk,
                                           int act, typename lx_acc<T>::type p)
{
    typedef lx_norm_ops<T> O;
    typedef typename O::A A;
    __shared__ double acc[4][LX_NORM_ROWS][LX_WARP + 1];
    const lx_i64 col = (lx_i64)blockIdx.x * LX_WARP + threadIdx.x, c = blockIdx.y;
    const lx_i64 r0 = c * rchunk, r1 = lx_chunk_end(r0, rchunk, rows);
    double v[4] = {0, 0, 0, 0};  /* sum(h), sum(h * xhat), sum(g), sum(g * xhat) */
    if (col < C) {
        const A m = (A)mean[col], r = (A)rstd[col], s = lx_load(scale + col), b = lx_load(bias + col);
#pragma unroll 4
        for (lx_i64 row = r0 + threadIdx.y; row < r1; row += LX_NORM_ROWS) {
            const lx_i64 i = row * C + col;
            const A xh = O::xhat(lx_load(x + i), m, r);
            const A g = O::g(lx_load(dy + i), O::z(xh, s, b), act, p);
            const double h = (double)lx_mul(g, s);
            v[0] += h;
            v[1] += h * (double)xh;
            v[2] += (double)g;
            v[3] += (double)g * (double)xh;
        }
    }
    lx_cols_sum(v, acc);
    if (threadIdx.y == 0 && col < C)
#pragma unroll
        for (int k = 0; k < 4; k++) part[4 * (col * gridDim.y + c) + k] = v[k];
}

/* layernorm's per-column sums from the blocks' partials part[(r * length + j) * 2 + k]:
   sg[j] = sum over r of part[.. + 0], sgx[j] of part[.. + 1], in T. Blocks of (LX_WARP,
   LX_NORM_ROWS) threads, threadIdx.x along the columns: thread y adds the parts r = y, y +
   LX_NORM_ROWS, ... in order, then lx_cols_sum adds the threads' sums in order of y (a fixed
   order for given nparts). */
template <typename T>
__global__ void norm_cols_finalize(const double* __restrict__ part, T* __restrict__ sg, T* __restrict__ sgx,
                                   lx_i64 nparts, lx_i64 length)
{
    __shared__ double acc[2][LX_NORM_ROWS][LX_WARP + 1];
    const lx_i64 j = (lx_i64)blockIdx.x * LX_WARP + threadIdx.x;
    double v[2] = {0, 0};
    if (j < length)
#pragma unroll 4
        for (lx_i64 r = threadIdx.y; r < nparts; r += LX_NORM_ROWS) {
            v[0] += part[(r * length + j) * 2];
            v[1] += part[(r * length + j) * 2 + 1];
        }
    lx_cols_sum(v, acc);
    if (threadIdx.y == 0 && j < length) {
        sg[j] = lx_from_double<T>(v[0]);
        sgx[j] = lx_from_double<T>(v[1]);
    }
}

/* Backward pass 2 of layernorm, x as (rows, L): dx, and per column (affine element) the
   sums of g and g * xhat over the rows of chunk blockIdx.y, at part[2 * (blockIdx.y * L + col)
   + {0, 1}]. */
template <typename T>
__global__ void norm_backward_dx_cols(const T* __restrict__ x, const T* __restrict__ dy,
                                      const T* __restrict__ scale, const T* __restrict__ bias,
                                      const double* __restrict__ mean, const double* __restrict__ rstd,
                                      const double* __restrict__ mh, const double* __restrict__ mhx,
                                      T* __restrict__ dx, double* __restrict__ part, lx_i64 rows, lx_i64 L,
                                      lx_i64 rchunk, int act, typename lx_acc<T>::type p)
{
    typedef typename lx_acc<T>::type A;
    __shared__ double acc[2][LX_NORM_ROWS][LX_WARP + 1];
    const lx_i64 col = (lx_i64)blockIdx.x * LX_WARP + threadIdx.x;
    const lx_i64 r0 = (lx_i64)blockIdx.y * rchunk, r1 = lx_chunk_end(r0, rchunk, rows);
    double v[2] = {0, 0};  /* sum(g), sum(g * xhat) */
    if (col < L) {
        const A s = lx_load(scale + col), b = lx_load(bias + col);
        for (lx_i64 row = r0 + threadIdx.y; row < r1; row += LX_NORM_ROWS) {
            const lx_i64 i = row * L + col;
            A g, xh;
            lx_store(dx + i, lx_norm_dx<T>(x[i], dy[i], s, b, (A)mean[row], (A)rstd[row], mh, mhx, row, 1, act, p,
                                           &g, &xh));
            v[0] += (double)g;
            v[1] += (double)g * (double)xh;
        }
    }
    lx_cols_sum(v, acc);
    if (threadIdx.y == 0 && col < L) {
        part[2 * ((lx_i64)blockIdx.y * L + col)] = v[0];
        part[2 * ((lx_i64)blockIdx.y * L + col) + 1] = v[1];
    }
}

// ---- layernorm rows of at most 1024 elements (`_normalization.ROWS_MAX`) ----------------
// The forward takes a warp a row (norm_rows_forward). The backward, which also sums per
// column over its rows, takes x as (rows, L): one block per chunk of rows (grid
// (nchunks,)) of min(L, 512) threads rounded up to a warp, thread t owning columns t and
// t + blockDim.x (reads and writes coalesced along the row), the rows of a chunk taken
// LX_ROWS_TILE at a time. A tile's elements stay in registers between its row reductions,
// so x and dy are read once; each row sum adds a thread's columns in order, then a
// warp-shuffle tree and a tree over the warps' results (lx_block_sums): a fixed order for a
// given L, whatever the grid. Blocks of at most 512 threads leave 128 registers a thread (a
// 1024-thread block would get 64 and spill).
#define LX_ROWS_TILE 2
#define LX_ROWS_COLS 2
#define LX_ROWS_THREADS 512

/* The columns of this thread in a rows kernel: col[c] = threadIdx.x + c * blockDim.x, and
   whether it is inside the row (in[c]); its scale and bias (0 outside). */
template <typename T> struct lx_row_cols {
    typedef typename lx_acc<T>::type A;
    lx_i64 col[LX_ROWS_COLS];
    bool in[LX_ROWS_COLS];
    A s[LX_ROWS_COLS], b[LX_ROWS_COLS];
    __device__ __forceinline__ lx_row_cols(const T* scale, const T* bias, lx_i64 L)
    {
#pragma unroll
        for (int c = 0; c < LX_ROWS_COLS; c++) {
            col[c] = threadIdx.x + (lx_i64)c * blockDim.x;
            in[c] = col[c] < L;
            s[c] = in[c] ? lx_load(scale + col[c]) : (A)0;
            b[c] = in[c] ? lx_load(bias + col[c]) : (A)0;
        }
    }
};

/* w = v[4 s], ..., v[4 s + 3] for a run-time s (registers are indexed at compile time) */
template <typename A, int N>
__device__ __forceinline__ void lx_quad(const A (&v)[N], int s, A (&w)[4])
{
#pragma unroll
    for (int k = 0; k < N / 4; k++)
        if (k == s)
#pragma unroll
            for (int j = 0; j < 4; j++) w[j] = v[4 * k + j];
}

/* Fused layernorm forward, one warp a row (LX_ROWS_WARPS warps a block, striding over the
   rows; no shared memory, no barrier): lane l holds columns l + 32 c (c < LX_ROWS_LANE_COLS),
   all loaded before any is used, so a row's loads are in flight together. Per row, mean and
   biased var in double from the shifted sums of d = x - K and d * d (K the row's first
   element, as norm_stats_partial does for a chunk; each lane adds its columns in order, then
   a warp-shuffle tree: a fixed order for a given L, whatever the grid), rstd = 1 / sqrt(var
   + eps) in double (as norm_stats_finalize computes it), and y, with the activation's switch
   once per 4 columns of a lane (the columns' loop is not unrolled there: 4 inlined
   activations per case, not LX_ROWS_LANE_COLS). */
#define LX_ROWS_WARPS 8
#define LX_ROWS_LANE_COLS 32
template <typename T>
__global__ void __launch_bounds__(LX_ROWS_WARPS * LX_WARP)
    norm_rows_forward(const T* __restrict__ x, const T* __restrict__ scale, const T* __restrict__ bias,
                      T* __restrict__ y, double* __restrict__ mean, double* __restrict__ rstd, lx_i64 rows,
                      lx_i64 L, double eps, int act, typename lx_acc<T>::type p)
{
    typedef lx_norm_ops<T> O;
    typedef typename O::A A;
    const int lane = threadIdx.x % LX_WARP;
    const double n = (double)L;
    const int quads = (int)((L + 4 * LX_WARP - 1) / (4 * LX_WARP));  /* 4 columns of a lane each */
    for (lx_i64 row = (lx_i64)blockIdx.x * LX_ROWS_WARPS + threadIdx.x / LX_WARP; row < rows;
         row += (lx_i64)gridDim.x * LX_ROWS_WARPS) {  /* warp-uniform: the shuffles see every lane */
        const T* xr = x + row * L;
        A v[LX_ROWS_LANE_COLS];
#pragma unroll
        for (int c = 0; c < LX_ROWS_LANE_COLS; c++) {
            const lx_i64 col = lane + (lx_i64)c * LX_WARP;
            v[c] = col < L ? lx_load(xr + col) : (A)0;
        }
        const double shift = (double)lx_load(xr);
        double s1 = 0.0, s2 = 0.0;
#pragma unroll
        for (int c = 0; c < LX_ROWS_LANE_COLS; c++) {
            const double d = lane + (lx_i64)c * LX_WARP < L ? (double)v[c] - shift : 0.0;
            s1 += d;
            s2 += d * d;
        }
        /* lane 0's sums to every lane (each lane's own tree would round differently) */
        s1 = __shfl_sync(0xffffffffu, lx_warp_sum(s1), 0);
        s2 = __shfl_sync(0xffffffffu, lx_warp_sum(s2), 0);
        const double dm = s1 / n, md = shift + dm;
        const double rd = 1.0 / sqrt(lx_shifted_m2(s1, s2, dm) / n + eps);
        if (lane == 0) {
            mean[row] = md;
            rstd[row] = rd;
        }
        const A m = (A)md, r = (A)rd;
        T* yr = y + row * L;
#pragma unroll 1
        for (int q = 0; q < quads; q++) {
            A w[4];
            lx_quad(v, q, w);
            lx_with_act(act, [&](auto id) {
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const lx_i64 col = lane + (lx_i64)(4 * q + j) * LX_WARP;
                    if (col < L)
                        lx_store(yr + col, lx_act(decltype(id)::value, O::z(O::xhat(w[j], m, r), lx_load(scale + col),
                                                                           lx_load(bias + col)), p));
                }
            });
        }
    }
}

/* Fused layernorm backward: per row, mean(h) and mean(h * xhat) (double sums over the
   registers), dx; and per column the sums of g and g * xhat over the block's rows, at
   part[2 * (blockIdx.x * L + col) + {0, 1}] (norm_cols_finalize adds the chunks). */
template <typename T>
__global__ void __launch_bounds__(LX_ROWS_THREADS)
    norm_rows_backward(const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ scale,
                       const T* __restrict__ bias, const double* __restrict__ mean,
                       const double* __restrict__ rstd, T* __restrict__ dx, double* __restrict__ part,
                       lx_i64 rows, lx_i64 L, lx_i64 rchunk, double inv_n, int act, typename lx_acc<T>::type p)
{
    typedef lx_norm_ops<T> O;
    typedef typename O::A A;
    __shared__ double scratch[2 * LX_ROWS_TILE][LX_WARP];
    __shared__ double sums[2 * LX_ROWS_TILE];
    const lx_row_cols<T> rc(scale, bias, L);
    const lx_i64 r0 = (lx_i64)blockIdx.x * rchunk, r1 = lx_chunk_end(r0, rchunk, rows);
    double sg[LX_ROWS_COLS] = {}, sgx[LX_ROWS_COLS] = {};
    /* the tile's x and dy, loaded while the previous tile was reduced and stored */
    A xv[LX_ROWS_TILE][LX_ROWS_COLS], dv[LX_ROWS_TILE][LX_ROWS_COLS];
    auto load_tile = [&](lx_i64 t) {
#pragma unroll
        for (int k = 0; k < LX_ROWS_TILE; k++)
#pragma unroll
            for (int c = 0; c < LX_ROWS_COLS; c++) {
                const bool in = rc.in[c] && t + k < r1;
                xv[k][c] = in ? lx_load(x + (t + k) * L + rc.col[c]) : (A)0;
                dv[k][c] = in ? lx_load(dy + (t + k) * L + rc.col[c]) : (A)0;
            }
    };
    if (r0 < r1) load_tile(r0);
    for (lx_i64 t0 = r0; t0 < r1; t0 += LX_ROWS_TILE) {
        A g[LX_ROWS_TILE][LX_ROWS_COLS], xh[LX_ROWS_TILE][LX_ROWS_COLS], r[LX_ROWS_TILE];
        double hs[2 * LX_ROWS_TILE];
#pragma unroll
        for (int k = 0; k < LX_ROWS_TILE; k++) {
            const bool row = t0 + k < r1;
            r[k] = row ? (A)rstd[t0 + k] : (A)0;
            const A m = row ? (A)mean[t0 + k] : (A)0;
#pragma unroll
            for (int c = 0; c < LX_ROWS_COLS; c++) {
                xh[k][c] = O::xhat(xv[k][c], m, r[k]);
                g[k][c] = dv[k][c];  /* dy until the activation's derivative multiplies it */
            }
        }
        if (t0 + LX_ROWS_TILE < r1) load_tile(t0 + LX_ROWS_TILE);  /* in flight across the reduction */
        lx_with_act(act, [&](auto id) {  /* one switch a tile */
#pragma unroll
            for (int k = 0; k < LX_ROWS_TILE; k++)
#pragma unroll
                for (int c = 0; c < LX_ROWS_COLS; c++)
                    g[k][c] = O::g(g[k][c], O::z(xh[k][c], rc.s[c], rc.b[c]), decltype(id)::value, p);
        });
#pragma unroll
        for (int k = 0; k < LX_ROWS_TILE; k++) {
            hs[2 * k] = hs[2 * k + 1] = 0.0;
#pragma unroll
            for (int c = 0; c < LX_ROWS_COLS; c++) {
                if (t0 + k < r1 && rc.in[c]) {
                    const double h = (double)lx_mul(g[k][c], rc.s[c]);
                    hs[2 * k] += h;
                    hs[2 * k + 1] += h * (double)xh[k][c];
                }
            }
        }
        lx_block_sums(hs, scratch, sums);
#pragma unroll
        for (int k = 0; k < LX_ROWS_TILE; k++) {
            const A mh = (A)(sums[2 * k] * inv_n), mhx = (A)(sums[2 * k + 1] * inv_n);
#pragma unroll
            for (int c = 0; c < LX_ROWS_COLS; c++) {
                if (t0 + k < r1 && rc.in[c]) {
                    lx_store(dx + (t0 + k) * L + rc.col[c],
                             lx_norm_dx_batch(lx_mul(g[k][c], rc.s[c]), xh[k][c], r[k], mh, mhx));
                    sg[c] += (double)g[k][c];
                    sgx[c] += (double)g[k][c] * (double)xh[k][c];
                }
            }
        }
    }
#pragma unroll
    for (int c = 0; c < LX_ROWS_COLS; c++) {
        if (rc.in[c]) {
            part[2 * ((lx_i64)blockIdx.x * L + rc.col[c])] = sg[c];
            part[2 * ((lx_i64)blockIdx.x * L + rc.col[c]) + 1] = sgx[c];
        }
    }
}
