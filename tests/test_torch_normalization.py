"""Torch oracle for batchnorm, groupnorm, instancenorm and layernorm (float64, autograd)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import luxlib  # noqa: E402
from luxlib import activations, batchnorm, groupnorm, instancenorm, layernorm  # noqa: E402

# luxlib act -> the same function in torch: output-only (relu, tanh, leakyrelu) and not
# (gelu, swish), one with a bound parameter
ACTS = {
    "identity": (None, lambda t: t),
    "relu": ("relu", F.relu),
    "tanh": ("tanh", torch.tanh),
    "gelu": ("gelu", lambda t: F.gelu(t, approximate="tanh")),
    "swish": ("swish", F.silu),
    "leakyrelu_a0.2": (activations.leakyrelu.with_params(a=0.2), lambda t: F.leaky_relu(t, 0.2)),
}
TOL = dict(rtol=1e-10, atol=1e-10)
EPS = 1e-5


def make(shape, affine_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2 + 0.5
    if affine_shape is None:
        return x, None, None
    return x, rng.uniform(0.5, 1.5, affine_shape), rng.uniform(-1, 1, affine_shape)


def running(c, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, c), rng.uniform(0.5, 2, c)


def compare(out, pullback, f_torch, arrays, grad_index=(0, 1, 2)):
    """``out``/``pullback`` of luxlib.vjp vs torch autograd of ``f_torch(*arrays)``."""
    y = out[0] if isinstance(out, tuple) else out
    dy = np.random.default_rng(7).standard_normal(y.shape)
    ts = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    expected = f_torch(*ts)
    expected.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, expected.detach().numpy(), **TOL)
    grads = pullback(dy)
    for i, t in zip(grad_index, ts):
        if t is None:
            assert grads[i] is None
        else:
            np.testing.assert_allclose(grads[i], t.grad.numpy(), **TOL)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 2, 3), (2, 2, 2, 2, 3)], ids=str)
@pytest.mark.parametrize("mode", ["train_running", "train", "inference_running", "inference_batch_stats"])
@pytest.mark.parametrize("momentum", [0.1, 0.35])
@pytest.mark.parametrize("with_affine", [True, False])
def test_batchnorm_vs_torch(act, shape, mode, momentum, with_affine):
    c = shape[1]
    x, scale, bias = make(shape, (c,) if with_affine else None)
    rm, rv = running(c) if "running" in mode else (None, None)
    training = mode.startswith("train")
    (y, stats), pullback = luxlib.vjp(batchnorm, x, scale, bias, rm, rv, training, ACTS[act][0], momentum, EPS)
    # torch's running buffers are updated in place; batch statistics need training=True there
    trm, trv = (None, None) if rm is None else (torch.tensor(rm), torch.tensor(rv))
    torch_training = training or rm is None

    def f(tx, ts, tb):
        return ACTS[act][1](F.batch_norm(tx, trm, trv, ts, tb, torch_training, momentum, EPS))

    compare((y, stats), pullback, f, (x, scale, bias))
    if rm is None:
        assert stats is None
    else:
        np.testing.assert_allclose(stats.running_mean, trm.numpy(), **TOL)
        np.testing.assert_allclose(stats.running_var, trv.numpy(), **TOL)  # unbiased, as torch


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize(
    "shape, groups",
    [((4, 6), 3), ((2, 6, 4), 1), ((2, 6, 4), 2), ((2, 6, 4), 6), ((2, 4, 2, 3), 2), ((1, 4, 2, 2, 2), 4)],
    ids=str,
)
@pytest.mark.parametrize("with_affine", [True, False])
def test_groupnorm_vs_torch(act, shape, groups, with_affine):
    x, scale, bias = make(shape, (shape[1],) if with_affine else None)
    out, pullback = luxlib.vjp(groupnorm, x, scale, bias, groups, ACTS[act][0], EPS)
    compare(out, pullback, lambda tx, ts, tb: ACTS[act][1](F.group_norm(tx, groups, ts, tb, EPS)), (x, scale, bias))


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape", [(3, 2, 5), (2, 3, 2, 3), (2, 2, 2, 2, 3)], ids=str)
@pytest.mark.parametrize("mode", ["train_running", "train", "inference_running"])
@pytest.mark.parametrize("with_affine", [True, False])
def test_instancenorm_vs_torch(act, shape, mode, with_affine):
    c = shape[1]
    x, scale, bias = make(shape, (c,) if with_affine else None)
    rm, rv = running(c) if "running" in mode else (None, None)
    training = mode.startswith("train")
    (y, stats), pullback = luxlib.vjp(
        instancenorm, x, scale, bias, training, ACTS[act][0], EPS, running_mean=rm, running_var=rv, momentum=0.3
    )
    trm, trv = (None, None) if rm is None else (torch.tensor(rm), torch.tensor(rv))

    def f(tx, ts, tb):
        return ACTS[act][1](F.instance_norm(tx, trm, trv, ts, tb, training, 0.3, EPS))

    compare((y, stats), pullback, f, (x, scale, bias))
    if rm is None:
        assert stats is None
    else:
        np.testing.assert_allclose(stats.running_mean, trm.numpy(), **TOL)
        np.testing.assert_allclose(stats.running_var, trv.numpy(), **TOL)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize(
    "shape, normalized", [((4, 5), 1), ((2, 3, 4), 1), ((2, 3, 4), 2), ((2, 2, 3, 2), 3), ((5,), 1)], ids=str
)
@pytest.mark.parametrize("with_affine", [True, False])
def test_layernorm_vs_torch(act, shape, normalized, with_affine):
    normalized_shape = shape[len(shape) - normalized :]
    x, scale, bias = make(shape, normalized_shape if with_affine else None)
    dims = tuple(range(len(shape) - normalized, len(shape)))
    out, pullback = luxlib.vjp(layernorm, x, scale, bias, ACTS[act][0], dims, EPS)

    def f(tx, ts, tb):
        return ACTS[act][1](F.layer_norm(tx, normalized_shape, ts, tb, EPS))

    compare(out, pullback, f, (x, scale, bias))


@pytest.mark.parametrize("shape", [(2, 3, 4), (3, 4, 2, 2)], ids=str)
def test_layernorm_default_dims_vs_torch(shape):
    """The default dims (all axes but 0) is torch's layer_norm over x.shape[1:]."""
    x, scale, bias = make(shape, shape[1:])
    out, pullback = luxlib.vjp(layernorm, x, scale, bias)
    eps = np.finfo(np.float64).eps ** (5 / 7)
    compare(out, pullback, lambda tx, ts, tb: F.layer_norm(tx, shape[1:], ts, tb, eps), (x, scale, bias))
