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
