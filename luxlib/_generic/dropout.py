"""Generic ``dropout`` and ``alpha_dropout``: masks from :mod:`.philox`.

The forward of each op is its vjp's output: the pullback keeps only the mask,
which the forward builds (and, for dropout, returns) anyway.
"""

import numpy as np

from .._dispatch import register
from .._validation import array_namespace
from .philox import draw_key, uniform


def _keep(rng, shape, p, xp):
    """``(u > p, advanced rng)``; ``u`` is exact in float64, so is the comparison."""
    key, rng = draw_key(rng)
    return uniform(key, shape, xp) > p, rng


def dropout_vjp(rng, x, p, training, invp, shape, mask):
    if not training:
        return (x, x, rng), lambda dy: {"x": dy}
    if mask is None:
        xp = array_namespace(x)
        keep, rng = _keep(rng, shape, p, xp)
        # where, not keep * invp: p = 1 has invp = inf and must give zeros, not NaN. invp
        # rounds to the array dtype as NumPy casts it (1/(1-p) > 65504 is inf in float16:
        # the call's arithmetic, not an accident to warn about)
        with np.errstate(over="ignore"):
            scale = xp.asarray(invp, dtype=x.dtype)
        mask = xp.where(keep, scale, xp.asarray(0, dtype=x.dtype))
    return (x * mask, mask, rng), lambda dy: {"x": dy * mask}


def alpha_dropout_vjp(rng, x, p, training, alpha, A, B):
    if not training:
        return (x, rng), lambda dy: {"x": dy}
    xp = array_namespace(x)
    keep, rng = _keep(rng, x.shape, p, xp)
    return (xp.where(keep, x, alpha) * A + B, rng), lambda dy: {"x": dy * keep * A}


def _forward(vjp):
    return lambda **kw: vjp(**kw)[0]


register("dropout", "generic", forward=_forward(dropout_vjp), vjp=dropout_vjp)
register("alpha_dropout", "generic", forward=_forward(alpha_dropout_vjp), vjp=alpha_dropout_vjp)
