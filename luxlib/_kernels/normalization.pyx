"""Fused normalization kernels (batchnorm, groupnorm, instancenorm, layernorm),
forward and backward, float32 and float64.

Every op is described by one geometry over a flat C-contiguous ``x``: ``ngroups``
*groups* (the sets the statistics run over), each made of ``nruns`` *runs* of
contiguous elements (``runlen`` long, the last one ``lastlen``)::

    run k of group q starts at   q * gstride + k * rstride
    its affine index is          (q % amod) * agstride + k * astep   (+ i with ``vec``)

``vec`` False: one scale/bias per run (a channel); True: one per element (layernorm).

Statistics take one read of ``x``: the moments about a shift ``c`` (the mean of the
unit's first ``SHIFT_LEN`` elements), ``sum(x - c)`` and ``sum((x - c)^2)``, accumulated
in float64 over several independent partial sums; ``m2 = sum((x - c)^2) - sum(x - c)^2 / n``
loses ``log2(1 + (mean - c)^2 / var)`` bits of float64's 53, and ``(mean - c)^2 / var``
is at most ``n / SHIFT_LEN`` (``(c - mean)^2 <= sum((x_i - mean)^2) / SHIFT_LEN`` over
the shift's elements, ``<= n var / SHIFT_LEN``), a few in practice. A *unit* of work is a group, or a chunk
of a group's runs when there are too few groups to keep the threads busy; chunk
statistics are merged with Chan's formula in chunk order. With one chunk per group,
statistics and the fused normalize + affine + activation pass run back to back on the
same group (its data still in cache); otherwise they are two parallel phases.

The backward pass is closed-form, with ``g = dy * act'`` and ``h = g * scale``:
``dx = rstd * (h - mean(h) - xhat * mean(h * xhat))`` (batch statistics) or
``rstd * h`` (given statistics). Pass 1 computes ``g`` (nothing for the identity,
where ``g`` is ``dy``) into a per-thread buffer that holds one group (or into ``dx``
when groups are split or large) and reduces ``sum(h)``, ``sum(h * xhat)`` per unit and
``sum(g)``, ``sum(g * xhat)`` per run (or per affine element, in per-thread float64
rows added in thread order); pass 2 writes ``dx``. ``act'`` is taken from ``z`` (and
``y = act(z)`` for output-only activations) recomputed from ``x``, which pass 1 reads
anyway, with the forward's expression: one array less to read than a stored ``y``.

Outputs of at least ``STREAM_BYTES`` whose memory is already resident (a reused
buffer) are written with non-temporal stores (``y`` only without ``vec``) (block by block from an L1 scratch): no
read for ownership, and the output does not evict the inputs from the caches.

With a per-element affine and short groups (at most ``PREFETCH_MAX`` elements), the
loops that first read a group (the statistics, the backward's sums) prefetch ``x`` (and
``dy``) ahead: passes that alternate every few KB left the hardware prefetcher behind.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport sqrt

from ._activation cimport N_ACTIVATIONS as _N_IDS, _output_only, act_backward_n, act_forward_n
from ._openmp_helpers cimport num_threads_for

#: number of activation ids the kernels implement (ids 0 .. N_ACTIVATIONS - 1)
N_ACTIVATIONS = _N_IDS

cdef enum:
    # elements per step through a per-thread L1 scratch (the backward's recomputed z,
    # streamed outputs)
    BLOCK = 1024
    # fewer groups than this many per thread: split groups into chunks of runs
    UNITS_PER_THREAD = 4
    # ... of at least this many elements
    MIN_CHUNK = 4096
    # per-thread float64 rows start on different cache lines
    PAD = 8
    # the statistics' shift is the mean of this many leading elements of a unit
    SHIFT_LEN = 8
    # outputs of at least this many bytes (half this machine's L3) are written with
    # non-temporal stores
    STREAM_BYTES = 16 << 20
    # the backward keeps g in a per-thread buffer (not in dx) for groups up to this size
    GBUF_MAX = 1 << 18
    # with a per-element affine (layernorm), the statistics and the backward's sums
    # prefetch x (and dy) ahead in groups up to this size (measured: faster up to 16384
    # elements, slower at 65536)
    PREFETCH_MAX = 1 << 14
    # groups of fewer elements than this, stored back to back, take the tiny-groups path
    # (measured: 3x faster at 32 elements, even at 64, slower from 128)
    TINY = 64


cdef struct Geom:
    Py_ssize_t ngroups, nruns, nck
    Py_ssize_t gstride, rstride, runlen, lastlen
    Py_ssize_t amod, agstride, astep
    bint vec


cdef inline Py_ssize_t _runs_count(const Geom* g, Py_ssize_t k0, Py_ssize_t k1) noexcept nogil:
    """Number of elements in runs ``[k0, k1)`` of a group."""
    if k1 == g.nruns:
        return (k1 - k0 - 1) * g.runlen + g.lastlen
    return (k1 - k0) * g.runlen


cdef inline Py_ssize_t _unit(const Geom* g, Py_ssize_t u, Py_ssize_t* q, Py_ssize_t* k0,
                             Py_ssize_t* k1) noexcept nogil:
    """Group ``q`` and run range ``[k0, k1)`` of unit ``u``; return its element count."""
    cdef Py_ssize_t j = u % g.nck
    q[0] = u // g.nck
    k0[0] = j * g.nruns // g.nck
    k1[0] = (j + 1) * g.nruns // g.nck
    return _runs_count(g, k0[0], k1[0])


cdef inline Py_ssize_t _run(const Geom* g, Py_ssize_t q, Py_ssize_t k, Py_ssize_t* off,
                            Py_ssize_t* a) noexcept nogil:
    """Offset and affine index of run ``k`` of group ``q``; return its length."""
    off[0] = q * g.gstride + k * g.rstride
    a[0] = (q % g.amod) * g.agstride + k * g.astep
    return g.lastlen if k == g.nruns - 1 else g.runlen


# ---- leaf loops in C, compiled per instruction set ---------------------------------
# The module itself is built for baseline x86-64 (SSE2: two float64 lanes, and every
# float32 -> float64 conversion costs an instruction per two elements); these loops carry
# LX_CLONES (_fastmath.pxd) so AVX-512 / AVX2+FMA machines get their own versions.
# Reductions keep LXN_LANES independent float64 partial sums (GCC vectorizes a reduction
# only over explicit lanes: no reassociation without -ffast-math), combined pairwise in a
# fixed order, so a result depends on the data and the instruction set only.

cdef extern from *:
    """
    #define LXN_LANES 32
    /* the < LXN_LANES tail elements go to the last lane: indexing lanes by a running */
    /* tail index kept the accumulators in memory and the main loop scalar (lxn_pass1 */
    /* runs its tail as one more padded lane step instead: there the scalar tail */
    /* branched per element on act') */

    /* pairwise: acc[k] += acc[k + w] for w = 16, 8, 4, 2, 1, written out (the loop over */
    /* w was not unrolled: its shifts and stack traffic weighed on short runs) */
    #if LXN_LANES != 32
    #error "lxn_combine is written for 32 lanes"
    #endif
    LX_INLINE double lxn_combine(double* acc) {
        for (int k = 0; k < 16; k++) acc[k] += acc[k + 16];
        for (int k = 0; k < 8; k++) acc[k] += acc[k + 8];
        for (int k = 0; k < 4; k++) acc[k] += acc[k + 4];
        acc[0] += acc[2];
        acc[1] += acc[3];
        return acc[0] + acc[1];
    }

    /* lxn_dx computes h - hm with h rounded first, so a group of one element gives */
    /* exactly 0: no fused multiply-add there (GCC contracts across statements */
    /* unless told, clang within an expression) */
    #if defined(__clang__)
        #define LXN_NO_CONTRACT
        #define LXN_NO_CONTRACT_BODY _Pragma("clang fp contract(off)")
    #elif defined(__GNUC__)
        #define LXN_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
        #define LXN_NO_CONTRACT_BODY
    #else
        #define LXN_NO_CONTRACT
        #define LXN_NO_CONTRACT_BODY
    #endif

    /* y = z with non-temporal stores, for outputs too large to stay in cache: no read */
    /* for ownership of y's lines. SSE2 (every x86-64 version): 16-byte stores after a */
    /* scalar head up to y's alignment. Other machines: plain copies. */
    #if defined(__x86_64__) || defined(_M_X64)
        #include <emmintrin.h>
        #define LXN_STREAM(T, V, STORE, LOADU) \\
            ptrdiff_t i = 0, w = 16 / sizeof(T); \\
            for (; i < n && ((uintptr_t)(y + i) & 15); i++) y[i] = z[i]; \\
            for (; i + w <= n; i += w) STORE(y + i, LOADU(z + i)); \\
            for (; i < n; i++) y[i] = z[i];
        static void lxn_stream_f(float* y, const float* z, ptrdiff_t n) {
            LXN_STREAM(float, __m128, _mm_stream_ps, _mm_loadu_ps) }
        static void lxn_stream_d(double* y, const double* z, ptrdiff_t n) {
            LXN_STREAM(double, __m128d, _mm_stream_pd, _mm_loadu_pd) }
        /* orders the streamed stores before the thread's later ones */
        static void lxn_fence(void) { _mm_sfence(); }
    #else
        #define LXN_NO_STREAM
        static void lxn_stream_f(float* y, const float* z, ptrdiff_t n) { memcpy(y, z, n * sizeof(float)); }
        static void lxn_stream_d(double* y, const double* z, ptrdiff_t n) { memcpy(y, z, n * sizeof(double)); }
        static void lxn_fence(void) {}
    #endif

    /* Whether to stream an output of n bytes at p: large, and its last page already */
    /* resident. A fresh mapping (glibc serves large arrays with a new mmap each call) */
    /* is not: its first touch faults and the kernel zeroes the page, leaving its */
    /* lines in cache, where ordinary stores then hit and streaming ones would have */
    /* to evict them first. */
    #if !defined(LXN_NO_STREAM) && defined(__linux__)
        #include <sys/mman.h>
        #include <unistd.h>
        static int lxn_stream_pays(void* p, size_t n, size_t min_bytes) {
            if (n < min_bytes) return 0;
            size_t page = (size_t)sysconf(_SC_PAGESIZE);
            unsigned char v = 0;
            /* the last page: an allocator writes its header before the first */
            void* start = (void*)(((uintptr_t)p + n - 1) / page * page);
            return mincore(start, 1, &v) == 0 && (v & 1);
        }
    #else
        static int lxn_stream_pays(void* p, size_t n, size_t min_bytes) { return 0; }
    #endif

    #define LXN_AFFINE_CASE(ID, S) case ID: \\
        if (vec) for (i = 0; i < n; i++) z[i] = lx_act_##S(ID, (x[i] - m) * r * sc[i] + bias[i], p); \\
        else for (i = 0; i < n; i++) z[i] = lx_act_##S(ID, (x[i] - m) * a + b, p); \\
        break;

    /* lxn_pass1's loop for one activation id: g = dy * act'(z or y) with z recomputed */
    /* from x as in lxn_affine (channel scale a, shift b), written to g and summed */
    #define LXN_ACT_G(ID, S, XV, DY) ((DY) * (LX_OUTPUT_ONLY(ID) \\
        ? lx_dact_from_output_##S(ID, lx_act_##S(ID, ((XV) - m) * a + b, p), p) \\
        : lx_dact_from_input_##S(ID, ((XV) - m) * a + b, p)))
    #define LXN_PASS1_CASE(ID, S) case ID: \\
        for (i = 0; i < nl; i += LXN_LANES) { \\
            for (k = 0; k < LXN_LANES; k++) { \\
                gv = LXN_ACT_G(ID, S, x[i + k], dy[i + k]); \\
                g[i + k] = gv; v[k] = gv; d[k] = x[i + k] - md; } \\
            for (k = 0; k < LXN_LANES; k++) { acc[k] += v[k]; accx[k] += v[k] * d[k]; } \\
        } \\
        if (nl < n) { /* the tail as one more step, on copies padded with x = m, dy = 0 */ \\
            /* (the padded lanes add v = d = 0: m - md is NaN for an infinite mean) */ \\
            for (k = 0; k < LXN_LANES; k++) { \\
                xs[k] = nl + k < n ? x[nl + k] : m; ds[k] = nl + k < n ? dy[nl + k] : 0; } \\
            for (k = 0; k < LXN_LANES; k++) { \\
                gv = LXN_ACT_G(ID, S, xs[k], ds[k]); \\
                gs[k] = gv; v[k] = nl + k < n ? gv : 0; d[k] = nl + k < n ? xs[k] - md : 0; } \\
            for (k = 0; k < LXN_LANES; k++) { acc[k] += v[k]; accx[k] += v[k] * d[k]; } \\
            for (k = 0; k < n - nl; k++) g[nl + k] = gs[k]; \\
        } \\
        break;

    /* Software prefetch of len bytes LXN_AHEAD elements past p (one instruction per */
    /* 64-byte line; an address, not a pointer, since it may lie past the array: a */
    /* prefetch does not fault), for the loops that read short groups (lxn_moments, */
    /* lxn_sum_cols): there the hardware prefetcher alone left them waiting on memory */
    /* (doc/normalization.md) */
    #define LXN_AHEAD 512
    #if defined(__GNUC__)
        #define LXN_PREFETCH(p, len) \\
            for (size_t lxn_o_ = 0; lxn_o_ < (len); lxn_o_ += 64) \\
                __builtin_prefetch((const void*)((uintptr_t)(p) + LXN_AHEAD * sizeof(*(p)) + lxn_o_))
    #else
        #define LXN_PREFETCH(p, len)
    #endif

    #define LXN_DEFINE(T, S) \\
    /* g = dy * act'((x - m) * a + b) (one scale/bias), s += sum(g), */ \\
    /* sx += sum(g * (x - md)): pass 1 of a run in one loop */ \\
    static LX_CLONES void lxn_pass1_##S(int act, T p, const T* x, const T* dy, T* restrict g, \\
                                        ptrdiff_t n, T m, T a, T b, double md, double* s, \\
                                        double* sx) { \\
        double acc[LXN_LANES] = {0}, accx[LXN_LANES] = {0}, v[LXN_LANES], d[LXN_LANES]; \\
        ptrdiff_t i, k, nl = n - n % LXN_LANES; \\
        T gv, xs[LXN_LANES], ds[LXN_LANES], gs[LXN_LANES]; \\
        switch (act) { LX_FOR_IDS(LXN_PASS1_CASE, S) } \\
        *s += lxn_combine(acc); \\
        *sx += lxn_combine(accx); \\
    } \\
    /* s1 += sum(x - k), s2 += sum((x - k)^2): both moments in one read of x */ \\
    /* (prefetched ahead with pf, a constant in each inlined copy: a test of pf inside */ \\
    /* the loop made batchnorm's statistics 10-20% slower) */ \\
    LX_INLINE void lxn_moments_body_##S(const T* x, ptrdiff_t n, double k, double* s1, \\
                                        double* s2, const int pf) { \\
        double a[LXN_LANES] = {0}, b[LXN_LANES] = {0}, d; \\
        ptrdiff_t i, j, nl = n - n % LXN_LANES; \\
        for (i = 0; i < nl; i += LXN_LANES) { \\
            if (pf) LXN_PREFETCH(x + i, LXN_LANES * sizeof(T)); \\
            for (j = 0; j < LXN_LANES; j++) { d = x[i + j] - k; a[j] += d; b[j] += d * d; } } \\
        for (i = nl; i < n; i++) { d = x[i] - k; a[LXN_LANES - 1] += d; b[LXN_LANES - 1] += d * d; } \\
        *s1 += lxn_combine(a); \\
        *s2 += lxn_combine(b); \\
    } \\
    static LX_CLONES void lxn_moments_##S(const T* x, ptrdiff_t n, double k, double* s1, \\
                                          double* s2, int pf) { \\
        if (pf) lxn_moments_body_##S(x, n, k, s1, s2, 1); \\
        else lxn_moments_body_##S(x, n, k, s1, s2, 0); \\
    } \\
    /* s += sum(g), sx += sum(g * (x - m)). Each step converts its lanes into v, d */ \\
    /* first: written as one expression, GCC 12 vectorizes the sum of v but keeps */ \\
    /* the v * (x - m) chain scalar */ \\
    static LX_CLONES void lxn_sum_g_##S(const T* g, const T* x, ptrdiff_t n, double m, \\
                                        double* s, double* sx) { \\
        double acc[LXN_LANES] = {0}, accx[LXN_LANES] = {0}, v[LXN_LANES], d[LXN_LANES]; \\
        ptrdiff_t i, k, nl = n - n % LXN_LANES; \\
        for (i = 0; i < nl; i += LXN_LANES) { \\
            for (k = 0; k < LXN_LANES; k++) { v[k] = g[i + k]; d[k] = x[i + k] - m; } \\
            for (k = 0; k < LXN_LANES; k++) { acc[k] += v[k]; accx[k] += v[k] * d[k]; } \\
        } \\
        for (i = nl; i < n; i++) { \\
            v[0] = g[i]; acc[LXN_LANES - 1] += v[0]; accx[LXN_LANES - 1] += v[0] * (x[i] - m); } \\
        *s += lxn_combine(acc); \\
        *sx += lxn_combine(accx); \\
    } \\
    /* per-element affine (layernorm), in one read of g, w, x: s += sum(g * w), */ \\
    /* sx += sum(g * (x - m) * w), cg[i] += g[i], cgx[i] += g[i] * (x[i] - m) * r. */ \\
    /* pg (NULL: no prefetch): the stream g comes from (dy, also when g was computed */ \\
    /* into a buffer), prefetched ahead with x (pf constant per copy, as in lxn_moments) */ \\
    LX_INLINE void lxn_sum_cols_body_##S(const T* g, const T* pg, const T* w, const T* x, \\
                                         ptrdiff_t n, double m, double r, double* s, \\
                                         double* sx, double* restrict cg, \\
                                         double* restrict cgx, const int pf) { \\
        double acc[LXN_LANES] = {0}, accx[LXN_LANES] = {0}, v[LXN_LANES], t[LXN_LANES]; \\
        ptrdiff_t i, k, nl = n - n % LXN_LANES; \\
        for (i = 0; i < nl; i += LXN_LANES) { \\
            if (pf) { \\
                LXN_PREFETCH(pg + i, LXN_LANES * sizeof(T)); \\
                LXN_PREFETCH(x + i, LXN_LANES * sizeof(T)); } \\
            for (k = 0; k < LXN_LANES; k++) { v[k] = g[i + k]; t[k] = v[k] * (x[i + k] - m); } \\
            for (k = 0; k < LXN_LANES; k++) { \\
                cg[i + k] += v[k]; cgx[i + k] += t[k] * r; \\
                acc[k] += v[k] * w[i + k]; accx[k] += t[k] * w[i + k]; } \\
        } \\
        for (i = nl; i < n; i++) { \\
            v[0] = g[i]; t[0] = v[0] * (x[i] - m); cg[i] += v[0]; cgx[i] += t[0] * r; \\
            acc[LXN_LANES - 1] += v[0] * w[i]; accx[LXN_LANES - 1] += t[0] * w[i]; } \\
        *s += lxn_combine(acc); \\
        *sx += lxn_combine(accx); \\
    } \\
    static LX_CLONES void lxn_sum_cols_##S(const T* g, const T* pg, const T* w, const T* x, \\
                                           ptrdiff_t n, double m, double r, double* s, \\
                                           double* sx, double* cg, double* cgx) { \\
        if (pg) lxn_sum_cols_body_##S(g, pg, w, x, n, m, r, s, sx, cg, cgx, 1); \\
        else lxn_sum_cols_body_##S(g, pg, w, x, n, m, r, s, sx, cg, cgx, 0); \\
    } \\
    /* z = act((x - m) * r * sc + bias), per element (vec) or sc[0], bias[0]; one */ \\
    /* loop per activation id (LXN_AFFINE_CASE) */ \\
    static LX_CLONES void lxn_affine_##S(int act, T p, const T* x, const T* sc, \\
                                         const T* bias, T* restrict z, ptrdiff_t n, T m, T r, \\
                                         int vec) { \\
        ptrdiff_t i; \\
        T a = r * sc[0], b = bias[0]; \\
        switch (act) { LX_FOR_IDS(LXN_AFFINE_CASE, S) } \\
    } \\
    /* d = h * r with h = g * (sc[i] or s) (given statistics), or */ \\
    /* d = (h - hm) * r - (x - m) * cc (batch statistics); d may be g */ \\
    static LX_CLONES LXN_NO_CONTRACT void lxn_dx_##S(T* d, const T* g, const T* x, \\
                                                     const T* sc, T s, ptrdiff_t n, T hm, \\
                                                     T r, T m, T cc, int batch) { \\
        LXN_NO_CONTRACT_BODY \\
        ptrdiff_t i; \\
        if (!batch) { \\
            if (sc) for (i = 0; i < n; i++) d[i] = g[i] * sc[i] * r; \\
            else for (i = 0; i < n; i++) d[i] = g[i] * s * r; \\
        } else if (sc) { \\
            for (i = 0; i < n; i++) d[i] = (g[i] * sc[i] - hm) * r - (x[i] - m) * cc; \\
        } else { \\
            for (i = 0; i < n; i++) d[i] = (g[i] * s - hm) * r - (x[i] - m) * cc; \\
        } \\
    }

    LXN_DEFINE(float, f)
    LXN_DEFINE(double, d)

    /* The column loops (batchnorm with short runs, ``cols_forward``/``cols_backward``): */
    /* one row of n columns, each column with its own parameters, its sums added into */
    /* per-column float64 accumulators; the expressions are the per-run loops' above. */
    /* lxn_elem: the element type, typedef'd in each function for the case macros */
    #define LXN_AFFINE_COLS_CASE(ID, S) case ID: \\
        for (i = 0; i < n; i++) { lxn_elem m = mv[i], a = av[i], b = bv[i]; \\
            z[i] = lx_act_##S(ID, (x[i] - m) * a + b, p); } \\
        break;
    #define LXN_PASS1_COLS_CASE(ID, S) case ID: \\
        for (i = 0; i < n; i++) { lxn_elem m = mv[i], a = av[i], b = bv[i]; \\
            gv = LXN_ACT_G(ID, S, x[i], dy[i]); \\
            g[i] = gv; cg[i] += gv; cgx[i] += gv * (x[i] - md[i]); } \\
        break;
    #define LXN_COLS_DEFINE(T, S) \\
    /* s1[i] += x[i] - k[i], s2[i] += (x[i] - k[i])^2 */ \\
    static LX_CLONES void lxn_moments_cols_##S(const T* x, ptrdiff_t n, const double* k, \\
                                               double* restrict s1, double* restrict s2) { \\
        for (ptrdiff_t i = 0; i < n; i++) { double d = x[i] - k[i]; s1[i] += d; s2[i] += d * d; } \\
    } \\
    /* z[i] = act((x[i] - mv[i]) * av[i] + bv[i]) */ \\
    static LX_CLONES void lxn_affine_cols_##S(int act, T p, const T* x, const T* mv, \\
                                              const T* av, const T* bv, T* restrict z, \\
                                              ptrdiff_t n) { \\
        typedef T lxn_elem; \\
        ptrdiff_t i; \\
        switch (act) { LX_FOR_IDS(LXN_AFFINE_COLS_CASE, S) } \\
    } \\
    /* g[i] = dy[i] * act' of z[i] = (x[i] - mv[i]) * av[i] + bv[i]; cg[i] += g[i], */ \\
    /* cgx[i] += g[i] * (x[i] - md[i]) */ \\
    static LX_CLONES void lxn_pass1_cols_##S(int act, T p, const T* x, const T* dy, \\
                                             T* restrict g, ptrdiff_t n, const T* mv, \\
                                             const T* av, const T* bv, const double* md, \\
                                             double* restrict cg, double* restrict cgx) { \\
        typedef T lxn_elem; \\
        ptrdiff_t i; \\
        T gv; \\
        switch (act) { LX_FOR_IDS(LXN_PASS1_COLS_CASE, S) } \\
    } \\
    /* d[i] = (g[i] * s[i] - hm[i]) * r[i] - (x[i] - m[i]) * cc[i] (batch statistics) or */ \\
    /* g[i] * s[i] * r[i]; d may be g */ \\
    static LX_CLONES LXN_NO_CONTRACT void lxn_dx_cols_##S(T* d, const T* g, const T* x, \\
                                                          const T* s, const T* hm, \\
                                                          const T* r, const T* m, \\
                                                          const T* cc, ptrdiff_t n, \\
                                                          int batch) { \\
        LXN_NO_CONTRACT_BODY \\
        ptrdiff_t i; \\
        if (!batch) for (i = 0; i < n; i++) d[i] = g[i] * s[i] * r[i]; \\
        else for (i = 0; i < n; i++) d[i] = (g[i] * s[i] - hm[i]) * r[i] - (x[i] - m[i]) * cc[i]; \\
    }

    LXN_COLS_DEFINE(float, f)
    LXN_COLS_DEFINE(double, d)

    /* The tiny groups' statistics (``_tiny_stats``): ng groups of n elements back to */
    /* back, LXN_TG of them side by side, so that their sums' dependency chains overlap */
    /* (one group at a time, each addition waited on the previous one); each group's */
    /* sums run in element order (as in lxn_moments's last lane below LXN_LANES). */
    #define LXN_TG 8
    #define LXN_TINY_STATS(T, S) \
    static LX_CLONES void lxn_tiny_stats_##S(const T* x, ptrdiff_t ng, ptrdiff_t n, \
                                             ptrdiff_t shift_len, double* mean, \
                                             double* var) { \
        ptrdiff_t ns = n < shift_len ? n : shift_len, q, w, i, j; \
        for (q = 0; q < ng; q += w) { \
            double c[LXN_TG], s1[LXN_TG], s2[LXN_TG], d, m2; \
            const T* xq = x + q * n; \
            w = ng - q < LXN_TG ? ng - q : LXN_TG; \
            for (j = 0; j < LXN_TG; j++) { c[j] = 0; s1[j] = 0; s2[j] = 0; } \
            if (w == LXN_TG) { \
                for (i = 0; i < ns; i++) for (j = 0; j < LXN_TG; j++) c[j] += xq[j * n + i]; \
            } else { \
                for (i = 0; i < ns; i++) for (j = 0; j < w; j++) c[j] += xq[j * n + i]; \
            } \
            for (j = 0; j < LXN_TG; j++) { \
                c[j] /= ns; \
                if (!(c[j] - c[j] == 0)) c[j] = 0; /* an Inf or NaN: shift by 0 */ \
            } \
            if (w == LXN_TG) { \
                for (i = 0; i < n; i++) for (j = 0; j < LXN_TG; j++) { \
                    d = xq[j * n + i] - c[j]; s1[j] += d; s2[j] += d * d; } \
            } else { \
                for (i = 0; i < n; i++) for (j = 0; j < w; j++) { \
                    d = xq[j * n + i] - c[j]; s1[j] += d; s2[j] += d * d; } \
            } \
            for (j = 0; j < w; j++) { \
                mean[q + j] = c[j] + s1[j] / n; \
                m2 = s2[j] - s1[j] * (s1[j] / n); \
                var[q + j] = (0.0 > m2 ? 0.0 : m2) / n; /* NaN stays */ \
            } \
        } \
    }
    /* The tiny groups' other loops: ng groups from group q0 on, each of nruns runs of */
    /* runlen elements back to back, run k of group q with the affine index */
    /* (q % amod) * agstride + k * astep. lxn_tiny_affine: z = (x - m) * a + b as */
    /* lxn_affine (the activation follows over the whole block). lxn_tiny_dx: from */
    /* g = dy * act', the sums in element order and dx as lxn_dx: with one scale/bias */
    /* per run, each run's sums written to s1 = run_g and s2 = run_gx (times rstd; */
    /* indexed by run), with one per element (vec) added into s1 = cg, s2 = cgx. */
    #define LXN_TINY_RUNS \\
        for (ptrdiff_t q = q0; q < q0 + ng; q++) \\
            for (ptrdiff_t k = 0, a = (q % amod) * agstride; k < nruns; k++, a += astep, e += runlen)
    #define LXN_TINY_DEFINE(T, S) \\
    static LX_CLONES void lxn_tiny_affine_##S(const T* x, const T* scale, const T* bias, \\
                                              ptrdiff_t q0, ptrdiff_t ng, ptrdiff_t nruns, \\
                                              ptrdiff_t runlen, ptrdiff_t amod, \\
                                              ptrdiff_t agstride, ptrdiff_t astep, \\
                                              const double* mean, const double* rstd, \\
                                              int vec, T* restrict z) { \\
        ptrdiff_t e = 0; \\
        LXN_TINY_RUNS { \\
            T m = (T)mean[q], r = (T)rstd[q], a_ = r * scale[a], b = bias[a]; \\
            const T *xe = x + e, *sc = scale + a, *bi = bias + a; \\
            T* ze = z + e; \\
            if (vec) for (ptrdiff_t j = 0; j < runlen; j++) ze[j] = (xe[j] - m) * r * sc[j] + bi[j]; \\
            else for (ptrdiff_t j = 0; j < runlen; j++) ze[j] = (xe[j] - m) * a_ + b; \\
        } \\
    } \\
    static LX_CLONES LXN_NO_CONTRACT void lxn_tiny_dx_##S( \\
            const T* x, const T* g, const T* scale, ptrdiff_t q0, ptrdiff_t ng, \\
            ptrdiff_t nruns, ptrdiff_t runlen, ptrdiff_t amod, ptrdiff_t agstride, \\
            ptrdiff_t astep, const double* mean, const double* rstd, int vec, \\
            double* restrict s1, double* restrict s2, T* restrict d, int batch) { \\
        LXN_NO_CONTRACT_BODY \\
        ptrdiff_t e = 0, n = nruns * runlen; \\
        double sh = 0, shx = 0, v, t, sg, sgx; \\
        LXN_TINY_RUNS { \\
            const T *ge = g + e, *xe = x + e, *w = scale + a; \\
            if (k == 0) { sh = 0; shx = 0; } \\
            if (vec) { /* per element, into the thread's rows (as lxn_sum_cols) */ \\
                for (ptrdiff_t j = 0; j < runlen; j++) { \\
                    v = ge[j]; t = v * (xe[j] - mean[q]); \\
                    s1[a + j] += v; s2[a + j] += t * rstd[q]; \\
                    sh += v * w[j]; shx += t * w[j]; } \\
            } else { /* per run (as lxn_pass1) */ \\
                sg = 0; sgx = 0; \\
                for (ptrdiff_t j = 0; j < runlen; j++) { \\
                    v = ge[j]; sg += v; sgx += v * (xe[j] - mean[q]); } \\
                s1[q * nruns + k] = sg; \\
                s2[q * nruns + k] = sgx * rstd[q]; \\
                sh += sg * w[0]; \\
                shx += sgx * w[0]; \\
            } \\
            if (k < nruns - 1) continue; \\
            /* the group's last run: its dx, from its first run on */ \\
            T r = (T)rstd[q], m = (T)mean[q], hm = (T)(sh / n); \\
            T cc = (T)(rstd[q] * rstd[q] * rstd[q] * (shx / n)); \\
            ptrdiff_t a0 = (q % amod) * agstride, e0 = e + runlen - n; \\
            for (ptrdiff_t j = 0; j < nruns; j++) { \\
                const T *s = scale + a0 + j * astep, *gj = g + e0 + j * runlen; \\
                const T* xj = x + e0 + j * runlen; \\
                T* dj = d + e0 + j * runlen; \\
                T s0 = s[0]; \\
                if (batch && vec) for (ptrdiff_t i = 0; i < runlen; i++) dj[i] = (gj[i] * s[i] - hm) * r - (xj[i] - m) * cc; \\
                else if (batch) for (ptrdiff_t i = 0; i < runlen; i++) dj[i] = (gj[i] * s0 - hm) * r - (xj[i] - m) * cc; \\
                else if (vec) for (ptrdiff_t i = 0; i < runlen; i++) dj[i] = gj[i] * s[i] * r; \\
                else for (ptrdiff_t i = 0; i < runlen; i++) dj[i] = gj[i] * s0 * r; \\
            } \\
        } \\
    }

    LXN_TINY_STATS(float, f)
    LXN_TINY_STATS(double, d)
    LXN_TINY_DEFINE(float, f)
    LXN_TINY_DEFINE(double, d)
    """
    void lxn_moments_f(const float* x, Py_ssize_t n, double k, double* s1, double* s2,
                       bint pf) nogil
    void lxn_moments_d(const double* x, Py_ssize_t n, double k, double* s1, double* s2,
                       bint pf) nogil
    void lxn_pass1_f(int act, float p, const float* x, const float* dy, float* g, Py_ssize_t n,
                     float m, float a, float b, double md, double* s, double* sx) nogil
    void lxn_pass1_d(int act, double p, const double* x, const double* dy, double* g,
                     Py_ssize_t n, double m, double a, double b, double md, double* s,
                     double* sx) nogil
    void lxn_sum_g_f(const float* g, const float* x, Py_ssize_t n, double m, double* s,
                     double* sx) nogil
    void lxn_sum_g_d(const double* g, const double* x, Py_ssize_t n, double m, double* s,
                     double* sx) nogil
    void lxn_sum_cols_f(const float* g, const float* pg, const float* w, const float* x,
                        Py_ssize_t n, double m, double r, double* s, double* sx, double* cg,
                        double* cgx) nogil
    void lxn_sum_cols_d(const double* g, const double* pg, const double* w, const double* x,
                        Py_ssize_t n, double m, double r, double* s, double* sx, double* cg,
                        double* cgx) nogil
    void lxn_affine_f(int act, float p, const float* x, const float* sc, const float* bias,
                      float* z, Py_ssize_t n, float m, float r, bint vec) nogil
    void lxn_affine_d(int act, double p, const double* x, const double* sc, const double* bias,
                      double* z, Py_ssize_t n, double m, double r, bint vec) nogil
    void lxn_stream_f(float* y, const float* z, Py_ssize_t n) nogil
    void lxn_stream_d(double* y, const double* z, Py_ssize_t n) nogil
    void lxn_fence() nogil
    bint lxn_stream_pays(void* p, size_t n, size_t min_bytes) nogil
    void lxn_dx_f(float* d, const float* g, const float* x, const float* sc, float s,
                  Py_ssize_t n, float hm, float r, float m, float cc, bint batch) nogil
    void lxn_dx_d(double* d, const double* g, const double* x, const double* sc, double s,
                  Py_ssize_t n, double hm, double r, double m, double cc, bint batch) nogil
    void lxn_moments_cols_f(const float* x, Py_ssize_t n, const double* k, double* s1,
                            double* s2) nogil
    void lxn_moments_cols_d(const double* x, Py_ssize_t n, const double* k, double* s1,
                            double* s2) nogil
    void lxn_tiny_stats_f(const float* x, Py_ssize_t ng, Py_ssize_t n, Py_ssize_t shift_len,
                          double* mean, double* var) nogil
    void lxn_tiny_stats_d(const double* x, Py_ssize_t ng, Py_ssize_t n, Py_ssize_t shift_len,
                          double* mean, double* var) nogil
    void lxn_tiny_affine_f(const float* x, const float* scale, const float* bias, Py_ssize_t q0,
                           Py_ssize_t ng, Py_ssize_t nruns, Py_ssize_t runlen, Py_ssize_t amod,
                           Py_ssize_t agstride, Py_ssize_t astep, const double* mean,
                           const double* rstd, bint vec, float* z) nogil
    void lxn_tiny_affine_d(const double* x, const double* scale, const double* bias, Py_ssize_t q0,
                           Py_ssize_t ng, Py_ssize_t nruns, Py_ssize_t runlen, Py_ssize_t amod,
                           Py_ssize_t agstride, Py_ssize_t astep, const double* mean,
                           const double* rstd, bint vec, double* z) nogil
    void lxn_tiny_dx_f(const float* x, const float* g, const float* scale, Py_ssize_t q0,
                       Py_ssize_t ng, Py_ssize_t nruns, Py_ssize_t runlen, Py_ssize_t amod,
                       Py_ssize_t agstride, Py_ssize_t astep, const double* mean,
                       const double* rstd, bint vec, double* s1, double* s2, float* d,
                       bint batch) nogil
    void lxn_tiny_dx_d(const double* x, const double* g, const double* scale, Py_ssize_t q0,
                       Py_ssize_t ng, Py_ssize_t nruns, Py_ssize_t runlen, Py_ssize_t amod,
                       Py_ssize_t agstride, Py_ssize_t astep, const double* mean,
                       const double* rstd, bint vec, double* s1, double* s2, double* d,
                       bint batch) nogil
    void lxn_affine_cols_f(int act, float p, const float* x, const float* mv, const float* av,
                           const float* bv, float* z, Py_ssize_t n) nogil
    void lxn_affine_cols_d(int act, double p, const double* x, const double* mv,
                           const double* av, const double* bv, double* z, Py_ssize_t n) nogil
    void lxn_pass1_cols_f(int act, float p, const float* x, const float* dy, float* g,
                          Py_ssize_t n, const float* mv, const float* av, const float* bv,
                          const double* md, double* cg, double* cgx) nogil
    void lxn_pass1_cols_d(int act, double p, const double* x, const double* dy, double* g,
                          Py_ssize_t n, const double* mv, const double* av, const double* bv,
                          const double* md, double* cg, double* cgx) nogil
    void lxn_dx_cols_f(float* d, const float* g, const float* x, const float* s, const float* hm,
                       const float* r, const float* m, const float* cc, Py_ssize_t n,
                       bint batch) nogil
    void lxn_dx_cols_d(double* d, const double* g, const double* x, const double* s,
                       const double* hm, const double* r, const double* m, const double* cc,
                       Py_ssize_t n, bint batch) nogil


cdef inline void _moments(const floating* x, Py_ssize_t n, double k, double* s1,
                          double* s2, bint pf) noexcept nogil:
    """``s1 += sum(x - k)``, ``s2 += sum((x - k) ** 2)``; ``pf``: prefetch ``x`` ahead."""
    if floating is float:
        lxn_moments_f(x, n, k, s1, s2, pf)
    else:
        lxn_moments_d(x, n, k, s1, s2, pf)


cdef inline void _pass1(int act, floating p, const floating* x, const floating* dy, floating* g,
                        Py_ssize_t n, floating m, floating a, floating b, double md, double* s,
                        double* sx) noexcept nogil:
    """``g = dy * act'`` of ``z = (x - m) * a + b`` (``y = act(z)`` for output-only
    activations), ``s += sum(g)``, ``sx += sum(g * (x - md))``."""
    if floating is float:
        lxn_pass1_f(act, p, x, dy, g, n, m, a, b, md, s, sx)
    else:
        lxn_pass1_d(act, p, x, dy, g, n, m, a, b, md, s, sx)


cdef inline void _sum_g(const floating* g, const floating* x, Py_ssize_t n, double m, double* s,
                        double* sx) noexcept nogil:
    """``s += sum(g)``, ``sx += sum(g * (x - m))``."""
    if floating is float:
        lxn_sum_g_f(g, x, n, m, s, sx)
    else:
        lxn_sum_g_d(g, x, n, m, s, sx)


cdef inline void _sum_cols(const floating* g, const floating* pg, const floating* w,
                           const floating* x, Py_ssize_t n, double m, double r, double* s,
                           double* sx, double* cg, double* cgx) noexcept nogil:
    """``s += sum(g * w)``, ``sx += sum(g * w * (x - m))`` and the per-element affine sums
    ``cg[i] += g[i]``, ``cgx[i] += g[i] * (x[i] - m) * r``; unless ``pg`` is NULL, ``pg``
    (``dy``, the stream ``g`` comes from) and ``x`` are prefetched ahead."""
    if floating is float:
        lxn_sum_cols_f(g, pg, w, x, n, m, r, s, sx, cg, cgx)
    else:
        lxn_sum_cols_d(g, pg, w, x, n, m, r, s, sx, cg, cgx)


cdef inline void _affine(int act, floating p, const floating* x, const floating* scale,
                         const floating* bias, floating* z, Py_ssize_t n, floating m, floating r,
                         bint vec) noexcept nogil:
    """``z = act((x - m) * r * scale + bias)``: per element (``vec``) or ``scale[0]``,
    ``bias[0]``; ``act`` 0 (identity) gives the pre-activation."""
    if floating is float:
        lxn_affine_f(act, p, x, scale, bias, z, n, m, r, vec)
    else:
        lxn_affine_d(act, p, x, scale, bias, z, n, m, r, vec)


cdef inline void _stream(floating* y, const floating* z, Py_ssize_t n) noexcept nogil:
    """``y[:n] = z[:n]`` with non-temporal stores (``lxn_fence`` after the last one)."""
    if floating is float:
        lxn_stream_f(y, z, n)
    else:
        lxn_stream_d(y, z, n)


cdef inline void _dx(floating* d, const floating* g, const floating* x, const floating* sc,
                     floating s, Py_ssize_t n, floating hm, floating r, floating m, floating cc,
                     bint batch) noexcept nogil:
    """``d`` (may be ``g``) from ``h = g * (sc[i] if sc else s)``: ``(h - hm) * r - (x - m) * cc``
    with ``batch``, else ``h * r``."""
    if floating is float:
        lxn_dx_f(d, g, x, sc, s, n, hm, r, m, cc, batch)
    else:
        lxn_dx_d(d, g, x, sc, s, n, hm, r, m, cc, batch)


# ---- per-unit work -----------------------------------------------------------------

cdef void _unit_stats(const floating* x, const Geom* g, Py_ssize_t u, double* cnt, double* mean,
                      double* m2) noexcept nogil:
    """Count, mean and sum of squared deviations of unit ``u``, in one read of ``x``.

    Moments about a shift ``c``, the mean of the unit's first ``SHIFT_LEN`` elements:
    ``m2 = sum((x - c)^2) - sum(x - c)^2 / n``. The subtraction loses
    ``log2(1 + (mean - c)^2 / var)`` of float64's 53 bits, and ``(mean - c)^2 / var``
    is at most ``n / SHIFT_LEN`` (module docstring).
    """
    cdef Py_ssize_t q, k0, k1, k, off, a, n, i
    cdef Py_ssize_t total = _unit(g, u, &q, &k0, &k1)
    cdef double s1 = 0, s2 = 0, c = 0
    cdef bint pf = g.vec and _runs_count(g, 0, g.nruns) <= PREFETCH_MAX  # short layernorm rows
    n = min(_run(g, q, k0, &off, &a), <Py_ssize_t>SHIFT_LEN)
    for i in range(n):
        c += x[off + i]
    c /= n
    if not c - c == 0:  # an Inf or NaN there: shift by 0, so that Inf - Inf does not
        c = 0           # turn an infinite mean into NaN
    if g.rstride == g.runlen:  # back-to-back runs (groupnorm, instancenorm, layernorm): one span
        _run(g, q, k0, &off, &a)
        _moments(x + off, total, c, &s1, &s2, pf)
    else:
        for k in range(k0, k1):
            n = _run(g, q, k, &off, &a)
            _moments(x + off, n, c, &s1, &s2, pf)
    cnt[u] = total
    mean[u] = c + s1 / total
    m2[u] = max(s2 - s1 * (s1 / total), 0.0)


cdef void _merge(const Geom* g, const double* cnt, const double* mean, const double* m2,
                 double* gmean, double* gvar) noexcept nogil:
    """Group mean and biased variance from the chunk statistics (Chan et al.), in order."""
    cdef Py_ssize_t q, j, u
    cdef double n, m, s, d, t
    for q in range(g.ngroups):
        u = q * g.nck
        n, m, s = cnt[u], mean[u], m2[u]
        for j in range(1, g.nck):
            t = n + cnt[u + j]
            d = mean[u + j] - m
            m += d * (cnt[u + j] / t)
            s += m2[u + j] + d * d * (n * cnt[u + j] / t)
            n = t
        if not m - m == 0:  # an infinite chunk mean: Inf - Inf above; the mean is the
            m = 0           # weighted sum (Inf, or NaN for both signs), as in one chunk
            for j in range(g.nck):
                m += mean[u + j] * cnt[u + j]
            m /= n
            s = m - m  # NaN: x - mean is NaN at the infinite element
        gmean[q] = m
        gvar[q] = s / n


cdef void _unit_forward(int act, floating p, const floating* x, const floating* scale,
                        const floating* bias, floating* y, floating* zs, const Geom* g,
                        Py_ssize_t u, double mean, double rstd) noexcept nogil:
    """``y = act((x - mean) * rstd * scale + bias)`` over unit ``u``; with a ``BLOCK``-long
    scratch ``zs``, computed there block by block and streamed to ``y`` (the caller's
    thread runs ``lxn_fence`` after its last unit)."""
    cdef Py_ssize_t q, k0, k1, k, off, a, n, b, nb
    cdef floating m = <floating>mean, r = <floating>rstd
    _unit(g, u, &q, &k0, &k1)
    for k in range(k0, k1):
        n = _run(g, q, k, &off, &a)
        if zs == NULL:
            _affine(act, p, x + off, scale + a, bias + a, y + off, n, m, r, g.vec)
            continue
        for b in range(0, n, 1024):  # BLOCK (a literal step compiles to a C loop)
            nb = min(<Py_ssize_t>BLOCK, n - b)
            _affine(act, p, x + off + b, scale + a + (b if g.vec else 0),
                    bias + a + (b if g.vec else 0), zs, nb, m, r, g.vec)
            _stream(y + off + b, zs, nb)


cdef inline floating* _gpos(floating* dx, floating* gb, const Geom* g, Py_ssize_t k0, Py_ssize_t k,
                           Py_ssize_t off) noexcept nogil:
    """Where pass 1 leaves ``g`` of run ``k`` (of a unit starting at run ``k0``): the unit
    buffer ``gb`` (runs back to back), or ``dx`` itself when ``gb`` is NULL."""
    return dx + off if gb == NULL else gb + (k - k0) * g.runlen


cdef void _unit_pass1(int act, floating p, const floating* x, const floating* scale,
                      const floating* bias, const floating* dy, floating* dx, floating* gb,
                      floating* z, const Geom* g, Py_ssize_t u, double mean, double rstd,
                      double* run_g, double* run_gx, double* col_g, double* col_gx,
                      double* usum) noexcept nogil:
    """``g = dy * act'`` over unit ``u`` (into ``gb`` or ``dx``, see ``_gpos``) and its
    sums (see the module docstring).

    ``z`` (and ``y = act(z)`` for output-only activations) is recomputed from ``x``
    with the forward's expression: cheaper than reading a stored ``y``. One scale/bias
    per run: ``z``, ``act'``, ``g`` and the sums in one loop (``lxn_pass1``); per
    element (``vec``): ``z`` or ``y`` into the ``BLOCK``-long scratch ``z`` (bitwise
    the forward's), then ``act'`` and the sums. The identity writes nothing (``g`` is
    ``dy``, which pass 2 reads). ``usum[2u], usum[2u+1]`` receive
    ``sum(h)``, ``sum(h * (x - mean))``; per-run sums go to ``run_g``/``run_gx``
    (indexed ``offset // runlen``), per-element ones are added into ``col_*``.
    """
    cdef Py_ssize_t q, k0, k1, k, off, a, n, b, nb
    cdef floating m = <floating>mean, r = <floating>rstd
    cdef const floating* gp
    cdef floating* gw
    cdef const floating* sc
    cdef double sh = 0, shx = 0, sg, sgx
    cdef bint pf = _runs_count(g, 0, g.nruns) <= PREFETCH_MAX  # short rows (with vec)
    _unit(g, u, &q, &k0, &k1)
    for k in range(k0, k1):
        n = _run(g, q, k, &off, &a)
        gw = _gpos(dx, gb, g, k0, k, off)
        sg = 0
        sgx = 0
        if act != 0 and not g.vec:  # one loop: z, act', g and the sums
            _pass1(act, p, x + off, dy + off, gw, n, m, <floating>(r * scale[a]), bias[a], mean,
                   &sg, &sgx)
        for b in range(0, n if g.vec or act == 0 else 0, 1024):  # BLOCK
            nb = min(<Py_ssize_t>BLOCK, n - b)
            sc = scale + a + (b if g.vec else 0)
            gp = dy + off + b
            if act != 0:
                # y (output-only activations) or z, bitwise as in the forward pass
                _affine(act if _output_only(act) else 0, p, x + off + b, sc,
                        bias + a + (b if g.vec else 0), z, nb, m, r, g.vec)
                act_backward_n(act, p, z, dy + off + b, gw + b, nb)
                gp = gw + b
            if g.vec:
                _sum_cols(gp, dy + off + b if pf else NULL, sc, x + off + b, nb, mean,
                          rstd, &sh, &shx, col_g + a + b, col_gx + a + b)
            else:
                _sum_g(gp, x + off + b, nb, mean, &sg, &sgx)
        if not g.vec:
            run_g[off // g.runlen] = sg
            run_gx[off // g.runlen] = sgx * rstd
            sh += sg * scale[a]
            shx += sgx * scale[a]
    usum[2 * u] = sh
    usum[2 * u + 1] = shx


cdef void _unit_pass2(const floating* x, const floating* scale, const floating* dy, floating* dx,
                      floating* gb, floating* zs, bint identity, const Geom* g, Py_ssize_t u,
                      double mean, double rstd, double mh, double mhx,
                      bint batch_stats) noexcept nogil:
    """``dx = rstd * (h - mh - xhat * rstd * mhx)`` over unit ``u``, from ``g`` where pass 1
    left it (``dy`` for the ``identity``, else see ``_gpos``), with ``mh`` the mean of
    ``h`` and ``mhx`` the mean of ``h * (x - mean)``; given statistics: ``dx = rstd * h``
    (``x`` not read: a NaN there stays out of ``dx``). With a ``BLOCK``-long scratch
    ``zs``, computed there block by block and streamed to ``dx``.

    ``h - mh`` comes first, unscaled: it cancels exactly where it should (one element).
    """
    cdef Py_ssize_t q, k0, k1, k, off, a, n, b, nb
    cdef floating m = <floating>mean, r = <floating>rstd
    cdef floating hm = <floating>mh, cc = <floating>(rstd * rstd * rstd * mhx)
    cdef const floating* gp
    _unit(g, u, &q, &k0, &k1)
    for k in range(k0, k1):
        n = _run(g, q, k, &off, &a)
        gp = dy + off if identity else _gpos(dx, gb, g, k0, k, off)
        if zs == NULL:
            _dx(dx + off, gp, x + off, scale + a if g.vec else NULL, scale[a], n, hm, r, m, cc,
                batch_stats)
            continue
        for b in range(0, n, 1024):  # BLOCK
            nb = min(<Py_ssize_t>BLOCK, n - b)
            _dx(zs, gp + b, x + off + b, scale + a + b if g.vec else NULL, scale[a], nb, hm, r, m,
                cc, batch_stats)
            _stream(dx + off + b, zs, nb)


# ---- tiny groups: blocks of whole groups ----------------------------------------------
# Groups of fewer than TINY elements stored back to back (instancenorm with small spatial
# sizes, groupnorm with small groups, short layernorm rows) spent most of their time in
# the per-unit calls above (a 32-lane step and an activation switch per run: ~34 ns a
# group of 4). Here a thread takes a block of whole groups (about BLOCK elements): their
# statistics (``lxn_tiny_stats``, several groups side by side), ``z`` without the
# activation run by run (``lxn_tiny_affine``), then the activation (or its derivative)
# once over the block, and in the backward pass each run's sums and ``dx`` group by group
# (``lxn_tiny_dx``). The expressions are the
# per-unit loops'; sums run in element order (the per-unit loops' order too below 32
# elements, except pass 1's, which puts its tail in lanes).

cdef inline bint _tiny(const Geom* g) noexcept nogil:
    """Whether the groups take the tiny-groups path."""
    cdef Py_ssize_t n = _runs_count(g, 0, g.nruns)
    return (g.nck == 1 and n < TINY and g.rstride == g.runlen and g.lastlen == g.runlen
            and g.gstride == n)


cdef inline Py_ssize_t _tiny_groups(const Geom* g) noexcept nogil:
    """Groups per block."""
    return max(1, <Py_ssize_t>BLOCK // g.gstride)


cdef inline void _tiny_stats(const floating* x, Py_ssize_t ng, Py_ssize_t n, double* mean,
                             double* var) noexcept nogil:
    """Mean and biased variance of ``ng`` groups of ``n`` elements from ``x`` on, as
    ``_unit_stats``."""
    if floating is float:
        lxn_tiny_stats_f(x, ng, n, SHIFT_LEN, mean, var)
    else:
        lxn_tiny_stats_d(x, ng, n, SHIFT_LEN, mean, var)


cdef void _tiny_rstd(const double* var, double* rstd, Py_ssize_t q0, Py_ssize_t q1,
                     double eps) noexcept nogil:
    """``rstd = 1 / sqrt(var + eps)`` of groups ``[q0, q1)``: a loop of its own, where the
    square roots and divisions of several groups overlap (after each group's statistics
    they took half the forward's time, waiting on one another)."""
    cdef Py_ssize_t q
    for q in range(q0, q1):
        rstd[q] = 1 / sqrt(var[q] + eps)


cdef inline void _tiny_affine(const floating* x, const floating* scale, const floating* bias,
                              floating* z, const Geom* g, Py_ssize_t q0, Py_ssize_t q1,
                              const double* mean, const double* rstd) noexcept nogil:
    """``z = (x - mean) * rstd * scale + bias`` (no activation) of groups ``[q0, q1)``, ``x``
    and ``z`` from the first group's first element; per run or (``vec``) per element."""
    if floating is float:
        lxn_tiny_affine_f(x, scale, bias, q0, q1 - q0, g.nruns, g.runlen, g.amod, g.agstride,
                          g.astep, mean, rstd, g.vec, z)
    else:
        lxn_tiny_affine_d(x, scale, bias, q0, q1 - q0, g.nruns, g.runlen, g.amod, g.agstride,
                          g.astep, mean, rstd, g.vec, z)


cdef void _tiny_forward(int act, floating p, const floating* x, const floating* scale,
                        const floating* bias, floating* y, floating* zs, const Geom* g,
                        Py_ssize_t q0, Py_ssize_t q1, double* mean, double* var, double* rstd,
                        bint given, double eps) noexcept nogil:
    """``y`` of groups ``[q0, q1)``, their statistics first unless ``given``, and their
    ``rstd``; with a ``BLOCK``-long scratch ``zs``, computed there and streamed to ``y``."""
    cdef Py_ssize_t o = q0 * g.gstride, e = (q1 - q0) * g.gstride
    cdef floating* z = zs if zs != NULL else y + o
    if not given:
        _tiny_stats(x + o, q1 - q0, g.gstride, mean + q0, var + q0)
    _tiny_rstd(var, rstd, q0, q1, eps)
    _tiny_affine(x + o, scale, bias, z, g, q0, q1, mean, rstd)
    if act != 0:
        act_forward_n(act, p, z, z, e)
    if zs != NULL:
        _stream(y + o, zs, e)


cdef void _tiny_backward(int act, floating p, const floating* x, const floating* scale,
                         const floating* bias, const floating* dy, floating* dx, floating* buf,
                         bint stream, const Geom* g, Py_ssize_t q0, Py_ssize_t q1,
                         const double* mean, const double* var, double* rstd, double eps,
                         double* run_g, double* run_gx, double* col_g, double* col_gx,
                         bint batch_stats) noexcept nogil:
    """``dx`` and the per-run sums of groups ``[q0, q1)`` (``vec``: the per-element sums
    added into the thread's ``col_g``, ``col_gx``), as ``_unit_pass1`` and ``_unit_pass2``
    (sums in element order), and their ``rstd``. ``buf``: the thread's ``3 BLOCK`` scratch
    (``z`` or ``y``, ``g``, then ``dx`` when ``stream``)."""
    cdef Py_ssize_t o = q0 * g.gstride, e = (q1 - q0) * g.gstride
    cdef const floating* gv = dy + o  # the identity's g
    cdef floating* d = buf + 2 * BLOCK if stream else dx + o
    _tiny_rstd(var, rstd, q0, q1, eps)
    if act != 0:
        # z, or y for output-only activations, bitwise as in the forward pass
        _tiny_affine(x + o, scale, bias, buf, g, q0, q1, mean, rstd)
        if _output_only(act):
            act_forward_n(act, p, buf, buf, e)
        act_backward_n(act, p, buf, dy + o, buf + BLOCK, e)
        gv = buf + BLOCK
    # the sums: per element into the thread's rows (vec), else per run
    cdef double* s1 = col_g if g.vec else run_g
    cdef double* s2 = col_gx if g.vec else run_gx
    if floating is float:
        lxn_tiny_dx_f(x + o, gv, scale, q0, q1 - q0, g.nruns, g.runlen, g.amod, g.agstride,
                      g.astep, mean, rstd, g.vec, s1, s2, d, batch_stats)
    else:
        lxn_tiny_dx_d(x + o, gv, scale, q0, q1 - q0, g.nruns, g.runlen, g.amod, g.agstride,
                      g.astep, mean, rstd, g.vec, s1, s2, d, batch_stats)
    if stream:
        _stream(dx + o, d, e)


# ---- entry points ----------------------------------------------------------------

cdef Geom _geometry(tuple geom, Py_ssize_t size, int nt) except *:
    cdef Geom g
    (g.ngroups, g.nruns, g.gstride, g.rstride, g.runlen, g.lastlen,
     g.amod, g.agstride, g.astep, g.vec) = geom
    if (g.ngroups < 1 or g.nruns < 1 or g.runlen < 1 or not 1 <= g.lastlen <= g.runlen
            or g.amod < 1
            or (g.ngroups - 1) * g.gstride + (g.nruns - 1) * g.rstride + g.lastlen > size):
        raise ValueError(f"normalization kernels: bad geometry {geom} for {size} elements")
    cdef Py_ssize_t want, count = _runs_count(&g, 0, g.nruns)
    g.nck = 1
    if nt > 1 and g.ngroups < UNITS_PER_THREAD * nt:
        want = (UNITS_PER_THREAD * nt + g.ngroups - 1) // g.ngroups
        g.nck = max(1, min(g.nruns, want, count // MIN_CHUNK))
    return g


def tiny_groups(tuple geom, Py_ssize_t size):
    """Whether ``forward``/``backward`` take the groups of ``geom`` (over ``size``
    elements) block by block, the tiny-groups path."""
    cdef Geom g = _geometry(geom, size, num_threads_for(size))
    return bool(_tiny(&g))


def streams_output(floating[::1] out):
    """Whether the kernels write ``out`` (``dx``; ``y`` without ``vec``) with non-temporal
    stores: at least ``STREAM_BYTES`` long, last page already resident (``lxn_stream_pays``)."""
    return bool(lxn_stream_pays(&out[0], out.shape[0] * sizeof(floating), STREAM_BYTES))


cdef _check(int act, Py_ssize_t n, str name, Py_ssize_t expected):
    if not 0 <= act < N_ACTIVATIONS:
        raise ValueError(f"normalization kernels: unknown activation id {act}")
    if n != expected:
        raise ValueError(f"normalization kernels: {name} must have {expected} elements, got {n}")


def forward(int act, double p, const floating[::1] x, const floating[::1] scale,
            const floating[::1] bias, floating[::1] y, double[::1] mean, double[::1] var,
            bint given, double eps, tuple geom):
    """``y = act((x - mean) / sqrt(var + eps) * scale + bias)`` per group.

    ``mean``, ``var`` (one per group, float64) are read when ``given``, else written
    (batch statistics, biased variance). ``scale``/``bias`` cover every affine index.
    ``geom`` is ``(ngroups, nruns, gstride, rstride, runlen, lastlen, amod, agstride,
    astep, vec)`` (module docstring).
    """
    _check(act, y.shape[0], "y", x.shape[0])
    cdef int nt = num_threads_for(x.shape[0])
    cdef Geom g = _geometry(geom, x.shape[0], nt)
    _check(act, mean.shape[0], "mean", g.ngroups)
    _check(act, var.shape[0], "var", g.ngroups)
    cdef Py_ssize_t units = g.ngroups * g.nck, u, q
    cdef bint tiny = _tiny(&g)
    cdef Py_ssize_t tg = _tiny_groups(&g)
    cdef double[:, ::1] chunk = np.empty((3, 1 if tiny else units))
    cdef double[::1] rstd = np.empty(g.ngroups)
    # not with a per-element affine (layernorm): there the extra pass through the scratch
    # cost more than the stores saved (doc/normalization.md)
    cdef bint stream = not g.vec and lxn_stream_pays(&y[0], y.shape[0] * sizeof(floating),
                                                     STREAM_BYTES)
    scratch_np = np.empty((nt, BLOCK if stream else 1), np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] scratch = scratch_np
    cdef floating* zs = NULL
    cdef floating fp = <floating>p
    cdef const floating* px = &x[0]
    cdef const floating* ps = &scale[0]
    cdef const floating* pb = &bias[0]
    cdef floating* py = &y[0]
    cdef double* c0 = &chunk[0, 0]
    cdef double* c1 = &chunk[1, 0]
    cdef double* c2 = &chunk[2, 0]
    with nogil:
        if given and not tiny:  # (the tiny path: block by block)
            for q in range(g.ngroups):
                rstd[q] = 1 / sqrt(var[q] + eps)
        if tiny:
            with parallel(num_threads=nt):
                zs = &scratch[threadid(), 0] if stream else NULL
                for u in prange((g.ngroups + tg - 1) // tg, schedule="static"):
                    _tiny_forward(act, fp, px, ps, pb, py, zs, &g, u * tg,
                                  min(g.ngroups, (u + 1) * tg), &mean[0], &var[0], &rstd[0],
                                  given, eps)
                if stream:
                    lxn_fence()
        elif given or g.nck > 1:
            if not given:  # chunked statistics, merged, then the normalize phase
                for u in prange(units, num_threads=nt, schedule="static"):
                    _unit_stats(px, &g, u, c0, c1, c2)
                _merge(&g, c0, c1, c2, &mean[0], &var[0])
                for q in range(g.ngroups):
                    rstd[q] = 1 / sqrt(var[q] + eps)
            with parallel(num_threads=nt):
                zs = &scratch[threadid(), 0] if stream else NULL
                for u in prange(units, schedule="static"):
                    _unit_forward(act, fp, px, ps, pb, py, zs, &g, u, mean[u // g.nck],
                                  rstd[u // g.nck])
                if stream:
                    lxn_fence()
        else:  # one unit per group: statistics and normalize back to back
            with parallel(num_threads=nt):
                zs = &scratch[threadid(), 0] if stream else NULL
                for u in prange(units, schedule="static"):
                    _unit_stats(px, &g, u, c0, c1, c2)
                    mean[u] = c1[u]
                    var[u] = c2[u] / c0[u]
                    rstd[u] = 1 / sqrt(var[u] + eps)
                    _unit_forward(act, fp, px, ps, pb, py, zs, &g, u, mean[u], rstd[u])
                if stream:
                    lxn_fence()


def backward(int act, double p, const floating[::1] x, const floating[::1] scale,
             const floating[::1] bias, const floating[::1] dy, floating[::1] dx, const double[::1] mean, const double[::1] var, bint batch_stats,
             double eps, tuple geom):
    """``dx`` and the affine sums ``(sum(g), sum(g * xhat))``.

    ``act'`` comes from ``z`` (or ``y``) recomputed from ``x``, so the forward output is
    not needed. ``batch_stats``: the statistics came from ``x`` (full rule), else they
    were given (``dx = rstd * h``). Returns float64 arrays: one entry per run
    (``offset // runlen``) without ``vec``, one per affine element with it.
    """
    _check(act, dx.shape[0], "dx", x.shape[0])
    _check(act, dy.shape[0], "dy", x.shape[0])
    cdef Py_ssize_t total = x.shape[0]
    cdef int nt = num_threads_for(total)
    cdef Geom g = _geometry(geom, total, nt)
    _check(act, mean.shape[0], "mean", g.ngroups)
    _check(act, var.shape[0], "var", g.ngroups)
    cdef Py_ssize_t units = g.ngroups * g.nck, u, q, j, t, i
    cdef Py_ssize_t ncol = scale.shape[0] if g.vec else 0
    cdef Py_ssize_t nrun = 0 if g.vec else total // g.runlen
    cdef Py_ssize_t stride = (ncol + PAD - 1) // PAD * PAD
    cdef double[::1] run_g = np.zeros(nrun), run_gx = np.zeros(nrun)
    cdef double[:, ::1] col = np.zeros((2 * nt, stride))
    cdef bint tiny = _tiny(&g)
    cdef Py_ssize_t tg = _tiny_groups(&g)
    cdef bint fused = g.nck == 1 and batch_stats  # pass 1 and pass 2 back to back per group
    # per-unit sums (not on the tiny path) and the group means of h (split passes only)
    cdef double[::1] usum = np.empty(2 * (1 if tiny else units))
    cdef double[::1] rstd = np.empty(g.ngroups)
    cdef double[::1] mh = np.zeros(1 if tiny or fused else g.ngroups)
    cdef double[::1] mhx = np.zeros(1 if tiny or fused else g.ngroups)
    cdef bint stream = lxn_stream_pays(&dx[0], dx.shape[0] * sizeof(floating), STREAM_BYTES)
    # g of a whole group in a per-thread buffer that stays in cache (not in dx, which
    # would be read for ownership, written twice and evicted to memory in between)
    cdef Py_ssize_t gsize = _runs_count(&g, 0, g.nruns)
    cdef bint use_gb = fused and act != 0 and gsize <= GBUF_MAX
    dt = np.float32 if floating is float else np.float64
    # per thread: z (pass 1), the streaming block (pass 2), g of one group
    cdef floating[:, ::1] scratch = np.empty(
        (nt, 2 * BLOCK + (BLOCK if stream else 0) if tiny else
         BLOCK + (BLOCK if stream else 0) + (gsize if use_gb else 0)), dt)
    cdef floating* zs = NULL
    cdef floating* gb = NULL
    cdef floating fp = <floating>p
    cdef const floating* px = &x[0]
    cdef const floating* ps = &scale[0]
    cdef const floating* pb = &bias[0]
    cdef const floating* pdy = &dy[0]
    cdef floating* pdx = &dx[0]
    cdef double* prg = NULL if g.vec else &run_g[0]
    cdef double* prgx = NULL if g.vec else &run_gx[0]
    cdef double* pcol = &col[0, 0]
    cdef double* pu = &usum[0]
    cdef double s, sx, cnt
    with nogil:
        if not tiny:  # (the tiny path: block by block)
            for q in range(g.ngroups):
                rstd[q] = 1 / sqrt(var[q] + eps)
        if tiny:
            with parallel(num_threads=nt):
                t = threadid()
                for u in prange((g.ngroups + tg - 1) // tg, schedule="static"):
                    _tiny_backward(act, fp, px, ps, pb, pdy, pdx, &scratch[t, 0], stream, &g, u * tg, min(g.ngroups, (u + 1) * tg), &mean[0],
                                   &var[0], &rstd[0], eps, prg, prgx, pcol + 2 * t * stride,
                                   pcol + (2 * t + 1) * stride, batch_stats)
                if stream:
                    lxn_fence()
        elif not fused:  # pass 1, group sums, pass 2
            for u in prange(units, num_threads=nt, schedule="static"):
                t = threadid()
                _unit_pass1(act, fp, px, ps, pb, pdy, pdx, NULL, &scratch[t, 0], &g, u,
                            mean[u // g.nck], rstd[u // g.nck], prg, prgx,
                            pcol + 2 * t * stride, pcol + (2 * t + 1) * stride, pu)
            if batch_stats:
                for q in range(g.ngroups):
                    s = 0
                    sx = 0
                    for j in range(g.nck):
                        s = s + pu[2 * (q * g.nck + j)]
                        sx = sx + pu[2 * (q * g.nck + j) + 1]
                    cnt = _runs_count(&g, 0, g.nruns)
                    mh[q] = s / cnt
                    mhx[q] = sx / cnt
            with parallel(num_threads=nt):
                zs = &scratch[threadid(), BLOCK] if stream else NULL
                for u in prange(units, schedule="static"):
                    q = u // g.nck
                    _unit_pass2(px, ps, pdy, pdx, NULL, zs, act == 0, &g, u, mean[q], rstd[q],
                                mh[q], mhx[q], batch_stats)
                if stream:
                    lxn_fence()
        else:  # one unit per group: both passes back to back
            with parallel(num_threads=nt):
                t = threadid()
                zs = &scratch[t, BLOCK] if stream else NULL
                gb = &scratch[t, BLOCK + (BLOCK if stream else 0)] if use_gb else NULL
                for u in prange(units, schedule="static"):
                    _unit_pass1(act, fp, px, ps, pb, pdy, pdx, gb, &scratch[t, 0], &g, u,
                                mean[u], rstd[u], prg, prgx,
                                pcol + 2 * t * stride, pcol + (2 * t + 1) * stride, pu)
                    _unit_pass2(px, ps, pdy, pdx, gb, zs, act == 0, &g, u, mean[u], rstd[u],
                                pu[2 * u] / gsize, pu[2 * u + 1] / gsize, True)
                if stream:
                    lxn_fence()
    if not g.vec:
        return np.asarray(run_g), np.asarray(run_gx)
    # per-thread rows added in thread order
    sums = np.asarray(col).reshape(nt, 2, stride)[:, :, :ncol]
    return sums[:, 0].sum(axis=0), sums[:, 1].sum(axis=0)


# ---- batchnorm with short runs: rows of columns -----------------------------------------
# batchnorm of (N, C) or (N, C, S) with small S reads each channel's runs of S elements a
# row (C S elements) apart: the per-group kernels above then pull a cache line per run
# and channel. Here x is a (rows, C S) matrix read row by row, each column with its own
# parameters and per-thread float64 column sums. Rows go in blocks of ``rb`` rows (at
# least ``COLS_BLOCK`` elements) per call of the C loops, whose parameter vectors hold
# ``rb`` copies of a row's.

cdef enum:
    COLS_BLOCK = 1024


cdef inline void _moments_cols(const floating* x, Py_ssize_t n, const double* k, double* s1,
                               double* s2) noexcept nogil:
    if floating is float:
        lxn_moments_cols_f(x, n, k, s1, s2)
    else:
        lxn_moments_cols_d(x, n, k, s1, s2)


cdef inline void _affine_cols(int act, floating p, const floating* x, const floating* mv,
                              const floating* av, const floating* bv, floating* z,
                              Py_ssize_t n) noexcept nogil:
    if floating is float:
        lxn_affine_cols_f(act, p, x, mv, av, bv, z, n)
    else:
        lxn_affine_cols_d(act, p, x, mv, av, bv, z, n)


cdef inline void _pass1_cols(int act, floating p, const floating* x, const floating* dy,
                             floating* g, Py_ssize_t n, const floating* mv, const floating* av,
                             const floating* bv, const double* md, double* cg,
                             double* cgx) noexcept nogil:
    if floating is float:
        lxn_pass1_cols_f(act, p, x, dy, g, n, mv, av, bv, md, cg, cgx)
    else:
        lxn_pass1_cols_d(act, p, x, dy, g, n, mv, av, bv, md, cg, cgx)


cdef inline void _dx_cols(floating* d, const floating* g, const floating* x, const floating* sv,
                          const floating* hm, const floating* r, const floating* m,
                          const floating* cc, Py_ssize_t n, bint batch) noexcept nogil:
    if floating is float:
        lxn_dx_cols_f(d, g, x, sv, hm, r, m, cc, n, batch)
    else:
        lxn_dx_cols_d(d, g, x, sv, hm, r, m, cc, n, batch)


cdef Py_ssize_t _cols_check(int act, Py_ssize_t rows, Py_ssize_t width, Py_ssize_t s,
                            Py_ssize_t nscale, Py_ssize_t nbias, Py_ssize_t nmean,
                            Py_ssize_t nvar) except -1:
    """The channel count ``width // s`` of a valid call (``ValueError`` otherwise)."""
    if not 0 <= act < N_ACTIVATIONS:
        raise ValueError(f"normalization kernels: unknown activation id {act}")
    if rows < 1 or s < 1 or width < s or width % s:
        raise ValueError(f"normalization kernels: bad columns geometry: {rows} rows of {width}, runs of {s}")
    cdef Py_ssize_t c = width // s
    for name, n in (("scale", nscale), ("bias", nbias), ("mean", nmean), ("var", nvar)):
        if n != c:
            raise ValueError(f"normalization kernels: {name} must have {c} elements, got {n}")
    return c


cdef inline Py_ssize_t _cols_rows(Py_ssize_t width) noexcept nogil:
    """Rows per call of the column loops: at least ``COLS_BLOCK`` elements."""
    return max(1, <Py_ssize_t>COLS_BLOCK // width)


ctypedef fused real:  # the column setters fill float64 and element-type vectors
    float
    double


cdef inline void _set_columns(real* v, Py_ssize_t rb, Py_ssize_t width, Py_ssize_t s,
                              Py_ssize_t c, real value) noexcept nogil:
    """``value`` into channel ``c``'s ``s`` columns of each of the ``rb`` row copies."""
    cdef Py_ssize_t b, t
    for b in range(rb):
        for t in range(s):
            v[b * width + c * s + t] = value


cdef void _affine_columns(floating* vec, Py_ssize_t stride, const double* mean, const double* var,
                          const floating* scale, const floating* bias, double eps, Py_ssize_t C,
                          Py_ssize_t s, Py_ssize_t rb, Py_ssize_t width) noexcept nogil:
    """Rows 0, 1, 2 of ``vec`` (``stride`` apart): each column's mean, ``rstd * scale`` and
    bias, as the C loops take them (rounded to the element type as the group kernels)."""
    cdef Py_ssize_t c
    cdef double r
    for c in range(C):
        r = 1 / sqrt(var[c] + eps)
        _set_columns(vec, rb, width, s, c, <floating>mean[c])
        _set_columns(vec + stride, rb, width, s, c, <floating>r * scale[c])
        _set_columns(vec + 2 * stride, rb, width, s, c, bias[c])


cdef void _fold(const double* acc, Py_ssize_t nt, Py_ssize_t stride, Py_ssize_t rb,
                Py_ssize_t width, Py_ssize_t s, Py_ssize_t c, double* s1,
                double* s2) noexcept nogil:
    """Channel ``c``'s two column sums: over threads (in order), row copies and its ``s``
    columns; ``acc`` rows ``2 t`` and ``2 t + 1`` are thread ``t``'s."""
    cdef Py_ssize_t t, b, i
    s1[0] = 0
    s2[0] = 0
    for t in range(nt):
        for b in range(rb):
            for i in range(b * width + c * s, b * width + c * s + s):
                s1[0] += acc[2 * t * stride + i]
                s2[0] += acc[(2 * t + 1) * stride + i]


def cols_forward(int act, double p, const floating[:, ::1] x, const floating[::1] scale,
                 const floating[::1] bias, floating[:, ::1] y, double[::1] mean,
                 double[::1] var, bint given, double eps, Py_ssize_t s):
    """batchnorm's ``y = act((x - mean) / sqrt(var + eps) * scale + bias)`` of ``x`` viewed as
    ``(rows, C * s)``: channel ``c`` is columns ``c s .. c s + s - 1`` of every row.

    ``mean``, ``var`` (per channel, float64) are read when ``given``, else written: moments
    about ``k``, the mean of the channel's elements in its first ``ceil(SHIFT_LEN / s)``
    rows (at least ``SHIFT_LEN`` elements where there are: the bound of the module
    docstring), in one read of ``x``, with per-thread float64 column sums added in thread
    order; then the normalize pass.
    """
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1]
    cdef Py_ssize_t C = _cols_check(act, R, L, s, scale.shape[0], bias.shape[0], mean.shape[0],
                                    var.shape[0])
    if y.shape[0] != R or y.shape[1] != L:
        raise ValueError(f"normalization kernels: y must have shape {(R, L)}")
    cdef int nt = num_threads_for(R * L)
    cdef Py_ssize_t rb = _cols_rows(L), nblk = (R + rb - 1) // rb, W = rb * L
    cdef Py_ssize_t stride = (W + PAD - 1) // PAD * PAD, blk, t, c, i, b, n0
    dt = np.float32 if floating is float else np.float64
    cdef double[::1] k = np.zeros(W)
    cdef double[:, ::1] acc = np.zeros((2 * nt, stride))
    cdef floating[:, ::1] vec = np.empty((3, W), dt)  # mean, rstd * scale, bias per column
    cdef double s1, s2, cnt = R * s, sh
    cdef floating fp = <floating>p
    with nogil:
        if not given:
            n0 = min(R, (SHIFT_LEN + s - 1) // s)
            for c in range(C):
                sh = 0
                for b in range(n0):
                    for i in range(c * s, c * s + s):
                        sh += x[b, i]
                sh /= n0 * s
                if not sh - sh == 0:  # Inf or NaN: shift by 0 (see _unit_stats)
                    sh = 0
                _set_columns(&k[0], rb, L, s, c, sh)
            for blk in prange(nblk, num_threads=nt, schedule="static"):
                t = threadid()
                _moments_cols(&x[blk * rb, 0], min(rb, R - blk * rb) * L, &k[0],
                              &acc[2 * t, 0], &acc[2 * t + 1, 0])
            for c in range(C):
                _fold(&acc[0, 0], nt, stride, rb, L, s, c, &s1, &s2)
                mean[c] = k[c * s] + s1 / cnt
                var[c] = max(s2 - s1 * (s1 / cnt), 0.0) / cnt
        _affine_columns(&vec[0, 0], W, &mean[0], &var[0], &scale[0], &bias[0], eps, C, s, rb, L)
        for blk in prange(nblk, num_threads=nt, schedule="static"):
            _affine_cols(act, fp, &x[blk * rb, 0], &vec[0, 0], &vec[1, 0], &vec[2, 0],
                         &y[blk * rb, 0], min(rb, R - blk * rb) * L)


def cols_backward(int act, double p, const floating[:, ::1] x, const floating[::1] scale,
                  const floating[::1] bias, const floating[:, ::1] dy, floating[:, ::1] dx,
                  const double[::1] mean, const double[::1] var, bint batch_stats, double eps,
                  Py_ssize_t s):
    """``dx`` and the per-channel float64 sums ``(sum(g), sum(g * xhat))`` of
    :func:`cols_forward`'s op (``batch_stats`` as in :func:`backward`).

    Pass 1 writes ``g = dy * act'`` (``z`` recomputed from ``x`` as in the forward) into
    ``dx`` and sums per column; pass 2 turns ``g`` into ``dx`` in place, with the expression
    of the per-group kernels.
    """
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1]
    cdef Py_ssize_t C = _cols_check(act, R, L, s, scale.shape[0], bias.shape[0], mean.shape[0],
                                    var.shape[0])
    if dy.shape[0] != R or dy.shape[1] != L or dx.shape[0] != R or dx.shape[1] != L:
        raise ValueError(f"normalization kernels: dy and dx must have shape {(R, L)}")
    cdef int nt = num_threads_for(R * L)
    cdef Py_ssize_t rb = _cols_rows(L), nblk = (R + rb - 1) // rb, W = rb * L
    cdef Py_ssize_t stride = (W + PAD - 1) // PAD * PAD, blk, t, c
    dt = np.float32 if floating is float else np.float64
    cdef double[::1] md = np.empty(W)
    cdef double[:, ::1] acc = np.zeros((2 * nt, stride))
    # per column: mean, rstd * scale, bias, scale, mean(h), rstd, rstd^3 mean(h * (x - mean))
    cdef floating[:, ::1] vec = np.empty((7, W), dt)
    cdef double[::1] sg = np.empty(C), sgx = np.empty(C)
    cdef double s1, s2, cnt = R * s, r, mh, mhx
    cdef floating fp = <floating>p
    with nogil:
        _affine_columns(&vec[0, 0], W, &mean[0], &var[0], &scale[0], &bias[0], eps, C, s, rb, L)
        for c in range(C):
            _set_columns(&md[0], rb, L, s, c, mean[c])
            _set_columns(&vec[3, 0], rb, L, s, c, scale[c])
            _set_columns(&vec[5, 0], rb, L, s, c, <floating>(1 / sqrt(var[c] + eps)))
        for blk in prange(nblk, num_threads=nt, schedule="static"):
            t = threadid()
            _pass1_cols(act, fp, &x[blk * rb, 0], &dy[blk * rb, 0], &dx[blk * rb, 0],
                        min(rb, R - blk * rb) * L, &vec[0, 0], &vec[1, 0], &vec[2, 0], &md[0],
                        &acc[2 * t, 0], &acc[2 * t + 1, 0])
        for c in range(C):
            _fold(&acc[0, 0], nt, stride, rb, L, s, c, &s1, &s2)
            r = 1 / sqrt(var[c] + eps)
            sg[c] = s1
            sgx[c] = s2 * r
            mh = s1 * scale[c] / cnt
            mhx = s2 * scale[c] / cnt
            _set_columns(&vec[4, 0], rb, L, s, c, <floating>mh)
            _set_columns(&vec[6, 0], rb, L, s, c, <floating>(r * r * r * mhx))
        for blk in prange(nblk, num_threads=nt, schedule="static"):
            _dx_cols(&dx[blk * rb, 0], &dx[blk * rb, 0], &x[blk * rb, 0], &vec[3, 0], &vec[4, 0],
                     &vec[5, 0], &vec[0, 0], &vec[6, 0], min(rb, R - blk * rb) * L, batch_stats)
    return np.asarray(sg), np.asarray(sgx)
