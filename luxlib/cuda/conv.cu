// Kernels of fused_conv_bias_activation (launched from luxlib/cuda/_conv.py): im2col and
// col2im around the cuBLAS products, and direct depthwise kernels (groups == C), whose
// forward applies the bias and activation itself.
// Every convolution runs as a 3-D one: 1-D and 2-D get leading unit spatial axes, so
// one N-d indexing scheme (D, H, W) covers all three. x is (n, C, D, H, W) in C order,
// the kernel (KD, KH, KW) with K = KD*KH*KW taps, the output (OD, OH, OW) with
// P = OD*OH*OW positions; C = G groups of Cg channels. Input coordinate of output o and
// tap t along an axis: o * stride + t' * dilation - pad_lo, t' = t (cross-correlation)
// or k - 1 - t (flipped kernel); outside the input it reads 0 (the padding).
//
// The launch code hands every kernel a tile of the batch whose arrays have fewer than
// 2^31 elements, so all index math is 32-bit, and splits indices by divisors fixed for
// the launch (lx_divisor: a multiply and a shift; a GPU has no integer division).
// Kernels are templates over T = float, double, __half.
#include "common.cuh"
#include "activation.cuh"

// 32-bit grid-stride loop over [0, n), n < 2^31 (unsigned: i + stride cannot overflow)
#define LX_GRID_STRIDE32(i, n) \
    for (lx_u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < (lx_u32)(n); i += gridDim.x * blockDim.x)

// One convolution's geometry and the divisors its kernels split indices by, passed as one
// by-value argument (built once per layout by _conv._layout; im2col took 35 scalars before).
// M: output channels per input channel (depthwise; 1 otherwise). Divisors: of P = OD OH OW,
// C, M, the input plane D H W, the output position (OW, OH), the input position (W, H) and
// the strides.
struct lx_conv {
    int C, D, H, W, OD, OH, OW, KD, KH, KW, sd, sh, sw, dd, dh, dw, pd, ph, pw, flip, M;
    lx_div_args divP, divC, divM, divPlane, divOW, divOH, divW, divH, divSD, divSH, divSW;
};
// the geometry as the kernels' locals (each kernel reads some of them)
#define LX_CONV_GEOMETRY(g)                                                                                     \
    [[maybe_unused]] const int C = g.C, D = g.D, H = g.H, W = g.W, OD = g.OD, OH = g.OH, OW = g.OW, KD = g.KD, \
                               KH = g.KH, KW = g.KW, sd = g.sd, sh = g.sh, sw = g.sw, dd = g.dd, dh = g.dh,     \
                               dw = g.dw, pd = g.pd, ph = g.ph, pw = g.pw, flip = g.flip, M = g.M
// a divisor of g for the kernels' 32-bit indices
#define LX_DIV32(g, name) LX_DIV_OF(lx_u32, g.name)

typedef lx_divisor<lx_u32> lx_div32;

/* (d, h, w) of a position r = (d H + h) W + w, given the divisors of W and H */
__device__ __forceinline__ void lx_split3(lx_u32 r, const lx_div32& dW, const lx_div32& dH, int& d, int& h, int& w)
{
    const lx_u32 dh = dW.div(r);
    w = (int)(r - dh * dW.d);
    d = (int)dH.div(dh);
    h = (int)(dh - (lx_u32)d * dH.d);
}

/* the input coordinate that output o reads at tap t along an axis of size k */
__device__ __forceinline__ int lx_in_coord(int o, int t, int k, int s, int d, int pad, int flip)
{
    return o * s + (flip ? k - 1 - t : t) * d - pad;
}

/* the output coordinate that reads input i at tap t along an axis, or -1 for none */
__device__ __forceinline__ int lx_out_coord(int i, int t, int k, const lx_div32& s, int d, int pad, int flip, int out)
{
    const int num = i + pad - (flip ? k - 1 - t : t) * d;
    if (num < 0) return -1;
    const int q = (int)s.div((lx_u32)num);
    return q * (int)s.d == num && q < out ? q : -1;
}

/* f(tap, o) for every tap and output position o whose receptive field holds input position
   (id, ih, iw), in order of (kd, kh, kw): the terms of a gather (col2im, depthwise dx) */
