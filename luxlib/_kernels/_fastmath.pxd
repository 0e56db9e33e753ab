# Vectorizable float32 exp, expm1, log1p, tanh, erf.
#
# Cephes-style: Cody-Waite range reduction, polynomials, 2^k built from its bits, and
# every case (overflow, underflow, +-0, +-inf, NaN) chosen by selects rather than
# branches, so GCC if-converts and auto-vectorizes loops that call them (they are
# forced inline). NaN and Inf come out where libm puts them, -0 stays -0. No
# -ffast-math needed. Accuracy (max error against float64, tests/test_fastmath.py and
# doc/build.md): exp, expm1, log1p, tanh <= 2 ulp; erf <= 3 ulp.
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
    /* 2^k for -126 <= k <= 127 */
    LX_INLINE float lx_pow2i(int32_t k) { return lx_bits_to_float((k + 127) << 23); }
    /* round to nearest integer (|v| < 2^22), without SSE4.1's roundps */
    LX_INLINE float lx_rint(float v) { return (v + 12582912.0f) - 12582912.0f; }
    /* the integer k of lx_rint's result; 0 for NaN (converting NaN is undefined) */
    LX_INLINE int32_t lx_int(float k) { return (int32_t)(k == k ? k : 0.0f); }

    #define LX_LOG2E 1.44269504088896341f
    #define LX_LN2_HI 0.693359375f        /* few bits: k * LN2_HI is exact */
    #define LX_LN2_LO -2.12194440e-4f

    LX_INLINE float lx_expf(float x) {
        /* clamp keeps 2^k in two normal factors; NaN passes (comparisons are false) */
        float xc = x > 89.0f ? 89.0f : (x < -104.0f ? -104.0f : x);
        float k = lx_rint(xc * LX_LOG2E);
        float r = (xc - k * LX_LN2_HI) - k * LX_LN2_LO;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * (r * r) + r + 1.0f;
        int32_t ki = lx_int(k), k1 = ki >> 1;
        /* exact first product, one rounding (overflow to inf, gradual underflow) in the second */
        return p * lx_pow2i(k1) * lx_pow2i(ki - k1);
    }

    LX_INLINE float lx_expm1f(float x) {
        /* expm1(x) = 2^k expm1(r) + (2^k - 1), |r| <= ln2/2 (up to 0.7 where k is capped) */
        float xc = x > 89.0f ? 89.0f : (x < -25.0f ? -25.0f : x);
        float k = lx_rint(xc * LX_LOG2E);
        k = k > 127.0f ? 127.0f : k;
        float r = (xc - k * LX_LN2_HI) - k * LX_LN2_LO;
        float p = 2.7557319e-6f;                  /* Taylor to r^10 / 10! */
        p = p * r + 2.4801587e-5f;
        p = p * r + 1.9841270e-4f;
        p = p * r + 1.3888889e-3f;
        p = p * r + 8.3333333e-3f;
        p = p * r + 4.1666667e-2f;
        p = p * r + 1.6666667e-1f;
        p = p * r + 0.5f;
        float em = r * (p * r) + r;
        float s = lx_pow2i(lx_int(k));
        float res = s * em + (s - 1.0f);
        return x == 0.0f ? x : res;              /* keeps -0 */
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
        float small = (p * z) * x + x;
        /* 1 - 2 / (e^{2|x|} + 1): inf for large |x| gives 1, NaN stays NaN */
        float large = copysignf(1.0f - 2.0f / (lx_expf(2.0f * ax) + 1.0f), x);
        return ax < 0.625f ? (x == 0.0f ? x : small) : large;   /* keeps -0 */
    }

    LX_INLINE float lx_erff(float x) {
        /* |x| < 1: x P(x^2), least-squares fit of erf(x)/x; else 1 - erfc(|x|) with
           Numerical Recipes' erfc (fractional error < 1.2e-7), sign restored */
        float z = x * x;
        float p = 7.89749029e-05f;
        p = p * z - 8.02412513e-04f;
        p = p * z + 5.19002555e-03f;
        p = p * z - 2.68547926e-02f;
        p = p * z + 1.12836123e-01f;
        p = p * z - 3.76126289e-01f;
        p = p * z + 1.12837923e+00f;
        float small = p * x;
        float ax = fabsf(x);
        float t = 1.0f / (1.0f + 0.5f * ax);
        float q = 0.17087277f;
        q = q * t - 0.82215223f;
        q = q * t + 1.48851587f;
        q = q * t - 1.13520398f;
        q = q * t + 0.27886807f;
        q = q * t - 0.18628806f;
        q = q * t + 0.09678418f;
        q = q * t + 0.37409196f;
        q = q * t + 1.00002368f;
        q = q * t - 1.26551223f;
        float large = copysignf(1.0f - t * lx_expf(q - z), x);
        return ax < 1.0f ? small : large;
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
