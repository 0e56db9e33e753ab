"""dropout/alpha_dropout accept a ``cupy.random.Generator`` (SPEC: "for CuPy input also a
cupy.random.Generator"), recognized without importing CuPy. A stand-in class that lives
in a ``cupy`` module and draws through a NumPy generator shows the contract: the key is
one ``integers(0, 2**64, dtype=uint64)`` draw from a copy, read back with ``int``, so the
mask depends only on the drawn value, and the caller's generator is not advanced."""

import copy
import threading

import numpy as np
import pytest

import luxlib
from _helpers import BACKENDS, backend_ctx
from luxlib._generic.philox import is_generator


class _ZeroDim:
    """What CuPy returns for a scalar draw: a 0-d array that ``int`` reads back."""

    def __init__(self, value):
        self.value = value

    def __int__(self):
        return int(self.value)


class _BitGenerator:
    """Laid out as CuPy's: a lock (which ``copy.deepcopy`` cannot copy) beside the state."""

    def __init__(self, seed):
        self.lock = threading.Lock()
        self.inner = np.random.default_rng(seed)


def _stand_in():
    def __init__(self, seed):
        self.bit_generator = _BitGenerator(seed)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return _ZeroDim(self.bit_generator.inner.integers(low, high, size=size, dtype=dtype, endpoint=endpoint))

    return type("Generator", (), {"__module__": "cupy.random._generator_api", "__init__": __init__,
                                  "integers": integers})


CupyGenerator = _stand_in()


def test_is_generator():
    assert is_generator(np.random.default_rng(0)) and is_generator(CupyGenerator(0))
    assert not is_generator(np.random.PCG64(0)) and not is_generator(np.random.RandomState(0))
    assert not is_generator(type("Generator", (), {})())  # the name alone is not enough


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_with_a_cupy_generator_gives_the_numpy_generators_mask(backend, dtype):
    x = np.random.default_rng(3).standard_normal((4, 33)).astype(dtype)
    rng = CupyGenerator(7)
    before = copy.deepcopy(rng.bit_generator.inner.bit_generator.state)
    with backend_ctx(backend):
        y, mask, rng2 = luxlib.dropout(rng, x, 0.3, True)
        y_np, mask_np, _ = luxlib.dropout(np.random.default_rng(7), x, 0.3, True)
        z, _ = luxlib.alpha_dropout(rng, x, 0.3, True)
        z_np, _ = luxlib.alpha_dropout(np.random.default_rng(7), x, 0.3, True)
    np.testing.assert_array_equal(mask, mask_np)
    np.testing.assert_array_equal(y, y_np)
    np.testing.assert_array_equal(z, z_np)
    assert rng.bit_generator.inner.bit_generator.state == before  # the caller's generator is not advanced
    assert type(rng2) is CupyGenerator and rng2 is not rng
    assert rng2.bit_generator.inner.bit_generator.state != before  # the returned copy is
    assert rng2.bit_generator.lock is not rng.bit_generator.lock


def test_other_rngs_are_refused():
    with pytest.raises(TypeError, match=r"dropout: rng must be a numpy.random.Generator or a cupy.random.Generator"):
        luxlib.dropout(np.random.RandomState(0), np.ones(3), 0.5, True)
