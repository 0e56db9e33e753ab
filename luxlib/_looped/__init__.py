"""Looped implementations: Python glue around the compiled kernels (LoopedArrayOp).

Importing this package registers one implementation per op family, unless the
extensions are not built (``luxlib._kernels.IMPORT_ERROR`` says why; the generic
path then runs everything).
"""

from .._kernels import IMPORT_ERROR

if IMPORT_ERROR is None:
    from . import activation  # noqa: F401
    from . import conv  # noqa: F401
    from . import dense, matmul  # noqa: F401
    from . import normalization  # noqa: F401
    from . import dropout  # noqa: F401
