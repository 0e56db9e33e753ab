"""asv benchmarks: batchnorm, groupnorm, instancenorm and layernorm, forward and forward+backward."""

from ._family import _case_names, _Family


class Normalization(_Family):
    family = "normalization"
    params = _case_names(family)
