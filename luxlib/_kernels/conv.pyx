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
  its ``dx`` planes and its filter gradients in one sweep.

The GEMM scheme visits the input through :func:`_tap` (one tile of output positions,
any start), the strided depthwise scheme through :func:`_plane` (whole planes, row by
row with no division); both touch only the in-bounds input samples (padding is never
materialized). Unit-stride depthwise copies each plane into a zero-padded per-thread
buffer instead, where every tap is one contiguous loop over the whole plane
(:func:`_dw_forward_flat`, :func:`_dw_backward_flat`). A flipped kernel (true convolution) reads spatial tap ``k-1-t`` for
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

from ._activation cimport N_ACTIVATIONS, act_forward_n
from ._blas cimport gemm
from ._conv cimport (LX_DW_L, lx_conv_plane_d, lx_conv_plane_f, lx_dw_flat_dw_d,
                     lx_dw_flat_dw_f, lx_dw_flat_fwd_d, lx_dw_flat_fwd_f)
from ._openmp_helpers cimport num_threads_for

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
                else:
                    for i in range(lo, hi):
                        sr[i] = xr[i * sw]
                for i in range(hi, ow1):
                    sr[i] = 0
            elif sw == 1:
                for i in range(lo, hi):
                    (<floating*>xr)[i] += sr[i]
            else:
                for i in range(lo, hi):
                    (<floating*>xr)[i * sw] += sr[i]
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
    """Adds this sample's filter gradient into ``dw``; writes its ``dx``."""
    cdef Py_ssize_t grp, u, p0, pc, ldb, CgK = g.Cg * g.K
    cdef bint direct = _is_1x1(g)
    cdef const floating* b
    cdef floating* db_
    cdef const floating* dzg
    if not direct:
        memset(dx, 0, g.C * g.S * sizeof(floating))
    for grp in range(g.G):
        dzg = dz + grp * g.Cog * g.P
        for u in range((g.P + pcmax - 1) // pcmax):
            p0 = u * pcmax
            pc = min(pcmax, g.P - p0)
            if direct:
                b, ldb = x + grp * g.Cg * g.S + p0, g.P
                db_ = dx + grp * g.Cg * g.S + p0
            else:
                _cols(GATHER, x + grp * g.Cg * g.S, col, g, p0, pc)
                b, ldb, db_ = col, pc, dcol
            gemm(False, True, g.Cog, CgK, pc, <floating>1, dzg + p0, g.P, b, ldb,
                 <floating>1, dw + grp * g.Cog * CgK, CgK)
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
    order (deterministic for a given thread count).
    """
    cdef Geom g = _geom(x.shape, w.shape, dz.shape, stride, dilation, lo, groups, flip)
    cdef Py_ssize_t N = x.shape[0], n, i, t, pcmax = pc, tile = g.Cg * g.K * pc
    cdef Py_ssize_t nw = w.shape[0] * g.Cg * g.K
    _check_ws(&g, ws, 2, pc, nt)
    if dwacc.shape[0] < nt or dwacc.shape[1] != nw:
        raise ValueError("conv kernels: dwacc must be (nt, weight.size)")
    cdef const floating* px = &x[0, 0, 0, 0, 0]
    cdef const floating* pw = &w[0, 0, 0, 0, 0]
    cdef const floating* pdz = &dz[0, 0, 0, 0, 0]
    cdef floating* pdx = &dx[0, 0, 0, 0, 0]
    cdef floating* pdw = &dw[0, 0, 0, 0, 0]
    cdef floating* pws = &ws[0, 0]
    cdef floating* pacc = &dwacc[0, 0]
    cdef Py_ssize_t xst = g.C * g.S, yst = g.Co * g.P, wst = ws.shape[1]
    cdef floating s
    with nogil:
        memset(pacc, 0, nt * nw * sizeof(floating))
        if nt == 1:
            for n in range(N):
                _gemm_backward_sample(px + n * xst, pw, pdz + n * yst, pdx + n * xst, pacc,
                                      pws, pws + tile, &g, pcmax)
        else:
            for n in prange(N, num_threads=nt, schedule="static"):
                _gemm_backward_sample(px + n * xst, pw, pdz + n * yst, pdx + n * xst,
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
    cdef Py_ssize_t planes = y.shape[0] * g.Co, u, n, co
    cdef Py_ssize_t[::1] offs = np.empty(2 * g.K, np.intp)
    cdef bint flat = _flat_ok(&g)
    cdef Flat f
    if flat:
        f = _flat(&g, offs)
    cdef floating[:, ::1] ws = np.empty((nt, f.vol + f.Q if flat else 1),
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
            if flat:
                _dw_forward_flat(act, fp, px + (n * g.C + co // g.Cog) * g.S, pw + co * g.K,
                                 NULL if pb == NULL else pb + co, pz + u * g.P, py + u * g.P,
                                 &g, &f, &offs[0], pws + threadid() * wst)
            else:
                _dw_forward_plane(act, fp, px + (n * g.C + co // g.Cog) * g.S, pw + co * g.K,
                                  NULL if pb == NULL else pb + co, pz + u * g.P, py + u * g.P,
                                  &g)


def depthwise_backward(const floating[:, :, :, :, ::1] x, const floating[:, :, :, :, ::1] w,
                       const floating[:, :, :, :, ::1] dz, floating[:, :, :, :, ::1] dx,
                       floating[:, :, :, :, ::1] dw, tuple stride, tuple dilation, tuple lo,
                       bint flip, int nt):
    """``dx`` and ``dw``, parallel over input channels; each channel sums its filter
    gradient over the batch in order (identical for every thread count). The per-thread
    workspace (padded planes and partial sums of the filter gradient) is allocated here."""
    cdef Geom g = _geom(x.shape, w.shape, dz.shape, stride, dilation, lo, x.shape[1], flip)
    cdef Py_ssize_t N = x.shape[0], c
    cdef Py_ssize_t[::1] offs = np.empty(2 * g.K, np.intp)
    cdef bint flat = _flat_ok(&g)
    cdef Flat f
    if flat:
        f = _flat(&g, offs)
    cdef floating[:, ::1] ws = np.empty(
        (nt, 3 * f.vol + f.maxoff + g.Cog * g.K * LX_DW_L if flat else g.Cog * g.K * g.outd[2]),
        np.float32 if floating is float else np.float64)
    cdef Py_ssize_t wst = ws.shape[1]
    cdef const floating* px = &x[0, 0, 0, 0, 0]
    cdef const floating* pw = &w[0, 0, 0, 0, 0]
    cdef const floating* pdz = &dz[0, 0, 0, 0, 0]
    cdef floating* pdx = &dx[0, 0, 0, 0, 0]
    cdef floating* pdw = &dw[0, 0, 0, 0, 0]
    cdef floating* pws = &ws[0, 0]
    with nogil:
        for c in prange(g.C, num_threads=nt, schedule="static"):
            if flat:
                _dw_backward_flat(px + c * g.S, pw + c * g.Cog * g.K, pdz + c * g.Cog * g.P,
                                  pdx + c * g.S, pdw + c * g.Cog * g.K, N, &g, &f, &offs[0],
                                  pws + threadid() * wst)
            else:
                _dw_backward_channel(px + c * g.S, pw + c * g.Cog * g.K, pdz + c * g.Cog * g.P,
                                     pdx + c * g.S, pdw + c * g.Cog * g.K,
                                     pws + threadid() * wst, N, &g)
