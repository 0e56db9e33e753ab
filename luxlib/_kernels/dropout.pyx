"""Dropout and alpha-dropout kernels: Philox masks fused with the multiply, float32 and float64.

Element ``i`` of a mask (C order, flat) is kept when ``(word >> 8) > thr``, with
``word`` word ``i % 4`` of the Philox4x32-10 block ``i // 4`` and
``thr = floor(p * 2**24)`` (doc/dropout.md proves it equals the reference's
``u > p``). The work is cut into units of ``CHUNK`` elements (a multiple of 4,
so a unit holds whole blocks); a unit generates the words of ``SUB`` elements at
a time into a buffer on the stack (AVX-512/AVX2 Philox, _philox.pxd), then
consumes them in a C loop compiled per instruction set (LX_CLONES). On AVX-512,
float32 dropout and alpha_dropout skip the buffer: 128 words at a time are made
in registers and used at once. Units are spread over threads with a static
schedule; every word depends on the key and the element index only, so the
results are the same for every thread count.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from . cimport _fastmath  # LX_CLONES
from ._openmp_helpers cimport num_threads_for
from ._philox cimport philox_isa_supported as philox_isa_supported_c
from ._philox cimport philox_words

cdef enum:
    # elements per work unit: a power of two, so no unit's blocks cross 2**32 (see philox_words)
    CHUNK = 2048
    # elements whose words go through the buffer at a time: short enough that the consumer's
    # loads and stores of one piece overlap the generator's arithmetic of the next (16M
    # float32 dropout elements through the buffer, one thread, in place: 13.5 ms against
    # 16 ms with 2048); a multiple of 128 (32 Philox blocks, one step of the AVX-512 generator)
    SUB = 256
    # most axis groups broadcast_multiply takes (NumPy arrays have at most 64 axes)
    MAX_GROUPS = 64

cdef enum Op:
    MASK        # dst = keep ? a : 0 (the dropout mask); given src, also out = src * dst
    ALPHA       # dst = (keep ? src : c) * a + b; given the byte array keep, also keep[i] = 0/1
    KEEP_SCALE  # dst = (src * keep[i]) * a, keep read from the byte array (no Philox)

cdef struct Stream:
    uint32_t k0, k1  # Philox key
    uint32_t thr     # keep element i when (word_i >> 8) > thr


# ---- leaf loops in C, compiled per instruction set ---------------------------------
# The module is built for baseline x86-64 (SSE2: no unsigned compare, no blends), where
# these selects cost several instructions per 4 elements; LX_CLONES (_fastmath.pxd)
# gives AVX-512 / AVX2 machines their own versions, picked at load time.

cdef extern from *:
    """
    /* alpha_dropout's (v * a) + b is rounded twice, as the generic path does: no fused */
    /* multiply-add (GCC contracts across statements unless told; clang only within one */
    /* expression, and the product is a statement of its own) */
    #if defined(__GNUC__) && !defined(__clang__)
        #define LXD_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
    #else
        #define LXD_NO_CONTRACT
    #endif
    /* element i is kept when (w[i] >> 8) > thr */
    #define LXD_KEEP(i) ((w[i] >> 8) > thr)

    /* Each loop runs on elements at .. at + m - 1 of its arrays (those not NULL); w holds */
    /* their m Philox words. */
    #define LXD_DEFINE(T, S) \\
    /* mask = keep ? a : 0; given x, also y = x * mask */ \\
    static LX_CLONES void lxd_mask_##S(const uint32_t* restrict w, uint32_t thr, T a, \\
                                       T* restrict mask, const T* restrict x, T* restrict y, \\
                                       ptrdiff_t at, ptrdiff_t m) { \\
        ptrdiff_t i; \\
        mask += at; \\
        if (x == NULL) { \\
            for (i = 0; i < m; i++) mask[i] = LXD_KEEP(i) ? a : (T)0; \\
        } else { \\
            x += at; \\
            y += at; \\
            for (i = 0; i < m; i++) { T v = LXD_KEEP(i) ? a : (T)0; mask[i] = v; y[i] = x[i] * v; } \\
        } \\
    } \\
    /* y = (keep ? x : c) * a + b; keep[i] = 0/1 unless keep is NULL. x is loaded */ \\
    /* outside the select, so the loop is branch-free */ \\
    static LX_CLONES LXD_NO_CONTRACT void lxd_alpha_##S( \\
            const uint32_t* restrict w, uint32_t thr, T a, T b, T c, const T* restrict x, \\
            T* restrict y, uint8_t* restrict keep, ptrdiff_t at, ptrdiff_t m) { \\
        ptrdiff_t i; \\
        x += at; \\
        y += at; \\
        if (keep == NULL) { \\
            for (i = 0; i < m; i++) { \\
                T v = x[i]; v = LXD_KEEP(i) ? v : c; T t = v * a; y[i] = t + b; } \\
        } else { \\
            keep += at; \\
            for (i = 0; i < m; i++) { \\
                int k = LXD_KEEP(i); keep[i] = (uint8_t)k; \\
                T v = x[i]; v = k ? v : c; T t = v * a; y[i] = t + b; } \\
        } \\
    } \\
    /* dx = (dy * keep) * a */ \\
    static LX_CLONES void lxd_keep_scale_##S(const uint8_t* restrict keep, T a, \\
                                             const T* restrict dy, T* restrict dx, ptrdiff_t at, \\
                                             ptrdiff_t m) { \\
        for (ptrdiff_t i = at; i < at + m; i++) dx[i] = (dy[i] * (T)keep[i]) * a; \\
    }

    LXD_DEFINE(float, f)
    LXD_DEFINE(double, d)

    /* float32 mask and alpha (as lxd_mask_f, lxd_alpha_f) with the words made in registers, */
    /* 128 at a time, and used at once: no buffer round trip, and the loads and stores of */
    /* one step overlap the multiplies of the next (16M elements, 2 threads, in place: */
    /* 6.6 ms against 8.0 through the buffer). On elements at .. at + m - 1, at a multiple */
    /* of 128 not crossing a multiple of 2**34 (a unit); returns how many were done (a */
    /* multiple of 128, the rest is the caller's). */
    #ifdef LUXLIB_PHILOX_SIMD
    #define LXD_FUSED(BODY) \\
        const __m512i t = _mm512_set1_epi32((int)thr); \\
        ptrdiff_t i; \\
        for (i = 0; i + 128 <= m; i += 128) { \\
            uint64_t blk = (uint64_t)(at + i) / 4; \\
            __m512i w[8]; \\
            luxlib_philox32_avx512((uint32_t)blk, (uint32_t)(blk >> 32), k0, k1, w); \\
            for (int q = 0; q < 8; q++) { \\
                __mmask16 k = _mm512_cmpgt_epu32_mask(_mm512_srli_epi32(w[q], 8), t); \\
                ptrdiff_t e = at + i + 16 * q; \\
                BODY \\
            } \\
        } \\
        return i;
    LUXLIB_AVX512 static ptrdiff_t lxd_mask_f_avx512(uint32_t k0, uint32_t k1, uint32_t thr,
            float a, float* restrict mask, const float* restrict x, float* restrict y,
            ptrdiff_t at, ptrdiff_t m) {
        const __m512 av = _mm512_set1_ps(a);
        LXD_FUSED(
            __m512 v = _mm512_maskz_mov_ps(k, av);
            _mm512_storeu_ps(mask + e, v);
            _mm512_storeu_ps(y + e, _mm512_mul_ps(_mm512_loadu_ps(x + e), v));
        )
    }
    LUXLIB_AVX512 LXD_NO_CONTRACT static ptrdiff_t lxd_alpha_f_avx512(uint32_t k0, uint32_t k1,
            uint32_t thr, float a, float b, float c, const float* restrict x, float* restrict y,
            uint8_t* restrict keep, ptrdiff_t at, ptrdiff_t m) {
        const __m512 av = _mm512_set1_ps(a), bv = _mm512_set1_ps(b), cv = _mm512_set1_ps(c);
        const __m512i one = _mm512_set1_epi32(1);
        LXD_FUSED(
            __m512 v = _mm512_mask_blend_ps(k, cv, _mm512_loadu_ps(x + e));
            _mm512_storeu_ps(y + e, _mm512_add_ps(_mm512_mul_ps(v, av), bv));
            if (keep)
                _mm_storeu_si128((__m128i*)(keep + e), _mm512_cvtepi32_epi8(_mm512_maskz_mov_epi32(k, one)));
        )
    }
    #define LXD_HAVE_FUSED 1
    #else
    #define LXD_HAVE_FUSED 0
    static ptrdiff_t lxd_mask_f_avx512(uint32_t k0, uint32_t k1, uint32_t thr, float a,
            float* mask, const float* x, float* y, ptrdiff_t at, ptrdiff_t m) { return 0; }
    static ptrdiff_t lxd_alpha_f_avx512(uint32_t k0, uint32_t k1, uint32_t thr, float a, float b,
            float c, const float* x, float* y, uint8_t* keep, ptrdiff_t at, ptrdiff_t m) { return 0; }
    #endif

    /* ask for the cache lines of p .. p + bytes - 1 (to be read) */
    static inline void lxd_prefetch(const void* p, ptrdiff_t bytes) {
    #if defined(__GNUC__) || defined(__clang__)
        for (ptrdiff_t i = 0; i < bytes; i += 64) __builtin_prefetch((const char*)p + i, 0, 3);
    #endif
    }
    """
    void lxd_prefetch(const void* p, Py_ssize_t bytes) noexcept nogil
    Py_ssize_t lxd_mask_f_avx512(uint32_t k0, uint32_t k1, uint32_t thr, float a, float* mask,
                                 const float* x, float* y, Py_ssize_t at, Py_ssize_t m) noexcept nogil
    Py_ssize_t lxd_alpha_f_avx512(uint32_t k0, uint32_t k1, uint32_t thr, float a, float b, float c,
                                  const float* x, float* y, uint8_t* keep, Py_ssize_t at,
                                  Py_ssize_t m) noexcept nogil
    bint LXD_HAVE_FUSED
    void lxd_mask_f(const uint32_t* w, uint32_t thr, float a, float* mask, const float* x,
                    float* y, Py_ssize_t at, Py_ssize_t m) noexcept nogil
    void lxd_mask_d(const uint32_t* w, uint32_t thr, double a, double* mask, const double* x,
                    double* y, Py_ssize_t at, Py_ssize_t m) noexcept nogil
    void lxd_alpha_f(const uint32_t* w, uint32_t thr, float a, float b, float c, const float* x,
                     float* y, uint8_t* keep, Py_ssize_t at, Py_ssize_t m) noexcept nogil
    void lxd_alpha_d(const uint32_t* w, uint32_t thr, double a, double b, double c,
                     const double* x, double* y, uint8_t* keep, Py_ssize_t at,
                     Py_ssize_t m) noexcept nogil
    void lxd_keep_scale_f(const uint8_t* keep, float a, const float* dy, float* dx,
                          Py_ssize_t at, Py_ssize_t m) noexcept nogil
    void lxd_keep_scale_d(const uint8_t* keep, double a, const double* dy, double* dx,
                          Py_ssize_t at, Py_ssize_t m) noexcept nogil


cdef void _unit(Op op, const Stream* st, floating a, floating b, floating c,
                const floating* src, floating* dst, floating* out, uint8_t* keep,
                Py_ssize_t n, Py_ssize_t u) noexcept nogil:
    """Run ``op`` on the elements ``u * CHUNK ..`` (at most CHUNK) of ``n``, SUB at a time."""
    cdef uint32_t words[SUB]
    cdef Py_ssize_t start = u * CHUNK, end = min(start + CHUNK, n)
    cdef Py_ssize_t step = CHUNK if op == KEEP_SCALE else SUB, m
    if floating is float:
        if _fused and src != NULL and op != KEEP_SCALE:
            if op == MASK:
                start += lxd_mask_f_avx512(st.k0, st.k1, st.thr, a, dst, src, out, start, end - start)
            else:
                start += lxd_alpha_f_avx512(st.k0, st.k1, st.thr, a, b, c, src, dst, keep, start, end - start)
    while start < end:
        m = min(step, end - start)
        if src != NULL and start + m < end:
            # the next piece's input is on its way while this piece's words are made
            # (4-7% faster, one thread, 16M float32 elements)
            lxd_prefetch(src + start + m, min(step, end - start - m) * sizeof(floating))
        if op != KEEP_SCALE:
            philox_words(_isa, <uint64_t>start // 4, (m + 3) // 4, st.k0, st.k1, words)
        if op == MASK:
            if floating is float:
                lxd_mask_f(words, st.thr, a, dst, src, out, start, m)
            else:
                lxd_mask_d(words, st.thr, a, dst, src, out, start, m)
        elif op == ALPHA:
            if floating is float:
                lxd_alpha_f(words, st.thr, a, b, c, src, dst, keep, start, m)
            else:
                lxd_alpha_d(words, st.thr, a, b, c, src, dst, keep, start, m)
        elif floating is float:
            lxd_keep_scale_f(keep, a, src, dst, start, m)
        else:
            lxd_keep_scale_d(keep, a, src, dst, start, m)
        start += m


cdef void _run(Op op, const Stream* st, floating a, floating b, floating c,
               const floating* src, floating* dst, floating* out, uint8_t* keep,
               Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t units = (n + CHUNK - 1) // CHUNK, u
    cdef int nt = num_threads_for(n)
    if nt == 1:
        for u in range(units):
            _unit(op, st, a, b, c, src, dst, out, keep, n, u)
    else:
        for u in prange(units, num_threads=nt, schedule="static"):
            _unit(op, st, a, b, c, src, dst, out, keep, n, u)


cdef _check_length(str name, Py_ssize_t got, Py_ssize_t expected):
    if got != expected:
        raise ValueError(f"dropout kernels: {name} must have {expected} elements, got {got}")


# ---- entry points (flat C-contiguous arrays) ----------------------------------------

#: versions of the Philox generator: the best the CPU has, or one forced (for tests)
PHILOX_ISAS = {"best": -1, "scalar": 0, "avx2": 1, "avx512": 2}

# the generator the kernels use, and whether float32 dropout / alpha_dropout make their
# words in registers (lxd_*_avx512) rather than through the buffer
# (set by set_philox_isa("best") below)
cdef int _isa
cdef bint _fused


def philox_isa_supported(str isa):
    """Whether this build and CPU can run the Philox generator's ``isa`` (see ``PHILOX_ISAS``)."""
    return isa in PHILOX_ISAS and bool(philox_isa_supported_c(PHILOX_ISAS[isa]))


