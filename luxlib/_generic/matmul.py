"""Generic ``batched_matmul``: ``(B, M, K) @ (B, K, N) -> (B, M, N)`` with its reverse rule.

A batch of 1 on either side broadcasts (``matmul``'s own broadcasting); its gradient
is summed over the broadcast batch so it keeps the argument's batch of 1.
"""

from .._dispatch import register
from .._validation import array_namespace
from .sums import fsum


def _sum_broadcast_batch(grad, batch):
    """Sum ``grad`` over the batch axis when its argument had a broadcast batch of 1."""
    if batch == 1 and grad.shape[0] != 1:
        return fsum(grad, axis=0, keepdims=True)
    return grad


def batched_matmul_forward(x, y):
    return x @ y


def batched_matmul_vjp(x, y):
    xp = array_namespace(x, y)

    def pullback(dz):
        return {
            "x": _sum_broadcast_batch(dz @ xp.matrix_transpose(y), x.shape[0]),
            "y": _sum_broadcast_batch(xp.matrix_transpose(x) @ dz, y.shape[0]),
        }

    return x @ y, pullback


register("batched_matmul", "generic", forward=batched_matmul_forward, vjp=batched_matmul_vjp)
