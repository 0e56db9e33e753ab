"""Convolution kernels, forward and backward, float32 and float64.

Every convolution is run as a 3-D one: ``x`` is a C-contiguous ``(N, C_in, D, H, W)``
array, ``weight`` ``(C_out, C_in/G, kd, kh, kw)`` and the output ``(N, C_out, P)`` with
``P = OD * OH * OW`` output positions (1-D and 2-D get unit axes).

Two schemes:

- GEMM (``gemm_forward`` / ``gemm_backward``): per sample and group, the output
  positions are cut into tiles of ``pc`` columns; a tile of the im2col matrix
  ``col`` ``(Cg*K, pc)`` (``K`` kernel taps) is gathered into a per-thread workspace and
  ``z[g, :, tile] = W_g (Cog, Cg*K) @ col`` runs in BLAS, followed by the bias +
  activation epilogue on the tile while it is in cache. A 1x1 convolution with unit
  stride and no padding reads ``x`` itself as ``col`` (no gather). Reverse:
  ``dW_g += dz_tile @ col^T`` into per-thread accumulators added in thread order, and
  ``dcol = W_g^T @ dz_tile`` scattered back into ``dx`` (col2im).
- Direct depthwise (``depthwise_*``, ``C_in/G == 1``): each output plane is a sum over
  the taps of a scaled shifted input plane; the reverse pass runs per input channel,
  its ``dx`` planes and its filter gradients in one sweep (the direct scheme below: per
  (sample, input channel) plane, with ``dz = dy * act'`` formed there).

The GEMM scheme visits the input through :func:`_tap` (one tile of output positions,
any start), the strided depthwise scheme through :func:`_plane` (whole planes, row by
row with no division); both touch only the in-bounds input samples (padding is never
materialized). Unit-stride depthwise copies each plane into a zero-padded per-thread
buffer instead, where every tap is one contiguous loop over the whole plane
(:func:`_dw_forward_flat`, :func:`_dw_backward_flat`); 1-D/2-D ones with output rows as
wide as the input rows and a compiled kernel shape sum all taps in one pass over flat
rows, the columns unpadded (:func:`_dw_forward_direct`, :func:`_dw_backward_direct`).
A flipped kernel (true convolution) reads spatial tap ``k-1-t`` for
weight tap ``t``.

Threads: samples (GEMM), planes (depthwise forward) or input channels (depthwise
reverse) are spread over threads with a static schedule; GEMM regions then need
single-threaded BLAS (the caller arranges it). When fewer samples than threads exist,
the samples run serially and BLAS may thread.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memcpy, memset

from ._activation cimport N_ACTIVATIONS, act_backward_n, act_forward_n
from ._blas cimport gemm
from ._conv cimport (LX_DW_L, lx_conv_plane_d, lx_conv_plane_f, lx_dw_flat_dw_d,
                     lx_dw_flat_dw_f, lx_dw_flat_fwd_d, lx_dw_flat_fwd_f, lx_dwd_bwd_d,
                     lx_dwd_bwd_f, lx_dwd_fold_d, lx_dwd_fold_f, lx_dwd_fwd_d, lx_dwd_fwd_f,
                     lx_dwd_lanes_d, lx_dwd_lanes_f, lx_dwd_shape)
from ._openmp_helpers cimport num_threads_for

cdef extern from *:
    """
    /* The strided rows of the im2col gather (d[i] = s[i * st]) and the col2im scatter
       (d[i * st] += s[i]), in several instruction-set versions (LX_CLONES, _fastmath.pxd).
       Stride 2 gets loops of its own that GCC vectorizes with permutes (AVX-512: one
       vpermt2ps per 16 values): the scatter rewrites each odd neighbour unchanged so that
       the pairs are plain interleaved loads and stores (a row belongs to one thread), the
       last pair alone not (its odd neighbour may lie past the array). */
    #define LX_DEFINE_STRIDED_ROWS(T, S) \
    static LX_CLONES void lx_gather_##S(T* restrict d, const T* restrict s, ptrdiff_t n, \
                                        ptrdiff_t st) { \
        ptrdiff_t i; \
        if (st == 2) { for (i = 0; i < n; i++) d[i] = s[2 * i]; } \
        else { for (i = 0; i < n; i++) d[i] = s[i * st]; } \
    } \
    static LX_CLONES void lx_scatter_##S(T* restrict d, const T* restrict s, ptrdiff_t n, \
                                         ptrdiff_t st) { \
        ptrdiff_t i; \
        if (st == 2) { \
            for (i = 0; i + 1 < n; i++) { \
                T a = d[2 * i] + s[i], b = d[2 * i + 1]; \
                d[2 * i] = a; \
                d[2 * i + 1] = b; \
            } \
            if (n > 0) d[2 * (n - 1)] += s[n - 1]; \
        } else { for (i = 0; i < n; i++) d[i * st] += s[i]; } \
    }
    LX_DEFINE_STRIDED_ROWS(float, f)
    LX_DEFINE_STRIDED_ROWS(double, d)
    """
    void lx_gather_f(float* d, const float* s, Py_ssize_t n, Py_ssize_t st) noexcept nogil
    void lx_gather_d(double* d, const double* s, Py_ssize_t n, Py_ssize_t st) noexcept nogil
    void lx_scatter_f(float* d, const float* s, Py_ssize_t n, Py_ssize_t st) noexcept nogil
    void lx_scatter_d(double* d, const double* s, Py_ssize_t n, Py_ssize_t st) noexcept nogil

cdef struct Geom:
    Py_ssize_t C, Co, G, Cg, Cog       # channels, groups, channels per group
    # per axis (D, H, W): input, output and kernel sizes, stride, dilation, leading padding
    Py_ssize_t ind[3]
    Py_ssize_t outd[3]
    Py_ssize_t k[3]
    Py_ssize_t s[3]
    Py_ssize_t d[3]
    Py_ssize_t lo[3]
    Py_ssize_t K, P, S                 # taps, output positions, input positions
    bint flip


cdef enum Mode:
    GATHER   # seg[p] = x[pos(p)], 0 where out of bounds (im2col)
    SCATTER  # x[pos(p)] += seg[p] (col2im)
    ACC      # seg[p] += alpha * x[pos(p)] (depthwise forward)
    GRAD     # dx[pos(p)] += alpha * seg[p], acc[ow(p)] += seg[p] * x[pos(p)] (depthwise reverse)


cdef Geom _geom(const Py_ssize_t* xs, const Py_ssize_t* ws, const Py_ssize_t* ys, tuple stride,
                tuple dilation, tuple lo, int groups, bint flip) except *:
    cdef Geom g
    cdef int a
    if ys[0] != xs[0] or ys[1] != ws[0] or xs[1] != ws[1] * groups or ws[0] % groups:
        raise ValueError("conv kernels: x, weight and the output do not fit")
    g.C, g.Co, g.G = xs[1], ws[0], groups
    g.Cg, g.Cog = ws[1], ws[0] // groups
    g.K = g.P = g.S = 1
    for a in range(3):
        g.ind[a], g.outd[a], g.k[a] = xs[2 + a], ys[2 + a], ws[2 + a]
        g.s[a], g.d[a], g.lo[a] = stride[a], dilation[a], lo[a]
        g.K *= g.k[a]
        g.P *= g.outd[a]
        g.S *= g.ind[a]
    g.flip = flip
    return g


cdef inline void _offsets(const Geom* g, Py_ssize_t t, Py_ssize_t* off) noexcept nogil:
    """Input offset per axis (``pos = o * stride + off``) of weight tap ``t``."""
    cdef Py_ssize_t a, i, r = t
    for a in range(2, -1, -1):
        i = r % g.k[a]
        r = r // g.k[a]
        if g.flip:
            i = g.k[a] - 1 - i
        off[a] = i * g.d[a] - g.lo[a]


cdef inline Py_ssize_t _first(Py_ssize_t off, Py_ssize_t s) noexcept nogil:
    """Smallest ``o >= 0`` with ``o * s + off >= 0``."""
    return 0 if off >= 0 else (-off + s - 1) // s


cdef inline Py_ssize_t _end(Py_ssize_t off, Py_ssize_t s, Py_ssize_t n) noexcept nogil:
    """One past the largest ``o`` with ``o * s + off < n`` (0 if none)."""
    return 0 if n - 1 - off < 0 else (n - 1 - off) // s + 1


cdef void _tap(Mode mode, const floating* x, floating* seg, const Geom* g,
               const Py_ssize_t* off, Py_ssize_t p0, Py_ssize_t pc) noexcept nogil:
    """GATHER or SCATTER between one input plane ``x`` (D, H, W) and ``seg``, the values
    of output positions ``p0 .. p0 + pc`` for one kernel tap with offsets ``off``. The
    output row ``(od, oh)`` advances incrementally (no division per row)."""
    cdef Py_ssize_t OH = g.outd[1], OW = g.outd[2], IH = g.ind[1], IW = g.ind[2]
    cdef Py_ssize_t sw = g.s[2], offw = off[2]
    cdef Py_ssize_t wlo = _first(offw, sw), whi = min(_end(offw, sw, IW), OW)
    cdef Py_ssize_t p = p0, end = p0 + pc, ow0 = p0 % OW, ow1, lo, hi, i, di, hi_
    cdef Py_ssize_t od = p0 // OW // OH, oh = p0 // OW % OH
    cdef const floating* xr
    cdef floating* sr
    while p < end:
        ow1 = min(OW, ow0 + end - p)
        sr = seg + (p - p0) - ow0  # sr[ow] is the value of output column ow
        di = od * g.s[0] + off[0]
        hi_ = oh * g.s[1] + off[1]
        if 0 <= di < g.ind[0] and 0 <= hi_ < IH:
            lo = min(max(wlo, ow0), ow1)
            hi = max(min(whi, ow1), lo)
            xr = x + (di * IH + hi_) * IW + offw
            if mode == GATHER:
                for i in range(ow0, lo):
                    sr[i] = 0
                if sw == 1:
                    memcpy(sr + lo, xr + lo, (hi - lo) * sizeof(floating))
                elif floating is float:
                    lx_gather_f(sr + lo, xr + lo * sw, hi - lo, sw)
                else:
                    lx_gather_d(sr + lo, xr + lo * sw, hi - lo, sw)
                for i in range(hi, ow1):
                    sr[i] = 0
            elif sw == 1:
                for i in range(lo, hi):
                    (<floating*>xr)[i] += sr[i]
            elif floating is float:
                lx_scatter_f(<floating*>xr + lo * sw, sr + lo, hi - lo, sw)
            else:
                lx_scatter_d(<floating*>xr + lo * sw, sr + lo, hi - lo, sw)
        elif mode == GATHER:
            memset(sr + ow0, 0, (ow1 - ow0) * sizeof(floating))
        p += ow1 - ow0
        ow0 = 0
        oh += 1
        if oh == OH:
            oh = 0
            od += 1


cdef void _plane(Mode mode, floating alpha, const floating* x, floating* dx, floating* seg,
                 floating* acc, const Geom* g, const Py_ssize_t* off) noexcept nogil:
    """ACC or GRAD between input plane ``x`` (D, H, W) (and its gradient ``dx``) and a
    whole output plane ``seg`` for one kernel tap with offsets ``off``; ``acc`` has one
    entry per output column. Only the in-bounds rectangle of output positions is walked,
    row by row (``lx_conv_plane_*``: one vectorized loop per row, no division)."""
    cdef Py_ssize_t lo[3]
    cdef Py_ssize_t hi[3]
    cdef int a
    for a in range(3):
        lo[a] = _first(off[a], g.s[a])
        hi[a] = max(min(_end(off[a], g.s[a], g.ind[a]), g.outd[a]), lo[a])
    if floating is float:
        lx_conv_plane_f(mode == GRAD, alpha, x, dx, seg, acc, lo, hi, g.s, off, g.outd[1],
                        g.outd[2], g.ind[1], g.ind[2])
    else:
        lx_conv_plane_d(mode == GRAD, alpha, x, dx, seg, acc, lo, hi, g.s, off, g.outd[1],
                        g.outd[2], g.ind[1], g.ind[2])


cdef void _cols(Mode mode, const floating* x, floating* col, const Geom* g,
                Py_ssize_t p0, Py_ssize_t pc) noexcept nogil:
    """im2col (GATHER) or col2im (SCATTER) of one group of one sample: ``x`` (Cg, S),
    ``col`` (Cg*K, pc), row ``c*K + t`` for channel ``c`` and weight tap ``t``."""
    cdef Py_ssize_t c, t
    cdef Py_ssize_t off[3]
    for t in range(g.K):
        _offsets(g, t, off)
        for c in range(g.Cg):
            _tap(mode, x + c * g.S, col + (c * g.K + t) * pc, g, off, p0, pc)


cdef inline void _epilogue(int act, floating p, floating* z, const floating* bias,
                           floating* y, Py_ssize_t rows, Py_ssize_t ld, Py_ssize_t n) noexcept nogil:
    """Rows of ``n`` values ``ld`` apart: ``z += bias[row]``, ``y = act(z)`` (``y`` may be ``z``)."""
    cdef Py_ssize_t r, i
    for r in range(rows):
        if bias != NULL:
            for i in range(n):
                z[r * ld + i] += bias[r]
        if act != 0 or y != z:
            act_forward_n(act, p, z + r * ld, y + r * ld, n)


cdef inline bint _is_1x1(const Geom* g) noexcept nogil:
    return (g.K == 1 and g.lo[0] == 0 and g.lo[1] == 0 and g.lo[2] == 0 and g.s[0] == 1
            and g.s[1] == 1 and g.s[2] == 1 and g.P == g.S)


# ---- GEMM scheme ------------------------------------------------------------------

cdef void _gemm_forward_sample(int act, floating p, const floating* x, const floating* w,
                               const floating* bias, floating* z, floating* y, floating* col,
                               const Geom* g, Py_ssize_t pcmax) noexcept nogil:
    cdef Py_ssize_t grp, u, p0, pc, ldb, CgK = g.Cg * g.K
    cdef bint direct = _is_1x1(g)
    cdef const floating* b
    cdef floating* zg
    for grp in range(g.G):
        zg = z + grp * g.Cog * g.P
        for u in range((g.P + pcmax - 1) // pcmax):
            p0 = u * pcmax
            pc = min(pcmax, g.P - p0)
            if direct:
                b, ldb = x + grp * g.Cg * g.S + p0, g.P
            else:
                _cols(GATHER, x + grp * g.Cg * g.S, col, g, p0, pc)
                b, ldb = col, pc
            gemm(False, False, g.Cog, pc, CgK, <floating>1, w + grp * g.Cog * CgK, CgK,
                 b, ldb, <floating>0, zg + p0, g.P)
            _epilogue(act, p, zg + p0, NULL if bias == NULL else bias + grp * g.Cog,
                      y + grp * g.Cog * g.P + p0, g.Cog, g.P, pc)


cdef void _gemm_backward_sample(const floating* x, const floating* w, const floating* dz,
                                floating* dx, floating* dw, floating* col, floating* dcol,
                                const Geom* g, Py_ssize_t pcmax) noexcept nogil:
    """Adds this sample's filter gradient into ``dw``; writes its ``dx`` (unless NULL)."""
    cdef Py_ssize_t grp, u, p0, pc, ldb, CgK = g.Cg * g.K
    cdef bint direct = _is_1x1(g)
    cdef const floating* b
    cdef floating* db_
    cdef const floating* dzg
    if not direct and dx != NULL:
        memset(dx, 0, g.C * g.S * sizeof(floating))
    for grp in range(g.G):
        dzg = dz + grp * g.Cog * g.P
        for u in range((g.P + pcmax - 1) // pcmax):
            p0 = u * pcmax
            pc = min(pcmax, g.P - p0)
            if direct:
                b, ldb = x + grp * g.Cg * g.S + p0, g.P
                db_ = NULL if dx == NULL else dx + grp * g.Cg * g.S + p0
            else:
                _cols(GATHER, x + grp * g.Cg * g.S, col, g, p0, pc)
                b, ldb, db_ = col, pc, dcol
            gemm(False, True, g.Cog, CgK, pc, <floating>1, dzg + p0, g.P, b, ldb,
                 <floating>1, dw + grp * g.Cog * CgK, CgK)
            if dx == NULL:
                continue
            gemm(True, False, CgK, pc, g.Cog, <floating>1, w + grp * g.Cog * CgK, CgK,
                 dzg + p0, g.P, <floating>0, db_, ldb)
            if not direct:
                _cols(SCATTER, dx + grp * g.Cg * g.S, dcol, g, p0, pc)


# ---- direct depthwise scheme ---------------------------------------------------------

cdef void _dw_forward_plane(int act, floating p, const floating* x, const floating* w,
                            const floating* bias, floating* z, floating* y,
                            const Geom* g) noexcept nogil:
    """One output plane (``w``: its K taps, ``x``: its input plane); starts from the bias."""
    cdef Py_ssize_t t, i
    cdef Py_ssize_t off[3]
    cdef floating b0 = 0 if bias == NULL else bias[0]
    for i in range(g.P):
        z[i] = b0
    for t in range(g.K):
        _offsets(g, t, off)
        _plane(ACC, w[t], x, NULL, z, NULL, g, off)
    _epilogue(act, p, z, NULL, y, 1, g.P, g.P)


cdef void _dw_backward_channel(const floating* x, const floating* w, const floating* dz,
                               floating* dx, floating* dw, floating* acc, Py_ssize_t N,
                               const Geom* g) noexcept nogil:
    """One input channel: its ``dx`` planes and the taps of the Cog output channels it
    feeds, summed over the batch in order (``x``/``dx``/``dz``: sample 0's planes,
    ``acc``: ``Cog*K*OW`` per-column partial sums of the filter gradient)."""
    cdef Py_ssize_t n, m, t, i, OW = g.outd[2]
    cdef Py_ssize_t off[3]
    cdef double s
    memset(acc, 0, g.Cog * g.K * OW * sizeof(floating))
    for n in range(N):
        memset(dx + n * g.C * g.S, 0, g.S * sizeof(floating))
        for m in range(g.Cog):
            for t in range(g.K):
                _offsets(g, t, off)
                _plane(GRAD, w[m * g.K + t], x + n * g.C * g.S, dx + n * g.C * g.S,
                       <floating*>dz + (n * g.Co + m) * g.P, acc + (m * g.K + t) * OW, g, off)
    for t in range(g.Cog * g.K):
        s = 0
        for i in range(OW):
            s += acc[t * OW + i]
        dw[t] = <floating>s


# ---- unit-stride depthwise planes in the padded layout ------------------------------------

cdef struct Flat:
    Py_ssize_t pd[3]   # padded input dims (unit stride: output + dilated kernel - 1)
    Py_ssize_t vol     # padded buffer length (plus LX_DW_L slack for the rounded-up span)
    Py_ssize_t Q       # flat span of the output positions, rounded up to LX_DW_L
    Py_ssize_t maxoff  # largest tap offset


cdef inline bint _flat_ok(const Geom* g) noexcept nogil:
    return (g.s[0] == 1 and g.s[1] == 1 and g.s[2] == 1 and g.lo[0] >= 0 and g.lo[1] >= 0
            and g.lo[2] >= 0)


cdef Flat _flat(const Geom* g, Py_ssize_t[::1] offs):
    """The padded layout of ``g`` (unit stride, no cropping); ``offs`` (2K): each tap's flat
    offset, then ``maxoff`` minus it (the data gradient's offsets)."""
    cdef Flat f
    cdef Py_ssize_t a, t, q
    cdef Py_ssize_t off[3]
    for a in range(3):
        f.pd[a] = g.outd[a] + (g.k[a] - 1) * g.d[a]
    q = ((g.outd[0] - 1) * f.pd[1] + g.outd[1] - 1) * f.pd[2] + g.outd[2]
    f.Q = (q + LX_DW_L - 1) // LX_DW_L * LX_DW_L
    f.vol = f.pd[0] * f.pd[1] * f.pd[2] + LX_DW_L
    for t in range(g.K):
        _offsets(g, t, off)
        offs[t] = (((off[0] + g.lo[0]) * f.pd[1] + off[1] + g.lo[1]) * f.pd[2]
                   + off[2] + g.lo[2])
    f.maxoff = max(offs[:g.K])
    for t in range(g.K):
        offs[g.K + t] = f.maxoff - offs[t]
    return f


cdef void _pad(floating* x, floating* xp, const Geom* g, const Flat* f,
               bint into) noexcept nogil:
    """Copies plane ``x`` into the zero-padded ``xp`` (``into``), or the interior of ``xp``
    back into ``x`` (0 where ``x`` lies beyond the padded volume)."""
    cdef Py_ssize_t d, h, n = min(g.ind[2], f.pd[2] - g.lo[2])
    cdef floating* xr
    cdef floating* pr
    memset(xp if into else x, 0, (f.vol if into else g.S) * sizeof(floating))
    for d in range(min(g.ind[0], f.pd[0] - g.lo[0])):
        for h in range(min(g.ind[1], f.pd[1] - g.lo[1])):
            xr = x + (d * g.ind[1] + h) * g.ind[2]
            pr = xp + ((d + g.lo[0]) * f.pd[1] + h + g.lo[1]) * f.pd[2] + g.lo[2]
            if n > 0:
                memcpy(pr if into else xr, xr if into else pr, n * sizeof(floating))


cdef void _rows(floating* z, floating* t, const Geom* g, const Flat* f,
                bint into) noexcept nogil:
    """Copies output plane ``z`` into the padded-layout ``t`` (``into``; the garbage
    positions are left as they are), or the output positions of ``t`` into ``z``."""
    cdef Py_ssize_t od, oh, OW = g.outd[2]
    cdef floating* zr
    cdef floating* tr
    for od in range(g.outd[0]):
        for oh in range(g.outd[1]):
            zr = z + (od * g.outd[1] + oh) * OW
            tr = t + (od * f.pd[1] + oh) * f.pd[2]
            memcpy(tr if into else zr, zr if into else tr, OW * sizeof(floating))


cdef void _dw_forward_flat(int act, floating p, const floating* x, const floating* w,
                           const floating* bias, floating* z, floating* y, const Geom* g,
                           const Flat* f, const Py_ssize_t* offs, floating* ws) noexcept nogil:
    """One output plane as :func:`_dw_forward_plane`, unit stride; ``ws``: ``vol + Q``."""
    cdef floating* xp = ws
    cdef floating* t = ws + f.vol
    cdef floating b0 = 0 if bias == NULL else bias[0]
    cdef Py_ssize_t i
    _pad(<floating*>x, xp, g, f, True)
    for i in range(f.Q):
        t[i] = b0
    if floating is float:
        lx_dw_flat_fwd_f(t, xp, w, offs, g.K, f.Q)
    else:
        lx_dw_flat_fwd_d(t, xp, w, offs, g.K, f.Q)
    _rows(z, t, g, f, False)
    _epilogue(act, p, z, NULL, y, 1, g.P, g.P)


cdef void _dw_backward_flat(const floating* x, const floating* w, const floating* dz,
                            floating* dx, floating* dw, Py_ssize_t N, const Geom* g,
                            const Flat* f, const Py_ssize_t* offs, floating* ws) noexcept nogil:
    """One input channel as :func:`_dw_backward_channel`, unit stride. The padded ``dx``
    gathers the output gradient, placed ``maxoff`` into a zeroed buffer, at the reversed
    offsets. ``ws``: ``3 * vol + maxoff + Cog * K * LX_DW_L`` (``acc``: lane-wise partial
    sums of the filter gradient per tap)."""
    cdef floating* xp = ws
    cdef floating* dxp = ws + f.vol
    cdef floating* dzq = ws + 2 * f.vol
    cdef floating* acc = dzq + f.vol + f.maxoff
    cdef Py_ssize_t n, m, t, i, R = f.vol - LX_DW_L
    cdef double s
    memset(acc, 0, g.Cog * g.K * LX_DW_L * sizeof(floating))
    memset(dzq, 0, (f.vol + f.maxoff) * sizeof(floating))
    for n in range(N):
        _pad(<floating*>x + n * g.C * g.S, xp, g, f, True)
        memset(dxp, 0, R * sizeof(floating))
        for m in range(g.Cog):
            # only the output positions change: the garbage ones stay 0
            _rows(<floating*>dz + (n * g.Co + m) * g.P, dzq + f.maxoff, g, f, True)
            if floating is float:
                lx_dw_flat_fwd_f(dxp, dzq, w + m * g.K, offs + g.K, g.K, R)
                lx_dw_flat_dw_f(acc + m * g.K * LX_DW_L, dzq + f.maxoff, xp, offs, g.K, f.Q)
            else:
                lx_dw_flat_fwd_d(dxp, dzq, w + m * g.K, offs + g.K, g.K, R)
                lx_dw_flat_dw_d(acc + m * g.K * LX_DW_L, dzq + f.maxoff, xp, offs, g.K, f.Q)
        _pad(dx + n * g.C * g.S, dxp, g, f, False)
    for t in range(g.Cog * g.K):
        s = 0
        for i in range(LX_DW_L):
            s += acc[t * LX_DW_L + i]
        dw[t] = <floating>s


# ---- direct unit-stride depthwise (rows as wide as the input rows) ------------------------

cdef enum:
    _RELU = 1  # lx_act's id of relu, which the direct forward kernel applies itself
    # bytes of the depthwise reverse pass's per-sample gradient partials, at most (the
    # batch runs in blocks of that many samples' worth)
    _REC_BYTES = 4 << 20


cdef struct Direct:
    int shape          # lx_dwd_shape code of the kernel
    Py_ssize_t W       # row width, input and output
    Py_ssize_t top     # zero rows above the input plane in the forward buffer
    Py_ssize_t slo     # slack elements before the forward buffer's first row
    Py_ssize_t vol     # forward buffer length
    Py_ssize_t btop, bslo, bvol  # the same for the reverse pass's output-gradient buffer


cdef inline bint _direct_ok(const Geom* g) noexcept nogil:
    """1-D/2-D, unit stride, output rows as wide as the input rows, a compiled kernel shape."""
    return (g.ind[0] == 1 and g.outd[0] == 1 and g.k[0] == 1 and g.lo[0] == 0
            and g.s[1] == 1 and g.s[2] == 1 and g.outd[2] == g.ind[2]
            and lx_dwd_shape(g.k[1], g.k[2]) >= 0)


cdef Direct _direct(const Geom* g, Py_ssize_t[::1] offs, int[::1] cols, int[::1] lims):
    """The buffers of the direct scheme; ``offs`` (2K): each tap's flat offset ``a*W + b``
    (``a``, ``b``: its row and column offsets), then their negatives (the reverse pass
    reads the output gradient at ``p - a*W - b``); ``cols``: the column of each flat
    position; ``lims`` (4 kw): per kernel column ``j`` the columns where its sample lies in
    the row, forward (``lo``, ``hi``), then reverse."""
    cdef Direct d
    cdef Py_ssize_t t, j, a, b, KW = g.k[2], W = g.ind[2], IH = g.ind[1], OH = g.outd[1]
    cdef Py_ssize_t amin = 0, amax = 0, bmin = 0, bmax = 0
    cdef Py_ssize_t off[3]
    for t in range(g.K):
        _offsets(g, t, off)
        a, b = off[1], off[2]
        if t == 0 or a < amin:
            amin = a
        if t == 0 or a > amax:
            amax = a
        if t == 0 or b < bmin:
            bmin = b
        if t == 0 or b > bmax:
            bmax = b
        offs[t] = a * W + b
        offs[g.K + t] = -(a * W + b)
        if t < KW:  # the first kernel row: column offset of kernel column t
            lims[t], lims[KW + t] = max(0, -b), min(W, W - b)
            lims[2 * KW + t], lims[3 * KW + t] = max(0, b), min(W, W + b)
    for t in range(cols.shape[0]):
        cols[t] = t % W
    d.shape, d.W = lx_dwd_shape(g.k[1], KW), W
    # reads: forward src[q + a*W + b], q < OH*W; reverse g[p - a*W - b], p < IH*W
    d.top, d.slo = max(0, -amin), max(0, -bmin)
    d.vol = d.slo + (d.top + IH + max(0, amax + OH - IH)) * W + max(0, bmax)
    d.btop, d.bslo = max(0, amax), max(0, bmax)
    d.bvol = d.bslo + (d.btop + OH + max(0, IH - OH - amin)) * W + max(0, -bmin)
    return d


cdef void _dw_forward_direct(int act, floating p, const floating* x, const floating* w,
                             const floating* bias, floating* z, floating* y, const Geom* g,
                             const Direct* d, const Py_ssize_t* offs, const int* cols,
                             const int* lims, floating* buf) noexcept nogil:
    """One output plane as :func:`_dw_forward_plane`: the input plane is copied into
    ``buf`` (``vol``, zero around the plane: zeroed once), all taps summed in one pass.
    (Reading ``x`` itself where the taps stay inside the plane, copying only the edge
    rows, was measured ~10% slower: the copy streams the plane into L1 for the taps.)"""
    cdef floating* src = buf + d.slo + d.top * d.W
    cdef floating b0 = 0 if bias == NULL else bias[0]
    cdef int relu = act == _RELU and y == z
    memcpy(src, x, g.S * sizeof(floating))
    if floating is float:
        lx_dwd_fwd_f(d.shape, z, src, b0, relu, w, cols, offs, lims, lims + g.k[2], g.P)
    else:
        lx_dwd_fwd_d(d.shape, z, src, b0, relu, w, cols, offs, lims, lims + g.k[2], g.P)
    if not relu and (act != 0 or y != z):
        act_forward_n(act, p, z, y, g.P)


cdef void _dw_backward_direct(int act, floating p, const floating* src, const floating* dy,
                              const floating* x, const floating* w, floating* dx, double* rec,
                              const Geom* g, const Direct* d, const Py_ssize_t* offs,
                              const int* cols, const int* lims, floating* buf) noexcept nogil:
    """One input plane ``x`` (a sample's channel): its ``dx`` and, for each of the ``Cog``
    output channels it feeds, ``dz = dy * act'(src)`` (into ``buf``, ``bvol``, zero around
    the plane), the filter gradient and the bias gradient of this sample into ``rec``
    (``K + 1`` per output channel). ``buf`` holds ``(K + 1) * LX_DW_L`` lanes after
    ``bvol``."""
    cdef floating* gp = buf + d.bslo + d.btop * d.W
    cdef floating* acc = buf + d.bvol
    cdef const int* blims = lims + 2 * g.k[2]
    cdef Py_ssize_t m
    for m in range(g.Cog):
        act_backward_n(act, p, src + m * g.P, dy + m * g.P, gp, g.P)
        memset(acc, 0, (g.K + 1) * LX_DW_L * sizeof(floating))
        if floating is float:
            lx_dwd_lanes_f(acc + g.K * LX_DW_L, gp, g.P)
            lx_dwd_bwd_f(d.shape, dx, acc, x, gp, m > 0, w + m * g.K, cols, offs + g.K,
                         blims, blims + g.k[2], g.S)
            lx_dwd_fold_f(rec + m * (g.K + 1), acc, g.K + 1)
        else:
            lx_dwd_lanes_d(acc + g.K * LX_DW_L, gp, g.P)
            lx_dwd_bwd_d(d.shape, dx, acc, x, gp, m > 0, w + m * g.K, cols, offs + g.K,
                         blims, blims + g.k[2], g.S)
            lx_dwd_fold_d(rec + m * (g.K + 1), acc, g.K + 1)


cdef void _dz_plane(int act, floating p, const floating* src, const floating* dy, floating* dz,
                    double* db, const Geom* g, floating* lanes) noexcept nogil:
    """One output plane of ``dz = dy * act'(src)`` (not written when ``dz`` is ``dy``:
    identity) and its sum into ``db[0]``; ``lanes``: ``LX_DW_L`` scratch."""
    if dz != dy:
        act_backward_n(act, p, src, dy, dz, g.P)
    memset(lanes, 0, LX_DW_L * sizeof(floating))
    if floating is float:
        lx_dwd_lanes_f(lanes, dz, g.P)
        lx_dwd_fold_f(db, lanes, 1)
    else:
        lx_dwd_lanes_d(lanes, dz, g.P)
        lx_dwd_fold_d(db, lanes, 1)


# ---- entry points ----------------------------------------------------------------------

def threads(Py_ssize_t work, Py_ssize_t units):
    """Threads for ``units`` parallel items of ``work`` total elements (1 if too few)."""
    cdef int nt = num_threads_for(work)
    return nt if units >= nt else 1


cdef _check_ws(const Geom* g, floating[:, ::1] ws, int tiles, Py_ssize_t pc, int nt):
    if pc < 1 or ws.shape[0] < nt or (not _is_1x1(g) and ws.shape[1] < tiles * g.Cg * g.K * pc):
        raise ValueError(f"conv kernels: workspace {ws.shape[0], ws.shape[1]} too small")


cdef _check_act(int act):
    if not 0 <= act < N_ACTIVATIONS:
        raise ValueError(f"conv kernels: unknown activation id {act}")


def gemm_forward(int act, double p, const floating[:, :, :, :, ::1] x,
                 const floating[:, :, :, :, ::1] w, const floating[::1] bias,
                 floating[:, :, :, :, ::1] z, floating[:, :, :, :, ::1] y, floating[:, ::1] ws,
                 Py_ssize_t pc, tuple stride, tuple dilation, tuple lo, int groups, bint flip,
                 int nt):
    """``z = conv(x, w) + bias`` and ``y = act(z)`` (``z`` may be ``y``), 3-D shapes.

    Output positions run in tiles of ``pc``; ``ws`` is ``(nt, Cg*K*pc)``, one im2col
    tile per thread (``(nt, 0)`` suffices for a 1x1 convolution).
    """
    _check_act(act)
    cdef Geom g = _geom(x.shape, w.shape, y.shape, stride, dilation, lo, groups, flip)
    cdef Py_ssize_t N = x.shape[0], n, pcmax = pc
    _check_ws(&g, ws, 1, pc, nt)
    cdef floating fp = <floating>p
    cdef const floating* pb = NULL if bias is None else &bias[0]
    cdef const floating* px = &x[0, 0, 0, 0, 0]
    cdef const floating* pw = &w[0, 0, 0, 0, 0]
    cdef floating* pz = &z[0, 0, 0, 0, 0]
    cdef floating* py = &y[0, 0, 0, 0, 0]
    cdef floating* pws = &ws[0, 0]
    cdef Py_ssize_t xst = g.C * g.S, yst = g.Co * g.P, wst = ws.shape[1]
    with nogil:
        if nt == 1:
            for n in range(N):
                _gemm_forward_sample(act, fp, px + n * xst, pw, pb, pz + n * yst, py + n * yst,
                                     pws, &g, pcmax)
        else:
            for n in prange(N, num_threads=nt, schedule="static"):
                _gemm_forward_sample(act, fp, px + n * xst, pw, pb, pz + n * yst, py + n * yst,
                                     pws + threadid() * wst, &g, pcmax)


def gemm_backward(const floating[:, :, :, :, ::1] x, const floating[:, :, :, :, ::1] w,
                  const floating[:, :, :, :, ::1] dz, floating[:, :, :, :, ::1] dx,
                  floating[:, :, :, :, ::1] dw, floating[:, ::1] ws, floating[:, ::1] dwacc,
                  Py_ssize_t pc, tuple stride, tuple dilation, tuple lo, int groups, bint flip,
                  int nt):
    """``dx`` and ``dw`` of the convolution for the cotangent ``dz`` of its output.

    ``ws`` is ``(nt, 2*Cg*K*pc)`` (im2col and col2im tiles per thread; ``(nt, 0)`` for
    1x1), ``dwacc`` ``(nt, dw.size)`` per-thread filter-gradient sums, added in thread
    order (deterministic for a given thread count). ``dx=None``: the filter gradient
    only (the data gradient is computed elsewhere), ``ws`` then needs one tile.
    """
    cdef Geom g = _geom(x.shape, w.shape, dz.shape, stride, dilation, lo, groups, flip)
    cdef Py_ssize_t N = x.shape[0], n, i, t, pcmax = pc, tile = g.Cg * g.K * pc
    cdef Py_ssize_t nw = w.shape[0] * g.Cg * g.K
    _check_ws(&g, ws, 1 if dx is None else 2, pc, nt)
    if dx is not None and any(dx.shape[a] != x.shape[a] for a in range(5)):
        raise ValueError("conv kernels: dx must have x's shape")
    if dwacc.shape[0] < nt or dwacc.shape[1] != nw:
        raise ValueError("conv kernels: dwacc must be (nt, weight.size)")
    cdef const floating* px = &x[0, 0, 0, 0, 0]
    cdef const floating* pw = &w[0, 0, 0, 0, 0]
    cdef const floating* pdz = &dz[0, 0, 0, 0, 0]
    cdef floating* pdx = NULL if dx is None else &dx[0, 0, 0, 0, 0]
    cdef floating* pdw = &dw[0, 0, 0, 0, 0]
    cdef floating* pws = &ws[0, 0]
    cdef floating* pacc = &dwacc[0, 0]
    cdef Py_ssize_t xst = g.C * g.S, yst = g.Co * g.P, wst = ws.shape[1]
    cdef floating s
    with nogil:
        memset(pacc, 0, nt * nw * sizeof(floating))
        if nt == 1:
            for n in range(N):
                _gemm_backward_sample(px + n * xst, pw, pdz + n * yst,
                                      NULL if pdx == NULL else pdx + n * xst, pacc,
                                      pws, pws + tile, &g, pcmax)
        else:
            for n in prange(N, num_threads=nt, schedule="static"):
                _gemm_backward_sample(px + n * xst, pw, pdz + n * yst,
                                      NULL if pdx == NULL else pdx + n * xst,
                                      pacc + threadid() * nw, pws + threadid() * wst,
                                      pws + threadid() * wst + tile, &g, pcmax)
        for i in range(nw):
            s = 0
            for t in range(nt):
                s = s + pacc[t * nw + i]
            pdw[i] = s


def depthwise_forward(int act, double p, const floating[:, :, :, :, ::1] x,
                      const floating[:, :, :, :, ::1] w, const floating[::1] bias,
                      floating[:, :, :, :, ::1] z, floating[:, :, :, :, ::1] y,
                      tuple stride, tuple dilation, tuple lo, bint flip, int nt):
    """Direct depthwise ``z = conv(x, w) + bias``, ``y = act(z)`` (groups == C_in)."""
    _check_act(act)
    cdef Geom g = _geom(x.shape, w.shape, y.shape, stride, dilation, lo, x.shape[1], flip)
    cdef Py_ssize_t planes = y.shape[0] * g.Co, u, n, co, wsize = 1
    cdef Py_ssize_t[::1] offs = np.empty(2 * g.K, np.intp)
    cdef bint direct = _direct_ok(&g), flat = not direct and _flat_ok(&g)
    cdef int[::1] cols = np.empty(g.P if direct else 1, np.intc)
    cdef int[::1] lims = np.empty(4 * g.k[2], np.intc)
    cdef Direct d
    cdef Flat f
    if direct:
        d = _direct(&g, offs, cols, lims)
        wsize = d.vol
    elif flat:
        f = _flat(&g, offs)
        wsize = f.vol + f.Q
    # zeroed once: the direct scheme's buffer keeps zeros around the plane it rewrites
    cdef floating[:, ::1] ws = np.zeros((nt, wsize),
                                        np.float32 if floating is float else np.float64)
    cdef Py_ssize_t wst = ws.shape[1]
    cdef floating* pws = &ws[0, 0]
    cdef floating fp = <floating>p
    cdef const floating* pb = NULL if bias is None else &bias[0]
    cdef const floating* px = &x[0, 0, 0, 0, 0]
    cdef const floating* pw = &w[0, 0, 0, 0, 0]
    cdef floating* pz = &z[0, 0, 0, 0, 0]
    cdef floating* py = &y[0, 0, 0, 0, 0]
    with nogil:
        for u in prange(planes, num_threads=nt, schedule="static"):
            n = u // g.Co
            co = u % g.Co
            if direct:
                _dw_forward_direct(act, fp, px + (n * g.C + co // g.Cog) * g.S, pw + co * g.K,
                                   NULL if pb == NULL else pb + co, pz + u * g.P, py + u * g.P,
                                   &g, &d, &offs[0], &cols[0], &lims[0], pws + threadid() * wst)
            elif flat:
                _dw_forward_flat(act, fp, px + (n * g.C + co // g.Cog) * g.S, pw + co * g.K,
                                 NULL if pb == NULL else pb + co, pz + u * g.P, py + u * g.P,
                                 &g, &f, &offs[0], pws + threadid() * wst)
            else:
                _dw_forward_plane(act, fp, px + (n * g.C + co // g.Cog) * g.S, pw + co * g.K,
                                  NULL if pb == NULL else pb + co, pz + u * g.P, py + u * g.P,
                                  &g)


def depthwise_scheme(x_shape, w_shape, y_shape, tuple stride, tuple dilation, tuple lo,
                     bint flip):
    """Which depthwise scheme the kernels run for these 5-D shapes and options:
    ``"direct"``, ``"flat"`` (padded flat layout) or ``"rows"`` (per-row, strided)."""
    cdef Py_ssize_t xs[5]
    cdef Py_ssize_t ws[5]
    cdef Py_ssize_t ys[5]
    cdef int a
    for a in range(5):
        xs[a], ws[a], ys[a] = x_shape[a], w_shape[a], y_shape[a]
    cdef Geom g = _geom(xs, ws, ys, stride, dilation, lo, xs[1], flip)
    return "direct" if _direct_ok(&g) else "flat" if _flat_ok(&g) else "rows"


def depthwise_backward(int act, double p, const floating[:, :, :, :, ::1] src,
                       const floating[:, :, :, :, ::1] dy, const floating[:, :, :, :, ::1] x,
                       const floating[:, :, :, :, ::1] w, floating[:, :, :, :, ::1] dx,
                       floating[:, :, :, :, ::1] dw, floating[::1] db, tuple stride,
                       tuple dilation, tuple lo, bint flip, int nt):
    """``dx``, ``dw`` and ``db`` (unless None) for the cotangent ``dy`` of ``y = act(z)``,
    ``src``: ``y`` for output-only activations, else ``z`` (as the activation kernel's
    ``backward``).

    Every sample's filter and bias gradient partials are kept per plane (``C_out *
    (K + 1)`` float64 per sample, the batch in blocks of at most ``_REC_BYTES`` of them)
    and summed over the batch in order, so that ``dw`` and ``db`` do not depend on the
    thread count. The direct scheme (1-D/2-D, unit stride, output rows
    as wide as the input rows, a compiled kernel shape) runs over the (sample, input
    channel) planes with ``dz = dy * act'`` formed per plane in a per-thread buffer;
    otherwise ``dz`` is formed first and the padded flat or per-row scheme runs over the
    input channels.
    """
    _check_act(act)
    cdef Geom g = _geom(x.shape, w.shape, dy.shape, stride, dilation, lo, x.shape[1], flip)
    if any(src.shape[a] != dy.shape[a] or dx.shape[a] != x.shape[a] or dw.shape[a] != w.shape[a]
           for a in range(5)):
        raise ValueError("conv kernels: src, dy, dx and dw must have y's, y's, x's and w's shapes")
    if db is not None and db.shape[0] != g.Co:
        raise ValueError("conv kernels: db must have C_out entries")
    cdef Py_ssize_t N = x.shape[0], c, u, v, i, t, K1 = g.K + 1, wsize, n0, nb
    cdef Py_ssize_t B = max(1, min(N, _REC_BYTES // (g.Co * K1 * sizeof(double))))
    cdef Py_ssize_t[::1] offs = np.empty(2 * g.K, np.intp)
    cdef bint direct = _direct_ok(&g), flat = not direct and _flat_ok(&g)
    cdef int[::1] cols = np.empty(max(g.S, g.P) if direct else 1, np.intc)
    cdef int[::1] lims = np.empty(4 * g.k[2], np.intc)
    cdef Direct d
    cdef Flat f
    if direct:
        d = _direct(&g, offs, cols, lims)
        wsize = d.bvol + K1 * LX_DW_L
    elif flat:
        f = _flat(&g, offs)
        wsize = max(3 * f.vol + f.maxoff + g.Cog * g.K * LX_DW_L, K1 * LX_DW_L)
    else:
        wsize = max(g.Cog * g.K * g.outd[2], K1 * LX_DW_L)
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] ws = np.zeros((nt, wsize), dtype)
    cdef double[::1] rec = np.zeros(B * g.Co * K1)
    cdef double[::1] tot = np.zeros(g.Co * K1)
    # the schemes other than the direct one read dz whole (dz is dy for identity)
    cdef floating[:, :, :, :, ::1] dzbuf
    cdef floating* pdz = <floating*>&dy[0, 0, 0, 0, 0]
    if not direct and act != 0:
        dzbuf = np.empty((dy.shape[0], dy.shape[1], dy.shape[2], dy.shape[3], dy.shape[4]), dtype)
        pdz = &dzbuf[0, 0, 0, 0, 0]
    cdef floating* pdb = NULL if db is None else &db[0]
    cdef Py_ssize_t wst = ws.shape[1]
    cdef floating fp = <floating>p
    cdef const floating* psrc = &src[0, 0, 0, 0, 0]
    cdef const floating* pdy = &dy[0, 0, 0, 0, 0]
    cdef const floating* px = &x[0, 0, 0, 0, 0]
    cdef const floating* pw = &w[0, 0, 0, 0, 0]
    cdef floating* pdx = &dx[0, 0, 0, 0, 0]
    cdef floating* pdw = &dw[0, 0, 0, 0, 0]
    cdef floating* pws = &ws[0, 0]
    with nogil:
        n0 = 0
        while n0 < N:  # blocks of B samples; u: plane in the block, v: in the batch
            nb = min(B, N - n0)
            if direct:
                for u in prange(nb * g.C, num_threads=nt, schedule="static"):
                    c = u % g.C
                    v = n0 * g.C + u
                    _dw_backward_direct(act, fp, psrc + v * g.Cog * g.P, pdy + v * g.Cog * g.P,
                                        px + v * g.S, pw + c * g.Cog * g.K, pdx + v * g.S,
                                        &rec[u * g.Cog * K1], &g, &d, &offs[0], &cols[0],
                                        &lims[0], pws + threadid() * wst)
            else:
                for u in prange(nb * g.Co, num_threads=nt, schedule="static"):
                    v = n0 * g.Co + u
                    _dz_plane(act, fp, psrc + v * g.P, pdy + v * g.P, pdz + v * g.P,
                              &rec[u * K1 + g.K], &g, pws + threadid() * wst)
            # the batch sums, in sample order (vectorized over channels and taps)
            for u in range(nb):
                for i in range(g.Co * K1):
                    tot[i] += rec[u * g.Co * K1 + i]
            n0 += nb
        if not direct:
            for c in prange(g.C, num_threads=nt, schedule="static"):
                if flat:
                    _dw_backward_flat(px + c * g.S, pw + c * g.Cog * g.K, pdz + c * g.Cog * g.P,
                                      pdx + c * g.S, pdw + c * g.Cog * g.K, N, &g, &f,
                                      &offs[0], pws + threadid() * wst)
                else:
                    _dw_backward_channel(px + c * g.S, pw + c * g.Cog * g.K,
                                         pdz + c * g.Cog * g.P, pdx + c * g.S,
                                         pdw + c * g.Cog * g.K, pws + threadid() * wst, N, &g)
        for c in range(g.Co):
            if direct:
                for t in range(g.K):
                    pdw[c * g.K + t] = <floating>tot[c * K1 + t]
            if pdb != NULL:
                pdb[c] = <floating>tot[c * K1 + g.K]
