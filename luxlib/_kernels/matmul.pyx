"""Batched gemm over BLAS, float32 and float64: ``c[i] = a[i] @ b[i]``.

Operands are 3-D arrays whose matrices BLAS can read as they are stored: rows of
``ld`` elements with unit column stride, or (``trans``) the transpose of such a
matrix. Any batch stride works; a batch of 1 broadcasts (batch stride 0). The glue
(``luxlib/_looped/matmul.py``) copies the rare operands that fit neither form.

Parallelism: products run in a ``prange`` over the batch, each gemm on one thread
(the caller limits BLAS to one thread around the call), except a few large ones
(fewer than 4 per thread), which run one after the other on BLAS's own threads. A ``c`` with a batch of 1
against a longer batch receives the sum of the products, accumulated item after
item (``beta = 1``) so that the result does not depend on the thread count.
"""

from cython cimport floating
from cython.parallel cimport prange

from ._blas cimport gemm
from ._openmp_helpers cimport num_threads_for

cdef enum:
    # below this many multiply-adds in all, one thread (OpenMP and threadpoolctl
    # together cost ~15 us)
    PARALLEL_WORK = 1 << 20
    # products of this many multiply-adds run one by one on BLAS's threads when the
    # batch is too short to keep every thread busy (fewer than 4 per thread)
    LARGE_PRODUCT = 1 << 22
    ITEMS_PER_THREAD = 4

#: multiply-adds per product from which short batches run on BLAS's threads
LARGE_PRODUCT_WORK = LARGE_PRODUCT


def batch_threads(Py_ssize_t batch, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k):
    """Threads of the ``prange`` over the batch; 1 means products run one by one."""
    cdef Py_ssize_t work = m * n * k
    if batch < 2 or batch * work < PARALLEL_WORK:
        return 1
    cdef int nt = num_threads_for(batch * work)
    if work >= LARGE_PRODUCT and batch < ITEMS_PER_THREAD * nt:
        return 1
    return nt


def gemm_batched(const floating[:, :, :] a, bint ta, int lda,
                 const floating[:, :, :] b, bint tb, int ldb,
                 floating[:, :, ::1] c, int nt):
    """``c[i] = a[i] @ b[i]`` (summed over i when ``c`` has a batch of 1).

    ``a``'s matrices are stored row-major with row stride ``lda`` or, with ``ta``,
    column-major (``a[i].T`` row-major) with column stride ``lda``; likewise ``b``. ``nt > 1`` runs a ``prange`` of that many threads
    over the batch (BLAS must be limited to one thread by the caller).
    """
    cdef int m = c.shape[1], n = c.shape[2], k = a.shape[2]
    cdef Py_ssize_t batch = 0 if min(a.shape[0], b.shape[0]) == 0 else max(a.shape[0], b.shape[0])
    if a.shape[1] != m or b.shape[1] != k or b.shape[2] != n:
        raise ValueError("matmul kernels: operand shapes do not fit")
    if c.shape[0] not in (1, batch) or a.shape[0] not in (1, batch) or b.shape[0] not in (1, batch):
        raise ValueError("matmul kernels: batch sizes do not fit")
    if c.shape[0] == 0 or m == 0 or n == 0:
        return
    if batch == 0 or k == 0:  # empty products, or an empty sum over the batch
        c[:, :, :] = 0
        return
    # batch strides in elements; a batch of 1 broadcasts
    cdef Py_ssize_t item = sizeof(floating)
    cdef Py_ssize_t sa = 0 if a.shape[0] == 1 else a.strides[0] // item
    cdef Py_ssize_t sb = 0 if b.shape[0] == 1 else b.strides[0] // item
    cdef Py_ssize_t sc = 0 if c.shape[0] == 1 else c.strides[0] // item
    cdef const floating* pa = &a[0, 0, 0]
    cdef const floating* pb = &b[0, 0, 0]
    cdef floating* pc = &c[0, 0, 0]
    cdef Py_ssize_t i
    with nogil:
        if sc == 0 and batch > 1:  # sum over the batch, in batch order
            for i in range(batch):
                gemm(ta, tb, m, n, k, 1, pa + i * sa, lda, pb + i * sb, ldb,
                     0 if i == 0 else 1, pc, n)
        else:
            for i in prange(batch, num_threads=nt, schedule="static", use_threads_if=nt > 1):
                gemm(ta, tb, m, n, k, 1, pa + i * sa, lda, pb + i * sb, ldb, 0, pc + i * sc, n)
