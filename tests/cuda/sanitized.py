"""Runs of the emulated kernels under a sanitizer, in a subprocess with its runtime preloaded:
AddressSanitizer (with UBSan's bounds check) for out-of-bounds accesses, ThreadSanitizer for
races between threads, of a block or of two blocks (``cuda_emu.h``)."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

#: sanitizer (emu_module.SANITIZERS) -> its runtime library and its options' variable and value.
#: The first report ends the process (ThreadSanitizer would go on and exit with 66 at the end).
RUNTIMES = {
    "address": ("libasan.so", "ASAN_OPTIONS", "detect_leaks=0"),
    "thread": ("libtsan.so", "TSAN_OPTIONS", "halt_on_error=1"),
}


def env(sanitizer):
    """The environment of a Python process whose emulated kernels build under ``sanitizer``
    (one OpenMP thread: the CPU kernels' OpenMP synchronization is invisible to
    ThreadSanitizer)."""
    lib, variable, options = RUNTIMES[sanitizer]
    path = subprocess.run(["g++", f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
    out = dict(os.environ, LD_PRELOAD=path, LUXLIB_EMU_SANITIZE=sanitizer, OMP_NUM_THREADS="1")
    out[variable] = options
    out["PYTHONPATH"] = os.pathsep.join([os.path.join(HERE, "emu"), HERE, ROOT, out.get("PYTHONPATH", "")])
    return out


def run_tests(sanitizer, test_file, selection):
    """Run the tests of ``test_file`` that ``-k selection`` picks under ``sanitizer``; assert
    that some ran and all passed with no report (``--capture=sys`` leaves the sanitizer's
    reports, written to file descriptor 2, in the subprocess's stderr)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys",
           os.path.join(HERE, test_file), "-k", selection]
    res = subprocess.run(cmd, env=env(sanitizer), capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert "Sanitizer" not in res.stderr, res.stderr[-5000:]
    assert " passed" in res.stdout and " deselected" in res.stdout
