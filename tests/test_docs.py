"""The documentation's examples run: the README's code block and every docstring example."""

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import luxlib

README = Path(__file__).resolve().parents[1] / "README.md"
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(luxlib.__path__, "luxlib.")
    if not m.name.endswith("__main__") and not m.name.startswith("luxlib.cuda")
)


def test_readme_example_runs(capsys):
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["dy"].shape == namespace["x"].shape[:1] + (4,) + namespace["x"].shape[2:]
    assert "openmp" in capsys.readouterr().out


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.failed == 0
