"""The activation table: forward vs NNlib's formulas, derivatives vs finite differences,
output-only flags, bound parameters, names, aliases and user registration."""

import math

import numpy as np
import pytest
from _helpers import ATOL, BACKENDS, FLOAT_DTYPES, RTOL, backend_ctx

import luxlib
from luxlib import activations

LAMBDA = math.sqrt(2 / math.pi)
SELU_L = 1.0507009873554804934193349852946
SELU_A = 1.6732632423543772848170429916717
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    t = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + t), t / (1 + t))


def _softplus(x):
    return np.where(x < 0, np.log1p(np.exp(x)), x + np.log1p(np.exp(-x)))


def _gelu_tanh(x):
    return x / 2 * (1 + np.tanh(LAMBDA * (x + 0.044715 * x**3)))


def _softshrink(x, lam=0.5):
    lo, hi = x - lam, x + lam
    return np.where(hi > 0, np.where(lo < 0, 0.0, lo), hi)


# NNlib's definitions (src/activations.jl, ext/NNlibSpecialFunctionsExt.jl), evaluated in
# float64 IEEE arithmetic, so that +-inf and NaN give what the formulas give.
REFERENCE = {
    "identity": lambda x: x,
    "relu": lambda x: np.where(x < 0, 0.0, x),
    "relu6": lambda x: np.clip(x, 0, 6),
    "leakyrelu": lambda x, a=0.01: np.where(x > 0, x, a * x),
    "elu": lambda x, alpha=1.0: np.where(x >= 0, x, alpha * (np.exp(x) - 1)),
    "celu": lambda x, alpha=1.0: np.where(x >= 0, x, alpha * (np.exp(x / alpha) - 1)),
    "selu": lambda x: SELU_L * np.where(x > 0, x, SELU_A * (np.exp(x) - 1)),
    "gelu": _gelu_tanh,
    "gelu_erf": lambda x: x / 2 * (1 + _erf(x / math.sqrt(2))),
    "gelu_sigmoid": lambda x: x * _sigmoid(math.sqrt(8 / math.pi) * (x + 0.044715 * x**3)),
    "sigmoid": _sigmoid,
    "sigmoid_fast": lambda x: np.where(x > 40, 1.0, np.where(x < -80, 0.0, _sigmoid(x))),
    "hardsigmoid": lambda x: np.clip((x + 3) / 6, 0, 1),
    "tanh": np.tanh,
    "tanh_fast": np.tanh,
    "hardtanh": lambda x: np.clip(x, -1, 1),
    "softplus": _softplus,
    "softsign": lambda x: x / (1 + np.abs(x)),
    "logsigmoid": lambda x: -_softplus(-x),
    "swish": lambda x: x * _sigmoid(x),
    "hardswish": lambda x: x * np.clip((x + 3) / 6, 0, 1),
    "lisht": lambda x: x * np.tanh(x),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "tanhshrink": lambda x: x - np.tanh(x),
    "softshrink": _softshrink,
    "trelu": lambda x, theta=1.0: np.where(x <= theta, 0.0, x),
}

# NNlib's rrules whose derivative is written in the output Ω alone (plus identity and tanh).
OUTPUT_ONLY = {
    "identity", "relu", "relu6", "leakyrelu", "elu", "celu", "selu", "sigmoid", "sigmoid_fast",
    "hardsigmoid", "tanh", "tanh_fast", "hardtanh", "softshrink", "trelu",
}  # fmt: skip

DEFAULT_PARAMS = {
    "leakyrelu": {"a": 0.01},
    "elu": {"alpha": 1.0},
    "celu": {"alpha": 1.0},
    "softshrink": {"lam": 0.5},
    "trelu": {"theta": 1.0},
}

# (name, bound params): defaults for all, plus non-default bindings of every parametrized one
CASES = [(name, {}) for name in REFERENCE] + [
    ("leakyrelu", {"a": 0.2}),
    ("elu", {"alpha": 2.0}),
    ("elu", {"alpha": 0.5}),
    ("celu", {"alpha": 0.5}),
    ("celu", {"alpha": 3.0}),
    ("softshrink", {"lam": 1.25}),
    ("trelu", {"theta": 2.5}),
    ("trelu", {"theta": -0.5}),
]
CASE_IDS = [name + "".join(f"-{k}{v}" for k, v in p.items()) for name, p in CASES]


def bound(name, params):
    act = activations.get(name)
    return act.with_params(**params) if params else act


