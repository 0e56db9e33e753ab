"""Generic ``fused_conv_bias_activation``: one grouped matmul per kernel tap.

Shapes: x ``(N, C_in, *in)``, weight ``(C_out, C_in/G, *k)``, y ``(N, C_out, *out)``,
``G`` groups, ``P = prod(out)`` output positions. For the kernel tap at offset ``t``
(one index per spatial axis) the input samples that every output position reads form
one strided slice of the zero-padded input ``xpad``, per axis
``t*dilation : t*dilation + stride*(out-1) + 1 : stride``. So

    z[n, g] = sum_t  weight[g, :, :, t] @ xpad[n, g, :, slice_t]      (Cog x Cg) @ (Cg x P)

and the reverse rule runs the same loop backwards:

    dweight[g, :, :, t] = sum_n dz[n, g] @ xpad[n, g, :, slice_t].T
    dxpad[n, g, :, slice_t] += weight[g, :, :, t].T @ dz[n, g]      (then drop the padding)

A flipped kernel (true convolution) reads tap ``k - 1 - t`` instead of ``t``.
float16 inputs accumulate in float32 and round once at the end.
"""

import itertools
import math

from .._dispatch import register
from .._validation import array_namespace
from .activation import activation_vjp, bias_shape, reduce_bias
from .sums import acc_dtype


def _interior(shape, padding):
    """Index of the unpadded input inside the padded one."""
    return (slice(None), slice(None)) + tuple(slice(lo, lo + n) for n, (lo, _) in zip(shape[2:], padding))


def _pad(xp, x, padding):
    """``x`` zero-padded by ``(lo, hi)`` per spatial axis (``x`` itself when there is none)."""
    if not any(lo or hi for lo, hi in padding):
        return x
    shape = tuple(x.shape[:2]) + tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[2:], padding))
    xpad = xp.zeros(shape, dtype=x.dtype)
    xpad[_interior(x.shape, padding)] = x
    return xpad


def _taps(cdims):
    """Yield ``(weight index, padded-input slice)`` for every kernel tap."""
    out = cdims.output_shape[2:]
    for t in itertools.product(*(range(k) for k in cdims.kernel_size)):
        window = tuple(
            slice(i * d, i * d + s * (o - 1) + 1, s) for i, d, s, o in zip(t, cdims.dilation, cdims.stride, out)
        )
        if cdims.flipkernel:
            t = tuple(k - 1 - i for i, k in zip(t, cdims.kernel_size))
        yield (slice(None), slice(None)) + t, (slice(None), slice(None)) + window


class _Groups:
    """The reshapes between the array layouts and the per-group matrices of the matmuls."""

    def __init__(self, x, weight, cdims):
        self.n, self.g = x.shape[0], cdims.groups
        self.cg, self.cog = x.shape[1] // self.g, weight.shape[0] // self.g
        self.p = math.prod(cdims.output_shape[2:])

    def tap(self, w_t):
        """``(C_out, Cg)`` weight tap -> ``(G, Cog, Cg)``."""
        return w_t.reshape(self.g, self.cog, self.cg)

    def input(self, x_t):
        """``(N, C_in, *out)`` input slice -> ``(N, G, Cg, P)``."""
        return x_t.reshape(self.n, self.g, self.cg, self.p)

    def output(self, z):
        """``(N, C_out, *out)`` -> ``(N, G, Cog, P)``."""
        return z.reshape(self.n, self.g, self.cog, self.p)


def _conv_bias(weight, x, bias, cdims):
    """``conv(x, weight) + bias`` in ``x``'s dtype."""
    xp = array_namespace(x, weight)
    acc = acc_dtype(xp, x.dtype)
    grp = _Groups(x, weight, cdims)
    xpad = _pad(xp, x.astype(acc, copy=False), cdims.padding)
    w = weight.astype(acc, copy=False)
    z = xp.zeros((grp.n, grp.g, grp.cog, grp.p), dtype=acc)
    for w_index, window in _taps(cdims):
        z += grp.tap(w[w_index]) @ grp.input(xpad[window])
    z = z.reshape((grp.n,) + cdims.output_shape[1:])  # cdims' batch size may differ from x's
    if bias is not None:
        z = z + bias.reshape(bias_shape(z))
    return z.astype(x.dtype, copy=False)


def _conv_backward(dz, weight, x, cdims):
    """Gradients of ``conv(x, weight)`` for the cotangent ``dz``: ``(dweight, dx)``."""
    xp = array_namespace(x, weight)
    acc = acc_dtype(xp, x.dtype)
    grp = _Groups(x, weight, cdims)
    xpad = _pad(xp, x.astype(acc, copy=False), cdims.padding)
    w = weight.astype(acc, copy=False)
    dzg = grp.output(dz.astype(acc, copy=False))
    dw = xp.zeros(w.shape, dtype=acc)
    dxpad = xp.zeros(xpad.shape, dtype=acc)
    for w_index, window in _taps(cdims):
        dw[w_index] = xp.sum(dzg @ grp.input(xpad[window]).mT, axis=0).reshape(dw[w_index].shape)
        dxpad[window] += (grp.tap(w[w_index]).mT @ dzg).reshape(dxpad[window].shape)
    dx = dxpad[_interior(x.shape, cdims.padding)]
    return dw.astype(weight.dtype), dx.astype(x.dtype)


def conv_forward(act, weight, x, bias, cdims):
    return act(_conv_bias(weight, x, bias, cdims))


def conv_vjp(act, weight, x, bias, cdims):
    y, dz_of = activation_vjp(act, _conv_bias(weight, x, bias, cdims))
    has_bias = bias is not None  # the pullback needs x and weight, never bias

    def pullback(dy):
        dz = dz_of(dy)
        dweight, dx = _conv_backward(dz, weight, x, cdims)
        return {"weight": dweight, "x": dx, "bias": reduce_bias(dz) if has_bias else None}

    return y, pullback


register("fused_conv_bias_activation", "generic", forward=conv_forward, vjp=conv_vjp)
