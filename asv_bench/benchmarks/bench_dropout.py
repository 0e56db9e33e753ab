"""asv benchmarks: dropout and alpha_dropout (training mode), forward and forward+backward."""

from ._family import _case_names, _Family


class Dropout(_Family):
    family = "dropout"
    params = _case_names(family)
