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
