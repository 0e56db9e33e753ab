"""Generic ``fused_dense_bias_activation``: ``act(x @ weight.T + bias)`` with its reverse rule."""

from .._dispatch import register
from .._validation import array_namespace
from .activation import activation_vjp, reduce_bias


def _dense(weight, x, bias):
    # bias runs along the last axis of z: axis 1 of a batch, the only axis of one sample
    z = x @ array_namespace(weight).matrix_transpose(weight)
    return z if bias is None else z + bias


def _as_batch(a):
    """View a 1-D sample as a batch of one."""
    return a if a.ndim == 2 else a[None, :]


def dense_forward(act, weight, x, bias):
    return act(_dense(weight, x, bias))


def dense_vjp(act, weight, x, bias):
    y, dz = activation_vjp(act, _dense(weight, x, bias))
    xp = array_namespace(weight)
    has_bias = bias is not None  # the pullback keeps no reference to bias

    def pullback(dy):
        g = dz(dy)
        return {
            "weight": xp.matrix_transpose(_as_batch(g)) @ _as_batch(x),
            "x": g @ weight,
            "bias": reduce_bias(g) if has_bias else None,
        }

    return y, pullback


register("fused_dense_bias_activation", "generic", forward=dense_forward, vjp=dense_vjp)
