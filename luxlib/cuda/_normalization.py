"""GPU ``batchnorm``, ``groupnorm``, ``instancenorm`` and ``layernorm`` (kernels in
``normalization.cu``).

Same keyword signatures and return/pullback contract as the looped implementation
(:mod:`luxlib._looped.normalization`): ``y`` (and the new running statistics, computed
from float64 group statistics), and a pullback returning ``{"x", "scale", "bias"}`` with
``(C,)`` gradients for the channel ops and scale/bias-shaped ones for layernorm. The
forward keeps ``x``, the float64 group statistics and the scale/bias vectors; the
backward recomputes ``z`` (and ``y``) from them.

Launch code written against a kernel module with CuPy's calling convention
``mod.get_function(name)(grid, block, args)`` (see ``_bias_activation``); the small
per-group/per-channel combinations between kernels (``rstd``, sums over chunks) run in
the arrays' namespace. The pieces the looped path does alike are in
:mod:`luxlib._normalization_glue`.
"""

import math
from collections import namedtuple
from functools import lru_cache, partial

import numpy as np

from .. import _normalization_glue as glue
from .._validation import array_namespace
from ._modules import (
    BLOCK,
    DIVISOR,
    DTYPES,
    UNROLL,
    acc_scalar,
    act_param,
    divisor,
    grid_1d,
    kernel_name,
    launch,
    struct_arg,
    tuning,
)

__all__ = ["OPS", "SUPPORTS"]

#: reductions are cut into chunks of at least MIN_CHUNK elements (``_modules``; a module may
#: lower it) and into more chunks only while there are fewer (unit, chunk) blocks than this
TARGET_BLOCKS = 1024
#: cap on the chunks of one unit (gridDim.y)
MAX_CHUNKS = 65535
#: block of the column kernels (norm_*_cols*): (LX_WARP columns, LX_NORM_ROWS rows) of
#: normalization.cu
COLS_BLOCK = (32, 8)
#: threads of a block of the backward rows kernel (LX_ROWS_THREADS; rows of up to ROWS_MAX,
#: ``_modules``, elements run the rows kernels)
ROWS_THREADS = 512
#: warps (rows at a time) of a block of the forward rows kernel (LX_ROWS_WARPS)
ROWS_WARPS = 8
#: rows per tile of the backward rows kernel (LX_ROWS_TILE). It launches a block per ROWS_CHUNK rows
#: (each block writes one row of per-column partial sums: 1/8 of float32 x's bytes), or
#: ROWS_MIN_BLOCKS blocks of fewer rows (2 per SM of an H100/H200) when that gives fewer
#: (the module's ``max_blocks`` caps the count, for tests)
ROWS_TILE = 2
ROWS_CHUNK = 32
ROWS_MIN_BLOCKS = 264
#: the elementwise kernels index in 32 bits while every index (and index + UNROLL grid
#: strides) stays below this (a module may ask for 64 bits always: ``norm_wide_index``, for
#: tests)
NARROW_LIMIT = 2**31
#: elements per thread and step of the elementwise kernels' 16-byte packs (LX_NORM_PACKED_STEP)
PACKED_STEP = 8

# Reduction units of x: `units` units of `length` elements in runs of `runlen` contiguous
# elements, run r of unit u at u * gstride + r * rstride (normalization.cu).
Units = namedtuple("Units", "units length gstride runlen rstride")

#: ``lx_units`` of normalization.cu: the partial kernels' units, one struct argument
UNITS_ARGS = np.dtype([(f, np.int64) for f in ("units", "len", "chunk", "gstride", "rstride")]
                      + [(f, DIVISOR) for f in ("runlen", "sdiv", "amod")], align=True)
#: ``lx_finalize`` and ``lx_bwd_finalize``: the finalize kernels' scalars, one struct argument
FINALIZE_ARGS = np.dtype([(f, np.int64) for f in ("units", "nchunks", "len", "chunk")]
                         + [(f, np.float64) for f in ("eps", "keep", "momentum", "unbiased")], align=True)