#define LX_READERS_GEOMETRY sD, sH, sW, KD, KH, KW, dd, dh, dw, pd, ph, pw, flip, OD, OH, OW
template <typename F>
__device__ __forceinline__ void lx_readers(int id, int ih, int iw, const lx_div32& sD, const lx_div32& sH,
                                           const lx_div32& sW, int KD, int KH, int KW, int dd, int dh, int dw,
                                           int pd, int ph, int pw, int flip, int OD, int OH, int OW, F f)
{
    for (int kd = 0; kd < KD; kd++) {
        const int od = lx_out_coord(id, kd, KD, sD, dd, pd, flip, OD);
        if (od < 0) continue;
        for (int kh = 0; kh < KH; kh++) {
            const int oh = lx_out_coord(ih, kh, KH, sH, dh, ph, flip, OH);
            if (oh < 0) continue;
            for (int kw = 0; kw < KW; kw++) {
                const int ow = lx_out_coord(iw, kw, KW, sW, dw, pw, flip, OW);
                if (ow >= 0) f((kd * KH + kh) * KW + kw, (od * OH + oh) * OW + ow);
            }
        }
    }
}

/* cols of a tile of samples: element (n, c, tap, p) goes to
   cols[n * sample_stride + (c K + tap) * row_stride + p], i.e. (n, C K, P) for the forward
   product (row_stride = P, sample_stride = C K P) or (C K, n, P) for the weight gradient
   (row_stride = n P, sample_stride = P: one gemm over the whole tile). One thread per
   (n, c, p), total = n C P, looping over the taps: the index math is done once per thread,
   and consecutive threads write consecutive p of each row (coalesced). */
template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ cols, int total, int row_stride, int sample_stride,
                       const lx_conv g)
{
    LX_CONV_GEOMETRY(g);
    const lx_div32 dP = LX_DIV32(g, divP), dC = LX_DIV32(g, divC), dOW = LX_DIV32(g, divOW), dOH = LX_DIV32(g, divOH);
    const int K = KD * KH * KW;
    LX_GRID_STRIDE32(e, total) {  // e = (n C + c) P + p
        const lx_u32 nc = dP.div(e), n = dC.div(nc);
        const int p = (int)(e - nc * dP.d), c = (int)(nc - n * dC.d);
        int od, oh, ow;
        lx_split3((lx_u32)p, dOW, dOH, od, oh, ow);
        const T* xs = x + nc * (lx_u32)(D * H * W);
        T* out = cols + (int)n * sample_stride + c * K * row_stride + p;
        for (int kd = 0; kd < KD; kd++) {
            const int id = lx_in_coord(od, kd, KD, sd, dd, pd, flip);
            const bool okd = id >= 0 && id < D;
            for (int kh = 0; kh < KH; kh++) {
                const int ih = lx_in_coord(oh, kh, KH, sh, dh, ph, flip);
                const bool okh = okd && ih >= 0 && ih < H;
                for (int kw = 0; kw < KW; kw++) {
                    const int iw = lx_in_coord(ow, kw, KW, sw, dw, pw, flip);
                    *out = okh && iw >= 0 && iw < W ? xs[(id * H + ih) * W + iw] : lx_to_elem<T>(0);
                    out += row_stride;
                }
            }
        }
    }
}

/* dx[n, c, i] = sum of dcols[n, c, tap, p] over the (tap, p) that read input element i,
   dcols (n, C, K, P): a gather, one thread per input element (total = n C D H W), in a
   fixed order, summed in the compute type and rounded once (deterministic, no atomics) */