def kinks(name, params):
    """Points where the activation or one of its first three derivatives is not continuous."""
    p = {**DEFAULT_PARAMS.get(name, {}), **params}
    return {
        "relu": [0.0], "relu6": [0.0, 6.0], "leakyrelu": [0.0], "elu": [0.0], "celu": [0.0],
        "selu": [0.0], "softsign": [0.0], "hardsigmoid": [-3.0, 3.0], "hardtanh": [-1.0, 1.0],
        "hardswish": [-3.0, 3.0], "softshrink": [-p.get("lam", 0), p.get("lam", 0)],
        "trelu": [p.get("theta", 0), 0.0],
    }.get(name, [])  # fmt: skip


SPECIAL = [np.inf, -np.inf, np.nan, 0.0, -0.0]
LARGE = [12.5, 20.0, 37.0, 45.0, 85.0, 300.0, 1e3, 3e4]


def sweep(dtype):
    dense = np.linspace(-10, 10, 801)
    x = np.concatenate([dense, LARGE, np.negative(LARGE), SPECIAL])
    return x.astype(dtype)


def test_table_is_nnlibs():
    spec = (
        "identity relu relu6 leakyrelu elu celu selu gelu gelu_erf gelu_sigmoid sigmoid "
        "sigmoid_fast hardsigmoid tanh tanh_fast hardtanh softplus softsign logsigmoid swish "
        "hardswish lisht mish tanhshrink softshrink trelu"
    ).split()
    assert list(activations.ACTIVATIONS) == spec
    assert [a.id for a in activations.ACTIVATIONS.values()] == list(range(len(spec)))
    for name, act in activations.ACTIVATIONS.items():
        assert act.name == name
        assert getattr(activations, name) is act
        assert dict(zip(act.param_names, act.params)) == DEFAULT_PARAMS.get(name, {})


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_forward_matches_nnlib(name, params, dtype):
    x = sweep(dtype)
    x_before = x.copy()
    with np.errstate(all="ignore"):
        y = bound(name, params)(x)
        expected = REFERENCE[name](x.astype(np.float64), **params).astype(dtype)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(
        y.astype(np.float64), expected.astype(np.float64), rtol=RTOL[dtype], atol=ATOL[dtype], equal_nan=True
    )
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_fast_activation_runs_the_table(name, params, dtype, backend):
    """Every backend's fast_activation (the kernels run activations by id) and its
    pullback agree with the table, +-inf and NaN included."""
    act = bound(name, params)
    x = sweep(dtype)
    dy = np.linspace(0.5, 1.5, x.size).astype(dtype)
    with np.errstate(all="ignore"):
        expected = act(x)
        expected_dx = dy * act.derivative(x)
        with backend_ctx(backend):
            y = luxlib.fast_activation(act, x)
            y_vjp, pullback = luxlib.vjp(luxlib.fast_activation, act, x)
            dx = pullback(dy)[1]
    for got, want in ((y, expected), (y_vjp, expected), (dx, expected_dx)):
        assert got.dtype == dtype
        np.testing.assert_allclose(
            got.astype(np.float64), want.astype(np.float64), rtol=RTOL[dtype], atol=ATOL[dtype], equal_nan=True
        )


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_nan_propagates(name, params):
    """NaN in gives NaN out (and a derivative of the input's dtype, without crashing)."""
    act = bound(name, params)
    for dtype in FLOAT_DTYPES:
        x = np.array([np.nan, 1.5, np.nan], dtype=dtype)
        with np.errstate(all="ignore"):
            y = act(x)
            d = act.derivative(x)
        assert np.isnan(y[[0, 2]]).all() and not np.isnan(y[1])
        assert d.dtype == dtype and d.shape == x.shape


def _finite_difference(f, x):
    """Central differences with one Richardson step: error O(h^4) + O(eps |f| / h)."""
    h = 1e-3 * np.maximum(1, np.abs(x))

    def central(step):
        return (f(x + step) - f(x - step)) / (2 * step)

    return (4 * central(h / 2) - central(h)) / 3


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_derivative_matches_finite_differences(name, params):
    act = bound(name, params)
    x = np.concatenate([np.linspace(-8, 8, 641), [-30.0, -15.0, 15.0, 30.0]])
    away = np.ones(x.shape, bool)
    for k in kinks(name, params):
        away &= np.abs(x - k) > 4e-3 * max(1, abs(k))
    x = x[away]
    fd = _finite_difference(lambda t: REFERENCE[name](t, **params), x)
    d = act.derivative(x)
    # rounding error of the differences, for flat regions where the derivative is ~0
    noise = 1e-12 * (1 + np.abs(REFERENCE[name](x, **params))) / (1e-3 * np.maximum(1, np.abs(x)))
    bad = np.abs(d - fd) > 1e-6 * np.abs(fd) + noise
    assert not bad.any(), list(zip(x[bad], d[bad], fd[bad]))


