"""The launch helpers of ``luxlib.cuda._modules`` (no GPU needed): kernels kept per
module, grids sized by the work a thread does, kernel scalars rounded as NumPy casts."""

import sys
import types

import numpy as np
import pytest

from luxlib.cuda import _modules


class _RawModule:
    """Stands in for ``cupy.RawModule``: a new kernel object on every ``get_function``."""

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []

    def get_function(self, name):
        self.calls.append(name)
        return object()


def test_get_module_keeps_the_kernels(monkeypatch):
    """One module per element type, compiled with that type's name expressions on the first
    launch of one of its kernels; kernels kept."""
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(RawModule=_RawModule))
    monkeypatch.setattr(_modules, "_MODULES", {})
    mod = _modules.get_module("dropout")
    assert _modules.get_module("dropout") is mod
    assert mod.raw == {}  # nothing compiled before a launch
    first = mod.get_function("multiply<float>")
    assert mod.get_function("multiply<float>") is first
    assert set(mod.raw) == {"float"}
    assert mod.raw["float"].kwargs["name_expressions"] == _modules.name_expressions("dropout", "float")
    assert "multiply<double>" not in mod.raw["float"].kwargs["name_expressions"]
    mod.get_function("dropout_mask<float>")
    assert mod.get_function("multiply<double>") is not first
    assert set(mod.raw) == {"float", "double"}
    assert mod.raw["float"].calls == ["multiply<float>", "dropout_mask<float>"]
    assert mod.raw["double"].calls == ["multiply<double>"]
    assert sorted(sum((_modules.name_expressions("dropout", t) for t in _modules.TYPES.values()), [])) == sorted(
        _modules.name_expressions("dropout"))


@pytest.mark.parametrize("n, per_thread, blocks", [(0, 1, 1), (1, 1, 1), (256, 1, 1), (257, 1, 2),
                                                   (1024, 4, 1), (1025, 4, 2), (2**24, 4, 16384),
                                                   (2**30, 1, _modules.MAX_BLOCKS)])
def test_grid_1d(n, per_thread, blocks):
    assert _modules.grid_1d(None, n, per_thread=per_thread) == (blocks,)


def test_grid_1d_module_cap():
    assert _modules.grid_1d(types.SimpleNamespace(max_blocks=2), 10**6) == (2,)


def test_tuning_reads_the_hooks_with_gpu_defaults():
    """A module's Tuning: its test hooks where it has them, the GPU's defaults elsewhere."""
    assert _modules.tuning(_modules.get_module("dropout")) is _modules.GPU_TUNING
    assert _modules.GPU_TUNING == (_modules.MAX_BLOCKS, _modules.MIN_CHUNK, _modules.ROWS_MAX, False)
    assert _modules.tuning(types.SimpleNamespace()) == _modules.GPU_TUNING
    hooks = types.SimpleNamespace(max_blocks=2, norm_rows_max=0, norm_wide_index=True)
    assert _modules.tuning(hooks) == (2, _modules.MIN_CHUNK, 0, True)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("value", [0.1, -0.0, 1 / 3, 65504.0, 65520.0, 1e5, 3.5e38, 1e39, np.inf, -np.inf, np.nan])
def test_acc_scalar_rounds_as_numpy_casts(dtype, value):
    got = _modules.acc_scalar(dtype, value)
    with np.errstate(over="ignore"):
        want = dtype(value)
    assert got.dtype == (np.float64 if dtype is np.float64 else np.float32)
    np.testing.assert_array_equal(got, want.astype(got.dtype))
    assert np.signbit(got) == np.signbit(want)