template <typename T>
__global__ void col2im(const T* __restrict__ dcols, T* __restrict__ dx, int total, const lx_conv g)
{
    typedef typename lx_acc<T>::type A;
    LX_CONV_GEOMETRY(g);
    const lx_div32 dPlane = LX_DIV32(g, divPlane), dW = LX_DIV32(g, divW), dH = LX_DIV32(g, divH),
                   sD = LX_DIV32(g, divSD), sH = LX_DIV32(g, divSH), sW = LX_DIV32(g, divSW);
    const int K = KD * KH * KW, P = OD * OH * OW;
    LX_GRID_STRIDE32(e, total) {
        const lx_u32 nc = dPlane.div(e);  // n * C + c
        int id, ih, iw;
        lx_split3(e - nc * dPlane.d, dW, dH, id, ih, iw);
        const T* base = dcols + nc * (lx_u32)(K * P);
        A acc = 0;
        lx_readers(id, ih, iw, LX_READERS_GEOMETRY, [&](int tap, int o) { acc += lx_load(base + tap * P + o); });
        lx_store(dx + e, acc);
    }
}

// ---- depthwise (groups == C, M = C_out / C output channels per input channel) ----------
// f(KD, KH, KW) with the kernel's sizes, as constants for the common kernels 3x3, 5x5 and 3
// (1-D, or 1 x 3): f is inlined for each, and the compiler unrolls its loops over the taps
// into straight-line code (ATen's depthwise kernels specialize 3x3 and 5x5 too); and once
// for any other size. The same terms in the same order either way.
#define LX_DW_BY_SIZE(f)                                  \
    (KD != 1                ? f(KD, KH, KW)               \
     : KH == 3 && KW == 3   ? f(1, 3, 3)                  \
     : KH == 5 && KW == 5   ? f(1, 5, 5)                  \
     : KH == 1 && KW == 3   ? f(1, 1, 3)                  \
                            : f(KD, KH, KW))
// Output channel o = c M + m reads input channel c with the weights w[o] (K taps). Sums
// run in the compute type in a fixed order and are rounded once.

/* z[n, o, p] = sum over taps of x[n, c, in(p, tap)] w[o, tap], rounded to T, and the fused
   epilogue y = act(z + bias[o]) with the sum rounded to T, as bias_act_forward computes it
   from a stored z; one thread per output element (total = n C M P). z is written only when
   write_z (for a pullback that needs the pre-activation), bias read only when has_bias.
   The sum over the taps is inlined for each size of LX_DW_BY_SIZE. */
template <typename T>
__global__ void dw_conv_forward(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                                T* __restrict__ z, T* __restrict__ y, int total, int has_bias, int write_z, int act,
                                typename lx_acc<T>::type ap, const lx_conv g)
{
    typedef typename lx_acc<T>::type A;
    LX_CONV_GEOMETRY(g);
    const lx_div32 dP = LX_DIV32(g, divP), dM = LX_DIV32(g, divM), dC = LX_DIV32(g, divC), dOW = LX_DIV32(g, divOW),
                   dOH = LX_DIV32(g, divOH);
    LX_GRID_STRIDE32(e, total) {  // e = ((n C + c) M + m) P + p
        const lx_u32 ncm = dP.div(e), nc = dM.div(ncm);
        const int c = (int)(nc - dC.div(nc) * dC.d), o = c * (int)dM.d + (int)(ncm - nc * dM.d);
        int od, oh, ow;
        lx_split3(e - ncm * dP.d, dOW, dOH, od, oh, ow);
        const T* xs = x + nc * (lx_u32)(D * H * W);
        auto taps = [&](const int KD, const int KH, const int KW) {  /* the sum, for the kernel (KD, KH, KW) */
            const T* ws = w + o * (KD * KH * KW);
            A acc = 0;
#pragma unroll
            for (int kd = 0; kd < KD; kd++) {
                const int id = lx_in_coord(od, kd, KD, sd, dd, pd, flip);
                if (id < 0 || id >= D) continue;
#pragma unroll
                for (int kh = 0; kh < KH; kh++) {
                    const int ih = lx_in_coord(oh, kh, KH, sh, dh, ph, flip);
                    if (ih < 0 || ih >= H) continue;
#pragma unroll
                    for (int kw = 0; kw < KW; kw++) {
                        const int iw = lx_in_coord(ow, kw, KW, sw, dw, pw, flip);
                        if (iw >= 0 && iw < W)
                            acc += lx_load(xs + (id * H + ih) * W + iw) * lx_load(ws + (kd * KH + kh) * KW + kw);
                    }
                }
            }
            return acc;
        };
        const A acc = LX_DW_BY_SIZE(taps);
        const A zt = lx_round<T>(acc);
        if (write_z) lx_store(z + e, zt);
        lx_store(y + e, lx_act(act, has_bias ? lx_round<T>(zt + lx_load(bias + o)) : zt, ap));
    }
}

