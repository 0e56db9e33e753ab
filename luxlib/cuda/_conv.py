"""GPU ``fused_conv_bias_activation``: im2col kernel + cuBLAS gemm (:mod:`luxlib.cuda._blas`)
+ the bias+activation kernel as the fused epilogue; depthwise convolutions
(``groups == C_in > 1``) by direct kernels instead of im2col and gemm, the forward one
applying bias and activation itself. When cuDNN is installed, it runs the other
convolutions it takes (:mod:`luxlib.cuda._cudnn`: symmetric padding), with the same epilogue.

Every convolution runs as a 3-D one (leading unit spatial axes, as the looped kernels
do). The batch is tiled so the workspace of one tile stays within ``WORKSPACE_BYTES``
and every array of a tile has fewer than ``TILE_LIMIT`` elements (32-bit indices in the
kernels). Per tile of ``nb`` samples and group ``g`` (``Cg`` input, ``Cog`` output
channels, ``K`` taps, ``P`` output positions):

    forward   y[n, g] = W[g] (Cog x Cg K) @ cols[n, g] (Cg K x P)
    reverse   dW[g]  += dzb[g] (Cog x nb P) @ colsb[g]^T (nb P x Cg K)   (one call for all g)
              dcols   = W[g]^T @ dz[n, g],  dx = col2im(dcols)  (a gather, no atomics)
              db      = the epilogue kernel's reduction

``colsb`` is im2col's batch-minor layout ``(G, Cg K, nb, P)`` and ``dzb`` the same
transposition of ``dz`` (a copy of ``dz``, which is ``K Cg / Cog`` times smaller than the
columns). Transposed operands (``colsb[g]^T``, ``W[g]^T``) are views, passed to cuBLAS as
the transpose flag. The per-sample products are strided-batched gemms over the samples of
a tile (``W[g]`` at batch stride 0), one per group, or over the groups, one per sample,
whichever makes fewer calls.
A 1x1 kernel with unit stride and no padding uses ``x`` itself as ``cols`` (and writes
``dcols`` straight into ``dx``).
"""

import functools
import math
from collections import namedtuple

import numpy as np

from .._validation import array_namespace
from . import _bias_activation
from ._blas import matmul
from ._modules import BLOCK, DIVISOR, act_param, divisor, grid_1d, kernel_name, struct_arg

#: bytes of the per-tile workspace: the columns, their gradient and the transposed output
#: gradient of one tile of the batch (a tile has at least one sample, so a single huge
#: sample may exceed it)
WORKSPACE_BYTES = 256 << 20
#: elements of any array of a tile (x, the columns, the output) stay below this: the kernels
#: index in 32-bit arithmetic (headroom for a grid stride past the end)
TILE_LIMIT = 2**31 - 2**24
#: the depthwise weight gradient splits each (channel, tap) reduction until the grid has
#: about this many blocks, each split keeping at least DW_MIN_SPLIT positions
DW_TARGET_BLOCKS = 1024
DW_MIN_SPLIT = 16 * BLOCK
#: (KD, KH, KW) of the depthwise kernels whose weight-gradient units take every tap at once
#: (``dw_conv_dw_partial``'s ``all_taps``: these sizes are compiled into it); other kernels
#: take a unit per tap
DW_ALL_TAPS = frozenset({(1, 3, 3), (1, 5, 5), (1, 1, 3)})


_GEOMETRY = "C D H W OD OH OW KD KH KW sd sh sw dd dh dw pd ph pw flip M".split()
_DIVISORS = "divP divC divM divPlane divOW divOH divW divH divSD divSH divSW".split()
#: ``lx_conv`` of conv.cu (the geometry and divisors of a layout) as a NumPy structured
#: dtype: the kernels take it as one by-value argument
CONV_ARGS = np.dtype([(f, np.int32) for f in _GEOMETRY] + [(f, DIVISOR) for f in _DIVISORS], align=True)


def _is_depthwise(x, cdims):
    return cdims.groups == x.shape[1] > 1


