"""asv benchmarks: fused_conv_bias_activation (ResNet-like 2-D layers), forward and forward+backward."""

from ._family import _case_names, _Family


class Conv(_Family):
    family = "conv"
    params = _case_names(family)
