"""GPU ``fast_activation`` and ``bias_activation`` (kernels in ``bias_activation.cu``).

Launch code written against a kernel module with CuPy's calling convention
``mod.get_function(name)(grid, block, args)``: a ``cupy.RawModule`` on a GPU, the
CPU emulation of ``tests/cuda/emu`` in the tests. Arrays go in C-contiguous,
scalars explicitly typed.
"""

import functools
import math

import numpy as np

from .._validation import array_namespace
from ._modules import BLOCK, DTYPES, act_param, channels_arg, grid_1d, grid_vectors, kernel_name, launch, tuning

#: the bias-gradient reduction splits each channel's reduction (two stages) until the grid
#: has about this many blocks (a few per SM), each split keeping at least DB_MIN_SPLIT_ROWS
#: rows (the (N, C) kernel) or DB_MIN_SPLIT_ELEMENTS elements (the per-channel kernel). The
#: split depends on the shapes only, so db is deterministic.
DB_TARGET_BLOCKS = 1024
DB_MIN_SPLIT_ROWS = 128
DB_MIN_SPLIT_ELEMENTS = 16 * BLOCK


def _geometry(shape):
    """x of ``shape`` viewed as (outer, C, inner) around the bias axis."""
    if len(shape) == 1:
        return 1, shape[0], 1
    if not shape:
        return 1, 1, 1
    return shape[0], shape[1], math.prod(shape[2:])


def supports(act, x, bias=None):
    return (
        act.id >= 0
        and act.has_derivative
        and x.dtype in DTYPES
        and (bias is None or bias.dtype == x.dtype)
    )