# NNlib's values at the kinks (its rrules compare Ω with strict or non-strict inequalities)
AT_KINKS = [
    ("relu", {}, [0.0], [0.0]),
    ("relu6", {}, [0.0, 6.0], [0.0, 0.0]),
    ("leakyrelu", {"a": 0.2}, [0.0], [0.2]),
    ("elu", {"alpha": 2.0}, [0.0], [1.0]),
    ("celu", {"alpha": 2.0}, [0.0], [1.0]),
    ("selu", {}, [0.0], [SELU_A * SELU_L]),
    ("hardsigmoid", {}, [-3.0, 3.0], [0.0, 0.0]),
    ("hardtanh", {}, [-1.0, 1.0], [0.0, 0.0]),
    ("hardswish", {}, [-3.0, 3.0], [-0.5, 1.5]),
    ("softshrink", {}, [-0.5, 0.5], [0.0, 0.0]),
    ("trelu", {}, [1.0], [0.0]),
]


@pytest.mark.parametrize(("name", "params", "x", "expected"), AT_KINKS, ids=[c[0] for c in AT_KINKS])
def test_derivative_at_kinks_follows_nnlib(name, params, x, expected):
    np.testing.assert_array_equal(bound(name, params).derivative(np.array(x)), expected)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_output_only_flag_matches_nnlib(name):
    assert activations.get(name).output_only == (name in OUTPUT_ONLY)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_derivative_from_output(name, params, dtype):
    act = bound(name, params)
    x = np.linspace(-7, 7, 57).astype(dtype)
    d = act.derivative(x)
    assert d.dtype == dtype
    np.testing.assert_array_equal(act.derivative(x, act(x)), d)
    if act.output_only:
        np.testing.assert_array_equal(act.derivative(y=act(x)), d)
    else:
        with pytest.raises(TypeError, match="needs the input"):
            act.derivative(y=act(x))


def test_with_params():
    leaky = activations.leakyrelu.with_params(a=0.2)
    assert leaky.params == (0.2,) and leaky.id == activations.leakyrelu.id and leaky.name == "leakyrelu"
    assert activations.leakyrelu.params == (0.01,), "binding must not change the original"
    assert leaky == activations.leakyrelu.with_params(a=0.2) != activations.leakyrelu
    assert hash(leaky) == hash(activations.leakyrelu.with_params(a=0.2))
    np.testing.assert_allclose(leaky(np.array([-1.0, 2.0])), [-0.2, 2.0])
    assert activations.leakyrelu.with_params() == activations.leakyrelu
    assert "a=0.2" in repr(leaky)


def test_softshrink_lambda_keyword():
    by_keyword = activations.softshrink.with_params(**{"lambda": 1.5})
    by_lam = activations.softshrink.with_params(lam=1.5)
    assert by_keyword == by_lam and by_keyword.params == (1.5,)
    x = np.array([-2.0, -1.0, 0.5, 1.75])
    np.testing.assert_allclose(by_keyword(x), [-0.5, 0.0, 0.0, 0.25])
    np.testing.assert_allclose(by_keyword.derivative(x), [1.0, 0.0, 0.0, 1.0])


@pytest.mark.parametrize(("name", "params"), [("leakyrelu", {"alpha": 1.0}), ("relu", {"a": 0.1}), ("elu", {"lam": 1})])
def test_with_params_rejects_unknown(name, params):
    with pytest.raises(TypeError, match=name):
        activations.get(name).with_params(**params)


ALIASES = {
    "gelu_tanh": "gelu",
    "σ": "sigmoid",
    "hardσ": "hardsigmoid",
    "logσ": "logsigmoid",
    "thresholdrelu": "trelu",
    "leaky_relu": "leakyrelu",
    "silu": "swish",
}


@pytest.mark.parametrize("alias", list(ALIASES))
def test_aliases(alias):
    assert activations.get(alias) is activations.ACTIVATIONS[ALIASES[alias]]


def test_get():
    for name, act in activations.ACTIVATIONS.items():
        assert activations.get(name) is act
        assert activations.get(act) is act
    assert activations.get(None) is activations.identity
    assert activations.get(np.tanh) is activations.tanh
    bound_act = activations.elu.with_params(alpha=2.0)
    assert activations.get(bound_act) is bound_act


@pytest.mark.parametrize("bad", [3, 2.5, b"relu", ["relu"], object()])
def test_get_rejects_non_activations(bad):
    with pytest.raises(TypeError, match="act"):
        activations.get(bad)
    with pytest.raises(TypeError, match="act"):
        luxlib.fast_activation(bad, np.ones(3))