/* dx[n, c, i] = sum over m and the (tap, p) that read input i of dz[n, c M + m, p] w[c M + m,
   tap]: a gather, one thread per input element (total = n C D H W), inlined for each size of
   LX_DW_BY_SIZE */
template <typename T>
__global__ void dw_conv_dx(const T* __restrict__ dz, const T* __restrict__ w, T* __restrict__ dx, int total,
                           const lx_conv g)
{
    typedef typename lx_acc<T>::type A;
    LX_CONV_GEOMETRY(g);
    const lx_div32 dPlane = LX_DIV32(g, divPlane), dC = LX_DIV32(g, divC), dW = LX_DIV32(g, divW),
                   dH = LX_DIV32(g, divH), sD = LX_DIV32(g, divSD), sH = LX_DIV32(g, divSH), sW = LX_DIV32(g, divSW);
    const int P = OD * OH * OW;
    LX_GRID_STRIDE32(e, total) {
        const lx_u32 nc = dPlane.div(e);  // n * C + c
        const int c = (int)(nc - dC.div(nc) * dC.d);
        int id, ih, iw;
        lx_split3(e - nc * dPlane.d, dW, dH, id, ih, iw);
        auto gather = [&](const int KD, const int KH, const int KW) {  /* the sum, for the kernel (KD, KH, KW) */
            A acc = 0;
            for (int m = 0; m < M; m++) {
                const T* dzs = dz + (nc * (lx_u32)M + (lx_u32)m) * (lx_u32)P;  // dz[n, c M + m]
                const T* ws = w + (c * M + m) * (KD * KH * KW);
                lx_readers(id, ih, iw, LX_READERS_GEOMETRY,
                           [&](int tap, int o) { acc += lx_load(dzs + o) * lx_load(ws + tap); });
            }
            return acc;
        };
        lx_store(dx + e, LX_DW_BY_SIZE(gather));
    }
}

/* The terms of dW[o, tap] = sum over n and p of dz[n, o, p] x[n, c, in(p, tap)] that this
   thread adds, for the positions j = n P + p in [j0, j1) from j0 + threadIdx.x in steps of
   blockDim.x: f(t, dz term, x term) for the NT taps tap0 + t of the kernel (KD, KH, KW) whose
   inputs lie inside x, in order of j, and of t for each j. The taps' coordinates are split
   once, before the loop. */
template <int NT, typename T, typename F>
__device__ __forceinline__ void lx_dw_terms(const T* __restrict__ dz, const T* __restrict__ x, int o, int c, int j0,
                                            int j1, const lx_conv& g, int KD, int KH, int KW, int tap0, F f)
{
    const int C = g.C, D = g.D, H = g.H, W = g.W, CO = C * g.M, plane = D * H * W;
    const lx_div32 dP = LX_DIV32(g, divP), dOW = LX_DIV32(g, divOW), dOH = LX_DIV32(g, divOH);
    const int P = (int)dP.d;
    int kd[NT], kh[NT], kw[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        const int tap = tap0 + t;
        kw[t] = tap % KW;
        kh[t] = tap / KW % KH;
        kd[t] = tap / (KW * KH);
    }
    for (int j = j0 + (int)threadIdx.x; j < j1; j += blockDim.x) {
        const lx_u32 n = dP.div((lx_u32)j);
        const int p = j - (int)n * P;
        int od, oh, ow;
        lx_split3((lx_u32)p, dOW, dOH, od, oh, ow);
        const T dzv = dz[((int)n * CO + o) * P + p];
        const T* xs = x + ((int)n * C + c) * plane;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const int id = lx_in_coord(od, kd[t], KD, g.sd, g.dd, g.pd, g.flip);
            const int ih = lx_in_coord(oh, kh[t], KH, g.sh, g.dh, g.ph, g.flip);
            const int iw = lx_in_coord(ow, kw[t], KW, g.sw, g.dw, g.pw, g.flip);
            if (id >= 0 && id < D && ih >= 0 && ih < H && iw >= 0 && iw < W) f(t, dzv, xs[(id * H + ih) * W + iw]);
        }
    }
}

