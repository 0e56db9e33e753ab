"""Elementwise activations: NNlib's formulas, their derivatives, one table.

Each activation is an :class:`Activation`: callable on an array (evaluated with the
array's own namespace), with a derivative, a flag saying whether that derivative
can be computed from the output alone (then backward passes keep only the output),
bound parameters, and an integer ``id`` by which the Cython and CUDA kernels run
it fused. The table below is the one definition those three consumers share.

Examples
--------
>>> import numpy as np
>>> from luxlib import activations
>>> activations.relu(np.array([-1.0, 2.0]))
array([0., 2.])
>>> activations.leakyrelu.with_params(a=0.2)(np.array([-1.0]))
array([-0.2])
>>> activations.get("gelu") is activations.gelu
True
"""

import math

import numpy as np

from ._validation import array_namespace

__all__ = ["Activation", "ACTIVATIONS", "get", "register"]

GELU_LAMBDA = math.sqrt(2 / math.pi)
GELU_2LAMBDA = math.sqrt(8 / math.pi)
GELU_ALPHA = 0.044715
SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717


class Activation:
    """An elementwise activation with its derivative.

    Parameters
    ----------
    name : str
    forward : callable
        ``forward(xp, x, *params) -> y`` written against the namespace ``xp``.
    derivative : callable or None
        ``derivative(xp, x, y, *params) -> dy/dx``; ``x`` is ``None`` when
        ``output_only`` is true. ``None`` means the activation has no reverse rule.
    output_only : bool
        Whether the derivative needs only the output ``y``.
    param_names : tuple of str
        Names of the bound parameters, in kernel order.
    params : tuple of float
        Their values.
    id : int
        Index in the kernels' activation table; ``-1`` for activations the kernels
        do not know (they run on the generic path).
    """

    __slots__ = ("name", "_forward", "_derivative", "output_only", "param_names", "params", "id", "_hash")

    def __init__(self, name, forward, derivative, output_only=False, param_names=(), params=(), id=-1):
        self.name = name
        self._forward = forward
        self._derivative = derivative
        self.output_only = bool(output_only)
        self.param_names = tuple(param_names)
        self.params = tuple(float(p) for p in params)
        self.id = id
        # hashed for every cached GPU launch plan (keys hold the activation): computed once
        self._hash = hash((name, id, self.params))

    def __call__(self, x):
        """Evaluate the activation elementwise on array ``x``."""
        return self._forward(array_namespace(x), x, *self.params)

    @property
    def has_derivative(self):
        return self._derivative is not None

    def derivative(self, x=None, y=None):
        """Return ``dy/dx`` elementwise, from ``y`` alone when :attr:`output_only`.

        Parameters
        ----------
        x : array, optional
            The input (needed unless ``output_only``).
        y : array, optional
            The output; computed from ``x`` when not given.
        """
        if self._derivative is None:
            raise TypeError(
                f"activation {self.name!r} has no derivative: register it with "
                "luxlib.activations.register(name, forward, derivative) to differentiate through it"
            )
        if x is None and not self.output_only:
            raise TypeError(f"activation {self.name!r}: its derivative needs the input x, not only y")
        if y is None:
            y = self(x)
        return self._derivative(array_namespace(y), None if self.output_only else x, y, *self.params)

    def with_params(self, **params):
        """Return this activation with parameters bound, e.g. ``leakyrelu.with_params(a=0.2)``."""
        if "lambda" in params:  # NNlib's name for softshrink's parameter is a Python keyword
            params["lam"] = params.pop("lambda")
        unknown = set(params) - set(self.param_names)
        if unknown:
            raise TypeError(
                f"{self.name}.with_params: unknown parameter(s) {sorted(unknown)}; "
                f"it takes {list(self.param_names)}"
            )
        values = tuple(float(params.get(n, v)) for n, v in zip(self.param_names, self.params))
        return Activation(
            self.name, self._forward, self._derivative, self.output_only, self.param_names, values, self.id
        )

    def __eq__(self, other):
        return (
            isinstance(other, Activation)
            and (self.name, self.id, self.params, self._forward) == (other.name, other.id, other.params, other._forward)
        )

    def __hash__(self):
        return self._hash

    def __repr__(self):
        bound = ", ".join(f"{n}={v!r}" for n, v in zip(self.param_names, self.params))
        return f"<activation {self.name}({bound})>"