BWD_FINALIZE_ARGS = np.dtype([(f, np.int64) for f in ("groups", "sdiv", "nchunks", "amod", "units")]
                             + [("nsum", np.int32), ("count", np.float64)], align=True)
#: ``lx_norm_index``: the elementwise kernels' index parameters, one struct argument
INDEX_ARGS = np.dtype([("n", np.int64), ("wide", np.int32), ("vec", np.int32)]
                      + [(f, DIVISOR) for f in ("qdiv", "ngroups", "adiv", "amod")], align=True)

# The launch code below runs on every call, and its host time is most of what a small
# normalization costs on a GPU; so each op's launches (grids and scalar arguments) are
# planned once per shape, dtype and option values, by functions cached on those keys. They
# take the module's Tuning (``_modules.tuning``, its test hooks) in place of the module.


@lru_cache(maxsize=256)
def _act_args(act, dtype):
    """The kernels' trailing activation arguments ``(id, parameter)``."""
    return np.int32(act.id), act_param(act, dtype)


class Geometry(namedtuple("Geometry", "stats elem groups count bwd sdiv amod vec")):
    """How the kernels see one op on C-contiguous ``x``.

    ``stats``: the statistics groups as reduction units; ``elem``: ``(qdiv, adiv)``, the
    elementwise kernels' group ``(i / qdiv) % groups`` and affine index ``(i / adiv) % amod``
    of element ``i``; ``count``: elements per group; ``bwd``: the units of backward pass 1,
    whose statistics are those of group ``u // sdiv`` (``vec``: one scale/bias per element).
    """


@lru_cache(maxsize=512)
def _channel_geometry(shape, kind, groups=1):
    """``kind``: "batch" (group = channel), "instance" (group = (n, c)), "group"."""
    n, c = shape[:2]
    s = math.prod(shape[2:])
    if kind == "batch":
        units = Units(c, n * s, s, s, c * s)
        return Geometry(units, (s, s), c, n * s, units, 1, c, False)
    if kind == "instance":
        units = Units(n * c, s, s, s, 0)
        return Geometry(units, (s, s), n * c, s, units, 1, c, False)
    cg = c // groups
    # backward pass 1 per (n, c) run: one scale per unit; group sums add cg units
    return Geometry(Units(n * groups, cg * s, cg * s, cg * s, 0), (cg * s, s), n * groups, cg * s,
                    Units(n * c, s, s, s, 0), cg, c, False)


@lru_cache(maxsize=512)
def _rows_geometry(rows, length):
    units = Units(rows, length, length, length, 0)
    return Geometry(units, (length, 1), rows, length, units, 1, length, True)


def _i64(*values):
    return tuple(np.int64(v) for v in values)


def _packs(itemsize, n, geom):
    """Whether the elementwise kernels may move 16-byte packs of ``16 // itemsize`` elements
    (``vec`` of ``lx_norm_elements``): the elements of a pack share their group and their
    affine index, or have consecutive affine indices (layernorm's ``adiv == 1``)."""
    w = 16 // itemsize
    qdiv, adiv = geom.elem
    return n % w == 0 and qdiv % w == 0 and (adiv % w == 0 or (adiv == 1 and geom.amod % w == 0))


def _index_args(tun, n, grid, geom, vec=False):
    """The index argument of the elementwise kernels (an :data:`INDEX_ARGS` scalar) for ``n``
    elements on a 1-D ``grid`` of BLOCK-thread blocks; ``vec`` (see :func:`_packs`) asks for
    16-byte packs, whose path indexes in 64 bits (its index arithmetic is once per pack)."""
    wide = vec or n + UNROLL * grid[0] * BLOCK > NARROW_LIMIT or tun.norm_wide_index
    bits = 64 if wide else 32
    qdiv, adiv = geom.elem
    return struct_arg(INDEX_ARGS, n=n, wide=wide, vec=vec, qdiv=divisor(qdiv, bits),
                      ngroups=divisor(geom.groups, bits), adiv=divisor(adiv, bits), amod=divisor(geom.amod, bits))


