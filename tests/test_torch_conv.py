"""Torch oracle for fused_conv_bias_activation (float64, autograd)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import luxlib  # noqa: E402
from luxlib import ConvDims, activations  # noqa: E402

# luxlib act -> the same function in torch
ACTS = {
    "identity": (None, lambda t: t),
    "relu": ("relu", F.relu),
    "gelu": ("gelu", lambda t: F.gelu(t, approximate="tanh")),
    "leakyrelu_a0.2": (activations.leakyrelu.with_params(a=0.2), lambda t: F.leaky_relu(t, 0.2)),
    "sigmoid": ("sigmoid", torch.sigmoid),
    "softplus": ("softplus", F.softplus),
    "mish": ("mish", F.mish),
}
TOL = dict(rtol=1e-12, atol=1e-12)
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

# (x shape, w shape, ConvDims options)
CASES = [
    ((2, 3, 9), (4, 3, 3), dict(stride=2, padding=1, dilation=2)),
    ((2, 2, 7), (4, 1, 2), dict(padding=((2, 1),), groups=2, cross_correlation=False)),
    ((2, 4, 6, 5), (6, 2, 3, 2), dict(stride=(2, 1), padding=((1, 0), 2), dilation=(1, 2), groups=2,
                                      cross_correlation=False)),
    ((1, 3, 5, 6), (3, 1, 3, 3), dict(groups=3, padding="same")),
    ((2, 2, 7, 6), (2, 2, 2, 4), dict(stride=2, padding="same", dilation=(2, 1))),
    ((1, 2, 4, 5, 3), (4, 1, 2, 3, 2), dict(groups=2, padding=(1, 0, (0, 1)), stride=(1, 2, 1))),
    ((2, 1, 4, 4, 4), (2, 1, 2, 2, 2), dict(padding="same", dilation=2, cross_correlation=False)),
    ((0, 2, 5, 5), (3, 2, 3, 3), dict(padding="valid")),
]
CASE_IDS = [f"{len(xs) - 2}d-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for xs, _, kw in CASES]


def torch_conv(cd, act):
    """``act(conv(x, w) + b)`` in torch: explicit F.pad for (possibly asymmetric) padding,
    torch.flip for a true convolution."""
    nd = cd.spatial_dims
    # F.pad takes (lo, hi) pairs from the last axis backwards
    pad = [v for lo_hi in reversed(cd.padding) for v in lo_hi]
    flip = list(range(2, 2 + nd))

    def f(w, x, b):
        w = torch.flip(w, flip) if cd.flipkernel else w
        z = CONV[nd](F.pad(x, pad), w, b, stride=cd.stride, dilation=cd.dilation, groups=cd.groups)
        return act(z)

    return f


def torch_vjp(f, arrays, dy):
    ts = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    out = f(*ts)
    out.backward(torch.tensor(dy))
    return out.detach().numpy(), [None if t is None else t.grad.numpy() for t in ts]


def compare(act, w, x, b, cd, torch_f):
    out, pullback = luxlib.vjp(luxlib.fused_conv_bias_activation, act, w, x, b, cd)
    dy = np.random.default_rng(7).standard_normal(out.shape)
    expected, grads = torch_vjp(torch_f, (w, x, b), dy)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, **TOL)
    for g, e in zip(pullback(dy)[1:4], grads):
        if e is None:
            assert g is None
        else:
            np.testing.assert_allclose(g, e, **TOL)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_vs_torch(act, case, with_bias):
    x_shape, w_shape, kw = case
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal(w_shape), rng.standard_normal(x_shape)
    b = rng.standard_normal(w_shape[0]) if with_bias else None
    cd = ConvDims(x_shape, w_shape, **kw)
    lux_act, torch_act = ACTS[act]
    compare(lux_act, w, x, b, cd, torch_conv(cd, torch_act))


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch copies the input for even kernels
@pytest.mark.parametrize(
    "x_shape, w_shape, dilation",
    [((2, 3, 8), (2, 3, 4), 1), ((1, 2, 7, 6), (4, 2, 2, 3), (2, 1)), ((1, 2, 4, 5, 3), (2, 2, 3, 2, 2), 1)],
)
def test_same_padding_vs_torch(x_shape, w_shape, dilation):
    """padding="same" splits like torch's padding="same" (the odd one at the end)."""
    rng = np.random.default_rng(1)
    w, x, b = rng.standard_normal(w_shape), rng.standard_normal(x_shape), rng.standard_normal(w_shape[0])
    cd = ConvDims(x_shape, w_shape, padding="same", dilation=dilation)
    nd = len(x_shape) - 2

    def f(w, x, b):
        return CONV[nd](x, w, b, padding="same", dilation=dilation)

    compare(None, w, x, b, cd, f)
