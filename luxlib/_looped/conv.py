"""Looped (Cython/OpenMP + BLAS) ``fused_conv_bias_activation``.

Glue around :mod:`luxlib._kernels.conv`: every convolution runs as a 3-D one (1-D and
2-D get leading unit spatial axes), on C-contiguous arrays (non-contiguous inputs are
copied once). Depthwise convolutions (``groups == C_in > 1``) run the direct kernel,
everything else im2col tiles + BLAS gemm (1x1 with unit stride and no padding: gemm on
``x`` itself). Large enough 2-D 3x3 stride-1 single-group convolutions run their forward,
data and filter gradients by Winograd F(2x2, 3x3) (:mod:`luxlib._kernels.winograd`). The
reverse pass first forms ``dz = dy * act'`` and the bias gradient in one pass with the
activation kernel, then the conv kernels give ``dx`` and ``dweight`` (depthwise: its
kernel forms ``dz`` and the bias gradient itself, per plane).
"""

import contextlib

import numpy as np

from .._dispatch import register
from .._kernels import activation as act_kernels
from .._kernels import conv as kernels
from .._kernels import winograd
from .._threads import single_threaded_blas

# bytes of one im2col (or col2im) tile; each thread holds one (two in the reverse pass)
_TILE_BYTES = 4 << 20
# Winograd F(2x2, 3x3) from these channel counts and output sizes up (below them
# the transforms cost more than the gemm saves; doc/conv.md)
_WINOGRAD_MIN_CHANNELS = 16
_WINOGRAD_MIN_OUT = 8
# bytes of one Winograd band's transformed input and output tiles (V and M, or dM); each
# thread holds one: the rows of tiles per band follow from it (at least one row). The
# forward (and data gradient) runs fastest with V and M within a core's L2 (1 MB here):
# 64->64 56x56, N=32 forward 31.5 ms with 4 MB bands, 27.4 with 1 MB. The filter gradient
# adds each band's product into dU (16 C_out C_in), so it takes larger bands (doc/conv.md).
_WINOGRAD_BAND_BYTES = 1 << 20
_WINOGRAD_GRAD_BAND_BYTES = 4 << 20


def _supports(act, weight, x, **_):
    # user activations and zero-size problems (empty batch, no channels) run generic
    return 0 <= act.id < act_kernels.N_ACTIVATIONS and x.size > 0 and weight.size > 0


def _param(act):
    return act.params[0] if act.params else 0.0


