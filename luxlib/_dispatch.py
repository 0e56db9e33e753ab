"""Operation modes, backend selection and the (op, mode) -> implementation registry.

Every public function validates its arguments and then calls :func:`run` once.
:func:`run` picks the implementation registered for the mode of the arrays
(``"generic"``, ``"looped"`` or ``"gpu"``), falls back to the generic one when the
mode has none or declines the arguments, and, when the call is the one being
differentiated by :func:`luxlib.vjp`, runs the implementation's reverse rule.
"""

import contextlib
import contextvars
from dataclasses import dataclass

import numpy as np

from . import _autodiff, _memory

__all__ = [
    "AbstractInternalArrayOpMode",
    "GenericBroadcastOp",
    "LoopedArrayOp",
    "GPUBroadcastOp",
    "internal_operation_mode",
    "backend",
    "register",
    "run",
    "trace",
]


class AbstractInternalArrayOpMode:
    """Base class of the operation modes returned by :func:`internal_operation_mode`."""

    kind = None

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self):
        return hash((type(self), tuple(sorted(vars(self).items()))))

    def __repr__(self):
        args = ", ".join(repr(v) for v in vars(self).values())
        return f"{type(self).__name__}({args})"


class GenericBroadcastOp(AbstractInternalArrayOpMode):
    """Array-broadcasting code written against the array's own namespace."""

    kind = "generic"


class LoopedArrayOp(AbstractInternalArrayOpMode):
    """Cython + OpenMP kernels for float32/float64 NumPy arrays."""

    kind = "looped"


class GPUBroadcastOp(AbstractInternalArrayOpMode):
    """CUDA kernels for CuPy arrays on ``device`` (a device id)."""

    kind = "gpu"

    def __init__(self, device=0):
        self.device = device


_LOOPED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _is_cupy(x):
    # Never import CuPy here: an array whose type lives in cupy means the user has it.
    return type(x).__module__.split(".")[0] == "cupy"


def internal_operation_mode(xs):
    """Return the operation mode luxlib uses for an array or a tuple of arrays.

    Parameters
    ----------
    xs : array or tuple of arrays
        ``None`` entries are ignored.

    Returns
    -------
    AbstractInternalArrayOpMode
        ``LoopedArrayOp()`` when every array is a float32/float64 NumPy array,
        ``GPUBroadcastOp(device)`` when every array is a CuPy array, and
        ``GenericBroadcastOp()`` otherwise.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> luxlib.internal_operation_mode(np.ones(3, np.float32))
    LoopedArrayOp()
    >>> luxlib.internal_operation_mode((np.ones(3, np.float16), None))
    GenericBroadcastOp()
    """
    arrays = xs if isinstance(xs, (tuple, list)) else (xs,)
    kind = _kind(arrays)
    if kind == "gpu":
        return GPUBroadcastOp(int(next(x for x in arrays if x is not None).device.id))
    return LoopedArrayOp() if kind == "looped" else GenericBroadcastOp()


def _kind(arrays):
    """The mode kind of the non-None entries of ``arrays`` (see :func:`internal_operation_mode`).

    One loop without temporaries: it runs on every call (``all`` over generators cost
    ~1 us of a ~6 us call on small arrays).
    """
    kind = None
    for x in arrays:
        if x is None:
            continue
        if type(x) is np.ndarray and x.dtype in _LOOPED_DTYPES:
            k = "looped"
        elif _is_cupy(x):
            k = "gpu"
        else:
            return "generic"
        if kind is None:
            kind = k
        elif kind != k:
            return "generic"
    return kind or "generic"


_FORCED = contextvars.ContextVar("luxlib_backend", default=None)
_TRACE = contextvars.ContextVar("luxlib_trace", default=None)
_BACKENDS = ("generic", "looped", "gpu")


