"""``ConvDims`` and ``fused_conv_bias_activation``."""

import operator

from .._autodiff import public_op
from .._dispatch import run
from .._validation import check_act, check_array, check_shape, promote

_NAME = "fused_conv_bias_activation"
_PADDING_STRINGS = ("valid", "same")


def _as_int(value, what):
    """``operator.index(value)``, with an error that names ``what``; bools are refused."""
    if isinstance(value, bool):
        raise TypeError(f"ConvDims: {what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"ConvDims: {what} must be an integer, got {value!r}") from None


def _per_axis(value, nd, name):
    """An int or a length-``nd`` sequence of ints, as a tuple of ``nd`` ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != nd:
            raise ValueError(f"ConvDims: {name} must be an int or {nd} ints (one per spatial axis), got {value!r}")
        return tuple(_as_int(v, name) for v in value)
    return (_as_int(value, name),) * nd


def _positive(values, name):
    if any(v <= 0 for v in values):
        raise ValueError(f"ConvDims: {name} must be positive, got {values}")
    return values


def _padding(padding, nd, in_size, kernel, stride, dilation):
    """Normalize ``padding`` to ``nd`` ``(lo, hi)`` pairs."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding == "same":
            # output size ceil(in / stride) with the least total padding, the odd extra
            # one at the end: TensorFlow's and ONNX's SAME_UPPER (PyTorch's for stride 1)
            totals = [
                max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
                for n, k, s, d in zip(in_size, kernel, stride, dilation)
            ]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise ValueError(f"ConvDims: padding must be an int, a sequence, 'valid' or 'same', got {padding!r}")
    if not isinstance(padding, (tuple, list)):
        pairs = ((_as_int(padding, "padding"),) * 2,) * nd
    elif len(padding) != nd:
        raise ValueError(
            f"ConvDims: padding must have one entry (an int or a (lo, hi) pair) per spatial axis ({nd}), "
            f"got {padding!r}"
        )
    else:
        pairs = []
        for p in padding:
            if isinstance(p, (tuple, list)):
                if len(p) != 2:
                    raise ValueError(f"ConvDims: each padding pair must be (lo, hi), got {p!r}")
                pairs.append((_as_int(p[0], "padding"), _as_int(p[1], "padding")))
            else:
                pairs.append((_as_int(p, "padding"),) * 2)
    pairs = tuple(pairs)
    if any(v < 0 for pair in pairs for v in pair):
        raise ValueError(f"ConvDims: padding must be non-negative, got {pairs}")
    return pairs


class ConvDims:
    """Shapes and options of an N-d convolution (1, 2 or 3 spatial axes).

    Parameters
    ----------
    x_shape : tuple of int
        Input shape ``(N, C_in, *spatial)``.
    w_shape : tuple of int
        Weight shape ``(C_out, C_in // groups, *kernel)``.
    stride : int or sequence of int, default 1
        Per spatial axis, or one value for all.
    padding : int, sequence, "valid" or "same", default 0
        An int for every side of every axis; per axis an int (both sides) or a
        ``(lo, hi)`` pair; ``"valid"`` (no padding); ``"same"`` (output size
        ``ceil(in / stride)``: total padding ``(k - 1) * dilation`` per axis, split
        ``lo = total // 2``, ``hi = total - lo``).
    dilation : int or sequence of int, default 1
        Spacing between kernel taps.
    groups : int, default 1
        Input and output channels are split into ``groups`` independent groups
        (``groups == C_in`` with ``C_in // groups == 1`` is a depthwise convolution).
    cross_correlation : bool, default True
        ``True`` slides the kernel as it is (PyTorch's convolution); ``False`` flips
        it along every spatial axis first (NNlib's default, a true convolution).

    Attributes
    ----------
    x_shape, w_shape : tuple of int
        The shapes it was built for.
    output_shape : tuple of int
        ``(N, C_out, *out)``, ``out = (in + lo + hi - dilation * (k - 1) - 1) // stride + 1``.
    stride, dilation : tuple of int
        One entry per spatial axis.
    padding : tuple of (int, int)
        ``(lo, hi)`` per spatial axis.
    groups : int
    cross_correlation : bool
    flipkernel : bool
        ``not cross_correlation``.
    spatial_dims : int
        The number of spatial axes (1, 2 or 3).
    kernel_size : tuple of int
        ``w_shape[2:]``.

    Raises
    ------
    ValueError
        For shapes of the wrong rank, channel counts that do not fit ``groups``,
        negative padding, non-positive stride, dilation or groups, an unknown
        padding string, or an output size below 1.
    TypeError
        For non-integer sizes or options.

    Examples
    --------
    >>> import luxlib
    >>> cd = luxlib.ConvDims((8, 3, 32, 32), (16, 3, 3, 3), stride=2, padding="same")
    >>> cd.output_shape
    (8, 16, 16, 16)
    >>> cd.padding
    ((0, 1), (0, 1))
    >>> luxlib.ConvDims((1, 4, 10), (4, 1, 3), padding=((2, 0),), groups=4).output_shape
    (1, 4, 10)
    """

    def __init__(self, x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, cross_correlation=True):
        x_shape = tuple(_as_int(s, "x_shape") for s in x_shape)
        w_shape = tuple(_as_int(s, "w_shape") for s in w_shape)
        if not 3 <= len(x_shape) <= 5 or len(w_shape) != len(x_shape):
            raise ValueError(
                "ConvDims: x_shape must be (N, C_in, *spatial) with 1, 2 or 3 spatial axes and w_shape "
                f"(C_out, C_in/groups, *kernel) of the same rank, got x_shape {x_shape} and w_shape {w_shape}"
            )
        if any(s < 0 for s in x_shape + w_shape):
            raise ValueError(f"ConvDims: sizes must be non-negative, got x_shape {x_shape} and w_shape {w_shape}")
        nd = len(x_shape) - 2
        kernel = w_shape[2:]
        _positive(kernel, "the kernel size w_shape[2:]")
        stride = _positive(_per_axis(stride, nd, "stride"), "stride")
        dilation = _positive(_per_axis(dilation, nd, "dilation"), "dilation")
        groups = _as_int(groups, "groups")
        if groups <= 0:
            raise ValueError(f"ConvDims: groups must be positive, got {groups}")
        if x_shape[1] != w_shape[1] * groups:
            raise ValueError(
                f"ConvDims: x's channels C_in = {x_shape[1]} must equal w_shape[1] * groups = "
                f"{w_shape[1]} * {groups}, got x_shape {x_shape} and w_shape {w_shape}"
            )
        if w_shape[0] % groups:
            raise ValueError(
                f"ConvDims: the output channels C_out = w_shape[0] = {w_shape[0]} must be divisible by "
                f"groups = {groups}, got w_shape {w_shape}"
            )
        if not isinstance(cross_correlation, bool):
            raise TypeError(f"ConvDims: cross_correlation must be True or False, got {cross_correlation!r}")
        padding = _padding(padding, nd, x_shape[2:], kernel, stride, dilation)
        out = tuple(
            (n + lo + hi - d * (k - 1) - 1) // s + 1
            for n, (lo, hi), k, s, d in zip(x_shape[2:], padding, kernel, stride, dilation)
        )
        if any(o < 1 for o in out):
            raise ValueError(
                f"ConvDims: the output size {out} is not positive: the padded input of x_shape {x_shape} "
                f"with padding {padding} is smaller than the dilated kernel of w_shape {w_shape} "
                f"(dilation {dilation})"
            )
        self.x_shape = x_shape
        self.w_shape = w_shape
        self.output_shape = (x_shape[0], w_shape[0]) + out
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.cross_correlation = cross_correlation

    @property
    def flipkernel(self):
        return not self.cross_correlation

    @property
    def spatial_dims(self):
        return len(self.x_shape) - 2

    @property
    def kernel_size(self):
        return self.w_shape[2:]

    def _key(self):
        return (self.x_shape, self.w_shape, self.stride, self.padding, self.dilation, self.groups,
                self.cross_correlation)

    def __eq__(self, other):
        return isinstance(other, ConvDims) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return (
            f"ConvDims(x_shape={self.x_shape}, w_shape={self.w_shape}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"cross_correlation={self.cross_correlation})"
        )


