"""Shared test tools: finite differences, memory layouts, backends, tolerances."""

import contextlib

import numpy as np

import luxlib

#: per-dtype tolerances for forward comparisons against NumPy formulas
RTOL = {np.float16: 2e-3, np.float32: 2e-5, np.float64: 1e-12}
ATOL = {np.float16: 2e-3, np.float32: 1e-6, np.float64: 1e-12}
FLOAT_DTYPES = [np.float16, np.float32, np.float64]

#: "auto" lets luxlib pick (the Cython kernels for float32/float64 NumPy arrays);
#: "generic" forces the reference path.
BACKENDS = ["auto", "generic"]

LAYOUTS = ["C", "F", "strided", "negstride", "readonly"]

#: activations with non-default bound parameters, one per parametrized activation
BOUND_ACTS = [
    luxlib.activations.leakyrelu.with_params(a=0.2),
    luxlib.activations.elu.with_params(alpha=0.5),
    luxlib.activations.softshrink.with_params(lam=0.3),
    luxlib.activations.trelu.with_params(theta=0.5),
]
#: every built-in activation, then the bound ones, and their test ids
ALL_ACTS = list(luxlib.activations.ACTIVATIONS.values()) + BOUND_ACTS
ALL_ACT_IDS = [repr(a)[len("<activation "):-1] for a in ALL_ACTS]

#: ``name -> (act argument, independent NumPy formula)`` for the family tests: output-only
#: activations (identity, relu, tanh, leakyrelu), others (gelu, swish, softplus), and
#: one with a bound parameter (leakyrelu a=0.2).
REFERENCE_ACTS = {
    "identity": (None, lambda z: z),
    "relu": ("relu", lambda z: np.maximum(z, 0)),
    "tanh": ("tanh", np.tanh),
    "gelu": ("gelu", lambda z: z / 2 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))),
    "swish": ("swish", lambda z: z / (1 + np.exp(-z))),
    "softplus": ("softplus", lambda z: np.log1p(np.exp(z))),
    "leakyrelu_a0.2": (
        luxlib.activations.leakyrelu.with_params(a=0.2),
        lambda z: np.where(z > 0, z, 0.2 * z),
    ),
}


def backend_ctx(name):
    """Context manager that runs luxlib calls on backend ``name`` ("auto" = no override)."""
    return contextlib.nullcontext() if name == "auto" else luxlib.backend(name)


def with_layout(x, layout):
    """Return an array equal to ``x`` stored in the given memory layout."""
    x = np.asarray(x)
    if layout == "C":
        return np.ascontiguousarray(x)
    if layout == "F":
        return np.asfortranarray(x)
    if layout == "strided":
        big = np.zeros(tuple(2 * s for s in x.shape), dtype=x.dtype)
        view = big[tuple(slice(None, None, 2) for _ in x.shape)]
        view[...] = x
        return view
    if layout == "negstride":
        flipped = np.ascontiguousarray(x[tuple(slice(None, None, -1) for _ in x.shape)])
        return flipped[tuple(slice(None, None, -1) for _ in x.shape)]
    if layout == "readonly":
        y = np.array(x)
        y.flags.writeable = False
        return y
    raise ValueError(layout)


def snapshot(*arrays):
    """Copies of the arrays, to check later that nothing was mutated."""
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def assert_unchanged(before, arrays):
    for b, a in zip(before, arrays):
        if b is not None:
            np.testing.assert_array_equal(np.asarray(a), b, err_msg="input was mutated")


def _primary(out):
    return out[0] if isinstance(out, tuple) else out


def numerical_gradient(f, args, kwargs, index, dy, h=1e-6):
    """Central-difference gradient of ``sum(f(*args)[primary] * dy)`` w.r.t. ``args[index]``.

    Each evaluation runs under ``luxlib.vjp`` so ``training=None`` resolves as in the
    differentiated call.
    """
    x = np.array(args[index], dtype=np.float64, copy=True)
    grad = np.zeros_like(x)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        vals = []
        for step in (h, -h):
            flat[i] = orig + step
            a = list(args)
            a[index] = x.copy()
            out, _ = luxlib.vjp(f, *a, **kwargs)
            vals.append(np.sum(np.asarray(_primary(out), dtype=np.float64) * dy))
        flat[i] = orig
        gflat[i] = (vals[0] - vals[1]) / (2 * h)
    return grad


