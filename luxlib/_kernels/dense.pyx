"""Fused dense layer over BLAS, float32 and float64: ``y = act(x @ w.T + bias)``.

``x`` ``(batch, in)`` and ``w`` ``(out, in)`` are read by BLAS as they are stored:
row-major with a row stride ``ld``, or (``trans``) column-major, i.e. the
transpose of a row-major array (see ``luxlib/_looped/matmul.py``'s
``blas_operand``).

Threads: for shapes with at least 64 rows and 64 outputs every gemm runs inside
the OpenMP region, one single-threaded gemm per block of rows (the caller limits
BLAS to one thread around the call: :func:`blocked`), so only one thread pool is
ever busy. A
multithreaded BLAS call next to an OpenMP region would leave one pool spinning
while the other works, which on two cores costs up to 2x. Forward: each block's
gemm writes straight into the output and the bias and activation run over that
block while it is cache-hot. Backward: ``dz = dy * act'`` and ``db`` in one pass,
then ``dx = dz @ w`` by blocks of rows and ``dw = dz.T @ x`` by blocks of output
features, all blocks in one loop (with an even thread count, half the threads per product).

``db`` accumulates in float64, per thread, and the per-thread sums are added in
thread order: deterministic for a given thread count.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange, threadid

from ._activation cimport act_backward_n, act_forward_n
from ._blas cimport gemm
from ._openmp_helpers cimport num_threads_for

cdef enum:
    # the epilogue and the derivative pass work on blocks of rows of at least this
    # many elements
    BLOCK = 4096
    # db partial sums of different threads start on different cache lines
    PAD = 8


cdef inline Py_ssize_t _rows_per_block(Py_ssize_t n) noexcept nogil:
    return max(1, BLOCK // max(n, 1))


cdef inline bint _blocked(Py_ssize_t batch, Py_ssize_t n_out) noexcept nogil:
    return batch >= 64 and n_out >= 64


cdef inline Py_ssize_t _gemm_block(Py_ssize_t n, int parts) noexcept nogil:
    """Rows per single-threaded gemm for ``parts`` blocks, one per thread (at least 32 rows).

    Each block's gemm packs the whole other operand again, so more blocks than
    threads cost time (8 blocks measured 18% slower than 2 on two threads).
    """
    return max(min(n, <Py_ssize_t>32), (n + parts - 1) // parts)


def blocked(Py_ssize_t batch, Py_ssize_t n_out):
    """Whether the kernels run blocked gemms for this shape (BLAS must be single-threaded)."""
    return _blocked(batch, n_out)


cdef void _epilogue(int act, floating p, const floating* bias, floating* z, floating* y,
                    Py_ssize_t rows, Py_ssize_t n) noexcept nogil:
    """``z[r] += bias``, ``y[r] = act(z[r])`` for ``rows`` rows of ``n``; ``y`` may be ``z``."""
    cdef Py_ssize_t r, j
    for r in range(rows):
        if bias != NULL:
            for j in range(n):
                z[j] += bias[j]
        if act != 0 or y != z:
            act_forward_n(act, p, z, y, n)
        z += n
        y += n


cdef void _derivative(int act, floating p, const floating* src, const floating* dy,
                      floating* dz, double* acc, Py_ssize_t rows, Py_ssize_t n) noexcept nogil:
    """``dz = dy * act'(src)`` on ``rows`` rows of ``n``; adds ``dz`` into ``acc`` unless NULL."""
    cdef Py_ssize_t r, j
    for r in range(rows):
        act_backward_n(act, p, src, dy, dz, n)
        if acc != NULL:
            for j in range(n):
                acc[j] += dz[j]
        src += n
        dy += n
        dz += n