class _Layout(namedtuple("_Layout", "n c g cg cog k p plane y_shape one_by_one per_sample workspace all_taps args")):
    """The geometry of one convolution, from the shapes and options alone (cached:
    :func:`_layout`): ``Cg``/``Cog`` input/output channels of each of ``g`` groups, ``k``
    taps, ``p`` output positions, ``plane`` input positions; ``per_sample``: elements of the
    largest array a kernel indexes, per sample; ``workspace``: bytes of the im2col path's
    workspace per sample (0 for depthwise, which needs none); ``all_taps``: a depthwise kernel
    whose weight-gradient units take every tap (:data:`DW_ALL_TAPS`); ``args``: the kernels'
    ``lx_conv`` argument (a :data:`CONV_ARGS` scalar)."""


@functools.lru_cache(maxsize=256)  # host time: ~8 us of Python a call
def _layout(cdims, n, itemsize, depthwise):
    x_shape, w_shape, out = (n,) + cdims.x_shape[1:], cdims.w_shape, tuple(cdims.output_shape[2:])
    c, g, c_out = x_shape[1], cdims.groups, w_shape[0]
    k, p, plane = math.prod(w_shape[2:]), math.prod(out), math.prod(x_shape[2:])
    if depthwise:
        per_sample, workspace = max(c * plane, c_out * p), 0
    else:
        # the columns and their gradient (both alive in the reverse pass), dz transposed
        per_sample, workspace = c * max(k * p, plane), (2 * c * k * p + c_out * p) * itemsize
    one_by_one = k == 1 and all(s == 1 for s in cdims.stride) and all(lohi == (0, 0) for lohi in cdims.padding)
    lo = tuple(lo for lo, _ in cdims.padding)
    in3, out3, stride3 = _as_3d(x_shape[2:], 1), _as_3d(out, 1), _as_3d(cdims.stride, 1)
    m = c_out // c if depthwise else 1
    geometry = ((c,) + in3 + out3 + _as_3d(w_shape[2:], 1) + stride3 + _as_3d(cdims.dilation, 1) + _as_3d(lo, 0)
                + (int(cdims.flipkernel), m))
    divisors = (p, c, m, plane, out3[2], out3[1], in3[2], in3[1]) + stride3
    args = struct_arg(CONV_ARGS, **dict(zip(_GEOMETRY, geometry)),
                      **{f: divisor(d, 32) for f, d in zip(_DIVISORS, divisors)})
    all_taps = depthwise and _as_3d(w_shape[2:], 1) in DW_ALL_TAPS
    return _Layout(n, c, g, c // g, c_out // g, k, p, plane, (n, c_out) + out, one_by_one, per_sample, workspace,
                   all_taps, args)


def supports(act, weight, x, bias, cdims):
    # empty batches and channel-less problems run generic, as on the looped path; the
    # kernels index within a tile (at least one sample) in 32-bit arithmetic
    return (
        _bias_activation.supports(act, x, bias)
        and weight.dtype == x.dtype
        and x.size > 0
        and weight.size > 0
        and _layout(cdims, x.shape[0], x.dtype.itemsize, _is_depthwise(x, cdims)).per_sample < TILE_LIMIT
    )


def _as_3d(v, fill):
    """A per-axis tuple of 1 or 2 spatial axes with leading ``fill`` up to 3 axes."""
    return (fill,) * (3 - len(v)) + tuple(v)


