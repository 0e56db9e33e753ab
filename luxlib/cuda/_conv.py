"""GPU ``fused_conv_bias_activation``: im2col kernel + gemm (the array namespace's
``matmul``: cuBLAS on CuPy) + the bias+activation kernel as the fused epilogue.

Every convolution runs as a 3-D one (leading unit spatial axes, as the looped kernels
do). The batch is tiled so the workspace of one tile stays within ``WORKSPACE_BYTES``.
Per tile of ``nb`` samples and group ``g`` (``Cg`` input, ``Cog`` output channels,
``K`` taps, ``P`` output positions):

    forward   y[n, g]   = W[g] (Cog x Cg K) @ cols[n, g] (Cg K x P)
    reverse   dW[g]    += sum_n dz[n, g] @ colsT[n, g]      (colsT: im2col's P x Cg K layout)
              dcols     = W[g]^T @ dz[n, g],  dx = col2im(dcols)  (a gather, no atomics)
              db        = the epilogue kernel's reduction

A 1x1 kernel with unit stride and no padding uses ``x`` itself as ``cols`` (and
writes ``dcols`` straight into ``dx``).
"""

import math

import numpy as np

from .._validation import array_namespace
from . import _bias_activation
from ._modules import BLOCK, grid_1d, kernel_name

#: bytes of the per-tile workspace: forward and transposed columns, the columns'
#: gradient and the per-sample weight gradients of one tile of the batch (a tile has at
#: least one sample, so a single huge sample may exceed it)
WORKSPACE_BYTES = 256 << 20


def supports(act, weight, x, bias, cdims):
    # empty batches and channel-less problems run generic, as on the looped path; the
    # kernels index within one sample in 32-bit arithmetic
    per_sample = x.shape[1] * max(math.prod(weight.shape[2:]) * math.prod(cdims.output_shape[2:]),
                                  math.prod(x.shape[2:]))
    return (
        _bias_activation.supports(act, x, bias)
        and weight.dtype == x.dtype
        and x.size > 0
        and weight.size > 0
        and per_sample < 2**31
    )


