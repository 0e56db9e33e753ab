# Scalar activation math shared by every kernel that fuses an activation: the
# table of luxlib.activations evaluated by id, its derivative from the output
# (output-only activations) or from the input, and loops over contiguous runs (with
# or without a bias added to the input inside the loop).
#
# The formulas are written once, in C, as a template over the element type
# (LX_DEFINE_ACTIVATIONS below): float32 uses the vectorizable math of _fastmath.pxd,
# float64 libm. Every formula repeats the table's expression in the same order of
# operations, with NumPy's NaN rules, so NaN/Inf propagate exactly as on the generic
# path (float32 evaluates gelu and mish in equivalent forms with one exp, chosen so that
# NaN/Inf still land where the table's formula puts them: doc/build.md); branches are
# written as selects (both sides computed) so that the loops vectorize. The run loops
# switch on the id once, outside the loop, and are compiled in several instruction-set
# versions (LX_CLONES, see _fastmath.pxd).

from cython cimport floating

from ._fastmath cimport fast_exp  # noqa: F401  (emits the fast-math C code first)

cdef extern from *:
    """
    #ifndef LUXLIB_ACTIVATION_H
    #define LUXLIB_ACTIVATION_H
    #include <stddef.h>
    #define LUXLIB_GELU_LAMBDA 0.79788456080286535588     /* sqrt(2 / pi) */
    #define LUXLIB_GELU_2LAMBDA 1.5957691216057307118     /* sqrt(8 / pi) */
    #define LUXLIB_GELU_ALPHA 0.044715
    #define LUXLIB_GELU_3ALPHA (3 * 0.044715)
    #define LUXLIB_SQRT2 1.4142135623730950488
    #define LUXLIB_SQRT2PI 2.5066282746310005024          /* sqrt(2 pi) */
    #define LUXLIB_SELU_LAMBDA 1.0507009873554804934193349852946
    #define LUXLIB_SELU_ALPHA 1.6732632423543772848170429916717
    #define LUXLIB_SELU_ALPHA_LAMBDA (1.6732632423543772848170429916717 * 1.0507009873554804934193349852946)

    /* output-only activations: the derivative is a function of y */
    #define LX_OUTPUT_ONLY(act) ((act) <= 6 || ((act) >= 10 && (act) <= 15) || (act) >= 24)

    #define LX_FOR_IDS(M, S) M(0, S) M(1, S) M(2, S) M(3, S) M(4, S) M(5, S) M(6, S) \
        M(7, S) M(8, S) M(9, S) M(10, S) M(11, S) M(12, S) M(13, S) M(14, S) M(15, S) \
        M(16, S) M(17, S) M(18, S) M(19, S) M(20, S) M(21, S) M(22, S) M(23, S) M(24, S) M(25, S)
    /* internal id of the forward loops: celu with alpha = p > 0 (the cheap expm1) */
    #define LX_CELU_POS 26
    #define LX_FORWARD_ID(act, p) ((act) == 5 && (p) > 0 ? LX_CELU_POS : (act))
    /* one loop per id: the id is a constant inside, so the switch in lx_act_* folds away */
    #define LX_FORWARD_LOOP(ID, S, Z) for (i = 0; i < n; i++) y[i] = lx_act_##S(ID, Z, p);
    #define LX_FORWARD_CASE(ID, S) case ID: LX_FORWARD_LOOP(ID, S, z[i]) break;
    /* the bias add inside the activation's loop: one pass, so the loads of x overlap
       the math (a separate bias pass into an L1 buffer serializes memory and math) */
    #define LX_FORWARD_BIAS_CASE(ID, S) case ID: \
        if (bstride) LX_FORWARD_LOOP(ID, S, x[i] + b[i]) \
        else LX_FORWARD_LOOP(ID, S, x[i] + b0) \
        break;
    #define LX_BACKWARD_CASE(ID, S) case ID: \
        for (i = 0; i < n; i++) dz[i] = dy[i] * (LX_OUTPUT_ONLY(ID) \
            ? lx_dact_from_output_##S(ID, src[i], p) : lx_dact_from_input_##S(ID, src[i], p)); \
        break;
    /* the ids whose derivative needs the input */
    #define LX_FOR_INPUT_IDS(M, S) M(7, S) M(8, S) M(9, S) M(16, S) M(17, S) M(18, S) \
        M(19, S) M(20, S) M(21, S) M(22, S) M(23, S)
    #define LX_BACKWARD_LOOP(ID, S, Z) \
        for (i = 0; i < n; i++) dz[i] = dy[i] * lx_dact_from_input_##S(ID, Z, p);
    #define LX_BACKWARD_BIAS_CASE(ID, S) case ID: \
        if (bstride) LX_BACKWARD_LOOP(ID, S, x[i] + b[i]) \
        else LX_BACKWARD_LOOP(ID, S, x[i] + b0) \
        break;

    /* The activation table for element type T (suffix S) over the math functions of
       that type: EXP is only called on arguments <= 20, EXPM1_LO on arguments <= 43 or
       whose result a select discards, LOG1P on [0, 1] (float32 has cheaper versions for
       those ranges, _fastmath.pxd), EXPM1 anywhere. REWRITE = 1 picks the float32 forms
       that need fewer transcendental calls (the same NaN/Inf results as the table's
       formula, see doc/activations.md); float64 keeps the table's formulas. */
    #define LX_DEFINE_ACTIVATIONS(T, S, REWRITE, EXP, EXPM1, EXPM1_LO, LOG1P, TANH, ERF, ABS) \
    LX_INLINE T lx_clip_##S(T v, T lo, T hi) { return v < lo ? lo : (v > hi ? hi : v); } \
    LX_INLINE T lx_sigmoid_##S(T v) { \
        T t = EXP(-ABS(v)); \
        return (v >= 0 ? (T)1 : t) / ((T)1 + t); \
    } \
    LX_INLINE T lx_softplus_##S(T v) { return LOG1P(EXP(-ABS(v))) + (v < 0 ? (T)0 : v); } \
    /* tanh(softplus(z)) = n / (n + 2), n = e (e + 2), e = e^z; 1 above z = 20 */ \
    LX_INLINE T lx_mish_tanh_##S(T z) { \
        T e = EXP(z > 20 ? (T)20 : z); \
        T n = e * (e + (T)2); \
        return n / (n + (T)2); \
    } \
    /* mish' = t + z (1 - t^2) sigmoid(z) = t + z 4 e (e + 1) / (n + 2)^2; the second \
       term is 0 above z = 20 (the table's z (1 - t^2) is 0 * z there: NaN at +inf) */ \
    LX_INLINE T lx_mish_dx_##S(T z) { \
        T e = EXP(z > 20 ? (T)20 : z); \
        T n = e * (e + (T)2); \
        T q = (T)1 / (n + (T)2); \
        T g = (T)4 * e * (e + (T)1) * (q * q); \
        return n * q + z * (z > 20 ? (T)0 : g); \
    } \
    /* z / p <= 0 where the select keeps expm1 when alpha = p > 0 (pos) */ \
    LX_INLINE T lx_celu_##S(T z, T p, int pos) { \
        T t = p * (pos ? EXPM1_LO(z / p) : EXPM1(z / p)); \
        return z >= 0 ? z : t; \
    } \
    LX_INLINE T lx_gelu_sigmoid_arg_##S(T z, T z2) { \
        if (REWRITE)  /* one operation less; overflows to the same inf */ \
            return z * (z2 * (T)(LUXLIB_GELU_2LAMBDA * LUXLIB_GELU_ALPHA) + (T)LUXLIB_GELU_2LAMBDA); \
        return (T)LUXLIB_GELU_2LAMBDA * z * (z2 * (T)LUXLIB_GELU_ALPHA + (T)1); \
    } \
    \
    LX_INLINE T lx_act_##S(int act, T z, T p) { \
        T t; \
        switch (act) { \
        case 0: return z;                                         /* identity */ \
        case 1: return z < 0 ? (T)0 : z;                          /* relu */ \
        case 2: return lx_clip_##S(z, (T)0, (T)6);                /* relu6 */ \
        case 3: t = p * z; return z > 0 ? z : t;                  /* leakyrelu(a) */ \
        case 4: t = p * EXPM1_LO(z); return z >= 0 ? z : t;       /* elu(alpha) */ \
        case 5: return lx_celu_##S(z, p, p > 0);                  /* celu(alpha) */ \
        case LX_CELU_POS: return lx_celu_##S(z, p, 1);            /* celu(alpha > 0) */ \
        case 6: t = (T)LUXLIB_SELU_ALPHA * EXPM1_LO(z);           /* selu */ \
            return (T)LUXLIB_SELU_LAMBDA * (z > 0 ? z : t); \
        case 8: return z / (T)2 * ((T)1 + ERF(z / (T)LUXLIB_SQRT2));   /* gelu_erf */ \
        case 7:                                                   /* gelu (tanh) */ \
            if (!REWRITE) return z / (T)2 * ((T)1 + TANH( \
                (T)LUXLIB_GELU_LAMBDA * (z + (T)LUXLIB_GELU_ALPHA * z * z * z))); \
            /* z/2 (1 + tanh(u)) = z sigmoid(2u): gelu_sigmoid; fall through */ \
        case 9: return z * lx_sigmoid_##S(lx_gelu_sigmoid_arg_##S(z, z * z)); /* gelu_sigmoid */ \
        case 10: return lx_sigmoid_##S(z);                        /* sigmoid */ \
        case 11: t = lx_sigmoid_##S(z);                           /* sigmoid_fast */ \
            return z > 40 ? (T)1 : (z < -80 ? (T)0 : t); \
        case 12: return lx_clip_##S((z + (T)3) / (T)6, (T)0, (T)1);  /* hardsigmoid */ \
        case 13: case 14: return TANH(z);                         /* tanh, tanh_fast */ \
        case 15: return lx_clip_##S(z, (T)-1, (T)1);              /* hardtanh */ \
        case 16: return lx_softplus_##S(z);                       /* softplus */ \
        case 17: return z / ((T)1 + ABS(z));                      /* softsign */ \
        case 18: return -lx_softplus_##S(-z);                     /* logsigmoid */ \
        case 19: return z * lx_sigmoid_##S(z);                    /* swish */ \
        case 20: return z * lx_clip_##S((z + (T)3) / (T)6, (T)0, (T)1);  /* hardswish */ \
        case 21: return z * TANH(z);                              /* lisht */ \
        case 22: return z * (REWRITE ? lx_mish_tanh_##S(z)       /* mish */ \
                                      : TANH(lx_softplus_##S(z))); \
        case 23: return z - TANH(z);                              /* tanhshrink */ \
        case 24: t = z - p;                                       /* softshrink(lam) */ \
            return z + p > 0 ? (t < 0 ? (T)0 : t) : z + p; \
        default: return z <= p ? (T)0 : z;                        /* 25: trelu(theta) */ \
        } \
    } \
    \
    LX_INLINE T lx_dact_from_output_##S(int act, T y, T p) { \
        switch (act) { \
        case 0: return (T)1; \
        case 1: return (T)(y > 0); \
        case 2: return (T)(y > 0 && y < 6); \
        case 3: return y > 0 ? (T)1 : p; \
        case 4: return y >= 0 ? (T)1 : y + p; \
        case 5: return y > 0 ? (T)1 : y / p + (T)1; \
        case 6: return y > 0 ? (T)LUXLIB_SELU_LAMBDA : y + (T)LUXLIB_SELU_ALPHA_LAMBDA; \
        case 10: case 11: return y * ((T)1 - y); \
        case 12: return (T)(y > 0 && y < 1) / (T)6; \
        case 13: case 14: return (T)1 - y * y; \
        case 15: return (T)(y > -1 && y < 1); \
        default: return (T)(y != 0);                              /* softshrink, trelu */ \
        } \
    } \
    \
    LX_INLINE T lx_dact_from_input_##S(int act, T z, T p) { \
        T z2, w, t; \
        switch (act) { \
        case 7:                                                   /* gelu (tanh) */ \
            z2 = z * z; \
            if (REWRITE) {  /* (1 + w) / 2 = s, (1 - w^2) / 2 = 2 s (1 - s), s = sigmoid(2u) */ \
                w = lx_sigmoid_##S(lx_gelu_sigmoid_arg_##S(z, z2)); \
                return w + z * (T)LUXLIB_GELU_LAMBDA \
                    * (z2 * (T)LUXLIB_GELU_3ALPHA + (T)1) * ((T)2 * w * ((T)1 - w)); \
            } \
            w = TANH((T)LUXLIB_GELU_LAMBDA * z * (z2 * (T)LUXLIB_GELU_ALPHA + (T)1)); \
            return ((T)1 + w) / (T)2 + z * (T)LUXLIB_GELU_LAMBDA \
                * (z2 * (T)LUXLIB_GELU_3ALPHA + (T)1) * ((T)1 - w * w) / (T)2; \
        case 8:                                                   /* gelu_erf */ \
            w = ((T)1 + ERF(z / (T)LUXLIB_SQRT2)) / (T)2; \
            return w + z * EXP(-(z * z) / (T)2) / (T)LUXLIB_SQRT2PI; \
        case 9:                                                   /* gelu_sigmoid */ \
            z2 = z * z; \
            w = lx_sigmoid_##S(lx_gelu_sigmoid_arg_##S(z, z2)); \
            return w * ((T)1 - w) * (T)LUXLIB_GELU_2LAMBDA \
                * (z2 * (T)LUXLIB_GELU_3ALPHA + (T)1) * z + w; \
        case 16: return lx_sigmoid_##S(z);                        /* softplus */ \
        case 17: t = (T)1 + ABS(z); return (T)1 / (t * t);        /* softsign */ \
        case 18: return lx_sigmoid_##S(-z);                       /* logsigmoid */ \
        case 19:                                                  /* swish: y + sigmoid(z) (1 - y) */ \
            w = lx_sigmoid_##S(z); \
            t = z * w; \
            return t + w * ((T)1 - t); \
        case 20:                                                  /* hardswish */ \
            return z < -3 ? (T)0 : (z > 3 ? (T)1 : z / (T)3 + (T)0.5); \
        case 21: t = TANH(z); return t + z * ((T)1 - t * t);      /* lisht */ \
        case 22:                                                  /* mish */ \
            if (REWRITE) return lx_mish_dx_##S(z); \
            t = TANH(lx_softplus_##S(z)); \
            return t + z * ((T)1 - t * t) * lx_sigmoid_##S(z); \
        default: t = z - (z - TANH(z)); return t * t;             /* 23: tanhshrink: (z - y)^2 */ \
        } \
    } \
    \
    /* y[i] = act(z[i]); y may be z */ \
    static LX_CLONES void lx_forward_##S(int act, T p, const T* z, T* y, ptrdiff_t n) { \
        ptrdiff_t i; \
        switch (LX_FORWARD_ID(act, p)) { \
            LX_FOR_IDS(LX_FORWARD_CASE, S) LX_FORWARD_CASE(LX_CELU_POS, S) } \
    } \
    \
    /* y[i] = act(x[i] + b[i]) (bstride 1) or act(x[i] + b[0]) (bstride 0); y may be x */ \
    static LX_CLONES void lx_forward_bias_##S(int act, T p, const T* x, const T* b, \
                                              int bstride, T* y, ptrdiff_t n) { \
        ptrdiff_t i; \
        T b0 = b[0]; \
        switch (LX_FORWARD_ID(act, p)) { \
            LX_FOR_IDS(LX_FORWARD_BIAS_CASE, S) LX_FORWARD_BIAS_CASE(LX_CELU_POS, S) } \
    } \
    \
    /* dz[i] = dy[i] * act'(src[i]), src = y for output-only ids, else z; dz may be dy or src */ \
    static LX_CLONES void lx_backward_##S(int act, T p, const T* src, const T* dy, T* dz, \
                                          ptrdiff_t n) { \
        ptrdiff_t i; \
        switch (act) { LX_FOR_IDS(LX_BACKWARD_CASE, S) } \
    } \
    \
    /* dz[i] = dy[i] * act'(x[i] + b[i]) (bstride 1) or act'(x[i] + b[0]) (bstride 0), for \
       an act that needs the input (not LX_OUTPUT_ONLY); dz may be dy or x */ \
    static LX_CLONES void lx_backward_bias_##S(int act, T p, const T* x, const T* b, \
                                               int bstride, const T* dy, T* dz, ptrdiff_t n) { \
        ptrdiff_t i; \
        T b0 = b[0]; \
        switch (act) { LX_FOR_INPUT_IDS(LX_BACKWARD_BIAS_CASE, S) } \
    }

    LX_DEFINE_ACTIVATIONS(float, f, 1, lx_expf_lo, lx_expm1f, lx_expm1f_lo, lx_log1pf_01,
                          lx_tanhf, lx_erff, fabsf)
    LX_DEFINE_ACTIVATIONS(double, d, 0, exp, expm1, expm1, log1p, tanh, erf, fabs)
    #endif
    """
    bint _lx_output_only "LX_OUTPUT_ONLY"(int) noexcept nogil
    float _act_f "lx_act_f"(int, float, float) noexcept nogil
    double _act_d "lx_act_d"(int, double, double) noexcept nogil
    float _dact_from_output_f "lx_dact_from_output_f"(int, float, float) noexcept nogil
    double _dact_from_output_d "lx_dact_from_output_d"(int, double, double) noexcept nogil
    float _dact_from_input_f "lx_dact_from_input_f"(int, float, float) noexcept nogil
    double _dact_from_input_d "lx_dact_from_input_d"(int, double, double) noexcept nogil
    void _forward_f "lx_forward_f"(int, float, const float*, float*, Py_ssize_t) noexcept nogil
    void _forward_d "lx_forward_d"(int, double, const double*, double*, Py_ssize_t) noexcept nogil
    void _forward_bias_f "lx_forward_bias_f"(int, float, const float*, const float*, int, float*,
                                             Py_ssize_t) noexcept nogil
    void _forward_bias_d "lx_forward_bias_d"(int, double, const double*, const double*, int,
                                             double*, Py_ssize_t) noexcept nogil
    void _backward_f "lx_backward_f"(int, float, const float*, const float*, float*,
                                     Py_ssize_t) noexcept nogil
    void _backward_d "lx_backward_d"(int, double, const double*, const double*, double*,
                                     Py_ssize_t) noexcept nogil
    void _backward_bias_f "lx_backward_bias_f"(int, float, const float*, const float*, int,
                                               const float*, float*, Py_ssize_t) noexcept nogil
    void _backward_bias_d "lx_backward_bias_d"(int, double, const double*, const double*, int,
                                               const double*, double*, Py_ssize_t) noexcept nogil