def _check(act, weight, x, bias, cdims):
    act = check_act(_NAME, act)
    weight = check_array(_NAME, "weight", weight)
    x = check_array(_NAME, "x", x)
    bias = check_array(_NAME, "bias", bias, ndim=1, allow_none=True)
    if cdims is None:
        try:
            cdims = ConvDims(x.shape, weight.shape)
        except ValueError as exc:
            raise ValueError(f"{_NAME}: {exc}") from None
    elif not isinstance(cdims, ConvDims):
        raise TypeError(f"{_NAME}: cdims must be a ConvDims or None, got {type(cdims).__name__}")
    # like NNlib's ConvDims, cdims fixes everything but the batch size
    elif tuple(x.shape[1:]) != cdims.x_shape[1:] or tuple(weight.shape) != cdims.w_shape:
        raise ValueError(
            f"{_NAME}: cdims was built for x_shape {cdims.x_shape} and w_shape {cdims.w_shape} "
            f"(any batch size), got x of shape {tuple(x.shape)} and weight of shape {tuple(weight.shape)}"
        )
    check_shape(_NAME, "bias", bias, (weight.shape[0],), lambda: f"weight's C_out, weight has shape {tuple(weight.shape)}")
    weight, x, bias = promote(weight, x, bias)
    return act, weight, x, bias, cdims


