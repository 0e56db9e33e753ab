// dropout and alpha_dropout with the counter-based Philox4x32-10 of philox.cuh: element i
// of the mask (C-order index in the mask's own shape) takes word i % 4 of block i / 4,
// so the masks are bit-identical to the generic and Cython paths (doc/dropout.md).
// One thread per Philox block (4 elements), grid-stride. Templates over T = float,
// double, __half; scalars come in the compute type A, already rounded to T by the host.
#include "common.cuh"
#include "elementwise.cuh"
#include "philox.cuh"

/* mask[i] = keep ? invp : 0 for i < n; and y[i] = x[i] * mask[i] when write_y. A block's
   4 elements move as one access when every pointer is aligned to it (invp is a value of
   T, so mask[i] read back equals the product's factor) */
template <typename T>
__global__ void dropout_mask(T* __restrict__ mask, const T* __restrict__ x, T* __restrict__ y, lx_i64 n,
                             lx_u32 k0, lx_u32 k1, lx_u32 thr, typename lx_acc<T>::type invp, int write_y)
{
    typedef typename lx_acc<T>::type A;
    typedef lx_pack<T, 4> Q;
    const bool vec = ((lx_u64)mask | (lx_u64)x | (lx_u64)y) % sizeof(Q) == 0;
    const lx_i64 nblocks = (n + 3) / 4;
    LX_GRID_STRIDE(b, nblocks) {
        lx_u32 w[4];
        lx_philox_block((lx_u64)b, k0, k1, w);
        if (vec && 4 * b + 4 <= n) {
            Q m;
#pragma unroll
            for (int j = 0; j < 4; j++) lx_store(m.v + j, lx_keep(w[j], thr) ? invp : (A)0);
            *reinterpret_cast<Q*>(mask + 4 * b) = m;
            if (write_y) {
                const Q in = *reinterpret_cast<const Q*>(x + 4 * b);
                Q out;
#pragma unroll
                for (int j = 0; j < 4; j++) lx_store(out.v + j, lx_mul(lx_load(in.v + j), lx_load(m.v + j)));
                *reinterpret_cast<Q*>(y + 4 * b) = out;
            }
            continue;
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const lx_i64 i = 4 * b + j;
            if (i < n) {
                const A m = lx_keep(w[j], thr) ? invp : (A)0;
                lx_store(mask + i, m);
                if (write_y) lx_store(y + i, lx_mul(lx_load(x + i), m));
            }
        }
    }
}

/* y[i] = (keep ? x[i] : alpha) * a + b, each operation rounded to T; keep[i] (one byte)
   written when write_keep */
template <typename T>
__global__ void alpha_dropout_forward(const T* __restrict__ x, T* __restrict__ y,
                                      unsigned char* __restrict__ keep, lx_i64 n, lx_u32 k0, lx_u32 k1,
                                      lx_u32 thr, typename lx_acc<T>::type alpha,
                                      typename lx_acc<T>::type a, typename lx_acc<T>::type b,
                                      int write_keep)
{
    typedef typename lx_acc<T>::type A;
    const lx_i64 nblocks = (n + 3) / 4;
    LX_GRID_STRIDE(blk, nblocks) {
        lx_u32 w[4];
        lx_philox_block((lx_u64)blk, k0, k1, w);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const lx_i64 i = 4 * blk + j;
            if (i < n) {
                const bool k = lx_keep(w[j], thr);
                const A v = k ? lx_load(x + i) : alpha;
                lx_store(y + i, lx_add(lx_round<T>(lx_mul(v, a)), b));
                if (write_keep) keep[i] = (unsigned char)k;
            }
        }
    }
}

/* dx[i] = (dy[i] * keep[i]) * a, each product rounded to T */
template <typename T>
__global__ void alpha_dropout_backward(const unsigned char* __restrict__ keep, const T* __restrict__ dy,
                                       T* __restrict__ dx, lx_i64 n, typename lx_acc<T>::type a)
{
    typedef typename lx_acc<T>::type A;
    LX_GRID_STRIDE(i, n) {
        lx_store(dx + i, lx_mul(lx_round<T>(lx_mul(lx_load(dy + i), (A)keep[i])), a));
    }
}

/* out[i] = u[i] * v[i] (dropout's y = x * mask and dx = dy * mask, same shapes) */
template <typename T>
__global__ void multiply(const T* __restrict__ u, const T* __restrict__ v, T* __restrict__ out, lx_i64 n)
{
    lx_elementwise<T>(
        n, lx_vector_head<T>(n, u, v, out),
        lx_load_two(u, v),
        [&](lx_i64 i, auto w, const auto& in) {
            constexpr int W = decltype(w)::value;
            lx_pack<T, W> c;
#pragma unroll
            for (int j = 0; j < W; j++) lx_store(c.v + j, lx_mul(lx_load(in.a.v + j), lx_load(in.b.v + j)));
            lx_store_pack<T, W>(out + i, c);
        });
}

/* out[i] = u[i] * v[channel(i)]: v broadcast against u along every axis but one run of
   adjacent axes, u viewed as (outer, C, inner) around that run (dropout with dims: y = x *
   mask and dx = dy * mask, the mask of the reduced shape) */
template <typename T>
__global__ void multiply_channel(const T* __restrict__ u, const T* __restrict__ v, T* __restrict__ out,
                                 const lx_channels g)
{
    const lx_i64 n = g.n;
    lx_elementwise<T>(
        n, lx_vector_head<T>(n, u, out),
        [&](lx_i64 i, auto w) { return lx_load_pack<T, decltype(w)::value>(u + i); },
        [&](lx_i64 i, auto w, const auto& a) {
            constexpr int W = decltype(w)::value;
            lx_pack<T, W> c;
            lx_channel ch(i, LX_DIV_OF(lx_u64, g.C), LX_DIV_OF(lx_u64, g.inner), 1);
#pragma unroll
            for (int j = 0; j < W; j++, ch.next()) lx_store(c.v + j, lx_mul(lx_load(a.v + j), lx_load(v + ch.c)));
            lx_store_pack<T, W>(out + i, c);
        });
}
