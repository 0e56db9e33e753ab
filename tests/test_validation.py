"""Errors about ``act`` name the public function that received it."""

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
