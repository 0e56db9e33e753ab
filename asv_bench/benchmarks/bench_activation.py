"""asv benchmarks: fast_activation and bias_activation, forward and forward+backward."""

import numpy as np

import luxlib


class BiasActivation:
    params = (["float32", "float64"], ["relu", "gelu", "sigmoid"], [(64, 256, 32, 32)])
    param_names = ["dtype", "act", "shape"]

    def setup(self, dtype, act, shape):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal(shape).astype(dtype)
        self.b = rng.standard_normal(shape[1]).astype(dtype)
        self.dy = np.ones_like(self.x)

    def time_forward(self, dtype, act, shape):
        luxlib.bias_activation(act, self.x, self.b)

    def time_forward_backward(self, dtype, act, shape):
        _, pullback = luxlib.vjp(luxlib.bias_activation, act, self.x, self.b)
        pullback(self.dy)

    def peakmem_forward(self, dtype, act, shape):
        luxlib.bias_activation(act, self.x, self.b)
