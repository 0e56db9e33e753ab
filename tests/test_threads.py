"""BLAS thread limits around the kernels that call BLAS per OpenMP thread, under
concurrent calls from several Python threads (luxlib/_threads.py)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import luxlib
from luxlib import _threads

pytestmark = pytest.mark.skipif(luxlib._kernels.IMPORT_ERROR is not None, reason="compiled kernels not built")


def _blas_threads():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def _shared_libs():
    return _threads._controllers()[0]


def test_concurrent_calls_leave_blas_threads_as_they_were():
    """Calls that overlap in time must not leave BLAS at one thread (nor at anything else)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 80)).astype(np.float32)
    x = rng.standard_normal((128, 80)).astype(np.float32)
    a = rng.standard_normal((8, 64, 64))
    img = rng.standard_normal((8, 16, 24, 24)).astype(np.float32)
    k = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    cdims = luxlib.ConvDims(img.shape, k.shape, padding=1)
    before = _blas_threads()

    def calls():
        return (luxlib.fused_dense_bias_activation("relu", w, x, None), luxlib.batched_matmul(a, a),
                luxlib.fused_conv_bias_activation("relu", k, img, None, cdims))

    expected = calls()

    def work(_):
        return [calls() for _ in range(30)]

    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(work, range(4)) for r in rs]
    assert _blas_threads() == before
    for outs in results:
        for out, ref in zip(outs, expected):
            np.testing.assert_array_equal(out, ref)


def _overlap(enter, inside):
    """Thread A enters, then B; A leaves while B is still inside; then B leaves.

    ``inside()`` is called at each step (A in, both in, B alone in) and after both left;
    returns what it returned."""
    seen = []
    a_in, b_in, a_out, b_out = (threading.Event() for _ in range(4))

    def a():
        with enter():
            a_in.set()
            b_in.wait(30)
            seen.append(("both in", inside()))
        a_out.set()
        b_out.wait(30)

    def b():
        a_in.wait(30)
        with enter():
            b_in.set()
            a_out.wait(30)
            seen.append(("B alone", inside()))
        b_out.set()

    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(a), pool.submit(b)]:
            f.result(timeout=60)
    seen.append(("after", inside()))
    return seen


@pytest.mark.skipif(not _shared_libs(), reason="no BLAS with a process-wide thread count loaded")
def test_overlapping_holders_keep_one_shared_limit():
    before = _blas_threads()
    seen = _overlap(_threads.single_threaded_blas, _blas_threads)
    ones = [1] * len(before)
    assert seen == [("both in", ones), ("B alone", ones), ("after", before)]


class FakeLib:
    """A BLAS controller recording which thread set which count."""

    def __init__(self, per_thread):
        self.per_thread = per_thread
        self.counts = {}  # thread id (or None, process-wide) -> count
        self.sets = []

    def _key(self):
        return threading.get_ident() if self.per_thread else None

    def get_num_threads(self):
        return self.counts.get(self._key(), 4)

    def set_num_threads(self, n):
        self.sets.append((threading.current_thread().name, n))
        self.counts[self._key()] = n


def test_shared_counts_set_once_per_thread_counts_by_each_caller(monkeypatch):
    shared, per_thread = FakeLib(False), FakeLib(True)
    releases = []
    monkeypatch.setattr(_threads, "_controllers", lambda: ([shared], [per_thread], lambda: releases.append(1)))
    seen = _overlap(_threads.single_threaded_blas, lambda: shared.get_num_threads())
    assert seen == [("both in", 1), ("B alone", 1), ("after", 4)]
    # the process-wide count: set by the first holder, restored by the last, once each
    assert [n for _, n in shared.sets] == [1, 4]
    assert shared.sets[0][0] != shared.sets[1][0]  # by different threads: control released
    assert releases
    # the per-thread count: each thread limits and restores its own
    by_thread = {}
    for name, n in per_thread.sets:
        by_thread.setdefault(name, []).append(n)
    assert sorted(by_thread.values()) == [[1, 4], [1, 4]]
    assert set(per_thread.counts.values()) == {4}


def test_concurrent_parallel_kernels_match_their_serial_results():
    """OpenMP kernels called from several Python threads at once (each call its own team)
    give what they give alone, gradients included."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 16, 32, 32)).astype(np.float32)  # above the serial threshold
    c = x.shape[1]
    scale, shift = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    mean, var = np.zeros(c, np.float32), np.ones(c, np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    k = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    cdims = luxlib.ConvDims(x.shape, k.shape, padding=1, groups=c)
    seed = np.random.default_rng(7)

    def calls():
        out = [luxlib.bias_activation("gelu", x, shift)]
        out += [luxlib.dropout(seed, x, 0.3, True)[0]]
        (y, stats), pullback = luxlib.vjp(luxlib.batchnorm, x, scale, shift, mean, var, True, "relu")
        out += [y, *stats, *pullback(dy)[:3]]
        y, pullback = luxlib.vjp(luxlib.fused_conv_bias_activation, "relu", k, x, shift, cdims)
        out += [y, *pullback(dy)[1:4]]
        return out

    expected = calls()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: calls(), range(8)))
    for outs in results:
        assert len(outs) == len(expected)
        for out, ref in zip(outs, expected):
            np.testing.assert_array_equal(out, ref)


def test_an_error_inside_restores_the_counts(monkeypatch):
    shared, per_thread = FakeLib(False), FakeLib(True)
    monkeypatch.setattr(_threads, "_controllers", lambda: ([shared], [per_thread], lambda: None))
    with pytest.raises(RuntimeError, match="kernel"), _threads.single_threaded_blas():
        assert shared.get_num_threads() == per_thread.get_num_threads() == 1
        raise RuntimeError("kernel")
    assert shared.get_num_threads() == per_thread.get_num_threads() == 4 and _threads._holders == 0
