"""What the benchmark scripts share: paths and the repo-root import, the timers
(interleaved rounds, paired ratios, plain repeats), peak resident memory, the
results CSVs, running every backend in its own process, and the charts.

Importing this module puts the checkout's root first on `sys.path`, so that the
scripts time the package of this checkout, not an installed one.
"""

import argparse
import csv
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BACKENDS = ("tensorflow", "jax", "torch")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---- timing ----------------------------------------------------------------------


def time_interleaved(fns, budget_s, min_repeats, max_repeats, warmup=3, samples=None):
    """Median, quartiles and count of wall times (ms) per contender.

    `fns` maps names to zero-argument callables. Each round calls every contender
    once, in an order that rotates every round. `samples`, if given, is a dict
    that receives every contender's list of times (ms), one per round.
    """
    names = list(fns)
    for _ in range(warmup):
        start = time.perf_counter()
        for name in names:
            fns[name]()
        round_s = time.perf_counter() - start
    repeats = int(min(max_repeats, max(min_repeats, budget_s / max(round_s, 1e-9))))
    times = {name: [] for name in names}
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                start = time.perf_counter()
                fns[name]()
                times[name].append((time.perf_counter() - start) * 1e3)
    finally:
        gc.enable()
    if samples is not None:
        samples.update(times)
    stats = {}
    for name, ts in times.items():
        q1, median, q3 = statistics.quantiles(ts, n=4)
        stats[name] = (statistics.median(ts), q1, q3, len(ts))
    return stats


def paired_ratio(samples, name, reference):
    """Median over rounds of `name`'s time / `reference`'s time in that round.

    Both ran back to back in every round, so this cancels the machine's drift
    better than a ratio of the two medians.
    """
    return statistics.median(
        a / b for a, b in zip(samples[name], samples[reference], strict=True)
    )


def repeat_ms(fn, repeats, warmup=1):
    """Wall times (ms) of `repeats` calls of `fn()`, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


# ---- peak resident memory (Linux) ------------------------------------------------


def status_kb(field):
    """A field of `/proc/self/status` (`VmRSS`, `VmHWM`...), in kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak():
    """Reset the process's peak resident memory (`VmHWM`) to its current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_start():
    """Reset the peak; the RSS (kB) that `peak_mb` measures the rise from."""
    reset_peak()
    return status_kb("VmRSS")


def peak_mb(base_kb):
    """How far the peak RSS rose above `base_kb` since `peak_start`, in MB."""
    return (status_kb("VmHWM") - base_kb) / 1024


# ---- results CSVs ----------------------------------------------------------------


def read_csv(path):
    """The rows (dicts) of a results CSV, or `[]` if there is none yet."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def update_csv(path, fields, new_rows, replaced, sort_key=None, lineterminator="\r\n"):
    """Rewrite a results CSV: its rows for which `replaced(row)` is false, then
    `new_rows` (all sorted by `sort_key`, if given)."""
    path = Path(path)
    rows = [r for r in read_csv(path) if not replaced(r)] + list(new_rows)
    if sort_key is not None:
        rows.sort(key=sort_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields, lineterminator=lineterminator)
        writer.writeheader()
        writer.writerows(rows)


def replace_backend_rows(path, fields, rows, backend):
    """Write `rows` to a results CSV, replacing the rows of `backend` only."""
    update_csv(path, fields, rows, lambda r: r["backend"] == backend)


# ---- backends --------------------------------------------------------------------


def backend_version(backend):
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    return __import__(module).__version__


def start_backend():
    """Import Keras quietly, print the versions and CPUs; the backend's name."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    backend = keras.backend.backend()
    print(
        f"Keras {keras.__version__}, backend {backend} {backend_version(backend)}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    return backend


def run_each_backend(script, args):
    """`script args` once per backend, one after the other, each in its own
    process under `.tox/<backend>/bin/python` when that exists (each tox
    environment holds only its own backend), else this interpreter."""
    for backend in BACKENDS:
        python = ROOT / ".tox" / backend / "bin" / "python"
        python = str(python) if python.exists() else sys.executable
        env = dict(os.environ, KERAS_BACKEND=backend)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), str(HERE), *filter(None, [env.get("PYTHONPATH")])]
        )
        print(f"=== {backend}: {python}", flush=True)
        subprocess.run([python, str(script), *map(str, args)], env=env, check=True)


# ---- charts ----------------------------------------------------------------------


def pyplot():
    """`matplotlib.pyplot`, drawing to files only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_chart(fig, png_path, csv_path=None, title=None):
    """Lay out `fig` (under `title`, if given), save and close it; say what was
    written."""
    if title is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    pyplot().close(fig)
    written = [p for p in (csv_path, png_path) if p is not None]
    print("wrote " + " and ".join(_shown(p) for p in written))


def _shown(path):
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def grouped_bars(ax, rows, case, names, height, label, width=None, **annotate):
    """Bars of one `case`: a group per backend (x), a bar per contender in `names`.

    `height(row)` is a bar's height, `label(row)` the text written above it
    (`annotate`: more `ax.annotate` arguments, e.g. `colors` a dict of contender
    colours). Returns the backends, in the order of the groups.
    """
    colors = annotate.pop("colors", {})
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
    width = width or 0.8 / len(names)
    for i, name in enumerate(names):
        found = {
            r["backend"]: r for r in rows if (r["case"], r["contender"]) == (case, name)
        }
        offset = (i - (len(names) - 1) / 2) * width
        xs = [j + offset for j, b in enumerate(backends) if b in found]
        shown = [found[b] for b in backends if b in found]
        if not xs:
            continue
        heights = [height(r) for r in shown]
        bars = ax.bar(xs, heights, width, label=name, color=colors.get(name))
        for bar, value, row in zip(bars, heights, shown, strict=True):
            ax.annotate(
                label(row),
                (bar.get_x() + bar.get_width() / 2, value),
                ha="center",
                va="bottom",
                **annotate,
            )
    ax.set_xticks(range(len(backends)), backends)
    return backends


# ---- the command line of the per-case scripts (bench_core, bench_quant_lora) -----


def case_parser(doc, cases, budget_s):
    """An argument parser with `--all`, `--plot-only`, `--budget` and `--cases`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="every backend, one by one")
    parser.add_argument("--plot-only", action="store_true", help="redraw the chart")
    parser.add_argument(
        "--budget", type=float, default=budget_s, help="seconds of timing per case"
    )
    parser.add_argument("--cases", nargs="+", choices=list(cases), default=list(cases))
    return parser


def run_cases(args, script, run_backend, write_rows, plot):
    """With `--all`, `script` once per backend (each process redraws the chart);
    else time this backend's cases (unless `--plot-only`), save them, redraw."""
    if args.all:
        run_each_backend(script, ["--budget", args.budget, "--cases", *args.cases])
        return
    if not args.plot_only:
        write_rows(run_backend(args.budget, args.cases))
    plot()


# The CSV columns `timing_fields` / `version_fields` fill.
TIMING_FIELDS = ("median_ms", "q1_ms", "q3_ms", "repeats")
VERSION_FIELDS = ("keras_version", "backend_version")


def timing_fields(stats):
    """The CSV fields of one contender's `time_interleaved` statistics."""
    median, q1, q3, repeats = stats
    return {
        "median_ms": f"{median:.3f}",
        "q1_ms": f"{q1:.3f}",
        "q3_ms": f"{q3:.3f}",
        "repeats": repeats,
    }


def version_fields(backend):
    """The CSV fields naming the versions of Keras and of `backend`."""
    import keras

    return {
        "keras_version": keras.__version__,
        "backend_version": backend_version(backend),
    }
