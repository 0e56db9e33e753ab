"""Generic implementations: array-namespace code, the reference for every backend.

Importing this package registers one implementation per op.
"""

from . import activation  # noqa: F401
