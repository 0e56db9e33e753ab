"""Output: the fixed-width table, the JSON record and the optional PNG bar chart."""

import json
import math

from .runner import CHECK_RTOL, CONTENDERS, geomean

_MODE_LABEL = {"forward": "fwd", "forward_backward": "fwd+bwd"}
_COLUMNS = (
    ("case", 30, "<"),
    ("shape", 24, "<"),
    ("mode", 7, "<"),
    *((f"{who} ms", 10, ">") for who in CONTENDERS),
    ("lux/torch", 9, ">"),
    ("lux/numpy", 9, ">"),
    ("luxlib rate", 15, ">"),
    ("%copy", 6, ">"),
    ("%fresh", 6, ">"),
    ("%same", 6, ">"),
    ("check", 8, "<"),
)


def _row(values):
    return "  ".join(f"{v:{align}{width}}" for v, (_, width, align) in zip(values, _COLUMNS)).rstrip()


def _cache_state(limit):
    return f"up to {limit / 2**20:.0f} MiB idle" if limit else "off"


def _sample_line(calls):
    if calls == 1:
        return "each timed sample: one call, to the end of its work (host and device time in a row)"
    return (f"each timed sample: {calls} back-to-back calls, one synchronization at the end, per call "
            "(steady state: the host queues calls while the device works)")


def header(head):
    """The lines printed before the first row: machine, settings, copy bandwidth, columns."""
    m, s = head["machine"], head["settings"]
    lines = [
        f"luxlib {m['luxlib']} vs torch {m['torch'] or '(not importable)'} vs NumPy {m['numpy']}, float32, "
        f"{s['threads']} threads, median of {s['repeats']} interleaved repeats after {s['warmup']} warm-up, "
        f"{s.get('pause_s', 0):g} s pause before each"
        + (" [--quick: tiny shapes, numbers meaningless]" if s["quick"] else ""),
        _sample_line(s.get("calls_per_sample", 1)),
        f"CPU: {m['cpu_model']} ({m['usable_cores']} usable cores; {' '.join(m['cpu_simd'])})",
        *([f"luxlib memory cache: {_cache_state(m['luxlib_memory_cache_bytes'])} (outputs reuse freed "
           "outputs' memory; LUXLIB_MEMORY_CACHE=0 times without it)"] if "luxlib_memory_cache_bytes" in m else []),
        *([f"device: cuda, {m['gpu']} ({m['gpu_memory_gib']} GiB), CuPy {m['cupy']}; the NumPy compositions "
           "do not take part; torch computes float32 without TF32, as luxlib does",
           f"luxlib's convolutions: {m.get('cudnn', 'not recorded')}",
           f"luxlib's kernel launches: {m.get('cuda_launch', 'not recorded')}"]
          if s.get("device") == "cuda" else []),
        f"copy bandwidth: {head['copy_bandwidth_gbs']:.1f} GB/s ({head['copy_bandwidth_method']})",
        *([f"fresh-output copy bandwidth: {head['fresh_copy_bandwidth_gbs']:.1f} GB/s "
           f"({head['fresh_copy_bandwidth_method']})"] if head.get("fresh_copy_bandwidth_gbs") else []),
    ]
    if m["env"].get("OPENBLAS_CORETYPE"):
        lines.append(
            f"note: OPENBLAS_CORETYPE={m['env']['OPENBLAS_CORETYPE']} is set; benchmark with "
            "`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m luxlib.bench` (doc/benchmarks.md)"
        )
    lines += ["", _row([name for name, _, _ in _COLUMNS]), "-" * len(_row([name for name, _, _ in _COLUMNS]))]
    return "\n".join(lines)


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def rows(record):
    """The table lines of one case (two modes, or one 'skipped' line)."""
    if "skipped" in record:
        return _row([record["name"], "", "", f"skipped ({record['skipped']})"])
    lines = []
    for mode, r in record["modes"].items():
        ms = [
            "error" if who in r["failed"] else _fmt(r["median_s"].get(who) and 1e3 * r["median_s"][who], ".2f")
            for who in CONTENDERS
        ]
        rate = r["rate"].get("luxlib")
        check = "n/a" if not r["check"] else ("ok" if r["check_ok"] else "MISMATCH")
        lines.append(
            _row(
                [
                    record["name"] if mode == "forward" else "",
                    record["shape"] if mode == "forward" else "",
                    _MODE_LABEL[mode],
                    *ms,
                    _fmt(r["ratio"].get("luxlib/torch"), ".2f"),
                    _fmt(r["ratio"].get("luxlib/numpy"), ".2f"),
                    "-" if rate is None else f"{rate:.1f} {record['metric']}",
                    _fmt(r["pct_copy_bandwidth"].get("luxlib"), ".0f"),
                    _fmt(r["pct_fresh_copy_bandwidth"].get("luxlib"), ".0f"),
                    _fmt(r["pct_same_size_copy"].get("luxlib"), ".0f"),
                    check,
                ]
            )
        )
    return "\n".join(lines)


