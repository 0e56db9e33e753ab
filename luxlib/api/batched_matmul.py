"""``batched_matmul``."""

from .._autodiff import public_op
from .._dispatch import run
from .._validation import check_array, promote

_NAME = "batched_matmul"


def _check(x, y):
    x = check_array(_NAME, "x", x, ndim=3)
    y = check_array(_NAME, "y", y, ndim=3)
    if x.shape[2] != y.shape[1]:
        problem = "x's axis 2 must match y's axis 1"
    elif x.shape[0] != y.shape[0] and 1 not in (x.shape[0], y.shape[0]):
        problem = "batch sizes must be equal or one of them 1"
    else:
        return promote(x, y)
    raise ValueError(f"{_NAME}: {problem}: x has shape {tuple(x.shape)}, y has shape {tuple(y.shape)}")


@public_op
def batched_matmul(x, y):
    """Batched matrix product: ``z[b] = x[b] @ y[b]``.

    Parameters
    ----------
    x : array
        ``(B, M, K)``.
    y : array
        ``(B, K, N)``. A batch of 1 on either side broadcasts against the other.
        Both must be 3-D: add a batch axis (``m[None]``) to use one matrix for
        every batch entry.

    Returns
    -------
    z : array
        ``(B, M, N)`` in the promoted dtype of ``x`` and ``y``.

    Raises
    ------
    ValueError
        For non-3-D input, ``K`` mismatch, or batch sizes that differ with
        neither being 1 (the message names both shapes).
    TypeError
        For non-floating arrays.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> x = np.arange(12.0).reshape(2, 2, 3)
    >>> luxlib.batched_matmul(x, np.ones((1, 3, 1)))
    array([[[ 3.],
            [12.]],
    <BLANKLINE>
           [[21.],
            [30.]]])
    """
    x, y = _check(x, y)
    return run(_NAME, (x, y), x=x, y=y)