cdef inline bint _is(const Py_ssize_t* shape, Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    return shape[0] == rows and shape[1] == cols


def forward(int act, double p, const floating[:, :] x, bint tx, int ldx,
            const floating[:, :] w, bint tw, int ldw, const floating[::1] bias,
            floating[:, ::1] z, floating[:, ::1] y):
    """``z = x @ w.T + bias``, ``y = act(z)``; ``bias`` may be None, ``z`` may be ``y``.

    ``act`` is a kernel id (``luxlib/_kernels/_activation.pxd``), ``p`` its parameter.
    """
    cdef Py_ssize_t batch = x.shape[0], n_in = x.shape[1], n_out = w.shape[0]
    if not (_is(w.shape, n_out, n_in) and _is(z.shape, batch, n_out) and _is(y.shape, batch, n_out)):
        raise ValueError("dense kernels: operand shapes do not fit")
    if bias is not None and bias.shape[0] != n_out:
        raise ValueError(f"dense kernels: bias must have length {n_out}, got {bias.shape[0]}")
    if batch == 0 or n_out == 0:
        return
    cdef const floating* pb = NULL if bias is None else &bias[0]
    cdef floating* pz = &z[0, 0]
    cdef floating* py = &y[0, 0]
    cdef bint blocks = _blocked(batch, n_out)
    cdef int nt = num_threads_for(batch * n_out) if blocks else 1
    cdef Py_ssize_t rows = _gemm_block(batch, nt) if blocks else batch, u, r, r0, m
    cdef Py_ssize_t units = (batch + rows - 1) // rows
    cdef Py_ssize_t xstep = 1 if tx else ldx  # offset of the next row of x as stored
    cdef floating fp = <floating>p
    with nogil:
        if n_in == 0:  # an empty contraction
            for r in range(batch * n_out):
                pz[r] = 0
        for u in prange(units, num_threads=nt, schedule="dynamic", use_threads_if=nt > 1):
            r0 = u * rows
            m = min(rows, batch - r0)
            if n_in > 0:
                gemm(tx, not tw, m, n_out, n_in, 1, &x[0, 0] + r0 * xstep, ldx, &w[0, 0], ldw, 0,
                     pz + r0 * n_out, n_out)
            _epilogue(act, fp, pb, pz + r0 * n_out, py + r0 * n_out, m, n_out)


def backward(int act, double p, const floating[:, ::1] src, const floating[:, ::1] dy,
             const floating[:, :] x, bint tx, int ldx, const floating[:, :] w, bint tw, int ldw,
             floating[:, ::1] dz, floating[:, ::1] dx, floating[:, ::1] dw, floating[::1] db):
    """Gradients of :func:`forward`: ``dz = dy * act'(src)``, ``dx``, ``dw`` and ``db``.

    ``src`` is ``y`` for output-only activations, else ``z``; ``db`` may be None.
    """
    cdef Py_ssize_t batch = x.shape[0], n_in = x.shape[1], n_out = w.shape[0]
    if not (_is(w.shape, n_out, n_in) and _is(src.shape, batch, n_out) and _is(dy.shape, batch, n_out)
            and _is(dz.shape, batch, n_out) and _is(dx.shape, batch, n_in) and _is(dw.shape, n_out, n_in)):
        raise ValueError("dense kernels: operand shapes do not fit")
    if db is not None and db.shape[0] != n_out:
        raise ValueError(f"dense kernels: db must have length {n_out}, got {db.shape[0]}")
    if batch == 0 or n_out == 0 or n_in == 0:  # some gradient is an empty sum
        dw[:, :] = 0
        dx[:, :] = 0
        if db is not None:
            db[:] = 0
        if batch == 0 or n_out == 0:
            return
    cdef Py_ssize_t rows = _rows_per_block(n_out), u, c, t, r0, m
    cdef Py_ssize_t units = (batch + rows - 1) // rows
    cdef bint blocks = _blocked(batch, n_out)
    cdef int nt = num_threads_for(batch * n_out) if blocks else 1
    # blocks per product: with an even thread count half the threads take each product
    # (so each packs its other operand half as often), else all take both in turn
    cdef int per_product = nt // 2 if nt % 2 == 0 else nt
    cdef Py_ssize_t xrows = _gemm_block(batch, per_product) if blocks else batch
    cdef Py_ssize_t wrows = _gemm_block(n_out, per_product) if blocks else n_out
    cdef Py_ssize_t xunits = (batch + xrows - 1) // xrows
    cdef Py_ssize_t stride = (n_out + PAD - 1) // PAD * PAD
    cdef double[:, ::1] partial = np.zeros((nt, stride if db is not None else 0))
    cdef double* acc0 = NULL if db is None else &partial[0, 0]
    cdef floating fp = <floating>p
    cdef const floating* ps = &src[0, 0]
    cdef const floating* pdy = &dy[0, 0]
    cdef floating* pdz = &dz[0, 0]
    cdef double s
    with nogil:
        for u in prange(units, num_threads=nt, schedule="static", use_threads_if=nt > 1):
            _derivative(act, fp, ps + u * rows * n_out, pdy + u * rows * n_out, pdz + u * rows * n_out,
                        NULL if acc0 == NULL else acc0 + threadid() * stride,
                        min(rows, batch - u * rows), n_out)
        if acc0 != NULL:
            for c in range(n_out):
                s = 0
                for t in range(nt):
                    s += acc0[t * stride + c]
                db[c] = <floating>s
        if n_in > 0:
            # dx = dz @ w by blocks of rows of dz and dw = dz.T @ x by blocks of columns of dz,
            # in one loop; every block is the same number of flops
            for u in prange(xunits + (n_out + wrows - 1) // wrows, num_threads=nt, schedule="dynamic",
                            use_threads_if=nt > 1):
                if u < xunits:
                    r0 = u * xrows
                    m = min(xrows, batch - r0)
                    gemm(False, tw, m, n_in, n_out, 1, pdz + r0 * n_out, n_out, &w[0, 0], ldw, 0,
                         &dx[0, 0] + r0 * n_in, n_in)
                else:
                    r0 = (u - xunits) * wrows
                    m = min(wrows, n_out - r0)
                    gemm(True, tx, m, n_in, batch, 1, pdz + r0, n_out, &x[0, 0], ldx, 0,
                         &dw[0, 0] + r0 * n_in, n_in)
