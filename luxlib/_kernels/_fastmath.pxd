# Vectorizable float32 exp, expm1, log1p, tanh, erf, and the range-restricted
# variants the activations call (lx_expf_lo, lx_expm1f_lo, lx_log1pf_01).
#
# Cephes-style: Cody-Waite range reduction, minimax polynomials, 2^k built from its
# bits, and every case (overflow, underflow, +-0, +-inf, NaN) chosen by selects rather
# than branches, so GCC if-converts and auto-vectorizes loops that call them (they are
# forced inline). NaN and Inf come out where libm puts them, -0 stays -0. No
# -ffast-math needed. Accuracy (max error against float64, tests/test_fastmath.py and
# doc/build.md): exp, log1p <= 1 ulp; expm1, tanh <= 2 ulp; erf <= 7 ulp.
#
# LX_INLINE and LX_CLONES (function multiversioning for the loops that call these:
# x86-64-v4 (AVX-512), x86-64-v3 (AVX2+FMA) and baseline versions, picked at load
# time by CPU features) are
# defined here for every kernel header.

cdef extern from *:
    """
    #ifndef LUXLIB_FASTMATH_H
    #define LUXLIB_FASTMATH_H
    #include <stdint.h>
    #include <string.h>
    #include <math.h>
    #include <stddef.h>

    #if defined(__GNUC__)
        #define LX_INLINE static inline __attribute__((always_inline))
    #else
        #define LX_INLINE static inline
    #endif
    /* target_clones needs GCC >= 6 on x86-64 ELF (ifunc); elsewhere one portable version */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__) \
        && !defined(LUXLIB_NO_CLONES)
        #define LX_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
        #define LX_CLONES
    #endif

    LX_INLINE float lx_bits_to_float(int32_t b) { float f; memcpy(&f, &b, 4); return f; }
    LX_INLINE int32_t lx_float_to_bits(float f) { int32_t b; memcpy(&b, &f, 4); return b; }
    /* the float whose bits are kk's shifted left by 23 (unsigned: no overflow) */
    LX_INLINE float lx_shl23(float kk) {
        uint32_t b;
        memcpy(&b, &kk, 4);
        b <<= 23;
        memcpy(&kk, &b, 4);
        return kk;
    }

    #define LX_LOG2E 1.44269504088896341f
    #define LX_LN2_HI 0.693359375f        /* few bits: k * LN2_HI is exact */
    #define LX_LN2_LO -2.12194440e-4f
    /* x log2(e) + LX_SHIFT(b) rounds to an integer k in the low mantissa bits, stored
       as k + b: shifting the float's bits left by 23 gives the bits of 2^(k + b - 127) */
    #define LX_SHIFT(b) (12582912.0f + (float)(b))   /* 1.5 * 2^23 + b */
    #define LX_TWO_M64 5.42101086242752217e-20f     /* 2^-64 */
    #define LX_TWO_P64 1.84467440737095516e19f      /* 2^64 */

    /* (e^r - 1 - r) / r^2 for |r| <= ln2/2: minimax, e^r to 3.3e-9 relative */
    LX_INLINE float lx_exp_poly(float r) {
        float p = 1.3821687e-3f;
        p = p * r + 8.368853e-3f;
        p = p * r + 4.1668274e-2f;
        p = p * r + 1.666652e-1f;
        return p * r + 4.9999994e-1f;
    }

    /* r = x - k ln2 (Cody-Waite), |r| <= ln2/2; *kk = x log2(e) + shift holds k */
    LX_INLINE float lx_exp_reduce(float x, float shift, float* kk) {
        *kk = x * LX_LOG2E + shift;
        float k = *kk - shift;
        return (x - k * LX_LN2_HI) - k * LX_LN2_LO;
    }

    /* e^x = (e^r 2^(k + b - 127)) post for x = k ln2 + r, shift = LX_SHIFT(b): exact up
       to the last product, which rounds once (overflow to inf, gradual underflow); NaN
       gives NaN (p is NaN). 1 + (r + r^2 P) rather than a Horner scheme through the last
       terms: the same <= 1 ulp without FMA (baseline x86-64). */
    LX_INLINE float lx_exp_core(float x, float shift, float post) {
        float kk;
        float r = lx_exp_reduce(x, shift, &kk);
        float p = lx_exp_poly(r) * (r * r) + r + 1.0f;
        return p * lx_shl23(kk) * post;
    }

    /* e^x for x <= 43 (2^(k+64) stays normal) or NaN; what the activations call, their
       arguments are <= 20. Larger x: garbage. */
    LX_INLINE float lx_expf_lo(float x) {
        float xc = x < -104.0f ? -104.0f : x;    /* e^-104 rounds to 0; NaN passes */
        return lx_exp_core(xc, LX_SHIFT(127 + 64), LX_TWO_M64);
    }

    LX_INLINE float lx_expf(float x) {
        /* positive x: e^r 2^(k-64) 2^64, the others e^r 2^(k+64) 2^-64 */
        float xc = x > 89.0f ? 89.0f : (x < -104.0f ? -104.0f : x);
        int hi = x > 0.0f;
        return lx_exp_core(xc, hi ? LX_SHIFT(127 - 64) : LX_SHIFT(127 + 64),
                           hi ? LX_TWO_P64 : LX_TWO_M64);
    }

    /* expm1(x) = 2^k expm1(r) + (2^k - 1) for x <= 43 or NaN (-0 may become +0);
       what elu, celu, selu call (their x > 0 lanes are discarded). Larger x: garbage. */
    LX_INLINE float lx_expm1f_lo(float x) {
        float xc = x < -25.0f ? -25.0f : x;      /* expm1 rounds to -1 below -17.4 */
        float kk;
        float r = lx_exp_reduce(xc, LX_SHIFT(127), &kk);
        float em = lx_exp_poly(r) * (r * r) + r;
        float s = lx_shl23(kk);
        return s * em + (s - 1.0f);
    }

    LX_INLINE float lx_expm1f(float x) {
        /* e^x - 1 rounds to e^x above 43; keeps -0 */
        return x > 43.0f ? lx_expf(x) : (x == 0.0f ? x : lx_expm1f_lo(x));
    }

    /* log1p(t) for 0 <= t <= 1 (or NaN): 2 atanh(s), s = t / (2 + t) <= 1/3, as
       s (2 + s^2 Q(s^2)) with a minimax Q (5e-9 relative); what softplus calls */
    LX_INLINE float lx_log1pf_01(float t) {
        float s = t / (2.0f + t);
        float z = s * s;
        float q = 0.28f;
        q = q * z + 0.28004223f;
        q = q * z + 0.40021396f;
        q = q * z + 0.66666418f;
        return s * (q * z + 2.0f);
    }

    LX_INLINE float lx_log1pf(float x) {
        /* log(u) for u = 1 + x = m 2^e, m in [sqrt(1/2), sqrt(2)), plus the rounding
           correction (x - (u - 1)) / u */
        float u = 1.0f + x;
        int32_t ub = lx_float_to_bits(u);
        int32_t e = (ub - 0x3f3504f3) >> 23;
        float f = lx_bits_to_float(ub - (e << 23)) - 1.0f;
        float fe = (float)e;
        float z = f * f;
        float y = 7.0376836292e-2f;
        y = y * f - 1.1514610310e-1f;
        y = y * f + 1.1676998740e-1f;
        y = y * f - 1.2420140846e-1f;
        y = y * f + 1.4249322787e-1f;
        y = y * f - 1.6668057665e-1f;
        y = y * f + 2.0000714765e-1f;
        y = y * f - 2.4999993993e-1f;
        y = y * f + 3.3333331174e-1f;
        y = y * f * z;
        y = y + fe * LX_LN2_LO + (x - (u - 1.0f)) / u;
        y = y - 0.5f * z;
        float res = (f + y) + fe * LX_LN2_HI;
        /* domain edges: x < -1 NaN, -1 -inf, inf inf, +-0 itself, NaN itself */
        float edge = x == -1.0f ? -INFINITY : (x < -1.0f ? NAN : x);
        return (x > -1.0f && x < INFINITY && x != 0.0f) ? res : edge;
    }

    LX_INLINE float lx_tanhf(float x) {
        float ax = fabsf(x);
        float z = x * x;
        float p = -5.70498872745e-3f;
        p = p * z + 2.06390887954e-2f;
        p = p * z - 5.37397155531e-2f;
        p = p * z + 1.33314422036e-1f;
        p = p * z - 3.33332819422e-1f;
        float small = (p * z) * ax + ax;
        /* (1 - e^{-2|x|}) / (1 + e^{-2|x|}): 1 for large |x|, NaN stays NaN */
        float t = lx_expf_lo(-2.0f * ax);
        float large = (1.0f - t) / (1.0f + t);
        return copysignf(ax < 0.625f ? small : large, x);       /* keeps -0 */
    }

    LX_INLINE float lx_erff(float x) {
        /* x P(x^2) / Q(x^2) on |x| <= 4 (rational minimax fit of erf(x)/x, 2.5e-8
           relative; float32 evaluation adds the rest of the error); erf rounds to +-1
           beyond 4. NaN passes the clamps, -0 stays -0. */
        float xc = x > 4.0f ? 4.0f : (x < -4.0f ? -4.0f : x);
        float u = xc * xc;
        float p = 1.985722292e-06f;
        p = p * u + 2.846278949e-04f;
        p = p * u + 3.887332743e-03f;
        p = p * u + 5.311417580e-02f;
        p = p * u + 1.936419010e-01f;
        p = p * u + 1.128379107e+00f;
        float q = 3.741231922e-05f;
        q = q * u + 1.186481561e-03f;
        q = q * u + 1.521534007e-02f;
        q = q * u + 1.153896675e-01f;
        q = q * u + 5.049431920e-01f;
        q = q * u + 1.0f;
        float r = xc * p / q;
        return r > 1.0f ? 1.0f : (r < -1.0f ? -1.0f : r);   /* 1 + erf(-inf) = 0 exactly */
    }

    /* out[i] = f(x[i]) for f in exp, expm1, log1p, tanh, erf (0..4): the accuracy tests
       run the same instruction-set version as the kernels */
    static LX_CLONES void lx_fastmath_f(int which, const float* x, float* out, ptrdiff_t n) {
        ptrdiff_t i;
        switch (which) {
        case 0: for (i = 0; i < n; i++) out[i] = lx_expf(x[i]); break;
        case 1: for (i = 0; i < n; i++) out[i] = lx_expm1f(x[i]); break;
        case 2: for (i = 0; i < n; i++) out[i] = lx_log1pf(x[i]); break;
        case 3: for (i = 0; i < n; i++) out[i] = lx_tanhf(x[i]); break;
        default: for (i = 0; i < n; i++) out[i] = lx_erff(x[i]); break;
        }
    }
    #endif
    """
    void fastmath_n "lx_fastmath_f"(int which, const float* x, float* out, Py_ssize_t n) noexcept nogil
    float fast_exp "lx_expf"(float) noexcept nogil
    float fast_expm1 "lx_expm1f"(float) noexcept nogil
    float fast_log1p "lx_log1pf"(float) noexcept nogil
    float fast_tanh "lx_tanhf"(float) noexcept nogil
    float fast_erf "lx_erff"(float) noexcept nogil
