"""Build and runtime configuration: :func:`show_config`, the kernels' thread count."""

import importlib.metadata
import importlib.util
import platform
import sys

from . import __version__, _memory
from ._kernels import IMPORT_ERROR
from ._validation import integer_in
from .cuda._cudnn import status as cudnn_status
from .cuda._modules import launch_status

if IMPORT_ERROR is None:
    from ._kernels import _openmp_helpers
else:
    _openmp_helpers = None

__all__ = ["get_num_threads", "set_num_threads", "show_config"]


def set_num_threads(n):
    """Set the number of threads luxlib's compiled kernels use.

    Parameters
    ----------
    n : int or None
        A positive number of threads, or ``None`` to go back to the default:
        OpenMP's (``OMP_NUM_THREADS`` when set, else one thread per CPU).
        Inputs with fewer than 32768 elements always run on one thread.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If ``n`` is neither ``None`` nor a positive integer.

    Examples
    --------
    >>> import luxlib
    >>> luxlib.set_num_threads(1)
    >>> luxlib.get_num_threads()
    1
    >>> luxlib.set_num_threads(None)
    """
    count = 0  # the kernels' code for "OpenMP's default"
    if n is not None:
        count = integer_in(n, 1, 2**31)
        if count is None:
            raise ValueError(f"set_num_threads: n must be a positive integer or None, got {n!r}")
    if _openmp_helpers is not None:
        _openmp_helpers.set_num_threads(count)


def get_num_threads():
    """Return the number of threads luxlib's compiled kernels use for large inputs.

    Returns
    -------
    int
        The value given to :func:`set_num_threads`, else OpenMP's default; 1 when
        luxlib was built without OpenMP or its kernels are not available.

    Examples
    --------
    >>> import luxlib
    >>> luxlib.get_num_threads() >= 1
    True
    """
    return 1 if _openmp_helpers is None else _openmp_helpers.get_num_threads()


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu_status():
    # Never import CuPy here: importing it is slow and may initialize CUDA.
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            available = bool(cupy.cuda.is_available())
        except Exception as exc:  # a broken CUDA setup must not break show_config
            return f"unavailable: CuPy is imported but CUDA failed ({exc})"
        return "available (CuPy, CUDA device found)" if available else "unavailable: CuPy finds no CUDA device"
    if importlib.util.find_spec("cupy") is None:
        return "unavailable: CuPy is not installed"
    return "CuPy installed (not imported yet: CUDA not probed)"


def _threadpools():
    try:
        import threadpoolctl
    except ImportError:
        return None
    return [
        {k: pool.get(k) for k in ("user_api", "internal_api", "version", "num_threads", "filepath")}
        for pool in threadpoolctl.threadpool_info()
    ]


def show_config():
    """Print and return luxlib's build and runtime configuration.

    Returns
    -------
    dict
        ``luxlib``, ``python``, ``numpy``, ``scipy`` and ``cython`` (the version
        that generated the kernels) versions; ``openmp`` (whether the kernels
        were built with OpenMP); ``num_threads`` (see :func:`get_num_threads`);
        ``threadpools`` (threadpoolctl's BLAS/OpenMP libraries with their thread
        counts, ``None`` without threadpoolctl); ``memory_cache`` (the limit, idle
        bytes and blocks, hits and misses of the looped kernels' memory cache, see
        :func:`luxlib.set_memory_cache_limit`; ``None`` without the kernels); ``backends`` (``generic``,
        ``looped``, ``gpu`` mapped to their status); ``cudnn`` (whether the GPU convolutions run on
        cuDNN: its version and library, or why not); ``cuda_launch`` (how the GPU kernels launch).

    Examples
    --------
    >>> import luxlib
    >>> config = luxlib.show_config()  # doctest: +ELLIPSIS
    luxlib: ...
    >>> config["backends"]["generic"]
    'available'
    """
    kernels = _openmp_helpers is not None
    info = {
        "luxlib": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "numpy": _version("numpy"),
        "scipy": _version("scipy"),
        "cython": _openmp_helpers.CYTHON_VERSION if kernels else None,
        "openmp": bool(kernels and _openmp_helpers.OPENMP),
        "num_threads": get_num_threads(),
        "threadpools": _threadpools(),
        "memory_cache": _memory.info(),
        "backends": {
            "generic": "available",
            "looped": "available" if kernels else f"unavailable: {IMPORT_ERROR}",
            "gpu": _gpu_status(),
        },
        "cudnn": cudnn_status(),
        "cuda_launch": launch_status(),
    }
    lines = [f"{key + ':':<12}{info[key]}" for key in ("luxlib", "python", "numpy", "scipy")]
    lines.append(f"{'cython:':<12}{info['cython'] or 'n/a'} (build time)")
    lines.append(f"{'openmp:':<12}{'on' if info['openmp'] else 'off'}")
    serial = f"; one thread below {_openmp_helpers.SERIAL_THRESHOLD_ELEMENTS} elements" if kernels else ""
    lines.append(f"{'threads:':<12}{info['num_threads']} (luxlib.set_num_threads / OMP_NUM_THREADS{serial})")
    lines.append("threadpools:")
    if info["threadpools"] is None:
        lines.append("  threadpoolctl is not installed")
    for pool in info["threadpools"] or ():
        lines.append(
            f"  {pool['user_api']}: {pool['internal_api']} {pool['version']}, "
            f"{pool['num_threads']} threads ({pool['filepath']})"
        )
    cache = info["memory_cache"]
    if cache is not None:
        lines.append(
            f"{'cache:':<12}{cache['idle_bytes'] >> 20} of {cache['limit'] >> 20} MiB idle in "
            f"{cache['idle_blocks']} blocks, {cache['hits']} hits, {cache['misses']} misses "
            "(luxlib.set_memory_cache_limit / LUXLIB_MEMORY_CACHE)"
        )
    lines.append("backends:")
    lines += [f"  {name + ':':<10}{status}" for name, status in info["backends"].items()]
    lines.append(f"{'cudnn:':<12}{info['cudnn']}")
    lines.append(f"{'launches:':<12}{info['cuda_launch']}")
    print("\n".join(lines))
    return info
