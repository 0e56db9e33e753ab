"""asv benchmarks: batched_matmul, forward and forward+backward."""

from ._family import _case_names, _Family


class Matmul(_Family):
    family = "matmul"
    params = _case_names(family)
