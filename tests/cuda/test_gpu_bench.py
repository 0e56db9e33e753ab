"""``python -m luxlib.bench --device cuda`` on tiny shapes (marked `gpu`; speed is never
asserted): on a GPU against torch (CUDA) where it is there; on the emulated GPU
(``LUXLIB_EMULATED_GPU=1``) luxlib alone, which runs the tool's CUDA device and every case's
GPU path, as a lent machine's session does (tools/gpu/session.sh)."""

import json

import pytest

from luxlib.bench import CASES, main


@pytest.mark.gpu
def test_quick_cuda_run(cp, tmp_path):
    path = tmp_path / "cuda.json"
    assert main(["--device", "cuda", "--quick", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["settings"]["device"] == "cuda" and result["machine"]["gpu"]
    random = {c.name for c in CASES if c.random}
    assert {r["name"] for r in result["cases"] if r.get("modes")} == {c.name for c in CASES}
    for r in result["cases"]:
        for mode, m in r.get("modes", {}).items():
            assert not m["failed"] and m["check_ok"], (r["name"], mode, m["failed"], m["check"])
            assert (m["same_size_copy_s"] is not None) == (r["metric"] == "GB/s"), (r["name"], mode)
            # checked against torch (CUDA) where torch is there; dropout masks differ by design
            assert m["check_reference"] != "torch" or r["name"] in random or m["check"], (r["name"], mode)


@pytest.mark.gpu
def test_quick_cuda_run_back_to_back(cp, tmp_path):
    path = tmp_path / "cuda.json"
    assert main(["--device", "cuda", "--quick", "--calls", "3", "--filter", "relu", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["settings"]["calls_per_sample"] == 3
    assert result["cases"] and all(not m["failed"] and m["check_ok"] for r in result["cases"]
                                   for m in r["modes"].values())
