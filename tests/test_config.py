"""show_config, the kernels' thread count, and that this build has its kernels."""

import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

import luxlib
from luxlib import _config
from luxlib._dispatch import _REGISTRY


@pytest.fixture(autouse=True)
def default_threads():
    yield
    luxlib.set_num_threads(None)


def run_python(code, **env):
    """Run ``code`` in a fresh interpreter that imports the luxlib under test.

    It runs in luxlib's parent directory: ``python -c`` puts the working directory
    first on ``sys.path``, and a source checkout there would shadow an installed,
    built luxlib.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(luxlib.__file__)))
    full_env = {**os.environ, "PYTHONPATH": root, **env}
    result = subprocess.run(
        [sys.executable, "-c", code], env=full_env, cwd=root, capture_output=True, text=True, timeout=120,
        check=True,
    )
    return result.stdout.strip()


def test_kernels_are_built_and_registered():
    # Fails when the extensions did not build: everything would silently run generic.
    assert luxlib._kernels.IMPORT_ERROR is None
    for op in ("fast_activation", "fast_activation_", "bias_activation", "bias_activation_"):
        assert (op, "looped") in _REGISTRY


def test_show_config(capsys):
    info = luxlib.show_config()
    out = capsys.readouterr().out
    assert info["luxlib"] == luxlib.__version__
    assert info["numpy"] == np.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", info["cython"])
    assert info["python"].startswith(".".join(map(str, sys.version_info[:3])))
    assert info["openmp"] is True  # this build must have OpenMP
    assert info["num_threads"] == luxlib.get_num_threads() >= 1
    assert info["backends"]["generic"] == "available"
    assert info["backends"]["looped"] == "available"
    assert isinstance(info["backends"]["gpu"], str)
    assert re.search(r"^cudnn:\s+" + re.escape(info["cudnn"]) + "$", out, re.M)
    assert re.search(r"^launches:\s+" + re.escape(info["cuda_launch"]) + "$", out, re.M)
    # the extensions link the OpenMP runtime, which threadpoolctl then lists
    assert any(pool["user_api"] == "openmp" for pool in info["threadpools"])
    assert re.search(r"^openmp:\s+on$", out, re.M)
    assert re.search(r"^\s+looped:\s+available$", out, re.M)
    assert f"numpy:      {np.__version__}" in out


def test_show_config_follows_set_num_threads(capsys):
    luxlib.set_num_threads(3)
    assert luxlib.show_config()["num_threads"] == 3
    assert re.search(r"^threads:\s+3 ", capsys.readouterr().out, re.M)


def test_gpu_status_without_cupy(monkeypatch):
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(_config.importlib.util, "find_spec", lambda name: None)
    assert _config._gpu_status() == "unavailable: CuPy is not installed"
    monkeypatch.setattr(_config.importlib.util, "find_spec", lambda name: object())
    assert "not imported" in _config._gpu_status()


@pytest.mark.parametrize("available", [True, False])
def test_gpu_status_with_imported_cupy(monkeypatch, available):
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: available))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert _config._gpu_status().startswith("available" if available else "unavailable")


def test_import_does_not_load_optional_libraries():
    out = run_python("import sys, luxlib; print('threadpoolctl' in sys.modules, 'cupy' in sys.modules)")
    assert out == "False False"


@pytest.mark.parametrize("n", [1, 2, 3, np.int64(4)])
def test_set_get_round_trip(n):
    luxlib.set_num_threads(n)
    assert luxlib.get_num_threads() == n
    assert type(luxlib.get_num_threads()) is int


def test_default_follows_omp_num_threads():
    assert run_python("import luxlib; print(luxlib.get_num_threads())", OMP_NUM_THREADS="3") == "3"
    code = "import luxlib; luxlib.set_num_threads(2); print(luxlib.get_num_threads())"
    assert run_python(code, OMP_NUM_THREADS="3") == "2"
    code = "import luxlib; luxlib.set_num_threads(2); luxlib.set_num_threads(None); print(luxlib.get_num_threads())"
    assert run_python(code, OMP_NUM_THREADS="3") == "3"


@pytest.mark.parametrize("bad", [0, -1, 1.5, 2.0, "2", True, [2]])
def test_set_num_threads_rejects_bad_values(bad):
    luxlib.set_num_threads(2)
    with pytest.raises(ValueError, match=r"set_num_threads: n must be a positive integer or None, got"):
        luxlib.set_num_threads(bad)
    assert luxlib.get_num_threads() == 2  # unchanged