def _mask(cond, like):
    """A 0/1 array of ``like``'s dtype."""
    return cond.astype(like.dtype)


def _sigmoid(xp, x):
    t = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + t), t / (1 + t))


def _softplus(xp, x):
    return xp.log1p(xp.exp(-xp.abs(x))) + xp.maximum(x, 0)


def _erf(xp, x):
    if xp is np:
        from scipy.special import erf
    elif xp.__name__ == "cupy":
        from cupyx.scipy.special import erf
    else:
        erf = getattr(xp, "erf", None)
        if erf is None:
            raise TypeError(f"gelu_erf: the array namespace {xp.__name__} has no erf")
    return erf(x).astype(x.dtype, copy=False)


def _gelu_tanh_dx(xp, x, y):
    x2 = x * x
    t = x2 * GELU_ALPHA + 1
    omega = xp.tanh(GELU_LAMBDA * x * t)
    return (1 + omega) / 2 + x * GELU_LAMBDA * (x2 * (3 * GELU_ALPHA) + 1) * (1 - omega * omega) / 2


def _gelu_sigmoid_dx(xp, x, y):
    x2 = x * x
    t = x2 * GELU_ALPHA + 1
    omega = _sigmoid(xp, GELU_2LAMBDA * x * t)
    return omega * (1 - omega) * GELU_2LAMBDA * (x2 * (3 * GELU_ALPHA) + 1) * x + omega


def _gelu_erf(xp, x):
    return x / 2 * (1 + _erf(xp, x / math.sqrt(2)))


def _gelu_erf_dx(xp, x, y):
    phi = (1 + _erf(xp, x / math.sqrt(2))) / 2
    return phi + x * xp.exp(-(x * x) / 2) / math.sqrt(2 * math.pi)


def _mish_dx(xp, x, y):
    t = xp.tanh(_softplus(xp, x))
    return t + x * (1 - t * t) * _sigmoid(xp, x)


def _lisht_dx(xp, x, y):
    t = xp.tanh(x)
    return t + x * (1 - t * t)


def _softshrink(xp, x, lam):
    lo = x - lam
    hi = x + lam
    return xp.where(hi > 0, xp.where(lo < 0, xp.zeros_like(x), lo), hi)


