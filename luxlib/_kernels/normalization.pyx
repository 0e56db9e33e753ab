"""Fused normalization kernels (batchnorm, groupnorm, instancenorm, layernorm),
forward and backward, float32 and float64.

Every op is described by one geometry over a flat C-contiguous ``x``: ``ngroups``
*groups* (the sets the statistics run over), each made of ``nruns`` *runs* of
contiguous elements (``runlen`` long, the last one ``lastlen``)::

    run k of group q starts at   q * gstride + k * rstride
    its affine index is          (q % amod) * agstride + k * astep   (+ i with ``vec``)

``vec`` False: one scale/bias per run (a channel); True: one per element (layernorm).

Statistics are two-pass (the mean, then the sum of squared deviations), accumulated
in float64 over several independent partial sums. A *unit* of work is a group, or a
chunk of a group's runs when there are too few groups to keep the threads busy; chunk
statistics are merged with Chan's formula in chunk order. With one chunk per group,
statistics and the normalize + affine + activation pass run back to back on the same
group (its data still in cache); otherwise they are two parallel phases.

The backward pass is closed-form, with ``g = dy * act'`` and ``h = g * scale``:
``dx = rstd * (h - mean(h) - xhat * mean(h * xhat))`` (batch statistics) or
``rstd * h`` (given statistics). Pass 1 writes ``g`` into ``dx`` and reduces
``sum(h)``, ``sum(h * xhat)`` per unit and ``sum(g)``, ``sum(g * xhat)`` per run (or
per affine element, in per-thread float64 rows added in thread order); pass 2
rewrites ``dx``. ``act'`` is taken from ``z`` (and ``y = act(z)`` for output-only
activations) recomputed per block from ``x``, which pass 1 reads anyway: bitwise the
forward's values, and one array less to read than a stored ``y``.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport sqrt

from ._activation cimport N_ACTIVATIONS as _N_IDS, _output_only, act_backward_n, act_forward_n
from ._openmp_helpers cimport num_threads_for

#: number of activation ids the kernels implement (ids 0 .. N_ACTIVATIONS - 1)
N_ACTIVATIONS = _N_IDS

cdef enum:
    # elements handled per step inside a run (affine then activation while in L1)
    BLOCK = 1024
    # fewer groups than this many per thread: split groups into chunks of runs
    UNITS_PER_THREAD = 4
    # ... of at least this many elements
    MIN_CHUNK = 4096
    # per-thread float64 rows start on different cache lines
    PAD = 8


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
    /* tail index kept the accumulators in memory and the main loop scalar */

    LX_INLINE double lxn_combine(double* acc) {
        for (int w = LXN_LANES / 2; w > 0; w /= 2)
            for (int k = 0; k < w; k++)
                acc[k] += acc[k + w];
        return acc[0];
    }

    /* lxn_sum_g's loop, with GV(j) the j-th float64 term of g (* w). Each step */
    /* converts its lanes into v, d first: written as one expression, GCC 12 */
    /* vectorizes the sum of v but keeps the v * (x - m) chain scalar */
    #define LXN_G1(j) ((double)g[j])
    #define LXN_GW(j) (g[j] * (double)w[j])
    #define LXN_SUM_G_LOOP(GV) \\
        for (i = 0; i < nl; i += LXN_LANES) { \\
            for (k = 0; k < LXN_LANES; k++) { v[k] = GV(i + k); d[k] = x[i + k] - m; } \\
            for (k = 0; k < LXN_LANES; k++) { acc[k] += v[k]; accx[k] += v[k] * d[k]; } \\
        } \\
        for (i = nl; i < n; i++) { \\
            v[0] = GV(i); acc[LXN_LANES - 1] += v[0]; accx[LXN_LANES - 1] += v[0] * (x[i] - m); }

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

    #define LXN_DEFINE(T, S) \\
    /* sum(x) */ \\
    static LX_CLONES double lxn_sum_##S(const T* x, ptrdiff_t n) { \\
        double acc[LXN_LANES] = {0}; \\
        ptrdiff_t i, k, nl = n - n % LXN_LANES; \\
        for (i = 0; i < nl; i += LXN_LANES) \\
            for (k = 0; k < LXN_LANES; k++) acc[k] += x[i + k]; \\
        for (i = nl; i < n; i++) acc[LXN_LANES - 1] += x[i]; \\
        return lxn_combine(acc); \\
    } \\
    /* sum((x - m)^2) */ \\
    static LX_CLONES double lxn_sum_sq_dev_##S(const T* x, ptrdiff_t n, double m) { \\
        double acc[LXN_LANES] = {0}, d; \\
        ptrdiff_t i, k, nl = n - n % LXN_LANES; \\
        for (i = 0; i < nl; i += LXN_LANES) \\
            for (k = 0; k < LXN_LANES; k++) { d = x[i + k] - m; acc[k] += d * d; } \\
        for (i = nl; i < n; i++) { d = x[i] - m; acc[LXN_LANES - 1] += d * d; } \\
        return lxn_combine(acc); \\
    } \\
    /* s += sum(g * w), sx += sum(g * w * (x - m)); w NULL means 1 */ \\
    static LX_CLONES void lxn_sum_g_##S(const T* g, const T* w, const T* x, ptrdiff_t n, \\
                                        double m, double* s, double* sx) { \\
        double acc[LXN_LANES] = {0}, accx[LXN_LANES] = {0}, v[LXN_LANES], d[LXN_LANES]; \\
        ptrdiff_t i, k, nl = n - n % LXN_LANES; \\
        if (w == NULL) { LXN_SUM_G_LOOP(LXN_G1) } else { LXN_SUM_G_LOOP(LXN_GW) } \\
        *s += lxn_combine(acc); \\
        *sx += lxn_combine(accx); \\
    } \\
    /* cg[i] += g[i], cgx[i] += g[i] * ((x[i] - m) * r) */ \\
    static LX_CLONES void lxn_cols_##S(const T* g, const T* x, ptrdiff_t n, double m, \\
                                       double r, double* restrict cg, double* restrict cgx) { \\
        for (ptrdiff_t i = 0; i < n; i++) { \\
            double v = g[i]; cg[i] += v; cgx[i] += v * ((x[i] - m) * r); } \\
    } \\
    /* z = (x - m) * r * sc + bias, per element (vec) or sc[0], bias[0] */ \\
    static LX_CLONES void lxn_affine_##S(const T* x, const T* sc, const T* bias, \\
                                         T* restrict z, ptrdiff_t n, T m, T r, int vec) { \\
        ptrdiff_t i; \\
        if (vec) { \\
            for (i = 0; i < n; i++) z[i] = (x[i] - m) * r * sc[i] + bias[i]; \\
        } else { \\
            T a = r * sc[0], b = bias[0]; \\
            for (i = 0; i < n; i++) z[i] = (x[i] - m) * a + b; \\
        } \\
    } \\
    /* d = h * r with h = d * (sc[i] or s) (given statistics), or */ \\
    /* d = (h - hm) * r - (x - m) * cc (batch statistics) */ \\
    static LX_CLONES LXN_NO_CONTRACT void lxn_dx_##S(T* d, const T* x, const T* sc, T s, \\
                                                     ptrdiff_t n, T hm, T r, T m, T cc, \\
                                                     int batch) { \\
        LXN_NO_CONTRACT_BODY \\
        ptrdiff_t i; \\
        if (!batch) { \\
            if (sc) for (i = 0; i < n; i++) d[i] = d[i] * sc[i] * r; \\
            else for (i = 0; i < n; i++) d[i] = d[i] * s * r; \\
        } else if (sc) { \\
            for (i = 0; i < n; i++) d[i] = (d[i] * sc[i] - hm) * r - (x[i] - m) * cc; \\
        } else { \\
            for (i = 0; i < n; i++) d[i] = (d[i] * s - hm) * r - (x[i] - m) * cc; \\
        } \\
    }

    LXN_DEFINE(float, f)
    LXN_DEFINE(double, d)
    """
    double lxn_sum_f(const float* x, Py_ssize_t n) nogil
    double lxn_sum_d(const double* x, Py_ssize_t n) nogil
    double lxn_sum_sq_dev_f(const float* x, Py_ssize_t n, double m) nogil
    double lxn_sum_sq_dev_d(const double* x, Py_ssize_t n, double m) nogil
    void lxn_sum_g_f(const float* g, const float* w, const float* x, Py_ssize_t n, double m,
                     double* s, double* sx) nogil
    void lxn_sum_g_d(const double* g, const double* w, const double* x, Py_ssize_t n, double m,
                     double* s, double* sx) nogil
    void lxn_cols_f(const float* g, const float* x, Py_ssize_t n, double m, double r, double* cg,
                    double* cgx) nogil
    void lxn_cols_d(const double* g, const double* x, Py_ssize_t n, double m, double r, double* cg,
                    double* cgx) nogil
    void lxn_affine_f(const float* x, const float* sc, const float* bias, float* z, Py_ssize_t n,
                      float m, float r, bint vec) nogil
    void lxn_affine_d(const double* x, const double* sc, const double* bias, double* z,
                      Py_ssize_t n, double m, double r, bint vec) nogil
    void lxn_dx_f(float* d, const float* x, const float* sc, float s, Py_ssize_t n, float hm,
                  float r, float m, float cc, bint batch) nogil
    void lxn_dx_d(double* d, const double* x, const double* sc, double s, Py_ssize_t n, double hm,
                  double r, double m, double cc, bint batch) nogil