@public_op
def fused_conv_bias_activation(act, weight, x, bias, cdims=None):
    """Convolution with fused bias and activation: ``act(conv(x, weight) + bias)``.

    Parameters
    ----------
    act : Activation, str, callable or None
        The activation (``None`` is identity); see :mod:`luxlib.activations`.
    weight : array
        ``(C_out, C_in // groups, *kernel)``.
    x : array
        ``(N, C_in, *spatial)`` with 1, 2 or 3 spatial axes.
    bias : array or None
        ``(C_out,)``, added along the channel axis.
    cdims : ConvDims or None, default None
        Stride, padding, dilation, groups and kernel orientation. It must have been
        built for ``x``'s and ``weight``'s shapes (any batch size); ``None`` means
        ``ConvDims(x.shape, weight.shape)`` (stride 1, no padding, cross-correlation).

    Returns
    -------
    y : array
        ``(N, C_out, *out)`` (see :attr:`ConvDims.output_shape`) in the promoted
        dtype of the inputs; an empty batch gives ``(0, C_out, *out)``.

    Raises
    ------
    ValueError
        When the shapes do not fit each other or ``cdims`` (the message names the shapes).
    TypeError
        For non-floating arrays or a ``cdims`` that is not a :class:`ConvDims`.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> x = np.arange(5.0).reshape(1, 1, 5)
    >>> w = np.array([[[1.0, 0.0, -1.0]]])
    >>> luxlib.fused_conv_bias_activation(None, w, x, None)
    array([[[-2., -2., -2.]]])
    >>> cd = luxlib.ConvDims(x.shape, w.shape, padding=1, cross_correlation=False)
    >>> luxlib.fused_conv_bias_activation("relu", w, x, np.array([-1.5]), cd)
    array([[[0. , 0.5, 0.5, 0.5, 0. ]]])
    """
    act, weight, x, bias, cdims = _check(act, weight, x, bias, cdims)
    return run(_NAME, (weight, x, bias), act=act, weight=weight, x=x, bias=bias, cdims=cdims)
