"""Winograd F(2x2, 3x3) of a 2-D 3x3 convolution (stride 1, dilation 1, one group).

``x`` is a C-contiguous ``(N, C_in, H, W)`` array, ``weight`` ``(C_out, C_in, 3, 3)``
and the output ``(N, C_out, OH, OW)``; input row ``oh + kh - lo_h`` feeds output row
``oh`` (likewise columns), rows and columns outside the input are zero (the padding).
With the transforms of Lavin & Gray (2016):

- ``U[k] (C_out, C_in) = G g G^T`` for the 16 entries ``k`` of the 4x4 transformed
  filters, once per call (in float64, rounded once to the array type);
- per *band* of a sample (``rb`` rows of tiles, ``T`` tiles; a sample has
  ``ceil(OH/2)`` rows of ``ceil(OW/2)`` tiles), ``V[k] (C_in, T) = B^T d B`` for its input
  tiles ``d`` (4x4, step 2; the out-of-bounds samples are read as 0 in the transform),
  then 16 BLAS gemms ``M[k] = U[k] @ V[k]``, then ``Y = A^T m A`` (2x2 outputs per tile,
  the ragged last row/column dropped) + bias into ``z`` and ``y = act(z)`` per output
  plane's rows of the band while they are in cache.

The data gradient of such a convolution is one too (:func:`forward` of the output gradient
with the transposed, flipped weight, no bias, identity activation, leading padding
``2 - lo``): the glue calls it with ``w`` a transposed view, read through its strides.
The filter gradient (:func:`filter_gradient`) backpropagates through the algorithm:
``dU[k] += dM[k] @ V[k]^T`` with ``dM = A dY A^T`` of the output-gradient tiles, then
``dw = G^T dU G``.

Threads: the (sample, band) pairs are spread over threads (static schedule), each with its
own ``V`` and ``M`` (``16 (C_in + C_out) T`` elements for a band of ``T`` tiles: the caller
picks ``rb`` to bound it, whatever the image size); BLAS must then be single-threaded (the
caller arranges it).
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange, threadid

from ._activation cimport N_ACTIVATIONS, act_forward_n
from ._blas cimport gemm


cdef struct WGeom:
    Py_ssize_t Ci, Co, IH, IW, OH, OW, lh, lw  # channels, sizes, leading padding
    Py_ssize_t TH, TW                          # tiles per column, per row of a sample
    Py_ssize_t RB, NB                          # rows of tiles per band, bands per sample


cdef void _filters(const floating* w, floating* u, Py_ssize_t Co, Py_ssize_t Ci,
                   const Py_ssize_t* st, bint flip) noexcept nogil:
    """``u[k, o, c] = (G g G^T)[k // 4, k % 4]`` of filter ``g = w[o, c]`` (flipped if asked);
    ``w[o, c, a, b]`` is ``w[o * st[0] + c * st[1] + a * st[2] + b * st[3]]`` (any view)."""
    cdef Py_ssize_t o, c, a, b
    cdef double g[3][3]
    cdef double t[4][3]
    cdef double r[4][4]
    cdef const floating* f
    for o in range(Co):
        for c in range(Ci):
            f = w + o * st[0] + c * st[1]
            for a in range(3):
                for b in range(3):
                    g[a][b] = f[(2 - a) * st[2] + (2 - b) * st[3] if flip else a * st[2] + b * st[3]]
            for b in range(3):  # t = G g
                t[0][b] = g[0][b]
                t[1][b] = (g[0][b] + g[1][b] + g[2][b]) * 0.5
                t[2][b] = (g[0][b] - g[1][b] + g[2][b]) * 0.5
                t[3][b] = g[2][b]
            for a in range(4):  # r = t G^T
                r[a][0] = t[a][0]
                r[a][1] = (t[a][0] + t[a][1] + t[a][2]) * 0.5
                r[a][2] = (t[a][0] - t[a][1] + t[a][2]) * 0.5
                r[a][3] = t[a][2]
            for a in range(4):
                for b in range(4):
                    u[((4 * a + b) * Co + o) * Ci + c] = <floating>r[a][b]


cdef void _inputs(const floating* x, floating* v, floating* buf, const WGeom* g,
                  Py_ssize_t th0, Py_ssize_t th1) noexcept nogil:
    """``v[k, c, t] = (B^T d B)[k // 4, k % 4]`` of every 4x4 input tile ``d`` in the rows of
    tiles ``th0 <= th < th1`` of one sample (``t`` counted from the band's first tile).

    Per row of tiles: the 4 input rows (zero outside the input) are copied into ``buf``
    (``4 (2 TW + 2)``), combined row-wise (``B^T d``) in place, then the column transform
    runs over the whole row of tiles (contiguous stores, stride-2 loads: vectorized)."""
    cdef Py_ssize_t c, th, tw, i, j, ri, L = 2 * g.TW + 2, T = (th1 - th0) * g.TW, CT = g.Ci * T
    cdef Py_ssize_t jlo = min(max(g.lw, 0), L), jhi = max(min(g.IW + g.lw, L), jlo)
    cdef floating* b0 = buf
    cdef floating* b1 = buf + L
    cdef floating* b2 = buf + 2 * L
    cdef floating* b3 = buf + 3 * L
    cdef floating* r
    cdef floating* vr
    cdef floating e0, e1, e2, e3
    cdef const floating* xr
    for c in range(g.Ci):
        for th in range(th0, th1):
            for i in range(4):
                r = buf + i * L
                ri = 2 * th - g.lh + i
                if 0 <= ri < g.IH:  # buf column j is input column j - lw
                    xr = x + (c * g.IH + ri) * g.IW - g.lw
                    for j in range(jlo):
                        r[j] = 0
                    for j in range(jlo, jhi):
                        r[j] = xr[j]
                    for j in range(jhi, L):
                        r[j] = 0
                else:
                    for j in range(L):
                        r[j] = 0
            for j in range(L):  # rows of B^T d
                e0, e1, e2, e3 = b0[j], b1[j], b2[j], b3[j]
                b0[j] = e0 - e2
                b1[j] = e1 + e2
                b2[j] = e2 - e1
                b3[j] = e1 - e3
            for i in range(4):  # (B^T d) B, one row of tiles
                r = buf + i * L
                vr = v + 4 * i * CT + c * T + (th - th0) * g.TW
                for tw in range(g.TW):
                    vr[tw] = r[2 * tw] - r[2 * tw + 2]
                for tw in range(g.TW):
                    vr[CT + tw] = r[2 * tw + 1] + r[2 * tw + 2]
                for tw in range(g.TW):
                    vr[2 * CT + tw] = r[2 * tw + 2] - r[2 * tw + 1]
                for tw in range(g.TW):
                    vr[3 * CT + tw] = r[2 * tw + 1] - r[2 * tw + 3]


cdef void _outputs(int act, floating p, const floating* m, const floating* bias, floating* z,
                   floating* y, floating* buf, const WGeom* g, Py_ssize_t th0,
                   Py_ssize_t th1) noexcept nogil:
    """``z = A^T m A + bias`` (in bounds only) and ``y = act(z)`` for the output rows of the
    tile rows ``th0 <= th < th1``, per output plane.

    Per row of tiles: ``A^T m`` over the row (contiguous loads) into ``buf`` (``8 TW``),
    then ``A`` along the columns into the two output rows."""
    cdef Py_ssize_t o, th, tw, i, j, oh, TW = g.TW, P = g.OH * g.OW, T = (th1 - th0) * TW
    cdef Py_ssize_t OT = g.Co * T, row0 = 2 * th0 * g.OW, rows = min(2 * th1, g.OH) - 2 * th0
    cdef floating b0
    cdef floating* zo
    cdef floating* zr
    cdef floating* r
    cdef const floating* mr
    for o in range(g.Co):
        b0 = 0 if bias == NULL else bias[o]
        zo = z + o * P
        for th in range(th0, th1):
            mr = m + o * T + (th - th0) * TW
            for j in range(4):  # r[i, j, tw] = (A^T q)[i, j]
                r = buf + j * TW
                for tw in range(TW):
                    r[tw] = mr[j * OT + tw] + mr[(4 + j) * OT + tw] + mr[(8 + j) * OT + tw]
                r = buf + (4 + j) * TW
                for tw in range(TW):
                    r[tw] = mr[(4 + j) * OT + tw] - mr[(8 + j) * OT + tw] - mr[(12 + j) * OT + tw]
            for i in range(min(2, g.OH - 2 * th)):
                oh = 2 * th + i
                zr = zo + oh * g.OW
                r = buf + 4 * i * TW
                for tw in range(g.OW // 2):
                    zr[2 * tw] = (r[tw] + r[TW + tw] + r[2 * TW + tw]) + b0
                    zr[2 * tw + 1] = (r[TW + tw] - r[2 * TW + tw] - r[3 * TW + tw]) + b0
                if g.OW % 2:
                    tw = TW - 1
                    zr[2 * tw] = (r[tw] + r[TW + tw] + r[2 * TW + tw]) + b0
        if act != 0 or y != z:
            act_forward_n(act, p, zo + row0, y + o * P + row0, rows * g.OW)


cdef inline floating* _ws_m(floating* ws, const WGeom* g) noexcept nogil:
    """``M`` (or ``dM``) of a band's workspace: after ``V`` (sized for a full band)."""
    return ws + 16 * g.Ci * g.RB * g.TW


cdef inline floating* _ws_buf(floating* ws, const WGeom* g) noexcept nogil:
    """The row buffers of a band's workspace: after ``V`` and ``M``."""
    return ws + 16 * (g.Ci + g.Co) * g.RB * g.TW


cdef inline Py_ssize_t _ws_len(const WGeom* g) noexcept nogil:
    return 16 * (g.Ci + g.Co) * g.RB * g.TW + max(4 * (2 * g.TW + 2), 8 * g.TW)


cdef bint _bands(WGeom* g, Py_ssize_t rb) noexcept nogil:
    """Set the tile counts and the bands of ``rb`` rows of tiles (fewer when the sample has
    fewer; no band for an empty output); False for ``rb < 1``."""
    g.TH, g.TW = (g.OH + 1) // 2, (g.OW + 1) // 2
    g.RB = max(1, min(rb, g.TH))
    g.NB = (g.TH + g.RB - 1) // g.RB
    return rb >= 1


cdef void _band(int act, floating p, const floating* x, const floating* u,
                const floating* bias, floating* z, floating* y, floating* ws,
                const WGeom* g, Py_ssize_t b) noexcept nogil:
    """Band ``b`` of one sample; ``ws``: ``V``, ``M``, then the row buffers (``_ws_len``)."""
    cdef Py_ssize_t k, th0 = b * g.RB, th1 = min(th0 + g.RB, g.TH), T = (th1 - th0) * g.TW
    cdef floating* v = ws
    cdef floating* m = _ws_m(ws, g)
    cdef floating* buf = _ws_buf(ws, g)
    _inputs(x, v, buf, g, th0, th1)
    for k in range(16):
        gemm(False, False, g.Co, T, g.Ci, <floating>1, u + k * g.Co * g.Ci, g.Ci,
             v + k * g.Ci * T, T, <floating>0, m + k * g.Co * T, T)
    _outputs(act, p, m, bias, z, y, buf, g, th0, th1)


cdef void _grad_outputs(const floating* dz, floating* dm, floating* buf, const WGeom* g,
                        Py_ssize_t th0, Py_ssize_t th1) noexcept nogil:
    """``dm[k, o, t] = (A dY A^T)[k // 4, k % 4]`` of every 2x2 output-gradient tile ``dY``
    in the rows of tiles ``th0 <= th < th1`` of one sample (zero outside the output): the
    adjoint of ``A^T m A``.

    Per row of tiles: ``A dY`` row-wise into the 4 rows of ``buf`` (``4 (2 TW)``), then
    ``(.) A^T`` over the whole row of tiles (stride-2 loads, contiguous stores)."""
    cdef Py_ssize_t o, th, tw, i, j, L = 2 * g.TW, T = (th1 - th0) * g.TW, OT = g.Co * T
    cdef floating* q0 = buf
    cdef floating* q1 = buf + L
    cdef floating* q2 = buf + 2 * L
    cdef floating* q3 = buf + 3 * L
    cdef floating* q
    cdef floating* dr
    cdef const floating* r0
    cdef const floating* r1
    for o in range(g.Co):
        for th in range(th0, th1):
            r0 = dz + (o * g.OH + 2 * th) * g.OW
            if 2 * th + 1 < g.OH:
                r1 = r0 + g.OW
                for j in range(g.OW):
                    q0[j] = r0[j]
                    q1[j] = r0[j] + r1[j]
                    q2[j] = r0[j] - r1[j]
                    q3[j] = -r1[j]
            else:  # the ragged last row of tiles
                for j in range(g.OW):
                    q0[j] = r0[j]
                    q1[j] = r0[j]
                    q2[j] = r0[j]
                    q3[j] = 0
            if g.OW < L:  # the ragged last column
                q0[L - 1] = q1[L - 1] = q2[L - 1] = q3[L - 1] = 0
            for i in range(4):
                q = buf + i * L
                dr = dm + 4 * i * OT + o * T + (th - th0) * g.TW
                for tw in range(g.TW):
                    dr[tw] = q[2 * tw]
                for tw in range(g.TW):
                    dr[OT + tw] = q[2 * tw] + q[2 * tw + 1]
                for tw in range(g.TW):
                    dr[2 * OT + tw] = q[2 * tw] - q[2 * tw + 1]
                for tw in range(g.TW):
                    dr[3 * OT + tw] = -q[2 * tw + 1]


cdef void _grad_band(const floating* x, const floating* dz, floating* du, floating* ws,
                     const WGeom* g, Py_ssize_t b) noexcept nogil:
    """Adds band ``b``'s ``dU[k] += dM[k] @ V[k]^T`` into ``du``; ``ws`` as :func:`_band`."""
    cdef Py_ssize_t k, th0 = b * g.RB, th1 = min(th0 + g.RB, g.TH), T = (th1 - th0) * g.TW
    cdef floating* dm = _ws_m(ws, g)
    _inputs(x, ws, _ws_buf(ws, g), g, th0, th1)
    _grad_outputs(dz, dm, _ws_buf(ws, g), g, th0, th1)
    for k in range(16):
        gemm(False, True, g.Co, g.Ci, T, <floating>1, dm + k * g.Co * T, T,
             ws + k * g.Ci * T, T, <floating>1, du + k * g.Co * g.Ci, g.Ci)


cdef void _filters_adjoint(const floating* du, Py_ssize_t nt, floating* dw, Py_ssize_t Co,
                           Py_ssize_t Ci, bint flip) noexcept nogil:
    """``dw[o, c] = G^T dU[o, c] G`` (the adjoint of :func:`_filters`; flipped back if asked)
    of the sum of the ``nt`` per-thread ``du`` (``16 Co Ci`` each), in float64."""
    cdef Py_ssize_t o, c, a, b, t, n = 16 * Co * Ci
    cdef double d[4][4]
    cdef double r[3][4]
    cdef double e[3][3]
    for o in range(Co):
        for c in range(Ci):
            for a in range(4):
                for b in range(4):
                    d[a][b] = 0
                    for t in range(nt):
                        d[a][b] += du[t * n + ((4 * a + b) * Co + o) * Ci + c]
            for b in range(4):  # r = G^T d
                r[0][b] = d[0][b] + (d[1][b] + d[2][b]) * 0.5
                r[1][b] = (d[1][b] - d[2][b]) * 0.5
                r[2][b] = (d[1][b] + d[2][b]) * 0.5 + d[3][b]
            for a in range(3):  # e = r G
                e[a][0] = r[a][0] + (r[a][1] + r[a][2]) * 0.5
                e[a][1] = (r[a][1] - r[a][2]) * 0.5
                e[a][2] = (r[a][1] + r[a][2]) * 0.5 + r[a][3]
            for a in range(3):
                for b in range(3):
                    dw[(o * Ci + c) * 9 + (8 - 3 * a - b if flip else 3 * a + b)] = <floating>e[a][b]


def forward(int act, double p, const floating[:, :, :, ::1] x, const floating[:, :, :, :] w,
            const floating[::1] bias, floating[:, :, :, ::1] z, floating[:, :, :, ::1] y,
            tuple lo, bint flip, int nt, Py_ssize_t rb):
    """``z = conv(x, w) + bias`` and ``y = act(z)`` (``z`` may be ``y``) by Winograd F(2x2, 3x3).

    Parameters
    ----------
    act : int
        Activation id (``0 <= act < N_ACTIVATIONS``); ``p`` its bound parameter.
    p : float
        The activation's parameter (ignored by activations without one).
    x : ndarray, shape (N, C_in, H, W)
    w : ndarray, shape (C_out, C_in, 3, 3)
        Any strided view (the data gradient passes the transposed weight).
    bias : ndarray, shape (C_out,), or None
    z, y : ndarray, shape (N, C_out, OH, OW)
        Outputs: the pre-activation and the activation (may be the same array).
    lo : tuple of int
        Leading padding ``(lo_h, lo_w)``; the trailing one follows from ``OH``, ``OW``.
    flip : bool
        True convolution (the filters are flipped) instead of cross-correlation.
    nt : int
        Threads ((sample, band) pairs run in parallel when ``nt > 1``; BLAS must then be
        serial).
    rb : int
        Rows of tiles per band (at least 1): the workspace holds one band per thread.
    """
    if not 0 <= act < N_ACTIVATIONS:
        raise ValueError(f"winograd: unknown activation id {act}")
    cdef WGeom g
    g.Co, g.Ci, g.IH, g.IW = w.shape[0], x.shape[1], x.shape[2], x.shape[3]
    g.OH, g.OW = y.shape[2], y.shape[3]
    g.lh, g.lw = lo
    if (w.shape[1] != g.Ci or w.shape[2] != 3 or w.shape[3] != 3 or y.shape[0] != x.shape[0]
            or y.shape[1] != g.Co or any(z.shape[a] != y.shape[a] for a in range(4))
            or (bias is not None and bias.shape[0] != g.Co) or nt < 1 or g.Ci == 0
            or not _bands(&g, rb)):
        raise ValueError("winograd: x, weight, bias and the outputs do not fit (or are empty)")
    cdef Py_ssize_t N = x.shape[0], t
    if N == 0 or g.Co == 0 or g.OH == 0 or g.OW == 0:
        return
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] u = np.empty(16 * g.Co * g.Ci, dtype)
    cdef floating[:, ::1] ws = np.empty((nt, _ws_len(&g)), dtype)
    cdef floating fp = <floating>p
    cdef const floating* pb = NULL if bias is None else &bias[0]
    cdef const floating* px = &x[0, 0, 0, 0]
    cdef floating* pz = &z[0, 0, 0, 0]
    cdef floating* py = &y[0, 0, 0, 0]
    cdef floating* pu = &u[0]
    cdef floating* pws = &ws[0, 0]
    cdef Py_ssize_t xst = g.Ci * g.IH * g.IW, yst = g.Co * g.OH * g.OW, wst = ws.shape[1]
    cdef Py_ssize_t wstr[4]  # the weight's strides in elements
    cdef int i
    for i in range(4):
        wstr[i] = w.strides[i] // <Py_ssize_t>sizeof(floating)
    with nogil:
        _filters(&w[0, 0, 0, 0], pu, g.Co, g.Ci, wstr, flip)
        for t in prange(N * g.NB, num_threads=nt, schedule="static", use_threads_if=nt > 1):
            _band(act, fp, px + t // g.NB * xst, pu, pb, pz + t // g.NB * yst, py + t // g.NB * yst,
                  pws + threadid() * wst, &g, t % g.NB)


def filter_gradient(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dz,
                    floating[:, :, :, ::1] dw, tuple lo, bint flip, int nt, Py_ssize_t rb):
    """``dw`` of the convolution of :func:`forward` for the gradient ``dz`` of its output.

    Backpropagates through the Winograd algorithm: per band, ``V[k] = B^T d B`` as in the
    forward, ``dM[k] = A dY A^T`` of the 2x2 tiles of ``dz`` and 16 BLAS gemms
    ``dU[k] += dM[k] @ V[k]^T`` (``k = T``: 2.25x fewer multiplies than im2col's), into
    per-thread accumulators summed in thread order (deterministic for a given thread
    count), then ``dw = G^T dU G`` in float64.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    dz : ndarray, shape (N, C_out, OH, OW)
    dw : ndarray, shape (C_out, C_in, 3, 3)
        Output.
    lo, flip, nt, rb
        As for :func:`forward`.
    """
    cdef WGeom g
    g.Co, g.Ci, g.IH, g.IW = dz.shape[1], x.shape[1], x.shape[2], x.shape[3]
    g.OH, g.OW = dz.shape[2], dz.shape[3]
    g.lh, g.lw = lo
    if (dz.shape[0] != x.shape[0] or dw.shape[0] != g.Co or dw.shape[1] != g.Ci
            or dw.shape[2] != 3 or dw.shape[3] != 3 or nt < 1 or g.Ci == 0 or g.Co == 0
            or g.OH == 0 or g.OW == 0 or not _bands(&g, rb)):
        raise ValueError("winograd: x, dz and dw do not fit (or are empty)")
    cdef Py_ssize_t N = x.shape[0], t
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] du = np.zeros((nt, 16 * g.Co * g.Ci), dtype)
    cdef floating[:, ::1] ws = np.empty((nt, _ws_len(&g)), dtype)
    cdef const floating* px = &x[0, 0, 0, 0]
    cdef const floating* pdz = &dz[0, 0, 0, 0]
    cdef floating* pdu = &du[0, 0]
    cdef floating* pws = &ws[0, 0]
    cdef Py_ssize_t xst = g.Ci * g.IH * g.IW, yst = g.Co * g.OH * g.OW, wst = ws.shape[1]
    cdef Py_ssize_t ust = du.shape[1]
    with nogil:
        for t in prange(N * g.NB, num_threads=nt, schedule="static", use_threads_if=nt > 1):
            _grad_band(px + t // g.NB * xst, pdz + t // g.NB * yst, pdu + threadid() * ust,
                       pws + threadid() * wst, &g, t % g.NB)
        _filters_adjoint(pdu, nt, &dw[0, 0, 0, 0], g.Co, g.Ci, flip)
