"""Activations vs torch.nn.functional in float64: forward and autograd gradients."""

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from _helpers import BACKENDS, backend_ctx  # noqa: E402

import luxlib  # noqa: E402
from luxlib import activations  # noqa: E402

F = torch.nn.functional

# (luxlib act, bound params, torch function); gelu_sigmoid equals the tanh-approximate gelu
# exactly (x sigmoid(2u) = x (1 + tanh u) / 2), trelu is torch's threshold with value 0.
CASES = [
    ("identity", {}, lambda t: t),
    ("relu", {}, F.relu),
    ("relu6", {}, F.relu6),
    ("leakyrelu", {}, F.leaky_relu),
    ("leakyrelu", {"a": 0.2}, lambda t: F.leaky_relu(t, 0.2)),
    ("elu", {}, F.elu),
    ("elu", {"alpha": 2.0}, lambda t: F.elu(t, alpha=2.0)),
    ("celu", {}, F.celu),
    ("celu", {"alpha": 0.5}, lambda t: F.celu(t, alpha=0.5)),
    ("selu", {}, F.selu),
    ("gelu", {}, lambda t: F.gelu(t, approximate="tanh")),
    ("gelu_erf", {}, F.gelu),
    ("gelu_sigmoid", {}, lambda t: F.gelu(t, approximate="tanh")),
    ("sigmoid", {}, torch.sigmoid),
    ("sigmoid_fast", {}, torch.sigmoid),
    ("hardsigmoid", {}, F.hardsigmoid),
    ("tanh", {}, torch.tanh),
    ("tanh_fast", {}, torch.tanh),
    ("hardtanh", {}, F.hardtanh),
    ("softplus", {}, lambda t: F.softplus(t, threshold=50.0)),  # no linear cut-off at 20
    ("softsign", {}, F.softsign),
    ("logsigmoid", {}, F.logsigmoid),
    ("swish", {}, F.silu),
    ("hardswish", {}, F.hardswish),
    ("lisht", {}, lambda t: t * torch.tanh(t)),
    ("mish", {}, F.mish),
    ("tanhshrink", {}, F.tanhshrink),
    ("softshrink", {}, F.softshrink),
    ("softshrink", {"lambda": 1.2}, lambda t: F.softshrink(t, 1.2)),
    ("trelu", {}, lambda t: F.threshold(t, 1.0, 0.0)),
    ("trelu", {"theta": 2.5}, lambda t: F.threshold(t, 2.5, 0.0)),
    ("trelu", {"theta": -0.5}, lambda t: F.threshold(t, -0.5, 0.0)),
]
IDS = [name + "".join(f"-{k}{v}" for k, v in p.items()) for name, p, _ in CASES]

# No point sits on a kink (0, +-0.5, +-1, +-1.2, 2.5, +-3, 6): the step is 0.04 with an offset.
X = np.concatenate([np.linspace(-8, 8, 401) + 0.00731, [-30.0, -15.0, 15.0, 30.0]])
RTOL, ATOL = 1e-10, 1e-13
# torch's hardsigmoid backward multiplies by a float32 1/6 (relative error 3e-8)
GRAD_RTOL = {"hardsigmoid": 1e-7}


def bound(name, params):
    act = activations.get(name)
    return act.with_params(**params) if params else act


def torch_vjp(f, *arrays, dy):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    y = f(*ts)
    y.backward(torch.tensor(dy))
    return y.detach().numpy(), [t.grad.numpy() for t in ts]


def test_every_activation_with_a_torch_twin_is_covered():
    assert {name for name, _, _ in CASES} == set(activations.ACTIVATIONS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "params", "tf"), CASES, ids=IDS)
def test_fast_activation_matches_torch(name, params, tf, backend):
    dy = np.random.default_rng(0).standard_normal(X.shape)
    y_t, (dx_t,) = torch_vjp(tf, X, dy=dy)
    with backend_ctx(backend):
        y, pullback = luxlib.vjp(luxlib.fast_activation, bound(name, params), X)
        np.testing.assert_allclose(luxlib.fast_activation(bound(name, params), X), y_t, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(y, y_t, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(pullback(dy)[1], dx_t, rtol=GRAD_RTOL.get(name, RTOL), atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("name", "params", "tf"), [c for c in CASES if c[0] in ("relu", "gelu", "leakyrelu", "softshrink", "mish")], ids=str
)
def test_bias_activation_matches_torch(name, params, tf, backend):
    rng = np.random.default_rng(1)
    x = rng.uniform(-4, 4, (3, 5, 2, 4))
    b = rng.uniform(-1, 1, 5)
    dy = rng.standard_normal(x.shape)
    y_t, (dx_t, db_t) = torch_vjp(lambda tx, tb: tf(tx + tb[None, :, None, None]), x, b, dy=dy)
    with backend_ctx(backend):
        y, pullback = luxlib.vjp(luxlib.bias_activation, bound(name, params), x, b)
    _, dx, db = pullback(dy)
    np.testing.assert_allclose(y, y_t, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(dx, dx_t, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(db, db_t, rtol=RTOL, atol=1e-12)
