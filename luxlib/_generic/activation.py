"""Generic ``fast_activation`` and ``bias_activation``, and the fused-activation helper
that every other generic op uses for its last step."""

from .._dispatch import register
from .sums import fsum


def activation_vjp(act, z):
    """Apply ``act`` to ``z``; return ``(y, pullback)`` with ``pullback(dy) -> dz``.

    The pullback keeps only ``y`` when the activation's derivative needs only the
    output (LuxLib's memory rule), otherwise ``z`` and ``y``.
    """
    if not act.has_derivative:
        act.derivative()  # raises the TypeError that explains how to register one
    y = act(z)
    if act.id == 0:  # identity
        return y, lambda dy: dy
    if act.output_only:
        return y, lambda dy: dy * act.derivative(y=y)
    return y, lambda dy: dy * act.derivative(z, y)


def bias_shape(x):
    """Shape that broadcasts a ``(C,)`` bias along axis 1 (the only axis of 1-D ``x``)."""
    return (-1,) if x.ndim == 1 else (1, -1) + (1,) * (x.ndim - 2)


def reduce_bias(dz):
    """Sum ``dz`` over every axis but the bias axis."""
    if dz.ndim == 1:
        return dz
    return fsum(dz, axis=(0,) + tuple(range(2, dz.ndim)))


def _add_bias(x, bias):
    return x if bias is None else x + bias.reshape(bias_shape(x))


def _fresh(result, arg):
    """``result``, copied when it is ``arg`` itself (the identity): what the public
    functions return never aliases what they were given, as on the compiled paths."""
    return result.copy() if result is arg else result


def fast_activation_forward(act, x):
    return _fresh(act(x), x)


def fast_activation_vjp(act, x):
    y, dz = activation_vjp(act, x)
    return _fresh(y, x), lambda dy: {"x": _fresh(dz(dy), dy)}


def bias_activation_forward(act, x, bias):
    return _fresh(act(_add_bias(x, bias)), x)


def bias_activation_vjp(act, x, bias):
    y, dz = activation_vjp(act, _add_bias(x, bias))
    has_bias = bias is not None  # the pullback keeps no reference to the arrays

    def pullback(dy):
        g = dz(dy)
        return {"x": _fresh(g, dy), "bias": reduce_bias(g) if has_bias else None}

    return _fresh(y, x), pullback


# The in-place variants may overwrite x; the generic path never does.
for _op in ("fast_activation", "fast_activation_"):
    register(_op, "generic", forward=fast_activation_forward, vjp=fast_activation_vjp)
for _op in ("bias_activation", "bias_activation_"):
    register(_op, "generic", forward=bias_activation_forward, vjp=bias_activation_vjp)