# (name, forward(xp, x, *p), derivative(xp, x, y, *p), output_only, {param: default})
# in kernel-id order: the Cython and CUDA kernels switch on the position in this list.
_TABLE = [
    ("identity", lambda xp, x: x, lambda xp, x, y: xp.ones_like(y), True, {}),
    ("relu", lambda xp, x: xp.where(x < 0, xp.zeros_like(x), x), lambda xp, x, y: _mask(y > 0, y), True, {}),
    ("relu6", lambda xp, x: xp.clip(x, 0, 6), lambda xp, x, y: _mask((y > 0) & (y < 6), y), True, {}),
    (
        "leakyrelu",
        lambda xp, x, a: xp.where(x > 0, x, a * x),
        lambda xp, x, y, a: xp.where(y > 0, xp.ones_like(y), xp.full_like(y, a)),
        True,
        {"a": 0.01},
    ),
    (
        "elu",
        lambda xp, x, alpha: xp.where(x >= 0, x, alpha * xp.expm1(xp.minimum(x, 0))),
        lambda xp, x, y, alpha: xp.where(y >= 0, xp.ones_like(y), y + alpha),
        True,
        {"alpha": 1.0},
    ),
    (
        "celu",
        lambda xp, x, alpha: xp.where(x >= 0, x, alpha * xp.expm1(xp.minimum(x, 0) / alpha)),
        lambda xp, x, y, alpha: xp.where(y > 0, xp.ones_like(y), y / alpha + 1),
        True,
        {"alpha": 1.0},
    ),
    (
        "selu",
        lambda xp, x: SELU_LAMBDA * xp.where(x > 0, x, SELU_ALPHA * xp.expm1(xp.minimum(x, 0))),
        lambda xp, x, y: xp.where(y > 0, xp.full_like(y, SELU_LAMBDA), y + SELU_ALPHA * SELU_LAMBDA),
        True,
        {},
    ),
    (
        "gelu",
        lambda xp, x: x / 2 * (1 + xp.tanh(GELU_LAMBDA * (x + GELU_ALPHA * x * x * x))),
        _gelu_tanh_dx,
        False,
        {},
    ),
    ("gelu_erf", _gelu_erf, _gelu_erf_dx, False, {}),
    (
        "gelu_sigmoid",
        lambda xp, x: x * _sigmoid(xp, GELU_2LAMBDA * x * (x * x * GELU_ALPHA + 1)),
        _gelu_sigmoid_dx,
        False,
        {},
    ),
    ("sigmoid", _sigmoid, lambda xp, x, y: y * (1 - y), True, {}),
    (
        "sigmoid_fast",
        lambda xp, x: xp.where(x > 40, xp.ones_like(x), xp.where(x < -80, xp.zeros_like(x), _sigmoid(xp, x))),
        lambda xp, x, y: y * (1 - y),
        True,
        {},
    ),
    (
        "hardsigmoid",
        lambda xp, x: xp.clip((x + 3) / 6, 0, 1),
        lambda xp, x, y: _mask((y > 0) & (y < 1), y) / 6,
        True,
        {},
    ),
    ("tanh", lambda xp, x: xp.tanh(x), lambda xp, x, y: 1 - y * y, True, {}),
    ("tanh_fast", lambda xp, x: xp.tanh(x), lambda xp, x, y: 1 - y * y, True, {}),
    ("hardtanh", lambda xp, x: xp.clip(x, -1, 1), lambda xp, x, y: _mask((y > -1) & (y < 1), y), True, {}),
    ("softplus", _softplus, lambda xp, x, y: _sigmoid(xp, x), False, {}),
    ("softsign", lambda xp, x: x / (1 + xp.abs(x)), lambda xp, x, y: 1 / (1 + xp.abs(x)) ** 2, False, {}),
    ("logsigmoid", lambda xp, x: -_softplus(xp, -x), lambda xp, x, y: _sigmoid(xp, -x), False, {}),
    ("swish", lambda xp, x: x * _sigmoid(xp, x), lambda xp, x, y: y + _sigmoid(xp, x) * (1 - y), False, {}),
    (
        "hardswish",
        lambda xp, x: x * xp.clip((x + 3) / 6, 0, 1),
        lambda xp, x, y: xp.where(x < -3, xp.zeros_like(x), xp.where(x > 3, xp.ones_like(x), x / 3 + 0.5)),
        False,
        {},
    ),
    ("lisht", lambda xp, x: x * xp.tanh(x), _lisht_dx, False, {}),
    ("mish", lambda xp, x: x * xp.tanh(_softplus(xp, x)), _mish_dx, False, {}),
    ("tanhshrink", lambda xp, x: x - xp.tanh(x), lambda xp, x, y: (x - y) ** 2, False, {}),
    ("softshrink", _softshrink, lambda xp, x, y, lam: _mask(y != 0, y), True, {"lam": 0.5}),
    (
        "trelu",
        lambda xp, x, theta: xp.where(x <= theta, xp.zeros_like(x), x),
        lambda xp, x, y, theta: _mask(y != 0, y),
        True,
        {"theta": 1.0},
    ),
]

