# Row-major gemm over scipy's BLAS (scipy.linalg.cython_blas), callable without the GIL.
#
# BLAS is column-major: a row-major C = op(A) @ op(B) is the column-major
# C^T = op(B)^T @ op(A)^T, so the wrapper swaps the operands (as scikit-learn does).

from cython cimport floating
from scipy.linalg.cython_blas cimport dgemm, sgemm


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C, all row-major.

    ``lda``/``ldb``/``ldc`` are the row strides (in elements) of A, B, C as stored:
    A is stored ``(k, m)`` when ``trans_a`` else ``(m, k)``; likewise B.
    """
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    if m == 0 or n == 0:
        return
    if floating is float:
        sgemm(&ta, &tb, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&ta, &tb, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)
