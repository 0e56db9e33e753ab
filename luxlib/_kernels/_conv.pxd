# Row loops of the direct (depthwise) convolution, in C so that they are compiled in
# several instruction-set versions (LX_CLONES, see _fastmath.pxd): conv.pyx itself is
# built for baseline x86-64 (SSE2), and these loops are the depthwise kernels' whole
# arithmetic. ``restrict``: the input, output and gradient planes never overlap.

from ._fastmath cimport fast_exp  # noqa: F401  (emits LX_CLONES first)

cdef extern from *:
    """
    #ifndef LUXLIB_CONV_H
    #define LUXLIB_CONV_H
    #include <stddef.h>
    /* One kernel tap over the in-bounds rectangle [lo, hi) of output positions (per axis
       D, H, W) of a whole output plane seg (OH, OW): with x[q + ow * sw] the input sample
       of output column ow, grad == 0 does seg += alpha * x (forward), grad == 1 does
       dx += alpha * seg and acc[ow] += seg * x (reverse: data and filter gradients). */
    #define LX_DEFINE_CONV_PLANE(T, S) \
    static LX_CLONES void lx_conv_plane_##S(int grad, T alpha, const T* restrict x, \
            T* restrict dx, T* restrict seg, T* restrict acc, const ptrdiff_t* lo, \
            const ptrdiff_t* hi, const ptrdiff_t* s, const ptrdiff_t* off, ptrdiff_t OH, \
            ptrdiff_t OW, ptrdiff_t IH, ptrdiff_t IW) { \
        ptrdiff_t od, oh, i, q, sw = s[2]; \
        for (od = lo[0]; od < hi[0]; od++) \
            for (oh = lo[1]; oh < hi[1]; oh++) { \
                T* restrict sr = seg + (od * OH + oh) * OW; \
                q = ((od * s[0] + off[0]) * IH + oh * s[1] + off[1]) * IW + off[2]; \
                if (!grad && sw == 1) \
                    for (i = lo[2]; i < hi[2]; i++) sr[i] += alpha * x[q + i]; \
                else if (!grad) \
                    for (i = lo[2]; i < hi[2]; i++) sr[i] += alpha * x[q + i * sw]; \
                else if (sw == 1) \
                    for (i = lo[2]; i < hi[2]; i++) { \
                        dx[q + i] += alpha * sr[i]; acc[i] += sr[i] * x[q + i]; } \
                else \
                    for (i = lo[2]; i < hi[2]; i++) { \
                        dx[q + i * sw] += alpha * sr[i]; acc[i] += sr[i] * x[q + i * sw]; } \
            } \
    }
    LX_DEFINE_CONV_PLANE(float, f)
    LX_DEFINE_CONV_PLANE(double, d)
    /* Unit-stride planes in the padded layout: the input plane is copied into a zero-padded
       volume xp, whose flat index of output position (od, oh, ow) is q (rows PW long, the
       surplus columns and rows being garbage), so that each tap is one long contiguous
       loop over q in [0, Q) at the flat offset off[k] (no per-row bounds). Forward:
       t[q] += w[k] * xp[q + off[k]], three taps per pass over t (one tap per pass, GCC's
       unroll-and-jam fused pairs of taps into a scalar loop). The data gradient is the
       same loop over the padded dx with the output gradient (zero at garbage positions)
       at reversed offsets. Filter gradient (Q a multiple of LX_DW_L): acc[k][q % LX_DW_L]
       += dzp[q] * xp[q + off[k]], lane-wise partial sums, three taps per pass over dzp. */
    #define LX_DW_L 16
    #define LX_DEFINE_DW_FLAT(T, S) \
    static LX_CLONES void lx_dw_flat_fwd_##S(T* restrict t, const T* restrict xp, \
            const T* w, const ptrdiff_t* off, ptrdiff_t K, ptrdiff_t Q) { \
        ptrdiff_t k = 0, q; \
        for (; k + 3 <= K; k += 3) { \
            const T a0 = w[k], a1 = w[k + 1], a2 = w[k + 2]; \
            const T* restrict x0 = xp + off[k]; const T* restrict x1 = xp + off[k + 1]; \
            const T* restrict x2 = xp + off[k + 2]; \
            for (q = 0; q < Q; q++) t[q] = ((t[q] + a0 * x0[q]) + a1 * x1[q]) + a2 * x2[q]; \
        } \
        for (; k < K; k++) { \
            const T a = w[k]; const T* restrict xs = xp + off[k]; \
            for (q = 0; q < Q; q++) t[q] += a * xs[q]; \
        } \
    } \
    static LX_CLONES void lx_dw_flat_dw_##S(T* restrict acc, const T* restrict dzp, \
            const T* restrict xp, const ptrdiff_t* off, ptrdiff_t K, ptrdiff_t Q) { \
        ptrdiff_t k = 0, q, j; \
        for (; k + 3 <= K; k += 3) { \
            const T* restrict x0 = xp + off[k]; const T* restrict x1 = xp + off[k + 1]; \
            const T* restrict x2 = xp + off[k + 2]; \
            T* restrict a = acc + k * LX_DW_L; T s0[LX_DW_L], s1[LX_DW_L], s2[LX_DW_L]; \
            for (j = 0; j < LX_DW_L; j++) { \
                s0[j] = a[j]; s1[j] = a[LX_DW_L + j]; s2[j] = a[2 * LX_DW_L + j]; } \
            for (q = 0; q < Q; q += LX_DW_L) \
                for (j = 0; j < LX_DW_L; j++) { \
                    const T g = dzp[q + j]; \
                    s0[j] += g * x0[q + j]; s1[j] += g * x1[q + j]; s2[j] += g * x2[q + j]; } \
            for (j = 0; j < LX_DW_L; j++) { \
                a[j] = s0[j]; a[LX_DW_L + j] = s1[j]; a[2 * LX_DW_L + j] = s2[j]; } \
        } \
        for (; k < K; k++) { \
            const T* restrict xs = xp + off[k]; T* restrict a = acc + k * LX_DW_L; \
            T s[LX_DW_L]; \
            for (j = 0; j < LX_DW_L; j++) s[j] = a[j]; \
            for (q = 0; q < Q; q += LX_DW_L) \
                for (j = 0; j < LX_DW_L; j++) s[j] += dzp[q + j] * xs[q + j]; \
            for (j = 0; j < LX_DW_L; j++) a[j] = s[j]; \
        } \
    }
    LX_DEFINE_DW_FLAT(float, f)
    LX_DEFINE_DW_FLAT(double, d)
    /* Direct unit-stride depthwise (issue 4, H10), for output rows as wide as the input
       rows (OW == IW == W) and a KH x KW kernel known at compile time. Flat index q over
       whole rows, the columns unpadded; the source plane sits in a buffer with zero rows
       above and below it and slack before and after, so that every tap t reads
       src[q + o[t]] in bounds. A tap of kernel column j whose sample lies outside the row
       (column cl[q] outside [lo[j], hi[j])) reads the neighbouring row instead and is
       dropped by a select (not a multiply by 0: the neighbour may be Inf or NaN). All
       taps are summed in registers in one pass (the tap loops unrolled explicitly: left
       to GCC, the 5x5 reverse and the 7x7 loops stayed scalar). Forward: z[q] = bias +
       taps (then relu: z < 0 ? 0 : z, as lx_act). Reverse, with the output gradient g
       as the source at negated offsets: dx[p] (+)= taps, and the filter gradient
       lane-wise, acc[t][p % LX_DW_L] += x[p] * g[p + o[t]] with x[p] replaced by 0
       where dropped (GCC does not vectorize a select of the product; the pairs dropped
       are those where the padded formulation multiplies the same g by a padding 0). */
    #define LX_DWD_ARGS(T) const T* w, const int* restrict cl, const ptrdiff_t* off, \
        const int* lo, const int* hi, ptrdiff_t n
    #define LX_DWD_LOAD(T, KH, KW) \
        T wt[KH * KW]; ptrdiff_t o[KH * KW]; int clo[KW], chi[KW], t_, j_; \
        for (t_ = 0; t_ < KH * KW; t_++) { wt[t_] = w[t_]; o[t_] = off[t_]; } \
        for (j_ = 0; j_ < KW; j_++) { clo[j_] = lo[j_]; chi[j_] = hi[j_]; }
    /* acc += the taps at position q of src (column c) */
    #define LX_DWD_TAPS(T, KH, KW, acc, src, q, c) { \
        int i_, j_; \
        _Pragma("GCC unroll 8") for (j_ = 0; j_ < KW; j_++) { \
            T s_ = 0; \
            _Pragma("GCC unroll 8") for (i_ = 0; i_ < KH; i_++) \
                s_ += wt[i_ * KW + j_] * src[q + o[i_ * KW + j_]]; \
            acc += (c >= clo[j_] && c < chi[j_]) ? s_ : (T)0; \
        } }
    /* dx value d and lane partials a[.][l] at position p */
    #define LX_DWD_GRAD(T, KH, KW, p, l) { \
        const int c_ = cl[p]; const T xv_ = x[p]; T d_ = add ? dx[p] : (T)0; int i_, j_; \
        _Pragma("GCC unroll 8") for (j_ = 0; j_ < KW; j_++) { \
            const int m_ = c_ >= clo[j_] && c_ < chi[j_]; T s_ = 0; \
            const T xm_ = m_ ? xv_ : (T)0; \
            _Pragma("GCC unroll 8") for (i_ = 0; i_ < KH; i_++) { \
                const T gv_ = g[p + o[i_ * KW + j_]]; \
                s_ += wt[i_ * KW + j_] * gv_; \
                a[i_ * KW + j_][l] += xm_ * gv_; \
            } \
            d_ += m_ ? s_ : (T)0; \
        } \
        dx[p] = d_; }
    #define LX_DEFINE_DWD(T, S, KH, KW) \
    static LX_CLONES void lx_dwd_fwd_##KH##x##KW##_##S(T* restrict z, const T* restrict src, \
            T bias, int relu, LX_DWD_ARGS(T)) { \
        ptrdiff_t q; \
        LX_DWD_LOAD(T, KH, KW) \
        if (relu) \
            for (q = 0; q < n; q++) { \
                T acc = bias; const int c = cl[q]; \
                LX_DWD_TAPS(T, KH, KW, acc, src, q, c) \
                z[q] = acc < 0 ? (T)0 : acc; \
            } \
        else \
            for (q = 0; q < n; q++) { \
                T acc = bias; const int c = cl[q]; \
                LX_DWD_TAPS(T, KH, KW, acc, src, q, c) \
                z[q] = acc; \
            } \
    } \
    static LX_CLONES void lx_dwd_bwd_##KH##x##KW##_##S(T* restrict dx, T* restrict acc, \
            const T* restrict x, const T* restrict g, int add, LX_DWD_ARGS(T)) { \
        ptrdiff_t p0, p; int t, l; T a[KH * KW][LX_DW_L]; \
        LX_DWD_LOAD(T, KH, KW) \
        for (t = 0; t < KH * KW; t++) \
            for (l = 0; l < LX_DW_L; l++) a[t][l] = acc[t * LX_DW_L + l]; \
        for (p0 = 0; p0 + LX_DW_L <= n; p0 += LX_DW_L) \
            for (l = 0; l < LX_DW_L; l++) { p = p0 + l; LX_DWD_GRAD(T, KH, KW, p, l) } \
        for (p = p0; p < n; p++) { l = (int)(p - p0); LX_DWD_GRAD(T, KH, KW, p, l) } \
        for (t = 0; t < KH * KW; t++) \
            for (l = 0; l < LX_DW_L; l++) acc[t * LX_DW_L + l] = a[t][l]; \
    }
    /* the compiled kernel shapes: (1, 3) (1-D), 3x3, 5x5, 7x7 */
    #define LX_DWD_SHAPES(X, T, S) X(T, S, 1, 3) X(T, S, 3, 3) X(T, S, 5, 5) X(T, S, 7, 7)
    #define LX_DWD_CASE_FWD(T, S, KH, KW) case KH * 8 + KW: \
        lx_dwd_fwd_##KH##x##KW##_##S(z, src, bias, relu, w, cl, off, lo, hi, n); return;
    #define LX_DWD_CASE_BWD(T, S, KH, KW) case KH * 8 + KW: \
        lx_dwd_bwd_##KH##x##KW##_##S(dx, acc, x, g, add, w, cl, off, lo, hi, n); return;
    #define LX_DWD_CASE_HAS(T, S, KH, KW) case KH * 8 + KW:
    /* shape codes kh * 8 + kw; lx_dwd_shape: the code, or -1 if not compiled */
    static int lx_dwd_shape(ptrdiff_t kh, ptrdiff_t kw) {
        if (kh < 1 || kh > 7 || kw < 1 || kw > 7) return -1;
        switch (kh * 8 + kw) { LX_DWD_SHAPES(LX_DWD_CASE_HAS, float, f) return (int)(kh * 8 + kw); }
        return -1;
    }
    #define LX_DEFINE_DWD_ENTRY(T, S) \
    LX_DWD_SHAPES(LX_DEFINE_DWD, T, S) \
    static void lx_dwd_fwd_##S(int shape, T* z, const T* src, T bias, int relu, \
                               LX_DWD_ARGS(T)) { \
        switch (shape) { LX_DWD_SHAPES(LX_DWD_CASE_FWD, T, S) } \
    } \
    static void lx_dwd_bwd_##S(int shape, T* dx, T* acc, const T* x, const T* g, int add, \
                               LX_DWD_ARGS(T)) { \
        switch (shape) { LX_DWD_SHAPES(LX_DWD_CASE_BWD, T, S) } \
    } \
    /* acc[p % LX_DW_L] += g[p] (the bias gradient's lane partials) */ \
    static LX_CLONES void lx_dwd_lanes_##S(T* restrict acc, const T* restrict g, ptrdiff_t n) { \
        ptrdiff_t p0 = 0, p; int l; \
        for (; p0 + LX_DW_L <= n; p0 += LX_DW_L) \
            for (l = 0; l < LX_DW_L; l++) acc[l] += g[p0 + l]; \
        for (p = p0; p < n; p++) acc[p - p0] += g[p]; \
    } \
    /* r[t] = the sum of the lanes acc[t][.] (a fixed pairwise tree; acc is overwritten) */ \
    static LX_CLONES void lx_dwd_fold_##S(double* restrict r, T* restrict acc, ptrdiff_t K) { \
        ptrdiff_t t; int h, l; \
        for (h = LX_DW_L / 2; h >= 1; h /= 2) \
            for (t = 0; t < K; t++) \
                for (l = 0; l < h; l++) acc[t * LX_DW_L + l] += acc[t * LX_DW_L + l + h]; \
        for (t = 0; t < K; t++) r[t] = acc[t * LX_DW_L]; \
    }
    LX_DEFINE_DWD_ENTRY(float, f)
    LX_DEFINE_DWD_ENTRY(double, d)
    #endif
    """
    void lx_conv_plane_f(int grad, float alpha, const float* x, float* dx, float* seg,
                         float* acc, const Py_ssize_t* lo, const Py_ssize_t* hi,
                         const Py_ssize_t* s, const Py_ssize_t* off, Py_ssize_t OH,
                         Py_ssize_t OW, Py_ssize_t IH, Py_ssize_t IW) noexcept nogil
    void lx_conv_plane_d(int grad, double alpha, const double* x, double* dx, double* seg,
                         double* acc, const Py_ssize_t* lo, const Py_ssize_t* hi,
                         const Py_ssize_t* s, const Py_ssize_t* off, Py_ssize_t OH,
                         Py_ssize_t OW, Py_ssize_t IH, Py_ssize_t IW) noexcept nogil
    enum: LX_DW_L
    void lx_dw_flat_fwd_f(float* t, const float* xp, const float* w, const Py_ssize_t* off,
                          Py_ssize_t K, Py_ssize_t Q) noexcept nogil
    void lx_dw_flat_fwd_d(double* t, const double* xp, const double* w, const Py_ssize_t* off,
                          Py_ssize_t K, Py_ssize_t Q) noexcept nogil
    void lx_dw_flat_dw_f(float* acc, const float* dzp, const float* xp, const Py_ssize_t* off,
                         Py_ssize_t K, Py_ssize_t Q) noexcept nogil
    void lx_dw_flat_dw_d(double* acc, const double* dzp, const double* xp,
                         const Py_ssize_t* off, Py_ssize_t K, Py_ssize_t Q) noexcept nogil
    int lx_dwd_shape(Py_ssize_t kh, Py_ssize_t kw) noexcept nogil
    void lx_dwd_fwd_f(int shape, float* z, const float* src, float bias, int relu,
                      const float* w, const int* cl, const Py_ssize_t* off, const int* lo,
                      const int* hi, Py_ssize_t n) noexcept nogil
    void lx_dwd_fwd_d(int shape, double* z, const double* src, double bias, int relu,
                      const double* w, const int* cl, const Py_ssize_t* off, const int* lo,
                      const int* hi, Py_ssize_t n) noexcept nogil
    void lx_dwd_bwd_f(int shape, float* dx, float* acc, const float* x, const float* g, int add,
                      const float* w, const int* cl, const Py_ssize_t* off, const int* lo,
                      const int* hi, Py_ssize_t n) noexcept nogil
    void lx_dwd_bwd_d(int shape, double* dx, double* acc, const double* x, const double* g,
                      int add, const double* w, const int* cl, const Py_ssize_t* off,
                      const int* lo, const int* hi, Py_ssize_t n) noexcept nogil
    void lx_dwd_lanes_f(float* acc, const float* g, Py_ssize_t n) noexcept nogil
    void lx_dwd_lanes_d(double* acc, const double* g, Py_ssize_t n) noexcept nogil
    void lx_dwd_fold_f(double* r, float* acc, Py_ssize_t K) noexcept nogil
    void lx_dwd_fold_d(double* r, double* acc, Py_ssize_t K) noexcept nogil
