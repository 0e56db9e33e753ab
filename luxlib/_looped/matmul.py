"""Looped (BLAS from Cython) ``batched_matmul``.

Glue around :mod:`luxlib._kernels.matmul`: hands each operand to BLAS as it is
stored when BLAS can read it (row-major matrices or transposed ones, any batch
stride, a batch of 1 broadcast without copies), copies it once otherwise, and
limits BLAS to one thread while the kernel runs its products in parallel.
"""

import contextlib

import numpy as np

from .._blas_layout import blas_operand
from .._dispatch import register
from .._kernels import matmul as kernels
from .._threads import single_threaded_blas


def _threads(batch, m, n, k, double):
    """``(nt, blas)``: the kernel's threads and whether its products go to BLAS."""
    nt = 1 if batch == 1 else kernels.batch_threads(batch, m, n, k)
    return nt, not kernels.small_products(m, n, k, double)


def _limit(nt, blas):
    # a sum over the batch runs serially on BLAS's threads (see the kernel); the
    # small kernel calls no BLAS, so BLAS's threads need no limit
    return single_threaded_blas() if nt > 1 and blas else contextlib.nullcontext()


def gemm_batched(a, b, c):
    """``c[i] = a[i] @ b[i]`` for ``blas_operand`` triples ``a``, ``b``; returns ``c``.

    ``c`` with a batch of 1 against a longer batch receives the sum over the batch.
    """
    (a, ta, lda), (b, tb, ldb) = a, b
    batch, m, n = c.shape
    nt, blas = _threads(batch, m, n, a.shape[2], c.dtype == np.float64)
    with _limit(nt, blas):
        kernels.gemm_batched(a, ta, lda, b, tb, ldb, c, nt)
    return c


def gemm_batched_pair(a, b, c, a2, b2, c2):
    """``gemm_batched(a, b, c)`` and ``gemm_batched(a2, b2, c2)`` item by item in one
    parallel loop (no sums over the batch); returns ``(c, c2)``.

    The two products must have the same batch and the same multiply-adds per item
    (the backward's ``dx`` and ``dy``), so one thread plan serves both.
    """
    (a, ta, lda), (b, tb, ldb), (a2, ta2, lda2), (b2, tb2, ldb2) = a, b, a2, b2
    batch, m, n = c.shape
    double = c.dtype == np.float64
    nt, blas = _threads(batch, m, n, a.shape[2], double)
    blas = blas or not kernels.small_products(c2.shape[1], c2.shape[2], a2.shape[2], double)
    with _limit(nt, blas):
        kernels.gemm_batched_pair(a, ta, lda, b, tb, ldb, c, a2, ta2, lda2, b2, tb2, ldb2, c2, nt)
    return c, c2


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
        dx, dy = np.empty(x.shape, dz.dtype), np.empty(y.shape, dz.dtype)
        args = dzo, _transposed(yo), dx, _transposed(xo), dzo, dy
        if len(x) == len(y):  # one parallel loop: dz[i] is still in cache for dy[i]
            gemm_batched_pair(*args)
        else:  # a broadcast argument's gradient is a sum over the batch
            gemm_batched(*args[:3])
            gemm_batched(*args[3:])
        return {"x": dx, "y": dy}

    return z, pullback


register("batched_matmul", "looped", forward=forward, vjp=vjp)
