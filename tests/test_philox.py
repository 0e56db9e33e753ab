"""Philox4x32 reference generator: known answers, vectorization, the counter layout."""

import copy

import numpy as np
import pytest

from luxlib._generic import philox
from luxlib._generic.philox import draw_key, philox4x32, uniform

# The "philox4x32" lines of Random123's tests/kat_vectors
# (github.com/DEShawResearch/random123, commit 9545ff6413f258be2f04c1d319d99aaef7521150):
# rounds, counter words 0-3, key words 0-1, expected output words 0-3.
KAT = """
7  00000000 00000000 00000000 00000000 00000000 00000000 5f6fb709 0d893f64 4f121f81 4f730a48
7  ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff 5207ddc2 45165e59 4d8ee751 8c52f662
7  243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0 4dfccaba 190a87f0 c47362ba b6b5242a
10 00000000 00000000 00000000 00000000 00000000 00000000 6627e8d5 e169c58d bc57ac4c 9b00dbd8
10 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff 408f276d 41c83b0e a20bc7c6 6d5451fd
10 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0 d16cfe09 94fdcceb 5001e420 24126ea1
"""
KAT_ROWS = [[int(w, 16) if i else int(w) for i, w in enumerate(line.split())] for line in KAT.strip().splitlines()]


def _words(values):
    return tuple(np.asarray(v, dtype=np.uint32) for v in values)


def _block(key, n):
    """Philox4x32-10 block ``n`` of the dropout stream, one scalar call."""
    return [int(w) for w in philox4x32(_words((n & 0xFFFFFFFF, n >> 32, 0, 0)), key)]


@pytest.mark.parametrize("row", KAT_ROWS, ids=lambda r: f"r{r[0]}-{r[1]:08x}")
def test_known_answers(row):
    rounds, counter, key, expected = row[0], row[1:5], row[5:7], row[7:11]
    out = philox4x32(_words(counter), key, rounds=rounds)
    assert all(w.dtype == np.uint32 for w in out)
    assert [int(w) for w in out] == expected


def test_default_is_ten_rounds():
    row = KAT_ROWS[-1]
    assert [int(w) for w in philox4x32(_words(row[1:5]), row[5:7])] == row[7:11]


def test_vectorized_matches_scalar_calls():
    gen = np.random.default_rng(3)
    counters = gen.integers(0, 2**32, size=(4, 3, 5), dtype=np.uint64).astype(np.uint32)
    key = (0xA4093822, 0x299F31D0)
    out = philox4x32(tuple(counters), key)
    assert all(w.shape == (3, 5) for w in out)
    for idx in np.ndindex(3, 5):
        scalar = philox4x32(_words(counters[(slice(None),) + idx]), key)
        assert [int(w[idx]) for w in out] == [int(w) for w in scalar]


