"""Fused dense layer over BLAS, float32 and float64: ``y = act(x @ w.T + bias)``.

``x`` ``(batch, in)`` and ``w`` ``(out, in)`` are read by BLAS as they are stored:
row-major with a row stride ``ld``, or (``trans``) column-major, i.e. the
transpose of a row-major array (see ``luxlib/_looped/matmul.py``'s
``blas_operand``). The gemm writes straight into the output; the bias and the
activation then run over it in place, rows spread over threads. Backward:
``dz = dy * act'`` and ``db`` in one pass, then ``dx = dz @ w`` and
``dw = dz.T @ x`` as two gemms on BLAS's own threads (no OpenMP region is open
while BLAS runs, so the two thread pools never compete).

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
    cdef Py_ssize_t rows = _rows_per_block(n_out), u, r
    cdef Py_ssize_t units = (batch + rows - 1) // rows
    cdef int nt = num_threads_for(batch * n_out)
    cdef floating fp = <floating>p
    with nogil:
        if n_in == 0:  # an empty contraction
            for r in range(batch * n_out):
                pz[r] = 0
        else:
            gemm(tx, not tw, batch, n_out, n_in, 1, &x[0, 0], ldx, &w[0, 0], ldw, 0, pz, n_out)
        for u in prange(units, num_threads=nt, schedule="static", use_threads_if=nt > 1):
            _epilogue(act, fp, pb, pz + u * rows * n_out, py + u * rows * n_out,
                      min(rows, batch - u * rows), n_out)


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
    cdef Py_ssize_t rows = _rows_per_block(n_out), u, c, t
    cdef Py_ssize_t units = (batch + rows - 1) // rows
    cdef int nt = num_threads_for(batch * n_out)
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
            gemm(False, tw, batch, n_in, n_out, 1, pdz, n_out, &w[0, 0], ldw, 0, &dx[0, 0], n_in)
            gemm(True, tx, n_out, n_in, batch, 1, pdz, n_out, &x[0, 0], ldx, 0, &dw[0, 0], n_in)