def set_philox_isa(str isa):
    """Make every kernel use version ``isa`` of the generator (tests); ``"best"`` restores."""
    global _isa, _fused
    if not philox_isa_supported(isa):
        raise ValueError(f"dropout kernels: Philox instruction set {isa!r} not available here")
    _isa = PHILOX_ISAS[isa]
    _fused = LXD_HAVE_FUSED and isa in ("best", "avx512") and philox_isa_supported_c(PHILOX_ISAS["avx512"])


set_philox_isa("best")


def philox_blocks(uint64_t first, Py_ssize_t nblocks, uint32_t k0, uint32_t k1, str isa="best"):
    """The words of Philox blocks ``first ..`` as a uint32 array ``(nblocks, 4)`` (for tests).

    ``isa`` forces one version of the generator (``PHILOX_ISAS``), if supported.
    """
    if nblocks < 0 or (first & 0xFFFFFFFF) + <uint64_t>nblocks > (<uint64_t>1 << 32):
        raise ValueError("dropout kernels: the blocks must not cross a multiple of 2**32")
    if not philox_isa_supported(isa):
        raise ValueError(f"dropout kernels: Philox instruction set {isa!r} not available here")
    out = np.empty((nblocks, 4), np.uint32)
    cdef uint32_t[:, ::1] w = out
    if nblocks:
        philox_words(PHILOX_ISAS[isa], first, nblocks, k0, k1, &w[0, 0])
    return out