def footer(result):
    """Geometric means, what the rates count, skipped ops, failures and mismatches."""
    summary = result["summary"]
    lines = [""]
    for other in ("torch", "numpy"):
        g = summary[f"geomean_luxlib/{other}"]
        lines.append(
            f"geometric mean of luxlib/{other} time ratios (< 1: luxlib faster): "
            f"forward {_fmt(g['forward'], '.3f')}, forward+backward {_fmt(g['forward_backward'], '.3f')}"
        )
    lines += ["", "rates count (|a| = bytes of array a; %copy, %fresh = luxlib GB/s / copy bandwidth, "
              "/ fresh-output copy bandwidth; %same = time of a copy of the row's bytes, timed in the "
              "same rounds / luxlib time):"]
    formulas = {}
    for r in result["cases"]:
        formulas.setdefault(r["formula"], []).append(r["name"])
    lines += [f"  {names[0]}{' ...' if len(names) > 1 else ''}: {formula}" for formula, names in formulas.items()]
    skipped = [f"{r['name']} ({r['skipped']})" for r in result["cases"] if "skipped" in r]
    if skipped:
        lines += ["", "skipped: " + "; ".join(skipped)]
    for r in result["cases"]:
        for who, msg in r.get("failed", {}).items():
            lines.append(f"{r['name']}: {who} could not be built: {msg}")
        for mode, m in r.get("modes", {}).items():
            for who, msg in m["failed"].items():
                lines.append(f"{r['name']} {_MODE_LABEL[mode]}: {who} failed: {msg}")
            if not m["check_ok"]:
                lines.append(
                    f"{r['name']} {_MODE_LABEL[mode]}: MISMATCH against {m['check_reference']} "
                    f"(norm-relative difference > {CHECK_RTOL:g}): {m['check']}"
                )
    return "\n".join(lines)


def compare(old, new):
    """Lines comparing two JSON records (e.g. two commits on one machine): per row and mode
    luxlib's old and new median ms and new/old, and the same for torch, whose code did
    not change, so that its ratio shows how much the machine drifted between the runs."""
    olds = {(r["name"], mode): m for r in old["cases"] for mode, m in r.get("modes", {}).items()}
    widths = (30, 7, 9, 9, 7, 9, 9, 7)
    names = ("case", "mode", "old ms", "new ms", "new/old", "torch old", "torch new", "new/old")

    def line(values):
        return "  ".join(f"{v:{'<' if k < 2 else '>'}{w}}" for k, (v, w) in enumerate(zip(values, widths))).rstrip()

    def ms_and_ratio(who, a, b):
        ta, tb = a["median_s"].get(who), b["median_s"].get(who)
        ratio = tb / ta if ta and tb else None
        return _fmt(ta and 1e3 * ta, ".3f"), _fmt(tb and 1e3 * tb, ".3f"), _fmt(ratio, ".2f"), ratio

    lines, ratios = [line(names), "-" * len(line(names))], {"luxlib": [], "torch": []}
    for r in new["cases"]:
        for mode, m in r.get("modes", {}).items():
            o = olds.get((r["name"], mode))
            if o is None:
                lines.append(line([r["name"], _MODE_LABEL[mode], "-", "(not in the old record)"]))
                continue
            cells = []
            for who, values in ratios.items():
                *shown, ratio = ms_and_ratio(who, o, m)
                cells += shown
                values.append(ratio)
            lines.append(line([r["name"], _MODE_LABEL[mode], *cells]))
    means = ", ".join(f"{who} {_fmt(geomean(v), '.3f')}" for who, v in ratios.items())
    lines += ["", f"geometric mean of new/old: {means} (< 1: the new record is faster)"]
    return "\n".join(lines)


def _finite(obj):
    """Replace non-finite floats by ``None`` (JSON has no NaN/Inf)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(result, path):
    with open(path, "w") as f:
        json.dump(_finite(result), f, indent=1, default=str)


def write_png(result, path):
    """Bar chart of the luxlib/torch and luxlib/numpy ratios; returns False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ran = [r for r in result["cases"] if "modes" in r]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.3 * len(ran) + 1.5), sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], ("forward", "forward_backward")):
        for k, other in enumerate(("torch", "numpy")):
            ratios = [r["modes"][mode]["ratio"].get(f"luxlib/{other}") or math.nan for r in ran]
            ax.barh([i + 0.4 * k for i in range(len(ran))], ratios, height=0.4, label=f"luxlib / {other}")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{_MODE_LABEL[mode]} time ratio (< 1: luxlib faster)")
        ax.legend(loc="lower right")
    axes[0][0].set_yticks([i + 0.2 for i in range(len(ran))], [r["name"] for r in ran])
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
