"""The memory cache of the looped kernels' outputs and its limit.

Around every looped implementation (forward, vjp and pullback), :mod:`luxlib._dispatch`
makes the caching allocator of :mod:`luxlib._kernels.allocator` NumPy's allocator, so
the large arrays luxlib returns reuse the mapped memory of freed ones instead of
faulting in (and having the kernel zero) fresh pages. Nothing else changes: other
code, other threads and other array libraries keep NumPy's default allocator.
"""

import os
import warnings

from ._kernels import IMPORT_ERROR
from ._validation import integer_in

if IMPORT_ERROR is None:
    from ._kernels import allocator as _allocator
else:
    _allocator = None

__all__ = ["empty_memory_cache", "get_memory_cache_limit", "set_memory_cache_limit"]

_ENV = "LUXLIB_MEMORY_CACHE"
_DEFAULT_CAP = 4 << 30


def _default_limit():
    """``LUXLIB_MEMORY_CACHE`` (bytes) when set, else 1/16 of the RAM, at most 4 GiB."""
    value = os.environ.get(_ENV)
    if value is not None:
        try:
            limit = int(value)
            if limit >= 0:
                return limit
        except ValueError:
            pass
        warnings.warn(f"luxlib: ignoring {_ENV}={value!r} (not a byte count >= 0)", stacklevel=2)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        ram = 0
    return min(ram // 16, _DEFAULT_CAP) if ram > 0 else 256 << 20


_limit = _default_limit()
if _allocator is not None:
    _allocator.set_limit(_limit)


def set_memory_cache_limit(nbytes):
    """Set how many bytes of freed luxlib outputs are kept for reuse.

    The looped kernels allocate their outputs (and the gradients of a pullback)
    through a caching allocator: when such an array of 1 MiB or more is freed, its
    memory is kept mapped and reused by the next luxlib output of about the same
    size, which saves the page faults and the kernel's zeroing of fresh memory (on
    large outputs as long as the kernel itself). This bounds the idle memory kept.

    Parameters
    ----------
    nbytes : int or None
        The most idle bytes kept (the oldest freed blocks are released first);
        ``0`` disables the cache, ``None`` restores the default: the environment
        variable ``LUXLIB_MEMORY_CACHE`` when set, else 1/16 of the RAM, at most 4 GiB.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If ``nbytes`` is neither ``None`` nor an integer >= 0.

    Examples
    --------
    >>> import luxlib
    >>> luxlib.set_memory_cache_limit(0)
    >>> luxlib.get_memory_cache_limit()
    0
    >>> luxlib.set_memory_cache_limit(None)
    """
    global _limit
    if nbytes is None:
        limit = _default_limit()
    else:
        limit = integer_in(nbytes, 0, 2**63)
        if limit is None:
            raise ValueError(f"set_memory_cache_limit: nbytes must be an integer >= 0 or None, got {nbytes!r}")
    _limit = limit
    if _allocator is not None:
        _allocator.set_limit(limit)


def get_memory_cache_limit():
    """Return the most idle bytes the memory cache keeps (see :func:`set_memory_cache_limit`).

    Returns
    -------
    int
    """
    return _limit


def empty_memory_cache():
    """Release every idle block of the memory cache to the operating system.

    Returns
    -------
    None
    """
    if _allocator is not None:
        _allocator.set_limit(0)
        _allocator.set_limit(_limit)


def info():
    """The cache's counters (``None`` without the compiled kernels)."""
    return None if _allocator is None else _allocator.info()


def run_cached(f, *args, **kwargs):
    """Call ``f`` with the caching allocator as the context's NumPy allocator.

    Only the looped implementations run here, and they exist only when the
    compiled kernels imported.
    """
    previous = _allocator.activate()
    try:
        return f(*args, **kwargs)
    finally:
        _allocator.restore(previous)


def cached(pullback):
    """``pullback`` run by :func:`run_cached`."""

    def cached_pullback(dy):
        return run_cached(pullback, dy)

    return cached_pullback
