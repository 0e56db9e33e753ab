"""The looped kernels' memory cache (a NumPy NEP 49 allocator around looped calls)."""

import threading
import tracemalloc

import numpy as np
import pytest

import luxlib
from luxlib import _memory

pytest.importorskip("luxlib._kernels.allocator")
from numpy._core.multiarray import get_handler_name  # noqa: E402

MIB = 1 << 20
CACHE = "luxlib_caching_allocator"


@pytest.fixture(autouse=True)
def roomy_cache():
    limit = luxlib.get_memory_cache_limit()
    luxlib.set_memory_cache_limit(256 * MIB)
    luxlib.empty_memory_cache()
    yield
    luxlib.set_memory_cache_limit(limit)


def owner(a):
    while a.base is not None:
        a = a.base
    return a


def relu_reference(x):
    with luxlib.backend("generic"):
        return luxlib.fast_activation("relu", x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_come_from_the_cache_and_numpy_is_left_alone(dtype):
    x = np.random.default_rng(0).standard_normal((4, 1 << 16)).astype(dtype)
    y = luxlib.fast_activation("relu", x)
    assert get_handler_name(owner(y)) == CACHE
    assert owner(y).flags.owndata
    assert get_handler_name() == "default_allocator"
    assert get_handler_name(np.empty(1 << 20)) == "default_allocator"
    np.testing.assert_array_equal(y, relu_reference(x))


def test_generic_outputs_do_not_use_the_cache():
    x = np.ones((4, 1 << 16), np.float32)
    with luxlib.backend("generic"):
        y = luxlib.fast_activation("relu", x)
    assert get_handler_name(owner(y)) == "default_allocator"


def test_a_freed_output_is_reused_and_the_result_is_right():
    rng = np.random.default_rng(1)
    x1, x2 = (rng.standard_normal((8, 1 << 16)).astype(np.float32) for _ in range(2))
    y1 = luxlib.fast_activation("gelu", x1)
    address = owner(y1).ctypes.data
    del y1
    assert _memory.info()["idle_blocks"] == 1
    before = _memory.info()["hits"]
    y2 = luxlib.fast_activation("relu", x2)
    assert _memory.info()["hits"] == before + 1
    assert owner(y2).ctypes.data == address
    np.testing.assert_array_equal(y2, relu_reference(x2))


def test_pullback_gradients_come_from_the_cache():
    x = np.random.default_rng(2).standard_normal((8, 1 << 16))
    y, pullback = luxlib.vjp(luxlib.fast_activation, "tanh", x)
    _, dx = pullback(np.ones_like(y))
    assert get_handler_name(owner(dx)) == CACHE
    np.testing.assert_allclose(dx, 1 - np.tanh(x) ** 2, rtol=1e-12, atol=1e-15)


def test_the_handler_is_restored_when_the_call_raises():
    def boom():
        assert get_handler_name() == CACHE
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _memory.run_cached(boom)
    assert get_handler_name() == "default_allocator"


def test_zeros_from_a_reused_block_are_zero():
    def dirty_then_zeros():
        a = np.empty(3 * MIB, np.uint8)
        a.fill(0xFF)
        del a
        hits = _memory.info()["hits"]
        z = np.zeros(3 * MIB, np.uint8)
        assert _memory.info()["hits"] == hits + 1
        return z

    assert not _memory.run_cached(dirty_then_zeros).any()


@pytest.mark.parametrize("new_size", [2 * MIB // 8 - 5, 2 * MIB // 8 + 70_000, 64, 4 * MIB])
def test_resize_keeps_the_data(new_size):
    def grow_or_shrink():
        a = np.arange(2 * MIB // 8, dtype=np.float64)
        a.resize(new_size, refcheck=False)
        return a

    a = _memory.run_cached(grow_or_shrink)
    n = min(new_size, 2 * MIB // 8)
    np.testing.assert_array_equal(a[:n], np.arange(n, dtype=np.float64))
    assert not a[n:].any()  # numpy zero-fills what resize adds


def test_small_arrays_are_not_kept():
    def small():
        return np.ones(1000)

    a = _memory.run_cached(small)
    assert get_handler_name(a) == CACHE
    del a
    assert _memory.info()["idle_blocks"] == 0


def test_limit_bounds_the_idle_blocks_oldest_first():
    luxlib.set_memory_cache_limit(5 * MIB)

    def blocks():
        return [np.empty(2 * MIB, np.uint8) for _ in range(3)]

    arrays = _memory.run_cached(blocks)
    addresses = [a.ctypes.data for a in arrays]
    for i in range(3):
        arrays[i] = None  # freed in order: the third block evicts the first
    info = _memory.info()
    assert info["idle_blocks"] == 2 and info["idle_bytes"] == 4 * MIB
    reused = _memory.run_cached(lambda: [np.empty(2 * MIB, np.uint8) for _ in range(2)])
    assert {a.ctypes.data for a in reused} == set(addresses[1:])


def test_zero_limit_and_empty_cache_release_everything():
    y = luxlib.fast_activation("relu", np.ones((4, 1 << 16)))
    del y
    assert _memory.info()["idle_bytes"] > 0
    luxlib.empty_memory_cache()
    assert _memory.info()["idle_bytes"] == 0
    assert luxlib.get_memory_cache_limit() == 256 * MIB
    luxlib.set_memory_cache_limit(0)
    misses = _memory.info()["misses"]
    y = luxlib.fast_activation("relu", np.ones((4, 1 << 16)))
    del y
    # off: blocks come from malloc (which reuses freed memory itself), not fresh maps
    assert _memory.info()["idle_bytes"] == 0 and _memory.info()["misses"] == misses


@pytest.mark.parametrize("bad", [-1, 1.5, "1G", True, 2**63])
def test_set_memory_cache_limit_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="set_memory_cache_limit: nbytes"):
        luxlib.set_memory_cache_limit(bad)
    assert luxlib.get_memory_cache_limit() == 256 * MIB


def test_limit_takes_any_integer():
    luxlib.set_memory_cache_limit(np.int64(64 * MIB))
    assert luxlib.get_memory_cache_limit() == _memory.info()["limit"] == 64 * MIB


def test_default_limit_follows_the_environment(monkeypatch):
    monkeypatch.setenv("LUXLIB_MEMORY_CACHE", str(12 * MIB))
    luxlib.set_memory_cache_limit(None)
    assert luxlib.get_memory_cache_limit() == _memory.info()["limit"] == 12 * MIB
    monkeypatch.setenv("LUXLIB_MEMORY_CACHE", "lots")
    with pytest.warns(UserWarning, match="LUXLIB_MEMORY_CACHE"):
        luxlib.set_memory_cache_limit(None)
    assert 0 < luxlib.get_memory_cache_limit() <= 4 << 30


def test_tracemalloc_still_sees_the_outputs():
    x = np.ones((4, 1 << 16), np.float32)
    luxlib.fast_activation("relu", x)  # warm: the block now comes from the cache
    tracemalloc.start()
    try:
        y = luxlib.fast_activation("relu", x)
        current = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert current >= y.nbytes


def test_concurrent_calls_get_their_own_blocks():
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((n, 1 << 15)).astype(np.float32) for n in (8, 9, 16, 8)]
    expected = [relu_reference(x) for x in inputs]
    errors = []

    def work(i):
        for _ in range(25):
            y = luxlib.fast_activation("relu", inputs[i])
            if not np.array_equal(y, expected[i]):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _memory.info()["idle_bytes"] <= 256 * MIB


def test_random_allocations_from_threads_keep_their_contents():
    luxlib.set_memory_cache_limit(24 * MIB)  # small: eviction happens too
    errors = []

    def churn(seed):
        rng = np.random.default_rng(seed)
        live = []
        for step in range(300):
            if live and rng.random() < 0.45:
                a, tag = live.pop(int(rng.integers(len(live))))
                if not (a == tag).all():
                    errors.append((seed, step))
            else:
                size = int(rng.choice([100, 70_000, MIB // 4 - 3, MIB // 4 + 5, 3 * MIB // 4]))
                make = (np.empty, np.zeros)[int(rng.integers(2))]
                a = make(size, np.float32)
                if rng.random() < 0.2:
                    a.resize(size + int(rng.integers(1, MIB // 4)), refcheck=False)
                tag = np.float32(seed * 1000 + step)
                a.fill(tag)
                live.append((a, tag))
        for a, tag in live:
            if not (a == tag).all():
                errors.append((seed, "end"))

    threads = [threading.Thread(target=_memory.run_cached, args=(churn, s)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    info = _memory.info()
    assert info["hits"] > 0 and info["idle_bytes"] <= 24 * MIB and info["idle_blocks"] <= 64
