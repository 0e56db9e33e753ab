"""Command line of ``python -m luxlib.bench``."""

import argparse
import json
import pathlib
import sys

from . import report
from .cases import select
from .device import DeviceUnavailable, get_device
from .runner import run


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m luxlib.bench",
        description="Time luxlib against PyTorch (CPU) and plain NumPy, forward and forward+backward, "
        "on realistic float32 shapes. Run it as `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
        "python -m luxlib.bench` (see doc/benchmarks.md).",
    )
    add = p.add_argument
    add("--quick", action="store_true", help="tiny shapes and 3 repeats (smoke test; numbers meaningless)")
    add("--filter", metavar="SUBSTR", help="only cases whose 'family name' contains SUBSTR (case-insensitive)")
    add("--repeats", type=int, metavar="N", help="timed calls per contender (default 7, --quick 3)")
    add("--pause", type=float, metavar="S", help="seconds of sleep, then 20 ms of untimed calls, before each "
        "timed call, so the previous contender's spinning BLAS/OpenMP threads go idle (default 0.1, --quick 0)")
    add("--calls", type=int, metavar="N", default=1, help="back-to-back calls per timed sample, one device "
        "synchronization at its end (default 1: each call timed to its end, host and device time in a row; "
        "more: the time per call in steady state, as torch.utils.benchmark measures)")
    add("--threads", type=int, metavar="N", help="threads for luxlib, BLAS and torch (default: luxlib's count)")
    add("--json", default="bench_results.json", metavar="PATH", help="results file (default %(default)s)")
    add("--png", metavar="PATH", help="bar chart of the ratios (skipped when matplotlib is not importable)")
    add("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (NumPy arrays; default) or cuda (CuPy "
        "arrays against PyTorch CUDA; exits with status 2 without CuPy or a device)")
    add("--list", action="store_true", help="list the cases (and whether luxlib has their op) and exit")
    add("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two --json records (e.g. of two commits) "
        "row by row, luxlib's and torch's times, and exit; runs nothing")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.compare:
        try:
            records = [json.loads(pathlib.Path(path).read_text()) for path in args.compare]
            lines = report.compare(*records)
        except (OSError, ValueError) as exc:
            print(f"python -m luxlib.bench --compare: {exc}", file=sys.stderr)
            return 1
        except (KeyError, TypeError, AttributeError) as exc:
            print(f"python -m luxlib.bench --compare: not two records of --json ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            return 1
        print(lines)
        return 0
    cases = select(args.filter)
    if args.list:
        for c in cases:
            missing = c.missing()
            print(f"{c.family:14} {c.name:32} {'not in luxlib yet: ' + ', '.join(missing) if missing else 'ready'}")
        return 0
    if not cases:
        print(f"python -m luxlib.bench: no case matches --filter {args.filter!r} (see --list)", file=sys.stderr)
        return 1
    if (args.repeats is not None and args.repeats < 1 or args.threads is not None and args.threads < 1
            or args.calls < 1):
        print("python -m luxlib.bench: --repeats, --threads and --calls must be at least 1", file=sys.stderr)
        return 1
    if args.pause is not None and args.pause < 0:
        print("python -m luxlib.bench: --pause must not be negative", file=sys.stderr)
        return 1
    try:
        device = get_device(args.device)
    except DeviceUnavailable as exc:
        print(f"python -m luxlib.bench: {exc}", file=sys.stderr)
        return 2
    # the pause is for CPU thread pools; GPU calls are timed to their end anyway
    default_pause = 0.0 if args.quick or device.name != "cpu" else 0.1
    result = run(
        cases,
        quick=args.quick,
        repeats=args.repeats,
        pause=default_pause if args.pause is None else args.pause,
        device=device,
        threads=args.threads,
        calls=args.calls,
        on_start=lambda head: print(report.header(head), flush=True),
        on_case=lambda record: print(report.rows(record), flush=True),
    )
    print(report.footer(result))
    report.write_json(result, args.json)
    print(f"\nresults written to {args.json}")
    if args.png and report.write_png(result, args.png):
        print(f"chart written to {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