/* One unit of dw_conv_dw_partial with every tap (K of them, a compile-time count): the block
   reads each dz element once for all taps, where a unit per tap reads it K times. */
template <int KH, int KW, typename T>
__device__ __forceinline__ void lx_dw_all_taps(const T* __restrict__ dz, const T* __restrict__ x,
                                               typename lx_acc<T>::type* __restrict__ out, int o, int j0, int j1,
                                               const lx_conv& g)
{
    typedef typename lx_acc<T>::type A;
    constexpr int K = KH * KW;
    __shared__ A scratch[K][LX_WARP];
    __shared__ A sums[K];
    A acc[K];
#pragma unroll
    for (int t = 0; t < K; t++) acc[t] = 0;
    lx_dw_terms<K>(dz, x, o, o / g.M, j0, j1, g, 1, KH, KW, 0,
                [&](int t, T a, T b) { acc[t] += lx_load(&a) * lx_load(&b); });
    lx_block_sums(acc, scratch, sums);
    if ((int)threadIdx.x < K) out[threadIdx.x] = sums[threadIdx.x];
}

/* First stage of dW[o, tap]: work unit u = (ot splits + s) sums the positions j = n P + p in
   [s chunk, (s + 1) chunk) of the tile (length = n P) over one block, into partial[s, o K +
   tap] (compute type), for ot = o K + tap; or, with `all_taps` (the host sets it for kernels
   of 1 x 3 x 3, 1 x 5 x 5 and 1 x 1 x 3 only), for ot = o and every tap at once. Each tap's
   sum is the same either way (the same terms in the same order, the same block reduction).
   Blocks stride over the units; the finalize kernel sums the partials of every split and tile
   in a fixed order, so dW does not depend on the schedule. */
template <typename T>
__global__ void dw_conv_dw_partial(const T* __restrict__ dz, const T* __restrict__ x,
                                   typename lx_acc<T>::type* __restrict__ partial, int length, int chunk, int splits,
                                   int units, int all_taps, const lx_conv g)
{
    typedef typename lx_acc<T>::type A;
    __shared__ A scratch[LX_WARP];
    const int K = g.KD * g.KH * g.KW, CO = g.C * g.M;
    for (int u = blockIdx.x; u < units; u += gridDim.x) {  // block-uniform: the barriers below are safe
        const int s = u % splits, ot = u / splits;  // once per unit
        const int j0 = s * chunk, j1 = (s + 1) * chunk < length ? (s + 1) * chunk : length;
        A* out = partial + s * CO * K + (all_taps ? ot * K : ot);
        if (all_taps) {
            if (g.KH == 3) lx_dw_all_taps<3, 3>(dz, x, out, ot, j0, j1, g);
            else if (g.KH == 5) lx_dw_all_taps<5, 5>(dz, x, out, ot, j0, j1, g);
            else lx_dw_all_taps<1, 3>(dz, x, out, ot, j0, j1, g);
            continue;
        }
        const int o = ot / K;
        A acc = 0;
        lx_dw_terms<1>(dz, x, o, o / g.M, j0, j1, g, g.KD, g.KH, g.KW, ot % K,
                    [&](int, T a, T b) { acc += lx_load(&a) * lx_load(&b); });
        acc = lx_block_sum(acc, scratch);
        if (threadIdx.x == 0) *out = acc;
    }
}

/* dW[i] = sum over rows r of partial[r, i], in order (rows = tiles x splits, cols = C M K) */
template <typename T>
__global__ void dw_conv_dw_finalize(const typename lx_acc<T>::type* __restrict__ partial, T* __restrict__ dw, int rows,
                                    int cols)
{
    typedef typename lx_acc<T>::type A;
    LX_GRID_STRIDE32(i, cols) {
        A acc = 0;
        for (int r = 0; r < rows; r++) acc += partial[r * cols + (int)i];
        lx_store(dw + i, acc);
    }
}