class _Plan:
    """One call (im2col + gemm): its arrays, the :class:`_Layout` of its shapes (attributes
    of the plan too) and the batch tiling."""

    def __init__(self, mod, blas, weight, x, cdims):
        self.mod, self.blas, self.xp = mod, blas, array_namespace(weight, x)
        self.x = self.xp.ascontiguousarray(x)
        self.x_shape, self.w_shape = x.shape, weight.shape
        lay = _layout(cdims, x.shape[0], x.dtype.itemsize, _is_depthwise(x, cdims))
        (self.n, self.c, self.g, self.cg, self.cog, self.k, self.p, self.plane, self.y_shape, self.one_by_one, _, _,
         self.all_taps, self.args) = lay
        self.w = self.xp.ascontiguousarray(weight).reshape(self.g, self.cog, self.cg * self.k)
        # at least one sample a tile; at most what the workspace budget and 32-bit indices allow
        tile = WORKSPACE_BYTES // lay.workspace if lay.workspace else self.n
        self.nb = max(1, min(self.n, tile, (TILE_LIMIT - 1) // lay.per_sample))

    def tiles(self):
        for n0 in range(0, self.n, self.nb):
            yield n0, min(self.n, n0 + self.nb)

    def _launch(self, name, n_threads, args):
        self.mod.get_function(kernel_name(name, self.x.dtype))(
            grid_1d(self.mod, n_threads), (BLOCK,), args + (self.args,)
        )

    def activate(self, epilogue_mod, act, bias, keep_z):
        """``(y, z)``: ``y = act(conv(x, weight) + bias)`` as a new C-contiguous ``(N, C_out,
        P)`` array, and with ``keep_z`` the convolution ``z`` (no bias) beside it, else None
        (then the epilogue runs in place on the convolution: :func:`_bias_activation.epilogue`)."""
        z = self.conv()
        if not keep_z:
            return _bias_activation.epilogue(epilogue_mod, act, z, bias), None
        return _bias_activation.forward(epilogue_mod, act, z, bias), z

    def cols(self, n0, n1, batch_minor):
        """im2col of samples [n0, n1): ``(nb, C K, P)`` (the groups' ``Cg K`` rows stacked), or
        ``(G, Cg K, nb P)`` (batch_minor)."""
        nb = n1 - n0
        if self.one_by_one:
            v = _tile(self.x, n0, n1).reshape(nb, self.c, self.p)
            return _batch_minor(self.xp, v, self.g) if batch_minor else v
        if batch_minor:
            shape, row_stride, sample_stride = (self.g, self.cg * self.k, nb * self.p), nb * self.p, self.p
        else:
            shape, row_stride, sample_stride = (nb, self.c * self.k, self.p), self.p, self.c * self.k * self.p
        cols = self.xp.empty(shape, self.x.dtype)
        total = nb * self.c * self.p
        self._launch("im2col", total, (_tile(self.x, n0, n1), cols, np.int32(total), np.int32(row_stride),
                                       np.int32(sample_stride)))
        return cols

    def conv(self):
        """``conv(x, weight)`` as a new C-contiguous ``(N, C_out, P)`` array."""
        z = self.xp.empty((self.n, self.g * self.cog, self.p), self.x.dtype)
        for n0, n1 in self.tiles():
            _per_group(self.blas, self.w, self.cols(n0, n1, batch_minor=False), _tile(z, n0, n1))
        return z

    def backward(self, dz):
        """``(dweight, dx)`` in the caller's shapes for ``dz`` (``(N, C_out, P)``)."""
        xp, dtype = self.xp, self.x.dtype
        acc = xp.result_type(dtype, xp.float32)  # the weight gradient sums in float32 at least
        dw = xp.empty(self.w.shape, acc)
        dx = xp.empty(self.x.shape, dtype)
        for n0, n1 in self.tiles():
            nb = n1 - n0
            dzt = _tile(dz, n0, n1)
            dzb = _batch_minor(xp, dzt, self.g)
            colsb = self.cols(n0, n1, batch_minor=True)
            matmul(self.blas, dzb, colsb, out=dw, accumulate=n0 > 0, transpose_b=True)
            del colsb
            if self.one_by_one:
                _per_group(self.blas, self.w, dzt, _tile(dx, n0, n1).reshape(nb, self.c, self.p), transpose=True)
                continue
            # (nb, C K, P): rows (c, tap), as col2im reads them
            dcols = _per_group(self.blas, self.w, dzt, xp.empty((nb, self.c * self.k, self.p), dtype), transpose=True)
            total = nb * self.c * self.plane
            self._launch("col2im", total, (dcols, _tile(dx, n0, n1), np.int32(total)))
        return dw.astype(dtype, copy=False).reshape(self.w_shape), dx.reshape(self.x_shape)


def _per_group(blas, w, v, out, transpose=False):
    """``out[n, g] = w[g] @ v[n, g]`` for ``w`` ``(G, R, S)`` (with ``transpose``: ``w[g].T``
    for ``w`` ``(G, S, R)``, no view made), ``v`` ``(nb, G S, P)`` and C-contiguous ``out``
    ``(nb, G R, P)`` (each sample's groups stacked): one strided-batched gemm for one group
    (``w`` broadcast over the samples; no views, each a CuPy call of host time), else one per
    group or per sample, whichever is fewer; returns ``out``."""
    groups, r, s = w.shape
    if transpose:
        r, s = s, r
    if groups == 1:
        return matmul(blas, w, v, out=out, transpose_a=transpose)
    nb, p = v.shape[0], v.shape[2]
    v4, out4 = v.reshape(nb, groups, s, p), out.reshape(nb, groups, r, p)
    if groups <= nb:
        for g in range(groups):
            matmul(blas, w[g], v4[:, g], out=out4[:, g], transpose_a=transpose)
    else:
        for n in range(nb):
            matmul(blas, w, v4[n], out=out4[n], transpose_a=transpose)
    return out


def _tile(a, n0, n1):
    """Rows (samples) ``[n0, n1)`` of ``a``: ``a`` itself when they are all of them (one tile,
    the usual case), since a view is one more CuPy call (host time)."""
    return a if n1 - n0 == a.shape[0] else a[n0:n1]


def _batch_minor(xp, a, g):
    """C-contiguous ``a`` ``(nb, G R, P)`` as a C-contiguous ``(G, R, nb P)`` (a view when nb == 1)."""
    nb, gr, p = a.shape
    if nb == 1:
        return a.reshape(g, gr // g, p)
    return xp.ascontiguousarray(a.reshape(nb, g, gr // g, p).transpose(1, 2, 0, 3)).reshape(g, gr // g, nb * p)


class _Depthwise(_Plan):
    """Depthwise convolutions (``groups == C``, ``M = C_out / C`` output channels per input
    channel) by direct kernels: no columns, no gemm."""

    def activate(self, epilogue_mod, act, bias, keep_z):
        """As :meth:`_Plan.activate`, in one kernel (``dw_conv_forward`` applies the bias and
        the activation itself; ``epilogue_mod`` is not used)."""
        xp, m, dtype = self.xp, self.cog, self.x.dtype
        shape = (self.n, self.c * m, self.p)
        y = xp.empty(shape, dtype)
        z = xp.empty(shape, dtype) if keep_z else None
        b = self.w if bias is None else xp.ascontiguousarray(bias)  # not read without a bias
        zo = y if z is None else z  # not written without keep_z
        for n0, n1 in self.tiles():
            total = (n1 - n0) * self.c * m * self.p
            self._launch("dw_conv_forward", total,
                         (_tile(self.x, n0, n1), self.w, b, _tile(zo, n0, n1), _tile(y, n0, n1), np.int32(total),
                          np.int32(bias is not None), np.int32(keep_z), np.int32(act.id), act_param(act, dtype)))
        return y, z

    def backward(self, dz):
        """``(dweight, dx)``: ``dw_conv_dx``, and ``dw_conv_dw_partial`` per tile, then one
        ``dw_conv_dw_finalize`` over the partials of every split and tile."""
        xp, dtype, m = self.xp, self.x.dtype, self.cog
        dx = xp.empty(self.x.shape, dtype)
        cols = self.c * m * self.k  # of dW and of the partials
        all_taps = self.all_taps
        units = self.c * m if all_taps else cols
        splits = max(1, min(-(-DW_TARGET_BLOCKS // units), self.nb * self.p // DW_MIN_SPLIT))
        tiles = list(self.tiles())
        partial = xp.empty((len(tiles) * splits, cols), xp.result_type(dtype, xp.float32))  # compute type
        for i, (n0, n1) in enumerate(tiles):
            nb = n1 - n0
            total = nb * self.c * self.plane
            dzt = _tile(dz, n0, n1)
            self._launch("dw_conv_dx", total, (dzt, self.w, _tile(dx, n0, n1), np.int32(total)))
            length = nb * self.p
            chunk = -(-length // splits)
            self.mod.get_function(kernel_name("dw_conv_dw_partial", dtype))(
                grid_1d(self.mod, units * splits, block=1), (BLOCK,),
                (dzt, _tile(self.x, n0, n1), _tile(partial, i * splits, (i + 1) * splits), np.int32(length),
                 np.int32(chunk), np.int32(splits), np.int32(units * splits), np.int32(all_taps), self.args),
            )
        dw = xp.empty(self.w_shape, dtype)
        self.mod.get_function(kernel_name("dw_conv_dw_finalize", dtype))(
            grid_1d(self.mod, cols), (BLOCK,), (partial, dw, np.int32(partial.shape[0]), np.int32(cols))
        )
        return dw, dx.reshape(self.x_shape)


class _CuDNN:
    """A convolution by cuDNN (:mod:`luxlib.cuda._cudnn`), with :class:`_Plan`'s interface;
    the bias and activation stay with the epilogue kernels."""

    activate = _Plan.activate

    def __init__(self, dnn, conv, weight, x, cdims):
        self.dnn, self.conv_layout, self.xp = dnn, conv, array_namespace(weight, x)
        self.x, self.w = self.xp.ascontiguousarray(x), self.xp.ascontiguousarray(weight)
        self.y_shape = (x.shape[0],) + cdims.output_shape[1:]

    def conv(self):
        """``conv(x, weight)`` as a new C-contiguous ``(N, C_out, P)`` array."""
        n, c_out = self.y_shape[:2]
        z = self.xp.empty((n, c_out, math.prod(self.y_shape[2:])), self.x.dtype)
        return self.dnn.forward(self.conv_layout, self.x, self.w, z)

    def backward(self, dz):
        """``(dweight, dx)`` in the caller's shapes for ``dz`` (``(N, C_out, P)``)."""
        xp, dz = self.xp, self.xp.ascontiguousarray(dz)
        dx = self.dnn.backward_data(self.conv_layout, self.w, dz, xp.empty(self.x.shape, self.x.dtype))
        dw = self.dnn.backward_filter(self.conv_layout, self.x, dz, xp.empty(self.w.shape, self.w.dtype))
        return dw, dx


def _plan(mod, blas, weight, x, cdims, dnn=None):
    """The depthwise kernels, cuDNN (``dnn``, when given and it takes the layout) or im2col + gemm."""
    if _is_depthwise(x, cdims):
        return _Depthwise(mod, blas, weight, x, cdims)
    conv = None if dnn is None else dnn.convolution(cdims, x.shape[0], x.dtype)
    if conv is not None:
        return _CuDNN(dnn, conv, weight, x, cdims)
    return _Plan(mod, blas, weight, x, cdims)


def forward(conv_mod, epilogue_mod, blas, act, weight, x, bias, cdims, dnn=None):
    """``act(conv(x, weight) + bias)``; ``conv_mod`` holds ``conv.cu``'s kernels,
    ``epilogue_mod`` those of ``bias_activation.cu``, ``blas`` the gemm (``_blas.get_blas``),
    ``dnn`` cuDNN (``_cudnn.get_cudnn``; None: luxlib's kernels only)."""
    plan = _plan(conv_mod, blas, weight, x, cdims, dnn)
    return plan.activate(epilogue_mod, act, bias, keep_z=False)[0].reshape(plan.y_shape)


def vjp(conv_mod, epilogue_mod, blas, act, weight, x, bias, cdims, dnn=None):
    """``(y, pullback)``; keeps ``x``, ``weight`` and ``y`` (output-only activations) or the
    pre-bias convolution (the backward kernel adds the bias again)."""
    plan = _plan(conv_mod, blas, weight, x, cdims, dnn)
    y, z = plan.activate(epilogue_mod, act, bias, keep_z=not act.output_only)
    if bias is not None:
        bias = plan.xp.ascontiguousarray(bias)
    epilogue_pullback = _bias_activation.epilogue_pullback(epilogue_mod, act, y if z is None else z, y, bias)

    def pullback(dy):
        dz, db = epilogue_pullback(plan.xp.ascontiguousarray(dy).reshape(y.shape))
        dweight, dx = plan.backward(dz)
        return {"weight": dweight, "x": dx, "bias": db}

    return y.reshape(plan.y_shape), pullback