#: number of activation ids implemented (ids 0 .. N_ACTIVATIONS - 1)
cdef enum:
    N_ACTIVATIONS = 26


cdef inline bint _output_only(int act) noexcept nogil:
    return _lx_output_only(act)


cdef inline floating _act(int act, floating z, floating p) noexcept nogil:
    """``act(z)``; ``p`` is the activation's bound parameter, if it has one."""
    if floating is float:
        return _act_f(act, z, p)
    else:
        return _act_d(act, z, p)


cdef inline floating _dact_from_output(int act, floating y, floating p) noexcept nogil:
    """``act'`` from the output ``y``, for the output-only activations."""
    if floating is float:
        return _dact_from_output_f(act, y, p)
    else:
        return _dact_from_output_d(act, y, p)


cdef inline floating _dact_from_input(int act, floating z, floating p) noexcept nogil:
    """``act'`` from the input ``z``, for the activations that need it."""
    if floating is float:
        return _dact_from_input_f(act, z, p)
    else:
        return _dact_from_input_d(act, z, p)


# ---- contiguous runs: what the fused kernels call --------------------------------

cdef inline void act_forward_n(int act, floating p, const floating* z, floating* y,
                               Py_ssize_t n) noexcept nogil:
    """``y[i] = act(z[i])`` for ``i < n``; ``y`` may be ``z``."""
    if floating is float:
        _forward_f(act, p, z, y, n)
    else:
        _forward_d(act, p, z, y, n)


