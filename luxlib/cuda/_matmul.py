"""GPU ``batched_matmul``: cuBLAS's strided-batched gemm through :mod:`luxlib.cuda._blas`.

Operands go to cuBLAS as they are stored (transposed operands through the transpose flag,
without views; a batch of 1 through batch stride 0): no copies. Against ``y``'s batch of 1, the batch of
``x`` folds into the rows of one gemm, and the same fold gives ``y``'s summed gradient as
one gemm (``x^T dz`` over ``B*M`` rows); a batch of 1 in ``x`` gets the batched product
``dz @ y^T`` summed over the batch.
"""

from .._validation import array_namespace
from ._blas import matmul
from ._modules import DTYPES


def supports(x, y):
    return x.dtype == y.dtype and x.dtype in DTYPES


def forward(blas, x, y):
    return matmul(blas, x, y)


def vjp(blas, x, y):
    """``(z, pullback)``: ``dx = dz @ y^T``, ``dy = x^T @ dz``, summed over a broadcast batch."""
    xp = array_namespace(x, y)
    z = forward(blas, x, y)

    def pullback(dz):
        dz = xp.ascontiguousarray(dz)
        bx, by = x.shape[0], y.shape[0]
        dx = matmul(blas, dz, y, transpose_b=True)
        if bx == 1 and by != 1:
            dx = dx.sum(axis=0, keepdims=True)
        if by == 1 and bx != 1:  # dy[0] = sum_b x[b]^T dz[b]: one gemm over the B*M rows
            rows = xp.ascontiguousarray(x).reshape(-1, x.shape[2])
            dy = matmul(blas, rows, dz.reshape(-1, dz.shape[2]), transpose_a=True)[None]
        else:
            dy = matmul(blas, x, dz, transpose_a=True)
        return {"x": dx, "y": dy}

    return z, pullback
