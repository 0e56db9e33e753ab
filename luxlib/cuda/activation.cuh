// The activation table of luxlib.activations, evaluated by id: NNlib's formulas,
// the same expressions in the same order as luxlib/_kernels/_activation.pxd
// (LX_DEFINE_ACTIVATIONS). C is the compute type: float (float and __half arrays)
// or double. `p` is the activation's bound parameter, if it has one.
#ifndef LUXLIB_CUDA_ACTIVATION_CUH
#define LUXLIB_CUDA_ACTIVATION_CUH
#include "common.cuh"

#define LUXLIB_GELU_LAMBDA 0.79788456080286535588     /* sqrt(2 / pi) */
#define LUXLIB_GELU_2LAMBDA 1.5957691216057307118     /* sqrt(8 / pi) */
#define LUXLIB_GELU_ALPHA 0.044715
#define LUXLIB_GELU_3ALPHA (3 * 0.044715)
#define LUXLIB_SQRT2 1.4142135623730950488
#define LUXLIB_SQRT2PI 2.5066282746310005024          /* sqrt(2 pi) */
#define LUXLIB_SELU_LAMBDA 1.0507009873554804934193349852946
#define LUXLIB_SELU_ALPHA 1.6732632423543772848170429916717
#define LUXLIB_SELU_ALPHA_LAMBDA (1.6732632423543772848170429916717 * 1.0507009873554804934193349852946)

/* number of ids; output-only activations: the derivative is a function of y */
#define LX_N_ACTIVATIONS 26
#define LX_OUTPUT_ONLY(act) ((act) <= 6 || ((act) >= 10 && (act) <= 15) || (act) >= 24)

__device__ __forceinline__ float lx_exp(float v) { return expf(v); }
__device__ __forceinline__ double lx_exp(double v) { return exp(v); }
__device__ __forceinline__ float lx_expm1(float v) { return expm1f(v); }
__device__ __forceinline__ double lx_expm1(double v) { return expm1(v); }
__device__ __forceinline__ float lx_log1p(float v) { return log1pf(v); }
__device__ __forceinline__ double lx_log1p(double v) { return log1p(v); }
__device__ __forceinline__ float lx_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double lx_tanh(double v) { return tanh(v); }
__device__ __forceinline__ float lx_erf(float v) { return erff(v); }
__device__ __forceinline__ double lx_erf(double v) { return erf(v); }
__device__ __forceinline__ float lx_abs(float v) { return fabsf(v); }
__device__ __forceinline__ double lx_abs(double v) { return fabs(v); }

template <typename C> __device__ __forceinline__ C lx_clip(C v, C lo, C hi) { return v < lo ? lo : (v > hi ? hi : v); }
template <typename C> __device__ __forceinline__ C lx_sigmoid(C v)
{
    C t = lx_exp(-lx_abs(v));
    return (v >= 0 ? (C)1 : t) / ((C)1 + t);
}
template <typename C> __device__ __forceinline__ C lx_softplus(C v) { return lx_log1p(lx_exp(-lx_abs(v))) + (v < 0 ? (C)0 : v); }
template <typename C> __device__ __forceinline__ C lx_gelu_sigmoid_arg(C z, C z2)
{
    return (C)LUXLIB_GELU_2LAMBDA * z * (z2 * (C)LUXLIB_GELU_ALPHA + (C)1);
}

template <typename C> __device__ __forceinline__ C lx_act(int act, C z, C p)
{
    C t;
    switch (act) {
    case 0: return z;                                         /* identity */
    case 1: return z < 0 ? (C)0 : z;                          /* relu */
    case 2: return lx_clip(z, (C)0, (C)6);                    /* relu6 */
    case 3: t = p * z; return z > 0 ? z : t;                  /* leakyrelu(a) */
    case 4: t = p * lx_expm1(z); return z >= 0 ? z : t;       /* elu(alpha) */
    case 5: t = p * lx_expm1(z / p); return z >= 0 ? z : t;   /* celu(alpha) */
    case 6: t = (C)LUXLIB_SELU_ALPHA * lx_expm1(z);           /* selu */
        return (C)LUXLIB_SELU_LAMBDA * (z > 0 ? z : t);
    case 7: return z / (C)2 * ((C)1 + lx_tanh(                /* gelu (tanh) */
        (C)LUXLIB_GELU_LAMBDA * (z + (C)LUXLIB_GELU_ALPHA * z * z * z)));
    case 8: return z / (C)2 * ((C)1 + lx_erf(z / (C)LUXLIB_SQRT2));   /* gelu_erf */
    case 9: return z * lx_sigmoid(lx_gelu_sigmoid_arg(z, z * z));     /* gelu_sigmoid */
    case 10: return lx_sigmoid(z);                            /* sigmoid */
    case 11: t = lx_sigmoid(z);                               /* sigmoid_fast */
        return z > 40 ? (C)1 : (z < -80 ? (C)0 : t);
    case 12: return lx_clip((z + (C)3) / (C)6, (C)0, (C)1);   /* hardsigmoid */
    case 13: case 14: return lx_tanh(z);                      /* tanh, tanh_fast */
    case 15: return lx_clip(z, (C)-1, (C)1);                  /* hardtanh */
    case 16: return lx_softplus(z);                           /* softplus */
    case 17: return z / ((C)1 + lx_abs(z));                   /* softsign */
    case 18: return -lx_softplus(-z);                         /* logsigmoid */
    case 19: return z * lx_sigmoid(z);                        /* swish */
    case 20: return z * lx_clip((z + (C)3) / (C)6, (C)0, (C)1);  /* hardswish */
    case 21: return z * lx_tanh(z);                           /* lisht */
    case 22: return z * lx_tanh(lx_softplus(z));              /* mish */
    case 23: return z - lx_tanh(z);                           /* tanhshrink */
    case 24: t = z - p;                                       /* softshrink(lam) */
        return z + p > 0 ? (t < 0 ? (C)0 : t) : z + p;
    default: return z <= p ? (C)0 : z;                        /* 25: trelu(theta) */
    }
}