cdef inline void act_forward_bias_n(int act, floating p, const floating* x, const floating* b,
                                    bint bstride, floating* y, Py_ssize_t n) noexcept nogil:
    """``y[i] = act(x[i] + b[i])`` (``bstride``) or ``act(x[i] + b[0])`` for ``i < n``, in
    one pass; ``y`` may be ``x``."""
    if floating is float:
        _forward_bias_f(act, p, x, b, bstride, y, n)
    else:
        _forward_bias_d(act, p, x, b, bstride, y, n)


cdef inline void act_backward_n(int act, floating p, const floating* src, const floating* dy,
                                floating* dz, Py_ssize_t n) noexcept nogil:
    """``dz[i] = dy[i] * act'`` for ``i < n``, from ``src`` = the output ``y`` when
    ``_output_only(act)``, else the pre-activation ``z``; ``dz`` may be ``dy`` or ``src``."""
    if floating is float:
        _backward_f(act, p, src, dy, dz, n)
    else:
        _backward_d(act, p, src, dy, dz, n)


cdef inline void act_backward_bias_n(int act, floating p, const floating* x, const floating* b,
                                     bint bstride, const floating* dy, floating* dz,
                                     Py_ssize_t n) noexcept nogil:
    """``dz[i] = dy[i] * act'(x[i] + b[i])`` (``bstride``) or ``act'(x[i] + b[0])`` for
    ``i < n``, in one pass, for an ``act`` that needs the input (not ``_output_only``);
    ``dz`` may be ``dy`` or ``x``."""
    if floating is float:
        _backward_bias_f(act, p, x, b, bstride, dy, dz, n)
    else:
        _backward_bias_d(act, p, x, b, bstride, dy, dz, n)