@pytest.mark.parametrize("shape", [(13,), (3, 5), (2, 3, 4), (1,)])
def test_uniform_counter_layout(shape):
    key = (0x12345678, 0x9ABCDEF0)
    u = uniform(key, shape)
    assert u.shape == shape and u.dtype == np.float64
    flat = u.reshape(-1)
    for i in range(flat.size):
        word = _block(key, i // 4)[i % 4]
        assert flat[i] == (word >> 8) / 2**24, i


def test_uniform_values_are_exact_float32_multiples_of_2_pow_minus_24():
    u = uniform((7, 11), (4096,))
    assert np.all((u >= 0) & (u < 1))
    scaled = u * 2**24
    np.testing.assert_array_equal(scaled, np.floor(scaled))
    np.testing.assert_array_equal(u.astype(np.float32).astype(np.float64), u)


def test_uniform_is_counter_based():
    # A prefix of the stream does not depend on its length, nor on the shape:
    # any split of the index range (threads, CUDA blocks) gives the same numbers.
    key = (1, 2)
    long = uniform(key, (1001,))
    np.testing.assert_array_equal(uniform(key, (37,)), long[:37])
    np.testing.assert_array_equal(uniform(key, (7, 11, 13)).reshape(-1), long)


def test_uniform_empty_and_scalar_shapes():
    assert uniform((0, 0), (0, 5)).shape == (0, 5)
    assert uniform((0, 0), ()).shape == ()
    assert uniform((0, 0), ()) == (_block((0, 0), 0)[0] >> 8) / 2**24


def test_uniform_statistics():
    n = 2**16
    u = uniform((0xDEADBEEF, 0x0BADF00D), (n,))
    assert abs(u.mean() - 0.5) < 4 * np.sqrt(1 / 12 / n)
    counts = np.bincount((u * 16).astype(int), minlength=16)
    chi2 = np.sum((counts - n / 16) ** 2 / (n / 16))
    assert chi2 < 50  # 15 degrees of freedom: p ~ 1e-5
    # neighbouring elements (same block, consecutive blocks) are uncorrelated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02
    assert abs(np.corrcoef(u[:-4], u[4:])[0, 1]) < 0.02


def test_different_keys_give_different_streams():
    a, b, c = (uniform(k, (64,)) for k in [(0, 0), (1, 0), (0, 1)])
    assert not np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(b, c)


def _upcoming(gen):
    """The next few draws of ``gen``, without advancing it (states hold arrays for some bit generators)."""
    return copy.deepcopy(gen).integers(0, 2**63, size=4).tolist()


@pytest.mark.parametrize("buffered", [False, True], ids=["fresh", "buffered"])
@pytest.mark.parametrize("bitgen", [np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64,
                                    np.random.MT19937])
def test_draw_key(bitgen, buffered):
    def generator():
        g = np.random.Generator(bitgen(42))
        if buffered:  # leaves half of a 64-bit draw in the bit generator's state
            g.integers(0, 2**31, dtype=np.uint32)
        return g

    rng = generator()
    before = _upcoming(rng)
    key, new = draw_key(rng)
    assert _upcoming(rng) == before, "the caller's generator was advanced"
    reference = generator()
    seed = int(reference.integers(0, 2**64, dtype=np.uint64))
    assert key == (seed % 2**32, seed // 2**32)
    assert all(0 <= k < 2**32 for k in key)
    assert isinstance(new, np.random.Generator) and new is not rng
    assert _upcoming(new) == _upcoming(reference)
    halves = lambda g: copy.deepcopy(g).integers(0, 2**32, size=3, dtype=np.uint32).tolist()  # noqa: E731
    assert halves(new) == halves(reference), "the half draw left in the state differs"
    assert draw_key(rng)[0] == key and draw_key(new)[0] != key
    # the copy spawns the children the original's seed sequence would
    assert [_upcoming(c) for c in new.spawn(2)] == [_upcoming(c) for c in reference.spawn(2)]


def test_the_drawn_generator_spawns_like_a_deep_copy():
    """The generator draw_key returns keeps the caller's seed sequence, as it was (children
    spawned before included): differently seeded generators spawn different children."""
    rng = np.random.default_rng(7)
    rng.spawn(3)
    deep, deep2 = copy.deepcopy(rng), copy.deepcopy(rng)
    _, new = draw_key(rng)
    _, other = draw_key(np.random.default_rng(8))
    assert [_upcoming(c) for c in new.spawn(2)] == [_upcoming(c) for c in deep.spawn(2)]
    # the copy's spawns leave the caller's sequence where it was
    assert [_upcoming(c) for c in rng.spawn(2)] == [_upcoming(c) for c in deep2.spawn(2)]
    assert _upcoming(new.spawn(1)[0]) != _upcoming(other.spawn(1)[0])


@pytest.mark.parametrize("spawn_first", [False, True])
def test_drawn_generators_chain_without_deep_copies(monkeypatch, spawn_first):
    """A training loop passes the generator dropout returned back in: it is copied through its
    state again (no deepcopy), with the same draws and children as deep copies."""
    rng = np.random.default_rng(5)
    _, g1 = draw_key(rng)
    if spawn_first:
        g1.spawn(2)
    reference = copy.deepcopy(g1)
    monkeypatch.setattr(philox.copy, "deepcopy", lambda *a: pytest.fail("deep copy of a PCG64 generator"))
    key, g2 = draw_key(g1)
    monkeypatch.undo()
    assert key == draw_key(reference)[0]
    assert _upcoming(g1) == _upcoming(reference)
    assert [_upcoming(c) for c in g2.spawn(2)] == [_upcoming(c) for c in copy.deepcopy(g1).spawn(2)]
