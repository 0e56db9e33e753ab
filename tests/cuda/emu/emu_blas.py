"""cuBLAS's strided-batched gemm on NumPy arrays: the stand-in for
``luxlib.cuda._blas.CuBLAS`` in the CPU emulation of the GPU path.

``gemm_strided_batched`` takes what ``CuBLAS.gemm_strided_batched`` takes and does what
cuBLAS documents for those arguments: column-major matrices starting at the array's first
element plus ``i * stride``, element ``(r, c)`` at ``r + c * ld``, ``op`` the transpose
when the flag is set, float16 computed in float32. So the row-major-to-column-major
translation of ``luxlib/cuda/_blas.py`` is checked by results, not restated.

It refuses what cuBLAS refuses (leading dimensions below the stored matrix's rows,
sizes outside 32-bit ints, mixed dtypes) and, stricter than cuBLAS, what would go wrong
silently on a GPU: a read or write outside the memory of the array passed (the view's own
bounds), and outputs whose matrices overlap (a race between the batch's products).
"""

import numpy as np
from numpy.lib.array_utils import byte_bounds
from numpy.lib.stride_tricks import as_strided

INT_MAX = 2**31 - 1
#: outputs up to this many elements are checked for overlapping matrices
OVERLAP_CHECK = 1 << 22


class BlasError(ValueError):
    """An argument cuBLAS would refuse, or that would read or write out of bounds."""


def _matrices(arr, rows, cols, ld, stride, batch, name):
    """The ``batch`` column-major ``rows x cols`` matrices at ``arr``'s first element, as a
    view ``(batch, rows, cols)``, after checking that they lie within ``arr``'s memory."""
    item = arr.itemsize
    if batch and rows and cols:
        start, end = byte_bounds(arr)
        first = arr.__array_interface__["data"][0]
        last = first + ((batch - 1) * stride + (cols - 1) * ld + rows - 1) * item
        if first < start or last + item > end or stride < 0:
            raise BlasError(f"{name}: matrices ({batch} x {rows} x {cols}, ld {ld}, stride {stride}) "
                            f"outside the array's memory")
    return as_strided(arr, shape=(batch, rows, cols), strides=(stride * item, item, ld * item))


class EmuBLAS:
    """The emulated cuBLAS; ``calls`` records each call's ``(m, n, k, batch)``."""

    def __init__(self):
        self.calls = []

    def gemm_strided_batched(self, trans_a, trans_b, m, n, k, a, lda, stride_a, b, ldb, stride_b,
                             accumulate, c, ldc, stride_c, batch):
        if not a.dtype == b.dtype == c.dtype:
            raise BlasError(f"dtypes differ: {a.dtype}, {b.dtype}, {c.dtype}")
        for name, v in (("m", m), ("n", n), ("k", k), ("lda", lda), ("ldb", ldb), ("ldc", ldc),
                        ("batch", batch)):
            if not (isinstance(v, (int, np.integer)) and 0 <= v <= INT_MAX):
                raise BlasError(f"{name} = {v!r} is not a non-negative 32-bit int")
        ra, ca = (k, m) if trans_a else (m, k)  # the stored matrices, column-major
        rb, cb = (n, k) if trans_b else (k, n)
        if lda < max(1, ra) or ldb < max(1, rb) or ldc < max(1, m):
            raise BlasError(f"leading dimensions {lda}, {ldb}, {ldc} below the rows {ra}, {rb}, {m}")
        self.calls.append((m, n, k, batch))
        A = _matrices(a, ra, ca, lda, stride_a, batch, "A")
        B = _matrices(b, rb, cb, ldb, stride_b, batch, "B")
        C = _matrices(c, m, n, ldc, stride_c, batch, "C")
        if 1 < C.size <= OVERLAP_CHECK:
            offsets = (np.arange(batch)[:, None, None] * stride_c + np.arange(m)[:, None]
                       + np.arange(n) * ldc)
            if np.unique(offsets).size < offsets.size:
                raise BlasError(f"C matrices overlap (ldc {ldc}, stride {stride_c}, batch {batch})")
        compute = np.float64 if c.dtype == np.float64 else np.float32
        op_a = A.swapaxes(1, 2) if trans_a else A
        op_b = B.swapaxes(1, 2) if trans_b else B
        product = np.matmul(op_a.astype(compute), op_b.astype(compute))
        if accumulate:
            product += C.astype(compute)
        C[...] = product.astype(c.dtype)