def dropout(uint32_t k0, uint32_t k1, uint32_t thr, double invp, floating[::1] mask,
            const floating[::1] x=None, floating[::1] y=None):
    """``mask = where(keep, invp, 0)``; with ``x`` and ``y`` also ``y = x * mask``, in one pass."""
    cdef Stream st = Stream(k0, k1, thr)
    cdef Py_ssize_t n = mask.shape[0]
    cdef const floating* px = NULL
    cdef floating* py = NULL
    if x is not None or y is not None:
        _check_length("x", 0 if x is None else x.shape[0], n)
        _check_length("y", 0 if y is None else y.shape[0], n)
        if n:
            px = &x[0]
            py = &y[0]
    if n == 0:
        return
    with nogil:
        _run(MASK, &st, <floating>invp, 0, 0, px, &mask[0], py, NULL, n)


def alpha_dropout(uint32_t k0, uint32_t k1, uint32_t thr, double alpha, double A, double B,
                  const floating[::1] x, floating[::1] y, uint8_t[::1] keep=None):
    """``y = where(keep, x, alpha) * A + B`` (constants rounded to ``x``'s dtype).

    ``keep`` (uint8, may be None) receives the keep decisions for the backward pass.
    """
    cdef Stream st = Stream(k0, k1, thr)
    cdef Py_ssize_t n = x.shape[0]
    _check_length("y", y.shape[0], n)
    if keep is not None:
        _check_length("keep", keep.shape[0], n)
    if n == 0:
        return
    with nogil:
        _run(ALPHA, &st, <floating>A, <floating>B, <floating>alpha, &x[0], &y[0], NULL,
             NULL if keep is None else &keep[0], n)