@pytest.mark.parametrize("name", ["Relu", "rrelu", "logcosh", "", "gelu_fast"])
def test_unknown_name(name):
    with pytest.raises(ValueError, match="unknown activation"):
        activations.get(name)
    with pytest.raises(ValueError, match="unknown activation"):
        luxlib.bias_activation(name, np.ones((2, 3)), np.ones(3))


@pytest.fixture
def registry(monkeypatch):
    """Registrations a test makes are undone after it (the registry is process-wide)."""
    monkeypatch.setattr(activations, "_REGISTERED_NAMES", dict(activations._REGISTERED_NAMES))
    monkeypatch.setattr(activations, "_REGISTERED_CALLABLES", dict(activations._REGISTERED_CALLABLES))


def _sin(x):
    return np.sin(x)


def test_unknown_callable_runs_forward_but_not_reverse():
    def cube(x):
        return x**3

    x = np.array([[-2.0, 0.5], [1.0, 3.0]])
    np.testing.assert_allclose(luxlib.fast_activation(cube, x), x**3)
    np.testing.assert_allclose(luxlib.bias_activation(cube, x, np.array([1.0, -1.0])), (x + [1.0, -1.0]) ** 3)
    act = activations.get(cube)
    assert not act.has_derivative and act.id == -1
    with pytest.raises(TypeError, match="register"):
        act.derivative(x)
    with pytest.raises(TypeError, match="register"):
        luxlib.vjp(luxlib.fast_activation, cube, x)
    with pytest.raises(TypeError, match="register"):
        luxlib.vjp(luxlib.bias_activation, cube, x, np.zeros(2))


def test_register_input_derivative(registry):
    def cube(x):
        return x**3

    act = activations.register("cube", cube, lambda x: 3 * x**2)
    assert activations.get("cube") is act and activations.get(cube) is act
    assert act.name == "cube" and not act.output_only and act.id == -1
    x = np.array([[-2.0, 0.5, 1.0], [1.5, -0.25, 3.0]])
    b = np.array([0.1, -0.3, 0.2])
    np.testing.assert_allclose(act.derivative(x), 3 * x**2)
    for a in ("cube", cube, act):
        np.testing.assert_allclose(luxlib.fast_activation(a, x), x**3)
        y, pullback = luxlib.vjp(luxlib.bias_activation, a, x, b)
        np.testing.assert_allclose(y, (x + b) ** 3)
        _, dx, db = pullback(np.ones_like(y))
        np.testing.assert_allclose(dx, 3 * (x + b) ** 2)
        np.testing.assert_allclose(db, (3 * (x + b) ** 2).sum(axis=0))


def test_register_output_only(registry):
    seen = []

    def derivative(y):
        seen.append(y)
        return y

    act = activations.register("expo", lambda x: np.exp(x), derivative, output_only=True)
    assert act.output_only
    x = np.array([-1.0, 0.0, 2.0])
    y, pullback = luxlib.vjp(luxlib.fast_activation, "expo", x)
    (_, dx) = pullback(np.full(3, 2.0))
    np.testing.assert_allclose(dx, 2 * np.exp(x))
    np.testing.assert_array_equal(seen[-1], np.exp(x))  # the derivative got the output


def test_register_without_derivative(registry):
    activations.register("sine", _sin)
    x = np.array([0.5, 1.0])
    np.testing.assert_allclose(luxlib.fast_activation("sine", x), np.sin(x))
    with pytest.raises(TypeError, match="register"):
        luxlib.vjp(luxlib.fast_activation, "sine", x)


@pytest.mark.parametrize("name", ["relu", "gelu_tanh", "σ", "silu", "identity"])
def test_register_rejects_builtin_names(name, registry):
    with pytest.raises(ValueError, match="built-in"):
        activations.register(name, _sin, np.cos)
    assert activations.get(name) is activations.ACTIVATIONS[ALIASES.get(name, name)]
    assert not activations.get(_sin).has_derivative


def test_register_rejects_duplicates(registry):
    first = activations.register("dup", _sin, np.cos)
    with pytest.raises(ValueError, match="already registered"):
        activations.register("dup", lambda x: x, lambda x: 1 + 0 * x)
    assert activations.get("dup") is first


@pytest.mark.parametrize(
    "args",
    [(3, _sin), (None, _sin), ("bad", "sin"), ("bad", _sin, "cos")],
    ids=["int-name", "none-name", "str-forward", "str-derivative"],
)
def test_register_type_errors(args, registry):
    with pytest.raises(TypeError, match="register"):
        activations.register(*args)
    with pytest.raises(ValueError, match="unknown activation"):
        activations.get("bad")
