"""``python -m luxlib.bench``: time luxlib against PyTorch (CPU) and plain NumPy.

Each case runs luxlib, ``torch.nn.functional`` (when torch is importable) and a
hand-written NumPy composition on the same float32 arrays, forward and
forward+backward, interleaved round-robin, and reports median times, the
luxlib/torch and luxlib/numpy ratios, achieved GB/s (bandwidth-bound ops) or
GFLOP/s (matmul, conv) and the machine's copy bandwidth as the ceiling.
Ops luxlib does not have yet are listed as skipped. See ``doc/benchmarks.md``.

Modules: :mod:`.cases` (what runs), :mod:`.naive` (the NumPy contender),
:mod:`.timing` (interleaved timer, copy bandwidth), :mod:`.runner` (threads,
machine record, checks), :mod:`.report` (table, JSON, PNG).
"""

from .cases import CASES, select
from .runner import run

__all__ = ["CASES", "select", "run", "main"]


def main(argv=None):
    """Entry point of ``python -m luxlib.bench``; returns the exit status."""
    from .__main__ import main as _main

    return _main(argv)