def forward(mod, act, x, bias=None, out=None):
    """``act(x + bias)`` (bias along axis 1, the only axis of 1-D x; None for none), into
    ``out`` when given (a C-contiguous array of x's shape and dtype; it may be x itself)."""
    xp = array_namespace(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty(x.shape, x.dtype) if out is None else out
    if x.size == 0:
        return y
    if bias is None:
        launch(mod, _act_plan(tuning(mod), "act_forward", act, x.dtype, x.size), (x, y))
    else:
        launch(mod, _bias_plan(tuning(mod), act, x.dtype, x.shape), (x, xp.ascontiguousarray(bias), y))
    return y


# launch overhead: the arguments take microseconds to build, so the launches are planned once
# per shape (``tun``: the module's :data:`~._modules.Tuning`)
@functools.lru_cache(maxsize=512)
def _act_plan(tun, kernel, act, dtype, n):
    """The launch plan (:func:`~._modules.launch`) of ``act_forward`` or ``act_backward``."""
    return (kernel_name(kernel, dtype), grid_vectors(tun, n, np.dtype(dtype).itemsize), (BLOCK,),
            (np.int64(n), np.int32(act.id), act_param(act, dtype)))


@functools.lru_cache(maxsize=512)
def _bias_plan(tun, act, dtype, shape):
    """The launch plan of ``bias_act_forward``."""
    return (kernel_name("bias_act_forward", dtype), grid_vectors(tun, math.prod(shape), np.dtype(dtype).itemsize),
            (BLOCK,), (channels_arg(*_geometry(shape)), np.int32(act.id), act_param(act, dtype)))


def vjp(mod, act, x, bias=None, inplace=False):
    """``(y, pullback)``; the pullback keeps y for output-only activations, else x and bias
    (references to the inputs: the pre-activation is recomputed, never stored).

    ``inplace``: x is a C-contiguous buffer of the caller's that y may overwrite (it does
    for output-only activations, whose pullback does not read x)."""
    xp = array_namespace(x)
    x = xp.ascontiguousarray(x)
    b = None if bias is None else xp.ascontiguousarray(bias)
    y = forward(mod, act, x, b, out=x if inplace and act.output_only else None)
    return y, pullback(mod, act, x, y, b)


def pullback(mod, act, x, y, bias):
    """The pullback ``dy -> {"x": dz, "bias": db}`` of ``y = act(x + bias)`` computed
    already (C-contiguous x and y, contiguous bias or None). It keeps y for output-only
    activations (x, which it does not read then, may be y itself), else x and bias."""
    xp = array_namespace(x)
    has_bias = bias is not None
    src = y if act.output_only else x  # with a bias, the kernels add it to x again
    tun, C = tuning(mod), _geometry(x.shape)[1]

    def backward(dy):
        dy = xp.ascontiguousarray(dy)
        dz = xp.empty(dy.shape, dy.dtype)
        db = None
        if has_bias:
            db = xp.empty((C,), dy.dtype)
            if dy.size == 0:
                db[...] = 0
            else:
                reduce, partial_shape, finalize = _db_plan(tun, act, dy.dtype, dy.shape, _db_splits(dy.shape))
                partial = xp.empty(partial_shape, np.float64 if db.dtype == np.float64 else np.float32)  # compute type
                launch(mod, reduce, (dy, src, bias, dz, db, partial))
                if finalize is not None:
                    launch(mod, finalize, (partial, db))
        elif dy.size:
            launch(mod, _act_plan(tun, "act_backward", act, dy.dtype, dy.size), (dy, src, dz))
        return {"x": dz, "bias": db}

    return backward


def _db_splits(shape):
    """The splits of each channel's reduction: until the grid has about ``DB_TARGET_BLOCKS``
    blocks, each split keeping at least ``DB_MIN_SPLIT_ROWS`` rows (the (N, C) kernel: 32
    channels a block) or ``DB_MIN_SPLIT_ELEMENTS`` elements (a block a channel). Not cached:
    the tests lower the thresholds."""
    outer, C, inner = _geometry(shape)
    if inner == 1:
        blocks, splits = -(-C // 32), outer // DB_MIN_SPLIT_ROWS
    else:
        blocks, splits = C, outer * inner // DB_MIN_SPLIT_ELEMENTS
    return max(1, min(-(-DB_TARGET_BLOCKS // blocks), splits, 65535))


@functools.lru_cache(maxsize=512)
def _db_plan(tun, act, dtype, shape, splits):
    """``(reduction, shape of its partials, finalize or None)``: the launch plan of the kernel
    that writes dz and reduces db (arrays: dy, src, bias, dz, db, partials) with each
    channel's reduction in ``splits`` parts over blockIdx.y, and with more than one the
    second stage's (arrays: partials, db)."""
    outer, C, inner = _geometry(shape)
    # the kernels add the bias to src = x again; src = y for output-only activations
    tail = (np.int32(not act.output_only), np.int32(act.id), act_param(act, dtype))
    if inner == 1:  # (outer, C): 32 channels per block, rows split over blockIdx.y
        name, blocks, block, geometry = "bias_act_backward_db_rows", -(-C // 32), (32, 8), (np.int64(outer), np.int64(C))
    else:  # one block per channel, its (outer, inner) elements split over blockIdx.y
        name, blocks, block, geometry = "bias_act_backward_db", C, (BLOCK,), (channels_arg(outer, C, inner),)
    reduce = (kernel_name(name, dtype), (blocks, splits), block, geometry + tail)
    finalize = None
    if splits > 1:
        finalize = (kernel_name("bias_act_db_finalize", dtype), grid_1d(tun, C), (BLOCK,),
                    (np.int64(splits), np.int64(C)))
    return reduce, (splits, C), finalize


def epilogue(mod, act, z, bias):
    """The fused epilogue of dense and conv: ``act(z + bias)`` in place over the caller's
    buffer ``z`` (C-contiguous, bias along axis 1); identity without a bias launches nothing."""
    return z if act.id == 0 and bias is None else forward(mod, act, z, bias, out=z)


def epilogue_vjp(mod, act, z, bias):
    """The fused epilogue of dense and conv: ``y = act(z + bias)`` over the caller's buffer
    ``z`` (C-contiguous, bias along axis 1), which it may overwrite; returns ``(y,
    pullback)`` with ``pullback(dy) -> (dz, db)`` (``db`` None without a bias).

    Identity without a bias launches nothing: ``y`` is ``z`` and ``dz`` is ``dy``."""
    if act.id == 0 and bias is None:
        return z, lambda dy: (dy, None)
    b = None if bias is None else array_namespace(z).ascontiguousarray(bias)
    y = forward(mod, act, z, b, out=z if act.output_only else None)
    return y, epilogue_pullback(mod, act, z, y, b)


def epilogue_pullback(mod, act, z, y, bias):
    """``pullback(dy) -> (dz, db)`` of the epilogue ``y = act(z + bias)`` computed already
    (as :func:`pullback`; ``z`` may be ``y`` for output-only activations); identity without
    a bias launches nothing: ``dz`` is ``dy``."""
    if act.id == 0 and bias is None:
        return lambda dy: (dy, None)
    pb = pullback(mod, act, z, y, bias)

    def epilogue(dy):
        g = pb(dy)
        return g["x"], g["bias"]

    return epilogue
