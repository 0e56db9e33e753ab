#!/usr/bin/env bash
# Everything a session with a lent GPU machine owes, in one call (doc/gpu_runs.md, "Running a
# GPU session"): from the repository root,
#
#     bash tools/gpu/session.sh [STAGE ...]          # default: every stage, in the order below
#
# Stages, most important first (each has a time limit, cut to what is left of DEADLINE seconds;
# a stage with under 20 s left is skipped and says so):
#   build      the Cython extensions (luxlib's launcher is one of them)
#   launcher   the launcher's GPU test; unless it passed (a skip does not), the later stages
#              run with CuPy's call (LUXLIB_CUDA_LAUNCH=cupy) and summary.txt says so
#   tests      pytest -m gpu (the whole GPU conformance set), then test_cupy_api on this CuPy
#   bench      python -m luxlib.bench --device cuda, synchronized single calls (--calls 1)
#   steady     the same with --calls 20 (back-to-back calls, one synchronization)
#   cudnn      the conv rows on luxlib's kernels, then on cuDNN (LUXLIB_CUDNN=1), compared
#   launch_ab  host time per call: luxlib's launcher against CuPy's call (tools/gpu/launch_ab.py)
#   profile    where the host time of small calls goes (tools/gpu/host_profile.py)
#   kernels    per-kernel device time of the rows above torch, luxlib's and torch's (tools/gpu/kernel_profile.py)
#
# Outputs go to $OUT (the device tool's folder that comes back; ./gpu_out without it): a log
# and, where there is one, a JSON record per stage, and summary.txt (a line per stage: its exit
# status and seconds). The exit status is that of the first failed stage, 0 if none failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
# luxlib is built in place there, not installed: a script under tools/ imports it from here
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

STAGES=(build launcher tests bench steady cudnn launch_ab profile kernels)
OUT=${OUT:-gpu_out}
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-570}  # seconds for all stages: under the device tool's 600 s a call
JOBS=${JOBS:-8}  # pytest-xdist workers

for stage in "$@"; do
    if [[ " ${STAGES[*]} " != *" $stage "* ]]; then
        echo "session.sh: unknown stage '$stage' (stages: ${STAGES[*]})" >&2
        exit 2
    fi
done
(($#)) && STAGES=("$@")
mkdir -p "$OUT"
start=$SECONDS
status=0

# run NAME LIMIT COMMAND...: COMMAND with its output in $OUT/NAME.log, within LIMIT seconds and
# what is left of DEADLINE; a line in summary.txt
run() {
    local name=$1 limit=$2 left=$((DEADLINE - (SECONDS - start))) t0=$SECONDS rc
    shift 2
    if ((left < 20)); then
        echo "$name: skipped, ${left}s of the deadline left" | tee -a "$OUT/summary.txt"
        ((status)) || status=124
        return 124
    fi
    ((limit > left)) && limit=$left
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc, $((SECONDS - t0))s (limit ${limit}s)" | tee -a "$OUT/summary.txt"
    tail -n 4 "$OUT/$name.log" | sed 's/^/    /'
    ((rc == 0 || status)) || status=$rc
    return $rc
}

xdist=()
"$PY" -c "import xdist" 2>/dev/null && xdist=(-n "$JOBS")

{
    echo "session.sh on $(git describe --always --dirty 2>/dev/null || echo 'a tree without git'), $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 2
    "$PY" -c "import sys, numpy, cupy; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__)" 2>&1 | tail -n 1
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tail -n 1
    for m in Cython xdist hypothesis threadpoolctl; do "$PY" -c "import $m" 2>/dev/null || echo "not importable: $m"; done
} | tee -a "$OUT/summary.txt"

for stage in "${STAGES[@]}"; do
    case $stage in
    build)
        # luxlib's one dependency beyond NumPy and SciPy travels with the repository (the
        # lent machines have no network)
        "$PY" -c "import threadpoolctl" 2>/dev/null ||
            "$PY" -m pip install -q --no-index --no-deps threadpoolctl-*.whl >"$OUT/pip.log" 2>&1
        run build 240 "$PY" setup.py build_ext --inplace -j "$(nproc)" ;;
    launcher)
        run launcher 120 "$PY" -m pytest -q -rs -m gpu tests/cuda/test_launch.py
        if ! grep -q "1 passed" "$OUT/launcher.log" 2>/dev/null; then  # a skip (no CuPy, no device) is no pass
            ((status)) || status=1
            export LUXLIB_CUDA_LAUNCH=cupy
            echo "launcher: did not pass; the stages after it launch through CuPy's call (LUXLIB_CUDA_LAUNCH=cupy)" |
                tee -a "$OUT/summary.txt"
        fi ;;
    tests)
        # a CPU test file that cannot be imported here (no hypothesis, say) must not stop the GPU set
        run tests 300 "$PY" -m pytest -q -rs "${xdist[@]}" -m gpu --continue-on-collection-errors \
            --junitxml="$OUT/tests.xml" tests
        # a GPU test that skips for want of CuPy, a device or cuDNN did not run: say so
        grep -E "^(ERROR|SKIPPED).*(cupy|CUDA device|cuDNN|rror)" "$OUT/tests.log" | head -n 8 | tee -a "$OUT/summary.txt"
        if grep -qE "^SKIPPED.*(could not import 'cupy'|no CUDA device|no CuPy)" "$OUT/tests.log"; then
            echo "tests: GPU tests skipped for want of CuPy or a device: the GPU set did not run" | tee -a "$OUT/summary.txt"
            ((status)) || status=1
        fi
        LUXLIB_TEST_REAL_CUPY=1 run cupy_api 60 "$PY" -m pytest -q -p no:cacheprovider tests/cuda/test_cupy_api.py ;;
    bench)
        run bench 150 "$PY" -m luxlib.bench --device cuda --json "$OUT/bench.json" ;;
    steady)
        run steady 150 "$PY" -m luxlib.bench --device cuda --calls 20 --json "$OUT/bench_calls20.json" ;;
    cudnn)
        LUXLIB_CUDNN=0 run conv_kernels 90 "$PY" -m luxlib.bench --device cuda --filter conv \
            --json "$OUT/conv_kernels.json" &&
            LUXLIB_CUDNN=1 run conv_cudnn 90 "$PY" -m luxlib.bench --device cuda --filter conv \
                --json "$OUT/conv_cudnn.json" &&
            run conv_compare 30 "$PY" -m luxlib.bench --compare "$OUT/conv_kernels.json" "$OUT/conv_cudnn.json" ;;
    launch_ab)
        run launch_ab 120 "$PY" tools/gpu/launch_ab.py --json "$OUT/launch_ab.json" ;;
    profile)
        run host_profile 90 "$PY" tools/gpu/host_profile.py --json "$OUT/host_profile.json" ;;
    kernels)
        run kernel_profile 120 "$PY" tools/gpu/kernel_profile.py --json "$OUT/kernel_profile.json" ;;
    esac
done
echo "session.sh: $((SECONDS - start))s, exit $status" | tee -a "$OUT/summary.txt"
exit $status