def alpha_dropout_backward(const uint8_t[::1] keep, double A, const floating[::1] dy,
                           floating[::1] dx):
    """``dx = dy * keep * A``."""
    cdef Stream st = Stream(0, 0, 0)
    cdef Py_ssize_t n = dy.shape[0]
    _check_length("keep", keep.shape[0], n)
    _check_length("dx", dx.shape[0], n)
    if n == 0:
        return
    with nogil:
        _run(KEEP_SCALE, &st, <floating>A, 0, 0, &dy[0], &dx[0], NULL, <uint8_t*>&keep[0], n)


cdef void _broadcast_unit(const floating* x, const floating* m, floating* y, Py_ssize_t n,
                          Py_ssize_t G, const Py_ssize_t* lengths, const Py_ssize_t* strides,
                          Py_ssize_t L, bint full, Py_ssize_t u) noexcept nogil:
    """``y = x * m`` on elements ``u * CHUNK ..``, walking the runs of length ``L``."""
    cdef Py_ssize_t digit[MAX_GROUPS]
    cdef Py_ssize_t s = u * CHUNK, e = min(s + CHUNK, n), r = s // L, o = s - r * L
    cdef Py_ssize_t moff = 0, cnt, k, j
    cdef const floating* mm
    cdef floating v
    # mixed-radix digits of the first run over the outer groups, and its mask offset
    for j in range(G - 1, -1, -1):
        digit[j] = r % lengths[j]
        r = r // lengths[j]
        moff += digit[j] * strides[j]
    while s < e:
        cnt = min(L - o, e - s)
        if full:
            mm = m + moff + o
            for k in range(cnt):
                y[s + k] = x[s + k] * mm[k]
        else:
            v = m[moff]
            for k in range(cnt):
                y[s + k] = x[s + k] * v
        s += cnt
        o = 0
        for j in range(G - 1, -1, -1):  # odometer step to the next run
            digit[j] += 1
            moff += strides[j]
            if digit[j] < lengths[j]:
                break
            moff -= lengths[j] * strides[j]
            digit[j] = 0


