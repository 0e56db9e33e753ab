"""Looped (BLAS from Cython) ``batched_matmul``.

Glue around :mod:`luxlib._kernels.matmul`: hands each operand to BLAS as it is
stored when BLAS can read it (row-major matrices or transposed ones, any batch
stride, a batch of 1 broadcast without copies), copies it once otherwise, and
limits BLAS to one thread while the kernel runs its products in parallel.
"""

import contextlib

import numpy as np

from .._dispatch import register
from .._kernels import matmul as kernels
from .._threads import single_threaded_blas


def _leading(n_lead, stride_lead, n_unit, stride_unit, item):
    """Row stride (elements) of matrices whose ``unit`` axis is contiguous, else None."""
    if n_unit > 1 and stride_unit != item:
        return None
    if n_lead <= 1:  # a single row: any valid leading dimension will do
        return max(1, n_unit)
    if stride_lead % item or stride_lead // item < max(1, n_unit):
        return None
    return stride_lead // item


def blas_operand(a):
    """``(a, trans, ld)``: how BLAS reads the matrices in ``a``'s last two axes.

    ``trans`` False: rows of ``ld`` elements with unit column stride; True: the
    transpose of such a matrix (a Fortran-ordered or ``.T`` view), ``ld`` its
    column stride. Arrays in
    neither form (or with a batch stride that is not a whole number of elements)
    are copied once to C order.
    """
    item = a.itemsize
    (rows, cols), (srow, scol) = a.shape[-2:], a.strides[-2:]
    if all(s % item == 0 for s in a.strides[:-2]):
        ld = _leading(rows, srow, cols, scol, item)
        if ld is not None:
            return a, False, ld
        ld = _leading(cols, scol, rows, srow, item)
        if ld is not None:
            return a, True, ld
    return np.ascontiguousarray(a), False, max(1, cols)


def gemm_batched(a, b, c):
    """``c[i] = a[i] @ b[i]`` for ``blas_operand`` triples ``a``, ``b``; returns ``c``.

    ``c`` with a batch of 1 against a longer batch receives the sum over the batch.
    """
    (a, ta, lda), (b, tb, ldb) = a, b
    batch, m, n = c.shape
    k = a.shape[2]
    # a sum over the batch runs serially on BLAS's threads (see the kernel); the
    # small kernel calls no BLAS, so BLAS's threads need no limit
    nt = 1 if batch == 1 else kernels.batch_threads(batch, m, n, k)
    blas = not kernels.small_products(m, n, k, c.dtype == np.float64)
    with single_threaded_blas() if nt > 1 and blas else contextlib.nullcontext():
        kernels.gemm_batched(a, ta, lda, b, tb, ldb, c, nt)
    return c


def _transposed(operand):
    """The operand of the transposed matrices: same memory, the other BLAS flag."""
    a, trans, ld = operand
    return a.swapaxes(-1, -2), not trans, ld


def _batch(x, y):
    return 0 if 0 in (x.shape[0], y.shape[0]) else max(x.shape[0], y.shape[0])



def _product(xo, yo):
    x, y = xo[0], yo[0]
    z = np.empty((_batch(x, y), x.shape[1], y.shape[2]), np.result_type(x, y))
    return gemm_batched(xo, yo, z)


def forward(x, y):
    return _product(blas_operand(x), blas_operand(y))


def vjp(x, y):
    """``(z, pullback)``: ``dx = dz @ y^T``, ``dy = x^T @ dz``, summed over a broadcast batch."""
    xo, yo = blas_operand(x), blas_operand(y)
    z = _product(xo, yo)

    def pullback(dz):
        dzo = blas_operand(dz)
        dx = gemm_batched(dzo, _transposed(yo), np.empty(x.shape, dz.dtype))
        dy = gemm_batched(_transposed(xo), dzo, np.empty(y.shape, dz.dtype))
        return {"x": dx, "y": dy}

    return z, pullback


register("batched_matmul", "looped", forward=forward, vjp=vjp)