class _Plan:
    """Shapes, options and threading of one call, as the kernels take them."""

    def __init__(self, weight, x, cdims):
        pad3 = (1,) * (5 - x.ndim)  # leading unit spatial axes
        self.x_shape, self.w_shape = x.shape, weight.shape
        self.x = np.ascontiguousarray(x).reshape(x.shape[:2] + pad3 + x.shape[2:])
        self.w = np.ascontiguousarray(weight).reshape(weight.shape[:2] + pad3 + weight.shape[2:])
        self.y_shape = (x.shape[0],) + tuple(cdims.output_shape[1:])
        self.y5 = self.y_shape[:2] + pad3 + self.y_shape[2:]
        unit = (1,) * (3 - cdims.spatial_dims)
        self.options = (
            unit + cdims.stride,
            unit + cdims.dilation,
            (0,) * len(unit) + tuple(lo for lo, _ in cdims.padding),
        )
        self.groups, self.flip = cdims.groups, cdims.flipkernel
        n, c = x.shape[:2]
        self.depthwise = self.groups == c > 1
        taps = int(np.prod(weight.shape[1:]))  # Cg * K
        positions = int(np.prod(self.y5[2:]))
        macs = n * weight.shape[0] * positions * taps
        # depthwise: parallel over (sample, channel) planes forward, input channels in
        # reverse (the direct scheme's reverse: (sample, input channel) planes), decided
        # on the input channels, the fewest of those units; gemm: over samples
        self.nt = kernels.threads(macs, c if self.depthwise else n)
        self.macs = macs
        self.pc = max(1, min(positions, _TILE_BYTES // (taps * x.dtype.itemsize)))
        one_by_one = (
            taps == weight.shape[1]
            and all(s == 1 for s in cdims.stride)
            and all(p == (0, 0) for p in cdims.padding)
        )
        self.tile = 0 if one_by_one else taps * self.pc
        winograd_ok = (
            cdims.spatial_dims == 2
            and weight.shape[2:] == (3, 3)
            and self.groups == 1
            and all(s == 1 for s in cdims.stride)
            and all(d == 1 for d in cdims.dilation)
            and min(weight.shape[:2]) >= _WINOGRAD_MIN_CHANNELS
        )
        self.winograd = winograd_ok and min(self.y_shape[2:]) >= _WINOGRAD_MIN_OUT
        # the data gradient is a 3x3 stride-1 conv too, whose output is x
        self.winograd_dx = winograd_ok and min(x.shape[2:]) >= _WINOGRAD_MIN_OUT

    def blas_threads(self, nt=None):
        """One BLAS thread inside the kernels' OpenMP regions (they call BLAS per thread)."""
        return single_threaded_blas() if (self.nt if nt is None else nt) > 1 else contextlib.nullcontext()

    def run_winograd(self, kernel, band_bytes, out_hw, *args):
        """Run a Winograd ``kernel`` whose convolution has output planes ``out_hw``: bands
        of ``rb`` rows of tiles within ``band_bytes``, threads over the (sample, band)
        pairs (so one large image runs on every thread too)."""
        th, tw = (out_hw[0] + 1) // 2, (out_hw[1] + 1) // 2
        per_row = 16 * (self.w.shape[0] + self.w.shape[1]) * tw * self.x.dtype.itemsize
        rb = max(1, min(th, band_bytes // per_row))
        nt = kernels.threads(self.macs, self.x.shape[0] * -(-th // rb))
        with self.blas_threads(nt):
            kernel(*args, nt, rb)

    def conv(self, act, bias, z, y):
        """``z = conv + bias``, ``y = act(z)`` into the given ``y5``-shaped arrays."""
        if bias is not None:
            bias = np.ascontiguousarray(bias)
        if self.depthwise:
            kernels.depthwise_forward(act.id, _param(act), self.x, self.w, bias, z, y,
                                      *self.options, self.flip, self.nt)
            return
        if self.winograd:
            self.run_winograd(winograd.forward, _WINOGRAD_BAND_BYTES, self.y5[3:], act.id, _param(act),
                              self.x[:, :, 0], self.w[:, :, 0], bias, z[:, :, 0], y[:, :, 0],
                              self.options[2][1:], self.flip)
            return
        ws = np.empty((self.nt, self.tile), self.x.dtype)
        with self.blas_threads():
            kernels.gemm_forward(act.id, _param(act), self.x, self.w, bias, z, y, ws, self.pc,
                                 *self.options, self.groups, self.flip, self.nt)

    def backward(self, dz):
        """``(dweight, dx)`` in the caller's shapes for the cotangent ``dz`` (``y5``-shaped)
        of a gemm-scheme conv: im2col/col2im + gemm, or Winograd where it qualifies: ``dx``
        when ``x`` is large enough, ``dweight`` too when ``y`` also is (doc/conv.md)."""
        dx = np.empty_like(self.x)
        dw = np.empty_like(self.w)
        lo = self.options[2][1:]
        if self.winograd and self.winograd_dx:
            self.run_winograd(winograd.filter_gradient, _WINOGRAD_GRAD_BAND_BYTES, self.y5[3:],
                              self.x[:, :, 0], dz[:, :, 0], dw[:, :, 0], lo, self.flip)
        else:
            ws = np.empty((self.nt, (1 if self.winograd_dx else 2) * self.tile), self.x.dtype)
            dwacc = np.empty((self.nt, self.w.size), self.x.dtype)
            with self.blas_threads():
                kernels.gemm_backward(self.x, self.w, dz, None if self.winograd_dx else dx, dw,
                                      ws, dwacc, self.pc, *self.options, self.groups, self.flip,
                                      self.nt)
        if self.winograd_dx:
            # dx = dz cross-correlated with the flipped, in/out-transposed weight,
            # leading padding 2 - lo
            dx2 = dx[:, :, 0]
            self.run_winograd(winograd.forward, _WINOGRAD_BAND_BYTES, self.x.shape[3:], 0, 0.0,
                              dz[:, :, 0], self.w[:, :, 0].transpose(1, 0, 2, 3), None, dx2, dx2,
                              (2 - lo[0], 2 - lo[1]), not self.flip)
        return dw.reshape(self.w_shape), dx.reshape(self.x_shape)

    def depthwise_backward(self, act, src, dy, db):
        """``(dweight, dx)`` of a depthwise conv for the cotangent ``dy`` of ``y = act(z)``
        (``src``: ``y`` or ``z``), and the bias gradient into ``db`` unless None: the
        kernel forms ``dz = dy * act'`` per plane itself."""
        dx = np.empty_like(self.x)
        dw = np.empty_like(self.w)
        kernels.depthwise_backward(act.id, _param(act), src, dy, self.x, self.w, dx, dw, db,
                                   *self.options, self.flip, self.nt)
        return dw.reshape(self.w_shape), dx.reshape(self.x_shape)


def forward(act, weight, x, bias, cdims):
    plan = _Plan(weight, x, cdims)
    y = np.empty(plan.y5, x.dtype)
    plan.conv(act, bias, y, y)
    return y.reshape(plan.y_shape)


def vjp(act, weight, x, bias, cdims):
    """``(y, pullback)``; keeps ``x``, ``weight`` and ``y`` (output-only activations) or ``z``."""
    plan = _Plan(weight, x, cdims)
    y = np.empty(plan.y5, x.dtype)
    src = y if act.output_only else np.empty_like(y)  # what act' is computed from
    plan.conv(act, bias, src, y)
    wants_db = bias is not None

    def pullback(dy):
        dy = np.ascontiguousarray(dy).reshape(plan.y5)
        if plan.depthwise:
            db = np.empty(dy.shape[1], dy.dtype) if wants_db else None
            dweight, dx = plan.depthwise_backward(act, src, dy, db)
            return {"weight": dweight, "x": dx, "bias": db}
        if act.id == 0 and not wants_db:
            dz, db = dy, None
        else:
            dz = np.empty_like(dy)
            db = np.empty(dy.shape[1], dy.dtype) if wants_db else None
            ncs = (dy.shape[0], dy.shape[1], -1)
            act_kernels.backward(act.id, _param(act), src.reshape(ncs), None, dy.reshape(ncs),
                                 dz.reshape(ncs), db)
        dweight, dx = plan.backward(dz)
        return {"weight": dweight, "x": dx, "bias": db}

    return y.reshape(plan.y_shape), pullback


register("fused_conv_bias_activation", "looped", forward=forward, vjp=vjp, supports=_supports)