_ALIASES = {
    "gelu_tanh": "gelu",
    "σ": "sigmoid",
    "hardσ": "hardsigmoid",
    "logσ": "logsigmoid",
    "thresholdrelu": "trelu",
    "leaky_relu": "leakyrelu",
    "silu": "swish",
}

#: name -> Activation for every built-in activation, in kernel-id order.
ACTIVATIONS = {
    name: Activation(name, fwd, dfn, oo, tuple(params), tuple(params.values()), id=i)
    for i, (name, fwd, dfn, oo, params) in enumerate(_TABLE)
}
globals().update(ACTIVATIONS)
__all__ += list(ACTIVATIONS)

_REGISTERED_NAMES = {}
_REGISTERED_CALLABLES = {np.tanh: ACTIVATIONS["tanh"]}


def register(name, forward, derivative=None, *, output_only=False):
    """Register a user activation so it can be looked up by name and differentiated.

    Parameters
    ----------
    name : str
        Name for :func:`get` and for ``act="name"`` arguments.
    forward : callable
        ``forward(x) -> y`` on arrays.
    derivative : callable, optional
        ``derivative(x) -> dy/dx``, or ``derivative(y)`` when ``output_only``.
    output_only : bool, default False
        Whether ``derivative`` takes the output instead of the input.

    Returns
    -------
    Activation
        The registered activation; passing either it or ``forward`` as ``act``
        runs it (on the generic path) with its reverse rule.

    Raises
    ------
    ValueError
        If ``name`` is a built-in activation or alias, or is already registered.

    Examples
    --------
    >>> import numpy as np
    >>> from luxlib import activations
    >>> square = activations.register("square", lambda x: x * x, lambda x: 2 * x)
    >>> square.derivative(np.array([3.0]))
    array([6.])
    """
    if not isinstance(name, str):
        raise TypeError(f"register: name must be a str, got {type(name).__name__}")
    if name in ACTIVATIONS or name in _ALIASES:
        raise ValueError(f"register: {name!r} is a built-in activation")
    if name in _REGISTERED_NAMES:
        raise ValueError(f"register: {name!r} is already registered")
    if not callable(forward) or (derivative is not None and not callable(derivative)):
        raise TypeError("register: forward and derivative must be callables")
    if derivative is None:
        dfn = None
    elif output_only:
        dfn = lambda xp, x, y: derivative(y)  # noqa: E731
    else:
        dfn = lambda xp, x, y: derivative(x)  # noqa: E731
    act = Activation(name, lambda xp, x: forward(x), dfn, output_only)
    _REGISTERED_NAMES[name] = act
    _REGISTERED_CALLABLES[forward] = act
    return act


def get(act):
    """Turn an ``act`` argument into an :class:`Activation`.

    Parameters
    ----------
    act : Activation, str, callable or None
        ``None`` is ``identity``; a string is a built-in or registered name; a
        callable that was registered maps to its activation, any other callable
        runs forward on the generic path and has no reverse rule.

    Returns
    -------
    Activation
    """
    if act is None:
        return ACTIVATIONS["identity"]
    if isinstance(act, Activation):
        return act
    if isinstance(act, str):
        name = _ALIASES.get(act, act)
        found = ACTIVATIONS.get(name) or _REGISTERED_NAMES.get(name)
        if found is None:
            known = ", ".join(list(ACTIVATIONS) + list(_REGISTERED_NAMES))
            raise ValueError(f"unknown activation {act!r}; known: {known}")
        return found
    if callable(act):
        try:
            found = _REGISTERED_CALLABLES.get(act)
        except TypeError:  # unhashable callable
            found = None
        if found is not None:
            return found
        name = getattr(act, "__name__", repr(act))
        return Activation(name, lambda xp, x: act(x), None)
    raise TypeError(f"act must be an activation, its name, a callable or None, got {type(act).__name__}")
