"""GPU ``batched_matmul`` through the array namespace's ``matmul`` (cuBLAS strided-batched
gemm on CuPy; NumPy under the CPU emulation).

A batch of 1 is never copied to the other's batch size: against ``y``'s batch of 1 the
batch of ``x`` folds into the rows of one gemm (``(B*M, K) @ (K, N)``), and the same
fold gives ``y``'s summed gradient as one gemm (``x^T dz`` over ``B*M`` rows); a batch of
1 in ``x`` goes to ``matmul``'s own broadcasting (CuPy: a pointer-array batched gemm over
the one matrix, no copy), and its gradient is the batched product summed over the batch.
"""

from .._validation import array_namespace


def supports(x, y):
    return x.dtype == y.dtype and x.dtype.name in ("float16", "float32", "float64")


def _rows(xp, a):
    """A 3-D array as the 2-D stack of its matrices' rows."""
    return xp.ascontiguousarray(a).reshape(a.shape[0] * a.shape[1], a.shape[2])


def _product(xp, a, b):
    """``a @ b`` for 3-D ``a``, ``b`` whose batches are equal or one of them 1; the result
    has the larger batch (0 when either is 0)."""
    if b.shape[0] == 1 and a.shape[0] != 1:
        rows = xp.matmul(_rows(xp, a), b[0])
        return rows.reshape(a.shape[0], a.shape[1], b.shape[2])
    return xp.matmul(a, b)


def forward(x, y):
    xp = array_namespace(x, y)
    return _product(xp, x, y)


def vjp(x, y):
    """``(z, pullback)``: ``dx = dz @ y^T``, ``dy = x^T @ dz``, summed over a broadcast batch."""
    xp = array_namespace(x, y)
    z = forward(x, y)

    def pullback(dz):
        dz = xp.ascontiguousarray(dz)
        bx, by = x.shape[0], y.shape[0]
        if by == 1 and bx != 1:
            # dy[0] = sum_b x[b]^T dz[b]: one gemm over the B*M rows; dx: the folded product
            dy = xp.matmul(_rows(xp, x).T, _rows(xp, dz))[None]
            dx = _product(xp, dz, y.transpose(0, 2, 1))
        elif bx == 1 and by != 1:
            dx = xp.matmul(dz, y.transpose(0, 2, 1)).sum(axis=0, keepdims=True)
            dy = xp.matmul(x.transpose(0, 2, 1), dz)
        else:
            dx = xp.matmul(dz, y.transpose(0, 2, 1))
            dy = xp.matmul(x.transpose(0, 2, 1), dz)
        return {"x": dx, "y": dy}

    return z, pullback
