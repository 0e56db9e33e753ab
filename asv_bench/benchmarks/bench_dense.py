"""asv benchmarks: fused_dense_bias_activation and the bare gemm, forward and forward+backward."""

from ._family import _case_names, _Family


class Dense(_Family):
    family = "dense"
    params = _case_names(family)