template <typename C> __device__ __forceinline__ C lx_dact_from_output(int act, C y, C p)
{
    switch (act) {
    case 0: return (C)1;
    case 1: return (C)(y > 0);
    case 2: return (C)(y > 0 && y < 6);
    case 3: return y > 0 ? (C)1 : p;
    case 4: return y >= 0 ? (C)1 : y + p;
    case 5: return y > 0 ? (C)1 : y / p + (C)1;
    case 6: return y > 0 ? (C)LUXLIB_SELU_LAMBDA : y + (C)LUXLIB_SELU_ALPHA_LAMBDA;
    case 10: case 11: return y * ((C)1 - y);
    case 12: return (C)(y > 0 && y < 1) / (C)6;
    case 13: case 14: return (C)1 - y * y;
    case 15: return (C)(y > -1 && y < 1);
    default: return (C)(y != 0);                              /* softshrink, trelu */
    }
}

template <typename C> __device__ __forceinline__ C lx_dact_from_input(int act, C z, C p)
{
    C z2, w, t;
    switch (act) {
    case 7:                                                   /* gelu (tanh) */
        z2 = z * z;
        w = lx_tanh((C)LUXLIB_GELU_LAMBDA * z * (z2 * (C)LUXLIB_GELU_ALPHA + (C)1));
        return ((C)1 + w) / (C)2 + z * (C)LUXLIB_GELU_LAMBDA
            * (z2 * (C)LUXLIB_GELU_3ALPHA + (C)1) * ((C)1 - w * w) / (C)2;
    case 8:                                                   /* gelu_erf */
        w = ((C)1 + lx_erf(z / (C)LUXLIB_SQRT2)) / (C)2;
        return w + z * lx_exp(-(z * z) / (C)2) / (C)LUXLIB_SQRT2PI;
    case 9:                                                   /* gelu_sigmoid */
        z2 = z * z;
        w = lx_sigmoid(lx_gelu_sigmoid_arg(z, z2));
        return w * ((C)1 - w) * (C)LUXLIB_GELU_2LAMBDA
            * (z2 * (C)LUXLIB_GELU_3ALPHA + (C)1) * z + w;
    case 16: return lx_sigmoid(z);                            /* softplus */
    case 17: t = (C)1 + lx_abs(z); return (C)1 / (t * t);     /* softsign */
    case 18: return lx_sigmoid(-z);                           /* logsigmoid */
    case 19:                                                  /* swish: y + sigmoid(z) (1 - y) */
        w = lx_sigmoid(z);
        t = z * w;
        return t + w * ((C)1 - t);
    case 20:                                                  /* hardswish */
        return z < -3 ? (C)0 : (z > 3 ? (C)1 : z / (C)3 + (C)0.5);
    case 21: t = lx_tanh(z); return t + z * ((C)1 - t * t);   /* lisht */
    case 22:                                                  /* mish */
        t = lx_tanh(lx_softplus(z));
        return t + z * ((C)1 - t * t) * lx_sigmoid(z);
    default: t = z - (z - lx_tanh(z)); return t * t;          /* 23: tanhshrink: (z - y)^2 */
    }
}

/* act'(src): src is the output y for output-only ids, else the pre-activation z */
template <typename C> __device__ __forceinline__ C lx_dact(int act, C src, C p)
{
    return LX_OUTPUT_ONLY(act) ? lx_dact_from_output(act, src, p) : lx_dact_from_input(act, src, p);
}

/* f(lx_act_id<act>()) for an activation id known at run time: f's body sees the id as a
   compile-time constant (decltype(id)::value), so that lx_act/lx_dact fold to one
   activation and a loop inside f evaluates its elements without a switch each (a switch per
   element, an indirect branch, keeps the elements of a thread from overlapping: the
   transcendental activations ran at half the memory bandwidth). */
template <int ID> struct lx_act_id { static constexpr int value = ID; };

#define LX_ACT_CASE(k) case k: f(lx_act_id<k>()); break;
template <typename F> __device__ __forceinline__ void lx_with_act(int act, F f)
{
    switch (act) {
    LX_ACT_CASE(0) LX_ACT_CASE(1) LX_ACT_CASE(2) LX_ACT_CASE(3) LX_ACT_CASE(4) LX_ACT_CASE(5) LX_ACT_CASE(6)
    LX_ACT_CASE(7) LX_ACT_CASE(8) LX_ACT_CASE(9) LX_ACT_CASE(10) LX_ACT_CASE(11) LX_ACT_CASE(12)
    LX_ACT_CASE(13) LX_ACT_CASE(14) LX_ACT_CASE(15) LX_ACT_CASE(16) LX_ACT_CASE(17) LX_ACT_CASE(18)
    LX_ACT_CASE(19) LX_ACT_CASE(20) LX_ACT_CASE(21) LX_ACT_CASE(22) LX_ACT_CASE(23) LX_ACT_CASE(24)
    default: f(lx_act_id<25>()); break;
    }
}
#undef LX_ACT_CASE

#endif
