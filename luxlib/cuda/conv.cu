// im2col / col2im of fused_conv_bias_activation (launched from luxlib/cuda/_conv.py).
// Every convolution runs as a 3-D one: 1-D and 2-D get leading unit spatial axes, so
// one N-d indexing scheme (D, H, W) covers all three. x is (n, C, D, H, W) in C order,
// the kernel (KD, KH, KW) with K = KD*KH*KW taps, the output (OD, OH, OW) with
// P = OD*OH*OW positions; C = G groups of Cg channels. Input coordinate of output o and
// tap t along an axis: o * stride + t' * dilation - pad_lo, t' = t (cross-correlation)
// or k - 1 - t (flipped kernel); outside the input it reads 0 (the padding).
// Kernels are templates over T = float, double, __half.
#include "common.cuh"

#define LX_GRID_STRIDE(i, n) \
    for (lx_i64 i = (lx_i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (lx_i64)gridDim.x * blockDim.x)

// the geometry, as scalar kernel arguments
#define LX_CONV_PARAMS                                                                  \
    int C, int D, int H, int W, int OD, int OH, int OW, int KD, int KH, int KW, int sd, \
        int sh, int sw, int dd, int dh, int dw, int pd, int ph, int pw, int flip

/* the input coordinate that output o reads at tap t along an axis of size k */
__device__ __forceinline__ int lx_in_coord(int o, int t, int k, int s, int d, int pad, int flip)
{
    return o * s + (flip ? k - 1 - t : t) * d - pad;
}

/* cols of samples [0, total / (C K P)) of x: (n, C, K, P) when trans == 0 (the gemm
   operand of the forward pass, rows = (channel, tap) per group), or (n, G, P, Cg K) when
   trans == 1 (the operand of the weight gradient). One thread per cols element, in the
   order of cols (coalesced stores). The launch code guarantees per-sample sizes below
   2^31, so only the sample index needs 64-bit arithmetic. */
template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ cols, lx_i64 total, int groups, int trans,
                       LX_CONV_PARAMS)
{
    const int K = KD * KH * KW, P = OD * OH * OW, per_sample = C * K * P, Cg = C / groups;
    LX_GRID_STRIDE(idx, total) {
        const lx_i64 n = idx / per_sample;
        const int e = (int)(idx - n * per_sample);
        int c, kk, p;
        if (trans) {  // e = (g P + p) Cg K + r, r = cg K + kk
            const int r = e % (Cg * K), gp = e / (Cg * K);
            p = gp % P;
            c = gp / P * Cg + r / K;
            kk = r % K;
        } else {  // e = (c K + kk) P + p
            p = e % P;
            kk = e / P % K;
            c = e / P / K;
        }
        const int ow = p % OW, oh = p / OW % OH, od = p / (OW * OH);
        const int kw = kk % KW, kh = kk / KW % KH, kd = kk / (KW * KH);
        const int id = lx_in_coord(od, kd, KD, sd, dd, pd, flip);
        const int ih = lx_in_coord(oh, kh, KH, sh, dh, ph, flip);
        const int iw = lx_in_coord(ow, kw, KW, sw, dw, pw, flip);
        T v = lx_to_elem<T>(0);
        if (id >= 0 && id < D && ih >= 0 && ih < H && iw >= 0 && iw < W)
            v = x[(n * C + c) * ((lx_i64)D * H * W) + (id * H + ih) * W + iw];
        cols[idx] = v;
    }
}

/* the output coordinate that reads input i at tap t along an axis, or -1 for none */
__device__ __forceinline__ int lx_out_coord(int i, int t, int k, int s, int d, int pad, int flip, int out)
{
    const int num = i + pad - (flip ? k - 1 - t : t) * d;
    if (num < 0 || num % s) return -1;
    return num / s < out ? num / s : -1;
}

/* dx[n, c, i] = sum of dcols[n, c, tap, p] over the (tap, p) that read input element i,
   dcols (n, C, K, P): a gather, one thread per input element (total = n C D H W), in a
   fixed order, summed in the compute type and rounded once (deterministic, no atomics) */
template <typename T>
__global__ void col2im(const T* __restrict__ dcols, T* __restrict__ dx, lx_i64 total, LX_CONV_PARAMS)
{
    typedef typename lx_acc<T>::type A;
    const int K = KD * KH * KW, P = OD * OH * OW, plane = D * H * W;
    LX_GRID_STRIDE(idx, total) {
        const lx_i64 nc = idx / plane;  // n * C + c
        const int e = (int)(idx - nc * plane);
        const int iw = e % W, ih = e / W % H, id = e / (W * H);
        const T* base = dcols + nc * K * P;
        A acc = 0;
        for (int kd = 0; kd < KD; kd++) {
            const int od = lx_out_coord(id, kd, KD, sd, dd, pd, flip, OD);
            if (od < 0) continue;
            for (int kh = 0; kh < KH; kh++) {
                const int oh = lx_out_coord(ih, kh, KH, sh, dh, ph, flip, OH);
                if (oh < 0) continue;
                for (int kw = 0; kw < KW; kw++) {
                    const int ow = lx_out_coord(iw, kw, KW, sw, dw, pw, flip, OW);
                    if (ow < 0) continue;
                    acc += lx_load(base + (lx_i64)((kd * KH + kh) * KW + kw) * P + (od * OH + oh) * OW + ow);
                }
            }
        }
        lx_store(dx + idx, acc);
    }
}