class _Plan:
    """Geometry, batch tiling and the kernels' scalar arguments of one call."""

    def __init__(self, mod, weight, x, cdims):
        self.mod, self.xp = mod, array_namespace(weight, x)
        unit = 3 - cdims.spatial_dims
        self.x = self.xp.ascontiguousarray(x)
        self.x_shape, self.w_shape = x.shape, weight.shape
        self.n, self.c = x.shape[:2]
        self.g = cdims.groups
        self.cg, self.cog = self.c // self.g, weight.shape[0] // self.g
        out = tuple(cdims.output_shape[2:])
        self.y_shape = (self.n, weight.shape[0]) + out
        self.k, self.p = math.prod(weight.shape[2:]), math.prod(out)
        self.w = self.xp.ascontiguousarray(weight).reshape(self.g, self.cog, self.cg * self.k)
        geometry = (
            (self.c,)
            + (1,) * unit + tuple(x.shape[2:])
            + (1,) * unit + out
            + (1,) * unit + tuple(weight.shape[2:])
            + (1,) * unit + tuple(cdims.stride)
            + (1,) * unit + tuple(cdims.dilation)
            + (0,) * unit + tuple(lo for lo, _ in cdims.padding)
            + (int(cdims.flipkernel),)
        )
        self.geometry = tuple(np.int32(v) for v in geometry)
        self.one_by_one = (
            self.k == 1 and all(s == 1 for s in cdims.stride) and all(p == (0, 0) for p in cdims.padding)
        )
        cols = self.c * self.k * self.p  # elements per sample of each workspace array
        per_sample = (2 * cols + weight.shape[0] * self.cg * self.k) * x.dtype.itemsize
        self.nb = max(1, min(self.n, WORKSPACE_BYTES // per_sample))

    def tiles(self):
        for n0 in range(0, self.n, self.nb):
            yield n0, min(self.n, n0 + self.nb)

    def cols(self, n0, n1, trans):
        """im2col of samples [n0, n1): ``(nb, G, Cg K, P)``, or ``(nb, G, P, Cg K)`` (trans)."""
        nb, xp = n1 - n0, self.xp
        if self.one_by_one:
            v = self.x[n0:n1].reshape(nb, self.g, self.cg, self.p)
            return v.swapaxes(-1, -2) if trans else v
        shape = (nb, self.g, self.p, self.cg * self.k) if trans else (nb, self.g, self.cg * self.k, self.p)
        cols = xp.empty(shape, self.x.dtype)
        self.mod.get_function(kernel_name("im2col", cols.dtype))(
            grid_1d(self.mod, cols.size), (BLOCK,),
            (self.x[n0:n1], cols, np.int64(cols.size), np.int32(self.g), np.int32(trans)) + self.geometry,
        )
        return cols

    def conv(self):
        """``conv(x, weight)`` as a new C-contiguous ``(N, C_out, P)`` array."""
        z = self.xp.empty((self.n, self.g * self.cog, self.p), self.x.dtype)
        for n0, n1 in self.tiles():
            out = z[n0:n1].reshape(n1 - n0, self.g, self.cog, self.p)
            self.xp.matmul(self.w, self.cols(n0, n1, trans=False), out=out)
        return z

    def backward(self, dz):
        """``(dweight, dx)`` in the caller's shapes for ``dz`` (``(N, C_out, P)``)."""
        xp, dtype = self.xp, self.x.dtype
        acc = xp.result_type(dtype, xp.float32)  # the weight gradient sums in float32 at least
        dw = xp.zeros(self.w.shape, acc)
        dx = xp.empty(self.x.shape, dtype)
        wt = xp.ascontiguousarray(self.w.swapaxes(-1, -2))  # (G, Cg K, Cog)
        for n0, n1 in self.tiles():
            nb = n1 - n0
            dzt = dz[n0:n1].reshape(nb, self.g, self.cog, self.p)
            dw += xp.matmul(dzt, self.cols(n0, n1, trans=True)).sum(axis=0, dtype=acc)
            if self.one_by_one:
                xp.matmul(wt, dzt, out=dx[n0:n1].reshape(nb, self.g, self.cg, self.p))
                continue
            dcols = xp.matmul(wt, dzt)  # (nb, G, Cg K, P) = (nb, C, K, P)
            self.mod.get_function(kernel_name("col2im", dtype))(
                grid_1d(self.mod, nb * self.x[0].size), (BLOCK,),
                (dcols, dx[n0:n1], np.int64(nb * self.x[0].size)) + self.geometry,
            )
        return dw.astype(dtype, copy=False).reshape(self.w_shape), dx.reshape(self.x_shape)


def forward(conv_mod, epilogue_mod, act, weight, x, bias, cdims):
    """``act(conv(x, weight) + bias)``; ``conv_mod`` holds ``conv.cu``'s kernels,
    ``epilogue_mod`` those of ``bias_activation.cu``."""
    plan = _Plan(conv_mod, weight, x, cdims)
    z = plan.conv()
    return _bias_activation.forward(epilogue_mod, act, z, bias, out=z).reshape(plan.y_shape)


def vjp(conv_mod, epilogue_mod, act, weight, x, bias, cdims):
    """``(y, pullback)``; keeps ``x``, ``weight`` and ``y`` (output-only activations) or the
    pre-bias convolution (the backward kernel adds the bias again)."""
    plan = _Plan(conv_mod, weight, x, cdims)
    y, epilogue_pullback = _bias_activation.epilogue_vjp(epilogue_mod, act, plan.conv(), bias)

    def pullback(dy):
        dz, db = epilogue_pullback(plan.xp.ascontiguousarray(dy).reshape(y.shape))
        dweight, dx = plan.backward(dz)
        return {"weight": dweight, "x": dx, "bias": db}

    return y.reshape(plan.y_shape), pullback
