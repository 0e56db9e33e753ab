"""The benchmark cases: one class per op family, each building up to three contenders.

A contender is a pair of zero-argument callables: ``forward()`` returns the primary
output, ``forward_backward()`` runs the forward pass that keeps what the backward
pass needs, then the backward pass, and returns the gradients (in the order of
luxlib's differentiable positional arguments, so the contenders can be compared).

* luxlib: the public function, and ``luxlib.vjp`` + pullback.
* torch: ``torch.nn.functional`` under ``no_grad``, and autograd ``backward``.
* numpy: the hand-written compositions of :mod:`luxlib.bench.naive`.

Every case runs on float32 arrays drawn from a seeded generator.
"""

import math
from typing import Callable, NamedTuple, Optional

import numpy as np

import luxlib
from luxlib._validation import array_namespace

from . import naive

DTYPE = np.float32
#: luxlib's default epsilon for float32, given to every contender
EPS = float(np.finfo(DTYPE).eps) ** (5 / 7)
P = 0.5  # dropout probability


class Contender(NamedTuple):
    forward: Callable
    forward_backward: Optional[Callable]


def _primary(out):
    return out[0] if isinstance(out, tuple) else out


def import_torch():
    """Return the ``torch`` module, or ``None`` when it is not importable."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_act(torch, act, inplace=False):
    """The PyTorch spelling of an activation (``inplace`` where autograd allows it)."""
    F = torch.nn.functional
    return {
        None: lambda t: t,
        "relu": lambda t: F.relu(t, inplace=inplace),
        "gelu": lambda t: F.gelu(t, approximate="tanh"),  # NNlib's gelu is the tanh form
        "sigmoid": torch.sigmoid,
        "swish": F.silu,
        "tanh": torch.tanh,
        "softplus": F.softplus,
    }[act]


class Case:
    """One benchmark: forward and forward+backward rows for one op on one shape.

    Subclasses define ``family``, ``metric`` (``"GB/s"`` for bandwidth-bound ops,
    ``"GFLOP/s"`` for matmul/conv), ``formula`` (how ``amount`` counts), and
    ``arrays``, ``amount``, ``luxlib_call``, ``torch_call``, ``numpy_call``.
    """

    family = ""
    metric = "GB/s"
    formula = ""
    random = False  # contenders draw different random masks: outputs are not compared

    def __init__(self, name, ops, full, quick):
        self.name = name
        self.ops = tuple(ops)  # luxlib attributes the case needs
        self.full = full
        self.quick = quick

    def missing(self):
        """The luxlib functions this case needs that luxlib does not have (yet)."""
        return [op for op in self.ops if not hasattr(luxlib, op)]

    def arrays(self, quick):
        """Dict of input arrays (with ``"dy"``, the cotangent of the output)."""
        raise NotImplementedError

    def amount(self, a):
        """``(forward, forward_backward)`` bytes moved or flops, per :attr:`formula`."""
        raise NotImplementedError

    def shape(self, a):
        return "x".join(map(str, a["x"].shape))

    def contender(self, who, a, torch=None):
        """Build contender ``who`` (``"luxlib"``, ``"torch"`` or ``"numpy"``) on arrays ``a``."""
        dy = a["dy"]
        if who == "luxlib":
            f, args, grads = self.luxlib_call(a)

            def forward_backward():
                _, pullback = luxlib.vjp(f, *args)
                g = pullback(dy)
                return tuple(g[i] for i in grads)

            return Contender(lambda: _primary(f(*args)), forward_backward)
        if who == "torch":
            fn, inputs, grads = self.torch_call(a, torch)
            # own copies (torch updates running statistics in place), on the arrays' device
            # (torch.as_tensor reads NumPy and, through __cuda_array_interface__, CuPy arrays)
            tensors = [torch.as_tensor(v).clone() if hasattr(v, "shape") else v for v in inputs]
            leaves = [tensors[i].requires_grad_() for i in grads or ()]
            dyt = torch.as_tensor(dy)

            def forward():
                with torch.no_grad():
                    return fn(*tensors)

            def forward_backward():
                for t in leaves:
                    t.grad = None
                fn(*tensors).backward(dyt)
                return tuple(t.grad for t in leaves)

            return Contender(forward, forward_backward if grads is not None else None)
        fwd, bwd, args = self.numpy_call(a)
        return Contender(lambda: _primary(fwd(*args)[0]), lambda: bwd(fwd(*args)[1], dy))


def _normal(rng, shape):
    return rng.standard_normal(shape, dtype=DTYPE)


class Activation(Case):
    """``fast_activation`` / ``bias_activation`` (and their ``_`` variants, relu only)."""

    family = "activation"
    formula = (
        "fwd |x|+|y|; fwd+bwd adds |dy|+|y or x|+|dx| (= 5|x|); |a| = a.nbytes, bias not counted"
    )

    def __init__(self, act, bias=False, inplace=False):
        op = ("bias_activation" if bias else "fast_activation") + ("_" if inplace else "")
        super().__init__(f"{op} {act}", [op], (64, 256, 32, 32), (2, 8, 8, 8))
        self.op, self.act, self.bias, self.inplace = op, act, bias, inplace

    def arrays(self, quick):
        rng = np.random.default_rng(0)
        shape = self.quick if quick else self.full
        return {"x": _normal(rng, shape), "b": _normal(rng, shape[1]), "dy": _normal(rng, shape)}

    def amount(self, a):
        return 2 * a["x"].nbytes, 5 * a["x"].nbytes

    def _x(self, a):
        return a["x"].copy() if self.inplace else a["x"]  # in place: each contender owns its x

    def luxlib_call(self, a):
        args = (self.act, self._x(a)) + ((a["b"],) if self.bias else ())
        return getattr(luxlib, self.op), args, (1, 2) if self.bias else (1,)

    def torch_call(self, a, torch):
        act = _torch_act(torch, self.act)
        if self.inplace:  # autograd refuses in-place ops on leaves: forward only
            fn = (lambda x, b: torch.relu_(x.add_(b.view(1, -1, 1, 1)))) if self.bias else torch.relu_
            return fn, (a["x"], a["b"]) if self.bias else (a["x"],), None
        if self.bias:
            return (lambda x, b: act(x + b.view(1, -1, 1, 1))), (a["x"], a["b"]), (0, 1)
        return act, (a["x"],), (0,)

    def numpy_call(self, a):
        b = a["b"] if self.bias else None
        if self.inplace:
            return naive.relu_forward_, naive.relu_backward_, (self._x(a), b)
        return naive.activation_forward, naive.activation_backward, (self.act, a["x"], b)


class Dropout(Case):
    """``dropout`` and ``alpha_dropout`` in training mode, ``p = 0.5``."""

    family = "dropout"
    random = True

    def __init__(self, alpha=False):
        op = "alpha_dropout" if alpha else "dropout"
        super().__init__(f"{op} p={P}", [op], (64, 256, 32, 32), (2, 8, 8, 8))
        self.alpha = alpha
        self.formula = (
            "fwd |x|+|y|; fwd+bwd |x|+|y|+|keep|+|dy|+|keep|+|dx| (keep: bool mask, x.size bytes)"
            if alpha
            else "fwd |x|+|y|+|mask|; fwd+bwd adds |dy|+|mask|+|dx| (= 6|x|)"
        )

    def arrays(self, quick):
        rng = np.random.default_rng(0)
        shape = self.quick if quick else self.full
        return {"x": _normal(rng, shape), "dy": _normal(rng, shape)}

    def amount(self, a):
        n = a["x"].nbytes
        return (2 * n, 4 * n + 2 * a["x"].size) if self.alpha else (3 * n, 6 * n)

    def luxlib_call(self, a):
        f = luxlib.alpha_dropout if self.alpha else luxlib.dropout
        return f, (np.random.default_rng(1), a["x"], P, True), (1,)

    def torch_call(self, a, torch):
        F = torch.nn.functional
        f = F.alpha_dropout if self.alpha else F.dropout
        return (lambda x: f(x, P, True)), (a["x"],), (0,)

    def numpy_call(self, a):
        if self.alpha:
            return naive.alpha_dropout_forward, naive.alpha_dropout_backward, (np.random.default_rng(1), a["x"], P)
        return naive.dropout_forward, naive.dropout_backward, (np.random.default_rng(1), a["x"], P)


class _Norm(Case):
    family = "normalization"
    formula = "fwd |x|+|y|; fwd+bwd adds |dy|+|x|+|dx| (= 5|x|); per-channel vectors not counted"
    act = "relu"
    param_axis = 1  # the axis scale and bias run along

    def __init__(self, op, full=(32, 64, 56, 56), quick=(4, 8, 6, 6), label=None):
        name = f"{op} {self.act}" if self.act else op
        label = label or ("(N, C)" if len(full) == 2 else None)
        super().__init__(f"{name} {label}" if label else name, [op], full, quick)

    def arrays(self, quick):
        rng = np.random.default_rng(0)
        shape = self.quick if quick else self.full
        c = shape[self.param_axis]
        return {
            "x": _normal(rng, shape),
            "scale": 1 + 0.1 * _normal(rng, c),
            "bias": 0.1 * _normal(rng, c),
            "dy": _normal(rng, shape),
        }

    def amount(self, a):
        return 2 * a["x"].nbytes, 5 * a["x"].nbytes


class BatchNorm(_Norm):
    """``batchnorm`` in training mode with running statistics, fused relu; images, or
    ``(N, C)`` features (a dense layer's: the "(N, C)" case)."""

    def __init__(self, full=(32, 64, 56, 56), quick=(4, 8, 6, 6)):
        super().__init__("batchnorm", full, quick)

    def _stats(self, a):
        xp = array_namespace(a["scale"])  # NumPy, or CuPy with --device cuda
        c = a["scale"].shape[0]
        return xp.zeros(c, DTYPE), xp.ones(c, DTYPE)

    def luxlib_call(self, a):
        rm, rv = self._stats(a)
        return luxlib.batchnorm, (a["x"], a["scale"], a["bias"], rm, rv, True, "relu", 0.1, EPS), (0, 1, 2)

    def torch_call(self, a, torch):
        F = torch.nn.functional
        rm, rv = self._stats(a)
        fn = lambda x, s, b, rm, rv: F.relu(F.batch_norm(x, rm, rv, s, b, True, 0.1, EPS), inplace=True)  # noqa: E731
        return fn, (a["x"], a["scale"], a["bias"], rm, rv), (0, 1, 2)

    def numpy_call(self, a):
        rm, rv = self._stats(a)
        return naive.batchnorm_forward, naive.batchnorm_backward, (a["x"], a["scale"], a["bias"], rm, rv, EPS, "relu")


class GroupNorm(_Norm):
    """``groupnorm`` with 32 groups (2 channels each at full size), fused relu."""

    def __init__(self):
        super().__init__("groupnorm")

    def _groups(self, a):
        return a["scale"].shape[0] // 2

    def luxlib_call(self, a):
        return luxlib.groupnorm, (a["x"], a["scale"], a["bias"], self._groups(a), "relu", EPS), (0, 1, 2)

    def torch_call(self, a, torch):
        F = torch.nn.functional
        g = self._groups(a)
        fn = lambda x, s, b: F.relu(F.group_norm(x, g, s, b, EPS), inplace=True)  # noqa: E731
        return fn, (a["x"], a["scale"], a["bias"]), (0, 1, 2)

    def numpy_call(self, a):
        args = (a["x"], a["scale"], a["bias"], self._groups(a), EPS, "relu")
        return naive.groupnorm_forward, naive.groupnorm_backward, args


class InstanceNorm(_Norm):
    """``instancenorm`` in training mode without running statistics, fused relu; images,
    or many small ones (the "8 pixels" case: groups of 8 elements)."""

    def __init__(self, full=(32, 64, 56, 56), quick=(4, 8, 6, 6), label=None):
        super().__init__("instancenorm", full, quick, label)

    def luxlib_call(self, a):
        return luxlib.instancenorm, (a["x"], a["scale"], a["bias"], True, "relu", EPS), (0, 1, 2)

    def torch_call(self, a, torch):
        F = torch.nn.functional
        fn = lambda x, s, b: F.relu(F.instance_norm(x, None, None, s, b, True, 0.1, EPS), inplace=True)  # noqa: E731
        return fn, (a["x"], a["scale"], a["bias"]), (0, 1, 2)

    def numpy_call(self, a):
        return naive.instancenorm_forward, naive.instancenorm_backward, (a["x"], a["scale"], a["bias"], EPS, "relu")


class LayerNorm(_Norm):
    """Transformer ``layernorm``: statistics over the last axis, ``(768,)`` scale and bias.

    Spelled ``dims=(2,)``: with ``dims=None`` SPEC's LuxLib rule would normalize
    over the trailing ``x.ndim - scale.ndim`` = 2 axes.
    """

    act = None
    param_axis = -1

    def __init__(self):
        super().__init__("layernorm", full=(64, 512, 768), quick=(4, 8, 16))

    def luxlib_call(self, a):
        return luxlib.layernorm, (a["x"], a["scale"], a["bias"], None, (2,), EPS), (0, 1, 2)

    def torch_call(self, a, torch):
        F = torch.nn.functional
        n = a["x"].shape[-1]
        return (lambda x, s, b: F.layer_norm(x, (n,), s, b, EPS)), (a["x"], a["scale"], a["bias"]), (0, 1, 2)

    def numpy_call(self, a):
        return naive.layernorm_forward, naive.layernorm_backward, (a["x"], a["scale"], a["bias"], (2,), EPS)


class Dense(Case):
    """``fused_dense_bias_activation``; with ``act=None`` and no bias, the bare gemm ``x @ w.T``."""

    family = "dense"
    metric = "GFLOP/s"
    formula = "fwd 2*batch*in*out flops; fwd+bwd 3x that (dx and dweight are gemms too)"

    def __init__(self, n_in, n_out, act, bias=True, batch=1024):
        name = f"dense {n_in}->{n_out} {act}" if bias or act else f"gemm x @ w.T {n_in}->{n_out}"
        super().__init__(name, ["fused_dense_bias_activation"], (batch, n_in, n_out), (16, n_in // 32, n_out // 32))
        self.act, self.bias = act, bias

    def arrays(self, quick):
        rng = np.random.default_rng(0)
        batch, n_in, n_out = self.quick if quick else self.full
        return {
            "w": _normal(rng, (n_out, n_in)) / np.float32(math.sqrt(n_in)),
            "x": _normal(rng, (batch, n_in)),
            "b": _normal(rng, n_out) if self.bias else None,
            "dy": _normal(rng, (batch, n_out)),
        }

    def shape(self, a):
        (batch, n_in), n_out = a["x"].shape, a["w"].shape[0]
        return f"{batch}x{n_in}->{n_out}"

    def amount(self, a):
        (batch, n_in), n_out = a["x"].shape, a["w"].shape[0]
        return 2 * batch * n_in * n_out, 6 * batch * n_in * n_out

    def luxlib_call(self, a):
        grads = (1, 2, 3) if self.bias else (1, 2)
        return luxlib.fused_dense_bias_activation, (self.act, a["w"], a["x"], a["b"]), grads

    def torch_call(self, a, torch):
        act = _torch_act(torch, self.act, inplace=True)
        F = torch.nn.functional
        if self.bias:
            return (lambda w, x, b: act(F.linear(x, w, b))), (a["w"], a["x"], a["b"]), (0, 1, 2)
        return (lambda w, x: x @ w.T), (a["w"], a["x"]), (0, 1)

    def numpy_call(self, a):
        return naive.dense_forward, naive.dense_backward, (self.act, a["w"], a["x"], a["b"])


class BatchedMatmul(Case):
    """``batched_matmul`` of ``(B, M, K) @ (B, K, N)``."""

    family = "matmul"
    metric = "GFLOP/s"
    formula = "fwd 2*B*M*K*N flops; fwd+bwd 3x that"

    def __init__(self, b, m, k, n):
        super().__init__(f"batched_matmul {b}x{m}x{k}x{n}", ["batched_matmul"], (b, m, k, n), (4, 8, 8, 8))

    def arrays(self, quick):
        rng = np.random.default_rng(0)
        b, m, k, n = self.quick if quick else self.full
        return {"x": _normal(rng, (b, m, k)), "y": _normal(rng, (b, k, n)), "dy": _normal(rng, (b, m, n))}

    def shape(self, a):
        (b, m, k), n = a["x"].shape, a["y"].shape[2]
        return f"{b}x{m}x{k}x{n}"

    def amount(self, a):
        (b, m, k), n = a["x"].shape, a["y"].shape[2]
        return 2 * b * m * k * n, 6 * b * m * k * n

    def luxlib_call(self, a):
        return luxlib.batched_matmul, (a["x"], a["y"]), (0, 1)

    def torch_call(self, a, torch):
        return torch.bmm, (a["x"], a["y"]), (0, 1)

    def numpy_call(self, a):
        return naive.bmm_forward, naive.bmm_backward, (a["x"], a["y"])


class Conv(Case):
    """``fused_conv_bias_activation`` with relu, 2-D, ``padding = k // 2``.

    ``full``/``quick`` are ``(N, C_in, H=W, C_out, k)``.
    """

    family = "conv"
    metric = "GFLOP/s"
    formula = "fwd 2*N*C_out*H_out*W_out*(C_in/groups)*kh*kw flops; fwd+bwd 3x that"

    def __init__(self, label, full, quick, stride=1, depthwise=False):
        super().__init__(f"conv {label}", ["fused_conv_bias_activation", "ConvDims"], full, quick)
        self.stride, self.depthwise = stride, depthwise

    def arrays(self, quick):
        rng = np.random.default_rng(0)
        n, c, hw, out, k = self.quick if quick else self.full
        groups = c if self.depthwise else 1
        pad = k // 2
        ho = (hw + 2 * pad - k) // self.stride + 1
        return {
            "w": _normal(rng, (out, c // groups, k, k)) / np.float32(math.sqrt(c // groups * k * k)),
            "x": _normal(rng, (n, c, hw, hw)),
            "b": _normal(rng, out),
            "dy": _normal(rng, (n, out, ho, ho)),
            "geometry": (self.stride, pad, groups),
        }

    def shape(self, a):
        return f"{'x'.join(map(str, a['x'].shape))} w{'x'.join(map(str, a['w'].shape))}"

    def amount(self, a):
        n, out, ho, wo = a["dy"].shape
        flops = 2 * n * out * ho * wo * math.prod(a["w"].shape[1:])
        return flops, 3 * flops

    def luxlib_call(self, a):
        stride, pad, groups = a["geometry"]
        cdims = luxlib.ConvDims(a["x"].shape, a["w"].shape, stride=stride, padding=pad, groups=groups)
        return luxlib.fused_conv_bias_activation, ("relu", a["w"], a["x"], a["b"], cdims), (1, 2, 3)

    def torch_call(self, a, torch):
        F = torch.nn.functional
        stride, pad, groups = a["geometry"]
        fn = lambda w, x, b: F.relu(F.conv2d(x, w, b, stride, pad, 1, groups), inplace=True)  # noqa: E731
        return fn, (a["w"], a["x"], a["b"]), (0, 1, 2)

    def numpy_call(self, a):
        return naive.conv2d_forward, naive.conv2d_backward, ("relu", a["w"], a["x"], a["b"], *a["geometry"])


ACTS = ("relu", "gelu", "sigmoid", "swish", "tanh", "softplus")

#: every benchmark, in report order
CASES = (
    [Activation(act) for act in ACTS]
    + [Activation(act, bias=True) for act in ACTS]
    + [Activation("relu", inplace=True), Activation("relu", bias=True, inplace=True)]
    + [Dropout(), Dropout(alpha=True)]
    + [BatchNorm(), BatchNorm((16384, 512), (16, 8)), GroupNorm(), InstanceNorm()]
    + [InstanceNorm((4096, 64, 8), (16, 8, 8), "8 pixels"), LayerNorm()]
    + [Dense(1024, 1024, None, bias=False)]
    + [Dense(1024, n_out, act) for n_out in (1024, 4096) for act in ("relu", "gelu")]
    + [BatchedMatmul(64, 256, 256, 256), BatchedMatmul(512, 64, 64, 64), BatchedMatmul(4096, 16, 16, 16)]
    + [
        Conv("3x3 64->64 56x56", (32, 64, 56, 64, 3), (2, 8, 8, 8, 3)),
        Conv("1x1 256->64 56x56", (32, 256, 56, 64, 1), (2, 16, 8, 8, 1)),
        Conv("depthwise 3x3 128 28x28", (32, 128, 28, 128, 3), (2, 8, 8, 8, 3), depthwise=True),
        Conv("3x3/2 64->128 56x56", (32, 64, 56, 128, 3), (2, 8, 8, 16, 3), stride=2),
    ]
)


def select(substring=None):
    """The cases whose ``"family name"`` contains ``substring`` (case-insensitive)."""
    if not substring:
        return list(CASES)
    s = substring.lower()
    return [c for c in CASES if s in f"{c.family} {c.name}".lower()]


def family(name):
    """The cases of one op family (``"activation"``, ``"conv"``, ...)."""
    return [c for c in CASES if c.family == name]