cdef inline double _sum(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return lxn_sum_f(x, n)
    else:
        return lxn_sum_d(x, n)


cdef inline double _sum_sq_dev(const floating* x, Py_ssize_t n, double m) noexcept nogil:
    """``sum((x - m) ** 2)``."""
    if floating is float:
        return lxn_sum_sq_dev_f(x, n, m)
    else:
        return lxn_sum_sq_dev_d(x, n, m)


cdef inline void _sum_g(const floating* g, const floating* w, const floating* x, Py_ssize_t n,
                        double m, double* s, double* sx) noexcept nogil:
    """``s += sum(g * w)``, ``sx += sum(g * w * (x - m))``; ``w`` NULL means 1."""
    if floating is float:
        lxn_sum_g_f(g, w, x, n, m, s, sx)
    else:
        lxn_sum_g_d(g, w, x, n, m, s, sx)


cdef inline void _cols(const floating* g, const floating* x, Py_ssize_t n, double m, double r,
                       double* cg, double* cgx) noexcept nogil:
    """``cg[i] += g[i]``, ``cgx[i] += g[i] * (x[i] - m) * r`` (per-element affine sums)."""
    if floating is float:
        lxn_cols_f(g, x, n, m, r, cg, cgx)
    else:
        lxn_cols_d(g, x, n, m, r, cg, cgx)


cdef inline void _affine(const floating* x, const floating* scale, const floating* bias,
                         floating* z, Py_ssize_t n, floating m, floating r, bint vec) noexcept nogil:
    """``z = (x - m) * r * scale + bias``: per element (``vec``) or ``scale[0]``, ``bias[0]``."""
    if floating is float:
        lxn_affine_f(x, scale, bias, z, n, m, r, vec)
    else:
        lxn_affine_d(x, scale, bias, z, n, m, r, vec)


cdef inline void _dx(floating* d, const floating* x, const floating* sc, floating s, Py_ssize_t n,
                     floating hm, floating r, floating m, floating cc, bint batch) noexcept nogil:
    """``dx`` from ``h = d * (sc[i] if sc else s)``: ``(h - hm) * r - (x - m) * cc`` with
    ``batch``, else ``h * r``."""
    if floating is float:
        lxn_dx_f(d, x, sc, s, n, hm, r, m, cc, batch)
    else:
        lxn_dx_d(d, x, sc, s, n, hm, r, m, cc, batch)


# ---- per-unit work -----------------------------------------------------------------

cdef void _unit_stats(const floating* x, const Geom* g, Py_ssize_t u, double* cnt, double* mean,
                      double* m2) noexcept nogil:
    """Count, mean and sum of squared deviations of unit ``u`` (two passes)."""
    cdef Py_ssize_t q, k0, k1, k, off, a, n
    cdef Py_ssize_t total = _unit(g, u, &q, &k0, &k1)
    cdef double s = 0, m
    for k in range(k0, k1):
        n = _run(g, q, k, &off, &a)
        s += _sum(x + off, n)
    m = s / total
    s = 0
    for k in range(k0, k1):
        n = _run(g, q, k, &off, &a)
        s += _sum_sq_dev(x + off, n, m)
    cnt[u] = total
    mean[u] = m
    m2[u] = s


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
        gmean[q] = m
        gvar[q] = s / n


cdef void _unit_forward(int act, floating p, const floating* x, const floating* scale,
                        const floating* bias, floating* y, const Geom* g, Py_ssize_t u,
                        double mean, double rstd) noexcept nogil:
    """``y = act((x - mean) * rstd * scale + bias)`` over unit ``u``."""
    cdef Py_ssize_t q, k0, k1, k, off, a, n, b, nb
    cdef floating m = <floating>mean, r = <floating>rstd
    _unit(g, u, &q, &k0, &k1)
    for k in range(k0, k1):
        n = _run(g, q, k, &off, &a)
        for b in range(0, n, 1024):  # BLOCK (a literal step compiles to a C loop)
            nb = min(<Py_ssize_t>BLOCK, n - b)
            _affine(x + off + b, scale + a + (b if g.vec else 0), bias + a + (b if g.vec else 0),
                    y + off + b, nb, m, r, g.vec)
            if act != 0:
                act_forward_n(act, p, y + off + b, y + off + b, nb)


cdef void _unit_pass1(int act, floating p, const floating* x, const floating* scale,
                      const floating* bias, const floating* dy, floating* dx, floating* z,
                      const Geom* g, Py_ssize_t u, double mean, double rstd, double* run_g,
                      double* run_gx, double* col_g, double* col_gx, double* usum) noexcept nogil:
    """``dx = g = dy * act'`` over unit ``u`` and its sums (see the module docstring).

    ``z`` (and ``y = act(z)`` for output-only activations) is recomputed from ``x``
    into the ``BLOCK``-long scratch ``z``, bitwise as the forward pass computed it:
    cheaper than reading a stored ``y``. ``usum[2u], usum[2u+1]`` receive
    ``sum(h)``, ``sum(h * (x - mean))``; per-run sums go to ``run_g``/``run_gx``
    (indexed ``offset // runlen``), per-element ones are added into ``col_*``.
    """
    cdef Py_ssize_t q, k0, k1, k, off, a, n, b, nb
    cdef floating m = <floating>mean, r = <floating>rstd
    cdef const floating* src
    cdef const floating* sc
    cdef double sh = 0, shx = 0, sg, sgx
    _unit(g, u, &q, &k0, &k1)
    for k in range(k0, k1):
        n = _run(g, q, k, &off, &a)
        sg = 0
        sgx = 0
        for b in range(0, n, 1024):  # BLOCK
            nb = min(<Py_ssize_t>BLOCK, n - b)
            sc = scale + a + (b if g.vec else 0)
            if act == 0:
                src = dy + off + b  # identity: act' = 1 reads nothing meaningful
            else:
                _affine(x + off + b, sc, bias + a + (b if g.vec else 0), z, nb, m, r, g.vec)
                if _output_only(act):
                    act_forward_n(act, p, z, z, nb)
                src = z
            act_backward_n(act, p, src, dy + off + b, dx + off + b, nb)
            if g.vec:
                _sum_g(dx + off + b, sc, x + off + b, nb, mean, &sh, &shx)
                _cols(dx + off + b, x + off + b, nb, mean, rstd, col_g + a + b, col_gx + a + b)
            else:
                _sum_g(dx + off + b, <const floating*>NULL, x + off + b, nb, mean, &sg, &sgx)
        if not g.vec:
            run_g[off // g.runlen] = sg
            run_gx[off // g.runlen] = sgx * rstd
            sh += sg * scale[a]
            shx += sgx * scale[a]
    usum[2 * u] = sh
    usum[2 * u + 1] = shx


cdef void _unit_pass2(const floating* x, const floating* scale, floating* dx, const Geom* g,
                      Py_ssize_t u, double mean, double rstd, double mh, double mhx,
                      bint batch_stats) noexcept nogil:
    """``dx = rstd * (h - mh - xhat * rstd * mhx)`` over unit ``u`` (``dx`` holds ``g``),
    with ``mh`` the mean of ``h`` and ``mhx`` the mean of ``h * (x - mean)``; given
    statistics: ``dx = rstd * h`` (``x`` not read: a NaN there stays out of ``dx``).

    ``h - mh`` comes first, unscaled: it cancels exactly where it should (one element).
    """
    cdef Py_ssize_t q, k0, k1, k, off, a, n
    cdef floating m = <floating>mean, r = <floating>rstd
    cdef floating hm = <floating>mh, cc = <floating>(rstd * rstd * rstd * mhx)
    _unit(g, u, &q, &k0, &k1)
    for k in range(k0, k1):
        n = _run(g, q, k, &off, &a)
        _dx(dx + off, x + off, scale + a if g.vec else NULL, scale[a], n, hm, r, m, cc,
            batch_stats)


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
    cdef double[:, ::1] chunk = np.empty((3, units))
    cdef double[::1] rstd = np.empty(g.ngroups)
    cdef floating fp = <floating>p
    cdef const floating* px = &x[0]
    cdef const floating* ps = &scale[0]
    cdef const floating* pb = &bias[0]
    cdef floating* py = &y[0]
    cdef double* c0 = &chunk[0, 0]
    cdef double* c1 = &chunk[1, 0]
    cdef double* c2 = &chunk[2, 0]
    with nogil:
        if given:
            for q in range(g.ngroups):
                rstd[q] = 1 / sqrt(var[q] + eps)
        elif g.nck > 1:  # chunked statistics, merged, then the normalize phase
            for u in prange(units, num_threads=nt, schedule="static"):
                _unit_stats(px, &g, u, c0, c1, c2)
            _merge(&g, c0, c1, c2, &mean[0], &var[0])
            for q in range(g.ngroups):
                rstd[q] = 1 / sqrt(var[q] + eps)
        if given or g.nck > 1:
            for u in prange(units, num_threads=nt, schedule="static"):
                _unit_forward(act, fp, px, ps, pb, py, &g, u, mean[u // g.nck], rstd[u // g.nck])
        else:  # one unit per group: statistics and normalize back to back
            for u in prange(units, num_threads=nt, schedule="static"):
                _unit_stats(px, &g, u, c0, c1, c2)
                mean[u] = c1[u]
                var[u] = c2[u] / c0[u]
                rstd[u] = 1 / sqrt(var[u] + eps)
                _unit_forward(act, fp, px, ps, pb, py, &g, u, mean[u], rstd[u])


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
    cdef double[::1] usum = np.empty(2 * units)
    cdef double[::1] rstd = np.empty(g.ngroups)
    cdef double[::1] mh = np.zeros(g.ngroups), mhx = np.zeros(g.ngroups)
    scratch_np = np.empty((nt, BLOCK), np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] scratch = scratch_np
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
        for q in range(g.ngroups):
            rstd[q] = 1 / sqrt(var[q] + eps)
        if g.nck > 1 or not batch_stats:  # pass 1, group sums, pass 2
            for u in prange(units, num_threads=nt, schedule="static"):
                t = threadid()
                _unit_pass1(act, fp, px, ps, pb, pdy, pdx, &scratch[t, 0], &g, u,
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
            for u in prange(units, num_threads=nt, schedule="static"):
                q = u // g.nck
                _unit_pass2(px, ps, pdx, &g, u, mean[q], rstd[q], mh[q], mhx[q], batch_stats)
        else:  # one unit per group: both passes back to back
            for u in prange(units, num_threads=nt, schedule="static"):
                t = threadid()
                _unit_pass1(act, fp, px, ps, pb, pdy, pdx, &scratch[t, 0], &g, u,
                            mean[u], rstd[u], prg, prgx,
                            pcol + 2 * t * stride, pcol + (2 * t + 1) * stride, pu)
                cnt = _runs_count(&g, 0, g.nruns)
                _unit_pass2(px, ps, pdx, &g, u, mean[u], rstd[u], pu[2 * u] / cnt,
                            pu[2 * u + 1] / cnt, True)
    if not g.vec:
        return np.asarray(run_g), np.asarray(run_gx)
    # per-thread rows added in thread order
    sums = np.asarray(col).reshape(nt, 2, stride)[:, :, :ncol]
    return sums[:, 0].sum(axis=0), sums[:, 1].sum(axis=0)
