"""Torch oracle for fused_dense_bias_activation and batched_matmul (float64, autograd)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import luxlib  # noqa: E402
from luxlib import activations  # noqa: E402

# luxlib act -> the same function in torch
ACTS = {
    "identity": (None, lambda t: t),
    "relu": ("relu", F.relu),
    "gelu": ("gelu", lambda t: F.gelu(t, approximate="tanh")),
    "gelu_erf": ("gelu_erf", F.gelu),
    "leakyrelu_a0.2": (activations.leakyrelu.with_params(a=0.2), lambda t: F.leaky_relu(t, 0.2)),
    "elu_alpha0.7": (activations.elu.with_params(alpha=0.7), lambda t: F.elu(t, 0.7)),
    "selu": ("selu", F.selu),
    "sigmoid": ("sigmoid", torch.sigmoid),
    "tanh": ("tanh", torch.tanh),
    "softplus": ("softplus", F.softplus),
    "swish": ("swish", F.silu),
    "mish": ("mish", F.mish),
    "hardswish": ("hardswish", F.hardswish),
    "logsigmoid": ("logsigmoid", F.logsigmoid),
}
TOL = dict(rtol=1e-12, atol=1e-12)


def torch_vjp(f, arrays, dy):
    """Output of ``f`` on torch copies of ``arrays`` and the autograd gradients for ``dy``."""
    ts = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    out = f(*ts)
    out.backward(torch.tensor(dy))
    return out.detach().numpy(), [None if t is None else t.grad.numpy() for t in ts]


def compare(f_lux, lux_args, f_torch, arrays):
    """luxlib.vjp of ``f_lux(*lux_args)`` vs autograd; ``arrays`` are the trailing ``lux_args``."""
    out, pullback = luxlib.vjp(f_lux, *lux_args)
    dy = np.random.default_rng(7).standard_normal(out.shape)
    expected, grads = torch_vjp(f_torch, arrays, dy)
    np.testing.assert_allclose(out, expected, **TOL)
    ours = pullback(dy)[len(lux_args) - len(arrays) :]
    for g, e in zip(ours, grads):
        if e is None:
            assert g is None
        else:
            np.testing.assert_allclose(g, e, **TOL)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("xshape", [(5, 4), (4,), (0, 4)], ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_dense_vs_linear(act, xshape, with_bias):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4))
    x = rng.standard_normal(xshape)
    b = rng.standard_normal(3) if with_bias else None
    lux_act, torch_act = ACTS[act]
    torch_f = lambda w, x, b: torch_act(F.linear(x, w, b))  # noqa: E731
    compare(luxlib.fused_dense_bias_activation, (lux_act, w, x, b), torch_f, (w, x, b))


@pytest.mark.parametrize(
    "shapes",
    [((3, 2, 4), (3, 4, 5)), ((1, 2, 4), (3, 4, 5)), ((3, 2, 4), (1, 4, 5)), ((0, 2, 4), (0, 4, 5))],
    ids=str,
)
def test_batched_matmul_vs_torch(shapes):
    rng = np.random.default_rng(1)
    x, y = (rng.standard_normal(s) for s in shapes)
    # torch.bmm takes equal batches only; torch.matmul broadcasts a batch of 1
    torch_f = torch.bmm if shapes[0][0] == shapes[1][0] else torch.matmul
    compare(luxlib.batched_matmul, (x, y), torch_f, (x, y))