def check_gradients(f, args, kwargs=None, rtol=1e-6, seed=0, expect=None):
    """Compare ``luxlib.vjp`` gradients with central differences (float64 inputs).

    Every positional argument that gets a gradient is checked; ``expect`` (indices)
    asserts which arguments must get one. The error is the norm-relative error
    ``|g - n| / max(|n|, 1e-8)``.
    """
    kwargs = kwargs or {}
    out, pullback = luxlib.vjp(f, *args, **kwargs)
    y = _primary(out)
    dy = np.random.default_rng(seed).standard_normal(y.shape)
    grads = pullback(dy)
    assert len(grads) == len(args)
    checked = []
    for i, g in enumerate(grads):
        if g is None:
            continue
        assert g.shape == np.shape(args[i]), (i, g.shape, np.shape(args[i]))
        num = numerical_gradient(f, args, kwargs, i, dy)
        err = np.linalg.norm(g - num) / max(np.linalg.norm(num), 1e-8)
        assert err <= rtol, f"argument {i}: relative gradient error {err:.3g} > {rtol}"
        checked.append(i)
    if expect is not None:
        assert checked == list(expect), f"gradients given for {checked}, expected {list(expect)}"
    return grads


# ---- normalization cases, shared by the looped and CUDA kernel tests -------------------

#: epsilon of the normalization kernel tests (fixed: its default depends on the dtype, and
#: the references run in float64)
NORM_EPS = 1e-5


def norm_inputs(op, variant, shape, dtype, affine=True, seed=0):
    """``[x, scale, bias, running_mean, running_var, dy]`` of one normalization case.

    ``variant``: batchnorm/instancenorm ``"train"``, ``"infer"`` or ``"none"`` (see
    :func:`norm_call`), groupnorm's group count, layernorm's dims (``"default"``, a tuple,
    ``"all"`` or None: scale/bias of rank 1). ``affine=False``: scale and bias None.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2 + 0.5
    if op != "layernorm":
        aff = shape[1:2]
    elif variant in ((-1,), None):
        aff = shape[-1:]
    elif variant == (0, 2):
        aff = (shape[0], 1, shape[2])
    else:
        aff = shape[1:] if len(shape) > 1 else shape
    scale, bias = rng.uniform(0.5, 1.5, aff), rng.standard_normal(aff)
    c = shape[1] if len(shape) > 1 else 1
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    dy = rng.standard_normal(shape)
    out = [a.astype(dtype) for a in (x, scale, bias, rm, rv, dy)]
    if not affine:
        out[1] = out[2] = None
    return out


def norm_call(op, variant, act, x, scale, bias, rm, rv):
    """``(function, args, kwargs)`` of one normalization case (epsilon ``NORM_EPS``).

    batchnorm/instancenorm: ``"train"`` trains with the running statistics, ``"infer"``
    normalizes with them, ``"none"`` runs without them (training False: batch statistics).
    """
    kw = {"epsilon": NORM_EPS}
    if op == "batchnorm":
        stats = (None, None) if variant == "none" else (rm, rv)
        return luxlib.batchnorm, (x, scale, bias, *stats, variant == "train", act), kw
    if op == "instancenorm":
        if variant != "none":
            kw.update(running_mean=rm, running_var=rv)
        return luxlib.instancenorm, (x, scale, bias, variant == "train", act), kw
    if op == "groupnorm":
        return luxlib.groupnorm, (x, scale, bias, variant, act), kw
    if variant != "default":
        kw["dims"] = variant
    return luxlib.layernorm, (x, scale, bias, act), kw


def norm_outputs(f, args, kwargs, dy):
    """``[y, *running stats, *gradients]`` (None entries dropped) from one vjp call."""
    with np.errstate(all="ignore"):
        out, pullback = luxlib.vjp(f, *args, **kwargs)
        grads = pullback(dy)
    y, stats = out if isinstance(out, tuple) else (out, None)
    return [y] + list(stats or ()) + [g for g in grads if g is not None]


def norm_reference(f, args, kwargs, dy):
    """:func:`norm_outputs` of the generic path in float64 on the same inputs (upcast exactly)."""
    up = [a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args]
    kw = {k: v.astype(np.float64) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    with luxlib.backend("generic"):
        return norm_outputs(f, up, kw, dy.astype(np.float64))