@contextlib.contextmanager
def backend(name):
    """Force the backend of the luxlib calls made inside the ``with`` block.

    Parameters
    ----------
    name : {"generic", "looped", "gpu"}
        ``"generic"`` works for every array; ``"looped"`` needs float32/float64
        NumPy arrays and ``"gpu"`` CuPy arrays (a call whose arrays do not fit
        raises ``ValueError``). An op with no implementation for the forced
        backend runs the generic one.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> with luxlib.backend("generic"):
    ...     y = luxlib.fast_activation("relu", np.array([-1.0, 2.0]))
    >>> y
    array([0., 2.])
    """
    if name not in _BACKENDS:
        raise ValueError(f"backend: name must be one of {_BACKENDS}, got {name!r}")
    token = _FORCED.set(name)
    try:
        yield
    finally:
        _FORCED.reset(token)


@contextlib.contextmanager
def trace():
    """Record ``(op, kind)`` for every implementation that runs inside the block.

    Used by the tests to prove which backend ran.
    """
    record = []
    token = _TRACE.set(record)
    try:
        yield record
    finally:
        _TRACE.reset(token)


@dataclass(frozen=True)
class _Impl:
    forward: callable
    vjp: callable
    supports: callable = None


_REGISTRY = {}


def register(op, kind, *, forward, vjp, supports=None):
    """Register the implementation of ``op`` for backend ``kind``.

    ``forward(**kw)`` returns the op's output; ``vjp(**kw)`` returns
    ``(output, pullback)`` where ``pullback(dy)`` returns a dict mapping the names
    of the differentiable arguments to their gradients. ``supports(**kw)``, when
    given, may decline arguments the implementation cannot take (the generic one
    then runs).
    """
    if kind not in _BACKENDS:
        raise ValueError(f"register: unknown backend kind {kind!r}")
    _REGISTRY[(op, kind)] = _Impl(forward, vjp, supports)


def _select(op, arrays, kwargs):
    forced = _FORCED.get()
    if forced is None:
        kind = _kind(arrays)
    else:
        kind = forced
        if forced != "generic" and _kind(arrays) != forced:
            raise ValueError(
                f"{op}: backend {forced!r} cannot take these arrays "
                f"({', '.join(type(a).__name__ + '/' + str(getattr(a, 'dtype', '?')) for a in arrays if a is not None)})"
            )
    impl = _REGISTRY.get((op, kind))
    if impl is not None and (impl.supports is None or impl.supports(**kwargs)):
        return kind, impl
    return "generic", _REGISTRY[(op, "generic")]


def _run_here(op, arrays, impl, slot, kwargs):
    """The implementation's forward, or its vjp with the pullback put in ``slot``."""
    if slot is None:
        return impl.forward(**kwargs)
    out, pullback = impl.vjp(**kwargs)
    slot.append(pullback)
    return out


#: how a GPU implementation runs: ``luxlib.cuda`` sets its own (``_device.run``: on the GPU
#: that holds the arrays) when it registers the GPU implementations
_GPU_RUN = [_run_here]


def set_gpu_run(f):
    """Make ``f(op, arrays, impl, slot, kwargs)`` run the GPU implementations (see
    :func:`_run_here`); returns the one it replaces."""
    before, _GPU_RUN[0] = _GPU_RUN[0], f
    return before


def run(op, arrays, **kwargs):
    """Run ``op`` on the backend chosen for ``arrays``; kwargs go to the implementation."""
    kind, impl = _select(op, arrays, kwargs)
    record = _TRACE.get()
    if record is not None:
        record.append((op, kind))
    slot = _autodiff.take_capture()
    if kind == "gpu":
        return _GPU_RUN[0](op, arrays, impl, slot, kwargs)
    if kind == "looped":  # the looped kernels' outputs come from the memory cache
        if slot is None:
            return _memory.run_cached(impl.forward, **kwargs)
        out, pullback = _memory.run_cached(impl.vjp, **kwargs)
        slot.append(_memory.cached(pullback))
        return out
    return _run_here(op, arrays, impl, slot, kwargs)
