"""Errors about ``act`` and about ``numpy.matrix`` arguments name the public function
that received them."""

import warnings

import numpy as np
import pytest

import luxlib

X4 = np.ones((2, 4, 3, 3))
CALLS = {
    "fast_activation": lambda act: luxlib.fast_activation(act, X4),
    "fast_activation_": lambda act: luxlib.fast_activation_(act, X4.copy()),
    "bias_activation": lambda act: luxlib.bias_activation(act, X4, None),
    "bias_activation_": lambda act: luxlib.bias_activation_(act, X4.copy(), None),
    "fused_dense_bias_activation": lambda act: luxlib.fused_dense_bias_activation(
        act, np.ones((2, 3)), np.ones((4, 3)), None
    ),
    "fused_conv_bias_activation": lambda act: luxlib.fused_conv_bias_activation(
        act, np.ones((2, 4, 3, 3)), X4, None, None
    ),
    "batchnorm": lambda act: luxlib.batchnorm(X4, None, None, None, None, True, act),
    "groupnorm": lambda act: luxlib.groupnorm(X4, None, None, 2, act),
    "instancenorm": lambda act: luxlib.instancenorm(X4, None, None, True, act),
    "layernorm": lambda act: luxlib.layernorm(X4, None, None, act),
}


@pytest.mark.parametrize("fname", CALLS)
@pytest.mark.parametrize("act, error", [("no_such_activation", ValueError), (3, TypeError)])
def test_bad_act_names_function_and_argument(fname, act, error):
    with pytest.raises(error, match=f"^{fname}: act: "):
        CALLS[fname](act)


with warnings.catch_warnings():  # NumPy's PendingDeprecationWarning for the matrix class
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    M = np.matrix([[1.0, -2.0], [3.0, 4.0]])
RNG = np.random.default_rng(0)
#: one call per public function with a numpy.matrix argument (its * is a matrix product)
MATRIX_CALLS = [
    ("fast_activation", "x", lambda: luxlib.fast_activation("gelu", M)),
    ("bias_activation", "bias", lambda: luxlib.bias_activation("relu", np.ones((2, 2)), M[0])),
    ("batched_matmul", "x", lambda: luxlib.batched_matmul(M, np.ones((1, 2, 2)))),
    ("fused_dense_bias_activation", "x", lambda: luxlib.fused_dense_bias_activation(None, np.eye(2), M, None)),
    ("fused_dense_bias_activation", "weight", lambda: luxlib.fused_dense_bias_activation(None, M, np.eye(2), None)),
    ("dropout", "x", lambda: luxlib.dropout(RNG, M, 0.0, True)),
    ("dropout", "mask", lambda: luxlib.dropout(RNG, np.ones((2, 2)), 0.5, True, mask=M, update_mask=False)),
    ("alpha_dropout", "x", lambda: luxlib.alpha_dropout(RNG, M, 0.5, True)),
    ("batchnorm", "x", lambda: luxlib.batchnorm(M, None, None, None, None, True)),
    ("groupnorm", "x", lambda: luxlib.groupnorm(M, None, None, 1)),
    ("layernorm", "x", lambda: luxlib.layernorm(M, None, None, dims=(1,))),
    ("fast_activation pullback", "dy", lambda: luxlib.vjp(luxlib.fast_activation, "gelu", np.ones((2, 2)))[1](M)),
]


@pytest.mark.parametrize("fname, argname, call", MATRIX_CALLS, ids=[f"{f}-{a}" for f, a, _ in MATRIX_CALLS])
def test_numpy_matrix_is_refused(fname, argname, call):
    with pytest.raises(TypeError, match=f"^{fname}: {argname} must not be a numpy.matrix"):
        call()