def _chunks(tun, units, length, width=1):
    """``(nchunks, chunk)`` for a reduction over ``units`` units of ``length`` items of
    ``width`` elements each."""
    min_chunk = max(1, tun.norm_min_chunk // width)
    want = -(-TARGET_BLOCKS // units)
    nchunks = max(1, min(-(-length // min_chunk), want, MAX_CHUNKS))
    chunk = -(-length // nchunks)
    return -(-length // chunk), chunk


def _unit_grid(tun, units, nchunks):
    """Grid of the per-(unit, chunk) reductions: a block per chunk in y, at most
    ``max_blocks`` (MAX_BLOCKS) in x, each looping over the units in steps of the grid."""
    return (min(units, tun.max_blocks), nchunks)


def _block(chunk):
    """Threads of a reduction block: a multiple of 32 covering ``chunk``, at most BLOCK."""
    return (min(BLOCK, 32 * -(-chunk // 32)),)


def _are_columns(units):
    """Whether the units are the columns of x as ``(length, units)`` (batchnorm of ``(N, C)``
    inputs): the column kernels read them a row of the block's columns at a time, where the
    per-unit kernels would read a 32-byte sector for each 4-byte element."""
    return units.runlen == 1 and units.gstride == 1 and units.rstride == units.units


def _column_chunks(tun, columns, rows):
    """``(grid, nchunks, rchunk)`` of a column kernel over x as ``(rows, columns)``: a block
    per 32 columns and chunk of ``rchunk`` rows."""
    tiles = -(-columns // COLS_BLOCK[0])
    nchunks, rchunk = _chunks(tun, tiles, rows, COLS_BLOCK[0])
    return (tiles, nchunks), nchunks, rchunk


def _finalize_grid(tun, n):
    """Grid of the finalize kernels over ``n`` units (or groups): COLS_BLOCK blocks of 32 of
    them, at most ``max_blocks`` (MAX_BLOCKS), looping over the rest."""
    return (max(1, min(-(-n // COLS_BLOCK[0]), tun.max_blocks)),)


def _partial_sums(tun, kernel, dtype, units, columns, sdiv=1, amod=1, extra=()):
    """``(launch, nchunks, chunk)`` of a chunked reduction over ``units``: the column kernel
    ``kernel + "_cols_partial"`` when ``columns``, else ``kernel + "_partial"``, which takes
    the units (with ``sdiv``, ``amod``: :data:`UNITS_ARGS`) and then ``extra``."""
    if columns:
        grid, nchunks, chunk = _column_chunks(tun, units.units, units.length)
        return (kernel_name(kernel + "_cols_partial", dtype), grid, COLS_BLOCK,
                _i64(units.length, units.units, chunk)), nchunks, chunk
    nchunks, chunk = _chunks(tun, units.units, units.length)
    args = struct_arg(UNITS_ARGS, units=units.units, len=units.length, chunk=chunk, gstride=units.gstride,
                      rstride=units.rstride, runlen=divisor(units.runlen), sdiv=divisor(sdiv), amod=divisor(amod))
    return (kernel_name(kernel + "_partial", dtype), _unit_grid(tun, units.units, nchunks), _block(chunk),
            (args,) + extra), nchunks, chunk


@lru_cache(maxsize=512)
def _stats_plan(tun, units, dtype, epsilon, momentum=None):
    """The launches of :func:`_statistics`: ``(partial sums, length of their float64
    partials, finalize)``; with a ``momentum``, the finalize updates running statistics of
    one channel per unit too."""
    partial_sums, nchunks, chunk = _partial_sums(tun, "norm_stats", dtype, units, _are_columns(units))
    running = {} if momentum is None else dict(zip(("keep", "momentum", "unbiased"),
                                                   _running_args(dtype, momentum, units.length)))
    args = struct_arg(FINALIZE_ARGS, units=units.units, nchunks=nchunks, len=units.length, chunk=chunk, eps=epsilon,
                      **running)  # keep: rounded to the compute type, exact in the double field
    kernel = "norm_stats_finalize" if momentum is None else "norm_stats_finalize_running"
    return partial_sums, units.units * nchunks * 2, (kernel_name(kernel, dtype), _finalize_grid(tun, units.units),
                                                     COLS_BLOCK, (args,))


def _running_args(dtype, momentum, count):
    """The running update's ``keep, momentum, unbiased`` arguments (``count`` values a group)."""
    return acc_scalar(dtype, 1 - momentum), np.float64(momentum), np.float64(momentum * count / (count - 1))


def _statistics(mod, tun, x, units, epsilon, running=None):
    """Float64 mean and ``1 / sqrt(var + epsilon)`` of every unit, with var the biased
    variance (two-stage: chunks, then Chan merges), and the new running statistics
    (``glue.updated_stats``) when ``running`` = ``(running_mean, running_var, momentum,
    per_sample)`` is given, else None: ``(mean, rstd, new running statistics)``.

    batchnorm's units are its channels: their finalize kernel updates the running statistics
    too; instancenorm's are averaged over the batch by one more kernel."""
    xp = array_namespace(x)
    fold = running is not None and not running[3]
    partial_sums, nparts, finalize = _stats_plan(tun, units, x.dtype, epsilon, running[2] if fold else None)
    part = xp.empty((nparts,), xp.float64)
    launch(mod, partial_sums, (x, part))
    mean, rstd = xp.empty((units.units,), xp.float64), xp.empty((units.units,), xp.float64)
    if fold:
        rm, rv = xp.ascontiguousarray(running[0]), xp.ascontiguousarray(running[1])
        new = xp.empty((units.units,), rm.dtype), xp.empty((units.units,), rm.dtype)  # a unit per channel
        launch(mod, finalize, (part, mean, rstd, rm, rv) + new)
        return mean, rstd, new
    var = xp.empty((units.units,), xp.float64)
    launch(mod, finalize, (part, mean, var, rstd))
    return mean, rstd, None if running is None else _running_update(mod, tun, mean, var, x.shape, *running)


def _given_stats(mod, running_mean, running_var, shape, per_sample, epsilon):
    """The running statistics as the kernels' float64 ``(mean, rstd)`` per group (one per
    channel, or per ``(n, c)`` when ``per_sample``), by one kernel (each CuPy array operation
    costs more host time than a launch)."""
    xp = array_namespace(running_mean)
    n, c = shape[:2]
    units = n * c if per_sample else c
    rm, rv = xp.ascontiguousarray(running_mean), xp.ascontiguousarray(running_var)
    mean, rstd = xp.empty((units,), xp.float64), xp.empty((units,), xp.float64)
    mod.get_function(kernel_name("norm_given_stats", rm.dtype))(
        grid_1d(mod, units), (BLOCK,), (rm, rv, mean, rstd, np.int64(units), np.int64(c), np.float64(epsilon))
    )
    return mean, rstd


def _running_update(mod, tun, mean, var, shape, running_mean, running_var, momentum, per_sample):
    """The new running statistics, as ``glue.updated_stats`` defines them, by one kernel
    (instancenorm's: its group statistics averaged over the batch)."""
    xp = array_namespace(mean)
    rm, rv = xp.ascontiguousarray(running_mean), xp.ascontiguousarray(running_var)
    c = shape[1]
    new_mean, new_var = xp.empty((c,), rm.dtype), xp.empty((c,), rm.dtype)
    launch(mod, _running_plan(tun, tuple(shape), per_sample, rm.dtype, momentum),
            (mean, var, rm, rv, new_mean, new_var))
    return new_mean, new_var


@lru_cache(maxsize=256)
def _running_plan(tun, shape, per_sample, dtype, momentum):
    n, c = shape[:2]
    count = math.prod(shape[2:]) * (1 if per_sample else n)
    return (kernel_name("norm_running_update", dtype), grid_1d(tun, c), (BLOCK,),
            _i64(c, n if per_sample else 1) + _running_args(dtype, momentum, count))


def _rows_path(tun, geom):
    """Whether layernorm (``geom.vec``) runs the rows kernels: rows short enough for a block."""
    return geom.vec and geom.count <= tun.norm_rows_max


def _row_launch(tun, rows, length):
    """``(grid, block, rchunk)`` of the backward rows kernel: chunks of whole tiles of rows (see
    ROWS_CHUNK); the fewest threads (a multiple of 32, at most ROWS_THREADS) that cover a row
    with as many columns each."""
    tiles = -(-rows // ROWS_TILE)
    want = max(ROWS_MIN_BLOCKS, rows // ROWS_CHUNK)
    per_block = -(-tiles // min(tiles, want, tun.max_blocks))
    rchunk = per_block * ROWS_TILE
    cols = -(-length // ROWS_THREADS)  # columns a thread (1 or 2), spread evenly over the warps
    return (-(-rows // rchunk),), (32 * -(-length // (32 * cols)),), rchunk


@lru_cache(maxsize=512)
def _elementwise_plan(tun, kernel, dtype, n, geom):
    """``(kernel, grid, block, index argument)`` of an elementwise kernel over ``n`` elements,
    the grid sized for 16-byte packs where the shape allows them (:func:`_packs`; unaligned
    arrays then take single elements, 64-bit indices, on the same grid)."""
    vec = _packs(dtype.itemsize, n, geom)
    grid = grid_1d(tun, n, per_thread=PACKED_STEP if vec else UNROLL)
    return kernel_name(kernel, dtype), grid, (BLOCK,), _index_args(tun, n, grid, geom, vec)


@lru_cache(maxsize=512)
def _rows_forward_plan(tun, dtype, rows, length, epsilon):
    """The launch of the forward rows kernel: a warp a row, ROWS_WARPS rows a block, at most
    ``max_blocks`` blocks (striding over the rest)."""
    grid = (max(1, min(-(-rows // ROWS_WARPS), tun.max_blocks)),)
    return kernel_name("norm_rows_forward", dtype), grid, (ROWS_WARPS * 32,), _i64(rows, length) + (np.float64(epsilon),)


@lru_cache(maxsize=512)
def _rows_backward_plan(tun, dtype, rows, length):
    """``(kernel, grid, block, (rows, length, rows per block, 1 / length))`` of the backward
    rows kernel."""
    grid, block, rchunk = _row_launch(tun, rows, length)
    return kernel_name("norm_rows_backward", dtype), grid, block, _i64(rows, length, rchunk) + (np.float64(1.0 / length),)


def _normalize(mod, tun, act, x, scale, bias, geom, epsilon, stats=None, running=None):
    """``(y, mean, rstd, new running statistics)`` for C-contiguous ``x``: group statistics
    from x (and the new running statistics from them when ``running`` is given, see
    :func:`_statistics`; else None), or ``stats``: float64 ``(mean, rstd)`` per group."""
    xp = array_namespace(x)
    y = xp.empty(x.shape, x.dtype)
    if stats is None and _rows_path(tun, geom):
        name, grid, block, scalars = _rows_forward_plan(tun, x.dtype, geom.groups, geom.count, epsilon)
        mean, rstd = xp.empty((geom.groups,), xp.float64), xp.empty((geom.groups,), xp.float64)
        mod.get_function(name)(grid, block, (x, scale, bias, y, mean, rstd) + scalars + _act_args(act, x.dtype))
        return y, mean, rstd, None
    if stats is None:
        mean, rstd, new = _statistics(mod, tun, x, geom.stats, epsilon, running)
    else:
        (mean, rstd), new = stats, None
    name, grid, block, index = _elementwise_plan(tun, "norm_forward", x.dtype, x.size, geom)
    mod.get_function(name)(grid, block, (x, scale, bias, mean, rstd, y, index) + _act_args(act, x.dtype))
    return y, mean, rstd, new


def _column_sums(mod, part, nparts, length, dtype):
    """layernorm's ``(sum(g), sum(g xhat))`` per column, in ``dtype``, from ``nparts`` rows of
    float64 partials ``(length, 2)``."""
    xp = array_namespace(part)
    sg, sgx = xp.empty((length,), dtype), xp.empty((length,), dtype)
    mod.get_function(kernel_name("norm_cols_finalize", dtype))(
        (-(-length // COLS_BLOCK[0]),), COLS_BLOCK, (part, sg, sgx) + _i64(nparts, length)
    )
    return sg, sgx


@lru_cache(maxsize=512)
def _pass1_plan(tun, dtype, geom):
    """The launches of backward pass 1: ``(partial sums, length of their float64 partials,
    finalize)``."""
    u = geom.bwd
    nsum = 2 if geom.vec else 4
    # columns: batchnorm of (N, C), unit = group = channel
    partial_sums, nchunks, _ = _partial_sums(tun, "norm_backward", dtype, u, not geom.vec and _are_columns(u),
                                             geom.sdiv, geom.amod, (np.int32(geom.vec),))
    finalize = (kernel_name("norm_backward_finalize", dtype), _finalize_grid(tun, max(geom.groups, geom.amod)),
                COLS_BLOCK, (struct_arg(BWD_FINALIZE_ARGS, groups=geom.groups, sdiv=geom.sdiv, nchunks=nchunks,
                                        amod=geom.amod, units=u.units, nsum=nsum, count=geom.count),))
    return partial_sums, u.units * nchunks * nsum, finalize


@lru_cache(maxsize=512)
def _dx_cols_plan(tun, dtype, rows, length):
    """``(launch, chunks)`` of layernorm's general dx kernel, which also writes per-column
    partial sums for each of its chunks of rows."""
    grid, nchunks, rchunk = _column_chunks(tun, length, rows)
    return (kernel_name("norm_backward_dx_cols", dtype), grid, COLS_BLOCK, _i64(rows, length, rchunk)), nchunks


def _backward(mod, tun, act, x, scale, bias, mean, rstd, geom, batch, affine_sums):
    """``pullback(dy) -> (dx, sum(g), sum(g * xhat))``: the sums per channel (channel ops)
    or per affine element (layernorm), None when ``affine_sums`` is false."""
    xp = array_namespace(x)
    dtype = x.dtype
    act_args = _act_args(act, dtype)
    rows, length = geom.groups, geom.count  # layernorm's

    def pass1(dy):
        """Means of h, h xhat (per group) and, unless vec, sums of g, g xhat per affine
        element (x's dtype; None with vec)."""
        (name, grid, block, scalars), nparts, finalize = _pass1_plan(tun, dtype, geom)
        part = xp.empty((nparts,), xp.float64)
        mod.get_function(name)(grid, block, (x, dy, scale, bias, mean, rstd, part) + scalars + act_args)
        mh, mhx = xp.empty((geom.groups,), xp.float64), xp.empty((geom.groups,), xp.float64)
        sg, sgx = xp.empty((geom.amod,), dtype), xp.empty((geom.amod,), dtype)  # not written with vec
        launch(mod, finalize, (part, mh, mhx, sg, sgx))
        return (mh, mhx) + ((None, None) if geom.vec else (sg, sgx))

    def rows_pullback(dy):
        """layernorm's rows kernel: dx and the per-column sums in one pass over x and dy."""
        dy = xp.ascontiguousarray(dy, dtype=dtype)
        dx = xp.empty(x.shape, dtype)
        name, grid, block, scalars = _rows_backward_plan(tun, dtype, rows, length)
        part = xp.empty((grid[0] * length * 2,), xp.float64)
        mod.get_function(name)(grid, block, (x, dy, scale, bias, mean, rstd, dx, part) + scalars + act_args)
        return (dx,) + _column_sums(mod, part, grid[0], length, dtype)

    def pullback(dy):
        dy = xp.ascontiguousarray(dy, dtype=dtype)
        dx = xp.empty(x.shape, dtype)
        if batch or (affine_sums and not geom.vec):
            mh, mhx, sg, sgx = pass1(dy)
        else:
            mh = mhx = mean  # not read
        if geom.vec:  # layernorm: dx with the per-column sums (always batch statistics)
            (name, grid, block, scalars), nchunks = _dx_cols_plan(tun, dtype, rows, length)
            part = xp.empty((nchunks * length * 2,), xp.float64)
            mod.get_function(name)(grid, block, (x, dy, scale, bias, mean, rstd, mh, mhx, dx, part) + scalars + act_args)
            return (dx,) + _column_sums(mod, part, nchunks, length, dtype)
        name, grid, block, index = _elementwise_plan(tun, "norm_backward_dx", dtype, x.size, geom)
        mod.get_function(name)(grid, block, (x, dy, scale, bias, mean, rstd, mh, mhx, dx, index, np.int32(batch))
                               + act_args)
        return (dx, sg, sgx) if affine_sums else (dx, None, None)

    return rows_pullback if _rows_path(tun, geom) else pullback


def _supports(act, x, **_):
    # user activations (id -1), activations without a derivative and empty arrays run on the
    # generic path
    return act.id >= 0 and act.has_derivative and x.dtype in DTYPES and x.size > 0


# ---- batchnorm, instancenorm, groupnorm --------------------------------------------


def _running_norm(per_sample, mod, with_vjp, act, x, scale, bias, running_mean, running_var, training, momentum,
                  epsilon):
    """batchnorm (``per_sample`` False: one group per channel) or instancenorm (per (n, c))."""
    x = array_namespace(x).ascontiguousarray(x)
    geom = _channel_geometry(x.shape, "instance" if per_sample else "batch")
    tun = tuning(mod)
    sv, bv = glue.channel_vectors(x, scale, bias)
    given = running_mean is not None and not training
    group_stats = _given_stats(mod, running_mean, running_var, x.shape, per_sample, epsilon) if given else None
    running = None if given or running_mean is None else (running_mean, running_var, momentum, per_sample)
    y, mean, rstd, new = _normalize(mod, tun, act, x, sv, bv, geom, epsilon, group_stats, running)
    out = (y, (running_mean, running_var) if given else new)
    if not with_vjp:
        return out
    has_affine = scale is not None or bias is not None
    pullback = _backward(mod, tun, act, x, sv, bv, mean, rstd, geom, not given, has_affine)
    return out, glue.channel_grads(pullback, x, scale, bias)


def _groupnorm(mod, with_vjp, act, x, scale, bias, groups, epsilon):
    x = array_namespace(x).ascontiguousarray(x)
    geom, tun = _channel_geometry(x.shape, "group", groups), tuning(mod)
    sv, bv = glue.channel_vectors(x, scale, bias)
    y, mean, rstd, _ = _normalize(mod, tun, act, x, sv, bv, geom, epsilon)
    if not with_vjp:
        return y
    has_affine = scale is not None or bias is not None
    pullback = _backward(mod, tun, act, x, sv, bv, mean, rstd, geom, True, has_affine)
    return y, glue.channel_grads(pullback, x, scale, bias)


# ---- layernorm: rows over the reduced axes (moved last when needed) --------------------


def _layernorm(mod, with_vjp, act, x, scale, bias, axes, epsilon):
    rows = glue.layernorm_rows(x, axes)
    xt = rows.to_rows(x)  # copies only when needed
    geom, tun = _rows_geometry(rows.rows, rows.length), tuning(mod)
    sv, bv = rows.vector(scale, 1), rows.vector(bias, 0)
    yt, mean, rstd, _ = _normalize(mod, tun, act, xt, sv, bv, geom, epsilon)
    y = rows.from_rows(yt)
    if not with_vjp:
        return y
    pullback = _backward(mod, tun, act, xt, sv, bv, mean, rstd, geom, True, True)
    return y, rows.grads(pullback, scale, bias)


#: op -> ``f(mod, with_vjp, **kwargs)``: the keyword arguments of luxlib's dispatch
OPS = {
    "batchnorm": partial(_running_norm, False),
    "instancenorm": partial(_running_norm, True),
    "groupnorm": _groupnorm,
    "layernorm": _layernorm,
}
#: op -> ``supports(**kwargs)``
SUPPORTS = {"batchnorm": _supports, "instancenorm": _supports, "groupnorm": _supports,
            "layernorm": partial(glue.layernorm_supports, _supports)}
