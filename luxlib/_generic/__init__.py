"""Generic implementations: array-namespace code, the reference for every backend.

Importing this package registers one implementation per op.
"""

from . import activation  # noqa: F401
from . import dense, matmul  # noqa: F401
from . import dropout  # noqa: F401
from . import conv  # noqa: F401
from . import normalization  # noqa: F401
