"""Philox4x32-10, the counter-based generator behind every dropout mask.

The reference implementation, vectorized in the array namespace: the Cython and
CUDA kernels compute the same words from the same key and counters, so a seed
gives the same mask on every backend and for every thread count. The mask
contract (key from the caller's generator, counter layout, ``u``) is written
down in ``doc/dropout.md``.

Reference: J. K. Salmon, M. A. Moraes, R. O. Dror, D. E. Shaw, "Parallel random
numbers: as easy as 1, 2, 3", SC 2011 (Random123).
"""

import copy
import threading

import numpy as np

from .._validation import array_namespace

__all__ = ["draw_key", "is_generator", "philox4x32", "uniform"]

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_LOW32 = 0xFFFFFFFF


def _mulhilo(m, a, xp):
    """High and low 32-bit halves of the 64-bit product ``m * a`` (``a`` uint32)."""
    prod = a.astype(xp.uint64) * xp.uint64(m)
    return (prod >> xp.uint64(32)).astype(xp.uint32), prod.astype(xp.uint32)


def philox4x32(counter, key, rounds=10):
    """Apply Philox4x32 with ``rounds`` rounds to counters, elementwise.

    Parameters
    ----------
    counter : sequence of 4 uint32 arrays
        Words 0..3 of the counters (broadcast against each other).
    key : sequence of 2 int
        Key words 0 and 1, each in ``[0, 2**32)``.
    rounds : int, default 10

    Returns
    -------
    tuple of 4 uint32 arrays
        Words 0..3 of the output blocks.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.zeros((), np.uint32)
    >>> [f"{int(w):08x}" for w in philox4x32((z, z, z, z), (0, 0))]
    ['6627e8d5', 'e169c58d', 'bc57ac4c', '9b00dbd8']
    """
    c0, c1, c2, c3 = counter
    xp = array_namespace(c0)
    k0, k1 = int(key[0]), int(key[1])
    for r in range(rounds):
        if r:  # Random123 bumps the key before every round but the first
            k0, k1 = (k0 + _W0) & _LOW32, (k1 + _W1) & _LOW32
        hi0, lo0 = _mulhilo(_M0, c0, xp)
        hi1, lo1 = _mulhilo(_M1, c2, xp)
        c0, c1, c2, c3 = hi1 ^ c1 ^ xp.uint32(k0), lo1, hi0 ^ c3 ^ xp.uint32(k1), lo0
    return c0, c1, c2, c3


def is_generator(rng):
    """Whether ``rng`` is a generator dropout accepts: a ``numpy.random.Generator`` or a
    ``cupy.random.Generator`` (recognized without importing CuPy: a generator whose type
    lives in ``cupy`` means the caller has it)."""
    t = type(rng)
    return isinstance(rng, np.random.Generator) or (t.__name__ == "Generator" and t.__module__.split(".")[0] == "cupy")


def draw_key(rng):
    """Draw a Philox key from a copy of ``rng``; the caller's generator is not advanced.

    Parameters
    ----------
    rng : numpy.random.Generator or cupy.random.Generator
        Both draw the key the same way (one uint64 from ``integers``; CuPy returns it
        as a 0-d device array, read back with ``int``), so the mask depends only on
        the drawn value, never on the array type.

    Returns
    -------
    key : tuple of 2 int
        ``(seed & 0xFFFFFFFF, seed >> 32)`` for one 64-bit ``seed`` drawn from the copy.
    rng : numpy.random.Generator or cupy.random.Generator
        The advanced copy.
    """
    rng = _copy(rng)
    bit_generator = getattr(rng, "bit_generator", None)
    if type(bit_generator) in _STATE_COPIED:
        # the same draw at a seventh of the time: for these bit generators ``integers(0, 2**64,
        # dtype=np.uint64)`` returns their ``next_uint64``, which is what ``random_raw`` returns
        seed = int(bit_generator.random_raw())
    else:
        seed = int(rng.integers(0, 2**64, dtype=np.uint64))
    return (seed & _LOW32, seed >> 32), rng


#: NumPy bit generators with a small state, copied through it (an eighth of deepcopy's time)
_STATE_COPIED = (np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64)


class _CopiedSeedSequence(np.random.bit_generator.ISpawnableSeedSequence):
    """The seed sequence of a bit generator copied through its state (:func:`_copy`).

    Its words for the bit generator's constructor are zeros: the state is overwritten at
    once, and hashing a real ``SeedSequence`` would cost most of the copy. ``spawn`` gives
    the children a deep copy would: those of the original's sequence as it was when copied
    (``SeedSequence`` arguments kept, the sequence made on the first spawn).
    """

    def __init__(self, entropy, spawn_key, pool_size, n_children_spawned):
        self._args, self._sequence = (entropy, spawn_key, pool_size, n_children_spawned), None

    @classmethod
    def of(cls, seq):
        """One standing for a deep copy of ``seq`` (a ``SeedSequence`` or one of these, as
        the generators dropout returns hold), else None."""
        if type(seq) is cls:
            return cls(*seq._args) if seq._sequence is None else cls.of(seq._sequence)
        if type(seq) is np.random.SeedSequence:
            return cls(seq.entropy, seq.spawn_key, seq.pool_size, seq.n_children_spawned)
        return None

    def generate_state(self, n_words, dtype=np.uint32):
        return np.zeros(n_words, dtype)

    def spawn(self, n_children):
        if self._sequence is None:
            entropy, spawn_key, pool_size, spawned = self._args
            self._sequence = np.random.SeedSequence(entropy, spawn_key=spawn_key, pool_size=pool_size,
                                                    n_children_spawned=spawned)
        return self._sequence.spawn(n_children)


def _copy(rng):
    """A copy of ``rng`` that advances independently of it.

    CuPy's bit generator holds a ``threading.Lock``, which ``copy.deepcopy`` cannot
    copy: the copy gets a lock of its own."""
    if type(rng) is np.random.Generator and type(rng.bit_generator) in _STATE_COPIED:
        source = rng.bit_generator
        seq = _CopiedSeedSequence.of(source.seed_seq)
        if seq is not None:
            bit_generator = type(source)(seq)
            bit_generator.state = source.state
            return np.random.Generator(bit_generator)
    memo = {}
    if not isinstance(rng, np.random.Generator):
        lock = getattr(getattr(rng, "bit_generator", None), "lock", None)
        if lock is not None:
            memo[id(lock)] = threading.Lock()
    return copy.deepcopy(rng, memo)


def uniform(key, shape, xp=np):
    """The uniform numbers ``u`` in ``[0, 1)`` of a mask of ``shape``, as float64.

    Element ``i`` (C-order linear index) takes word ``i % 4`` of the Philox4x32-10
    block with counter ``(i // 4 low 32 bits, i // 4 high 32 bits, 0, 0)`` and
    ``u = (word >> 8) * 2**-24``, a multiple of ``2**-24`` (exact in float32 too).

    Parameters
    ----------
    key : tuple of 2 int
    shape : tuple of int
    xp : array namespace, default numpy

    Returns
    -------
    u : float64 array of ``shape``
    """
    n = int(np.prod(shape, dtype=np.int64))
    block = xp.arange((n + 3) // 4, dtype=xp.uint64)
    zero = xp.zeros_like(block, dtype=xp.uint32)
    words = philox4x32(
        (block.astype(xp.uint32), (block >> xp.uint64(32)).astype(xp.uint32), zero, zero), key
    )
    bits = xp.stack(words, axis=-1).reshape(-1)[:n] >> xp.uint32(8)
    return (bits.astype(xp.float64) * 2.0**-24).reshape(shape)
