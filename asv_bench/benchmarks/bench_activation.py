"""asv benchmarks: fast_activation, bias_activation and their in-place variants, forward and forward+backward."""

from ._family import _case_names, _Family


class Activation(_Family):
    family = "activation"
    params = _case_names(family)
