"""Base of the asv benchmark classes: one class per op family over ``luxlib.bench``'s cases.

The cases (shapes, arguments) are the ones ``python -m luxlib.bench`` times against
PyTorch and NumPy; asv tracks luxlib alone across commits. ``setup`` raises
``NotImplementedError`` (asv's "skip") for cases whose op this luxlib lacks.
"""

from luxlib.bench.cases import family

# the names start with "_" so that asv does not collect this base as a benchmark


def _case_names(name):
    return [case.name for case in family(name)]


class _Family:
    family = None
    param_names = ["case"]
    timeout = 600  # full-size shapes; the generic path may be slow

    def setup(self, name):
        (case,) = [c for c in family(self.family) if c.name == name]
        missing = case.missing()
        if missing:
            raise NotImplementedError(f"luxlib has no {', '.join(missing)} yet")
        self.contender = case.contender("luxlib", case.arrays(quick=False))

    def time_forward(self, name):
        self.contender.forward()

    def time_forward_backward(self, name):
        self.contender.forward_backward()

    def peakmem_forward(self, name):
        self.contender.forward()

    def peakmem_forward_backward(self, name):
        self.contender.forward_backward()