def broadcast_multiply(const floating[::1] x, const floating[::1] m, floating[::1] y,
                       const Py_ssize_t[::1] lengths, const Py_ssize_t[::1] strides,
                       Py_ssize_t L, bint full):
    """``y = x * m`` with ``m`` broadcast; ``x``, ``y`` flat C-order data of one shape.

    That shape is ``lengths + (L,)`` (axis groups); ``m``'s element for run index
    digits ``d`` starts at ``sum(d * strides)`` and, along the last group, advances
    by 1 when ``full``, else stays (``m`` broadcast there).
    """
    cdef Py_ssize_t n = x.shape[0], G = lengths.shape[0], u
    _check_length("y", y.shape[0], n)
    if G > MAX_GROUPS or strides.shape[0] != G:
        raise ValueError(f"dropout kernels: bad axis groups {list(lengths)}, {list(strides)}")
    if n == 0:
        return
    cdef Py_ssize_t total = L, last = L if full else 1, j
    for j in range(G):
        if lengths[j] < 1:
            raise ValueError(f"dropout kernels: bad axis group lengths {list(lengths)}")
        total *= lengths[j]
        last += (lengths[j] - 1) * strides[j]
    if L < 1 or total != n:
        raise ValueError(f"dropout kernels: axis groups {list(lengths)} + ({L},) do not hold {n} elements")
    _check_length("m", m.shape[0], last)
    cdef Py_ssize_t units = (n + CHUNK - 1) // CHUNK
    cdef int nt = num_threads_for(n)
    cdef const Py_ssize_t* pl = &lengths[0] if G else NULL
    cdef const Py_ssize_t* ps = &strides[0] if G else NULL
    with nogil:
        if nt == 1:
            for u in range(units):
                _broadcast_unit(&x[0], &m[0], &y[0], n, G, pl, ps, L, full, u)
        else:
            for u in prange(units, num_threads=nt, schedule="static"):
                _broadcast_unit(&x[0], &m[0], &y[0], n, G, pl, ps, L, full, u)
