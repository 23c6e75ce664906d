"""Side-by-side timing: `keras_embedding_plus.Embedding` vs `keras.layers.Embedding`
vs the backend's own lookup, in one process per backend.

Cases (the sizes of issue 2):

* ``forward``: vocab 100,000 x 128, ids 1024 x 64 (int32). Both Keras layers run
  through ``model.predict_on_batch`` (compiled on TensorFlow and JAX, eager on torch,
  as Keras defaults); ``native`` is ``tf.gather`` inside ``tf.function`` / jitted
  ``jnp.take`` / ``torch.nn.functional.embedding`` under ``no_grad``. Every contender
  returns a NumPy array made the way ``predict_on_batch`` makes it on that backend
  (``.numpy()`` on TensorFlow, a ``np.array`` copy on JAX and torch), so all of
  them pay the same 33.5 MB output copy.
* ``train_10k`` / ``train_1M``: one Adam step (``model.train_on_batch``) of
  ``Embedding(vocab, 64) -> GlobalAveragePooling1D -> Dense(1)`` on a 256 x 32 batch;
  ours vs Keras (the target is relative to Keras only).

Contenders are interleaved round by round (the order rotates every round) so that
drift of a shared machine hits them alike; warm-up rounds (compilation) are
excluded. Reported: each contender's median time, and each ratio as the median
over rounds of the two contenders' per-round ratio (paired, so drift cancels).
The ratios are what carry over between machines.

Usage::

    KERAS_BACKEND=jax python benchmarks/bench_core.py    # one backend
    python benchmarks/bench_core.py --all                # each backend in a subprocess
    python benchmarks/bench_core.py --plot-only          # redraw the chart from the CSV

With ``--all`` each backend runs under ``.tox/<backend>/bin/python`` when that
exists (each tox environment holds only its own backend), else this interpreter.
Results go to ``benchmarks/results/bench_core.csv`` (a run replaces its backend's
rows) and ``benchmarks/results/bench_core.png``.
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
CSV_PATH = RESULTS / "bench_core.csv"
PNG_PATH = RESULTS / "bench_core.png"
BACKENDS = ("tensorflow", "jax", "torch")
CONTENDERS = ("ours", "keras", "native")
CASES = {
    # name: (label, vocab, output_dim)
    "forward": ("forward, vocab 100k x 128, ids 1024 x 64", 100_000, 128),
    "train_10k": ("Adam train step, vocab 10k x 64, batch 256 x 32", 10_000, 64),
    "train_1M": ("Adam train step, vocab 1M x 64, batch 256 x 32", 1_000_000, 64),
}
# (contender, reference, highest allowed ratio) per case: the targets.
TARGETS = {
    "forward": (("ours", "keras", 1.00), ("ours", "native", 1.10)),
    "train_10k": (("ours", "keras", 1.10),),
    "train_1M": (("ours", "keras", 1.10),),
}
FIELDS = (
    "backend",
    "case",
    "contender",
    "median_ms",
    "q1_ms",
    "q3_ms",
    "repeats",
    "vs_keras",
    "vs_native",
    "keras_version",
    "backend_version",
)


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


def native_lookup(table, backend):
    """A function ids (NumPy) -> rows (NumPy) in the backend's own API.

    The rows become NumPy the way `predict_on_batch` converts them on that
    backend (`.numpy()` on TensorFlow, a `np.array` copy on JAX and torch), so
    the native lookup pays the same output copy as the Keras layers.
    """
    if backend == "tensorflow":
        import tensorflow as tf

        variable = tf.Variable(table)
        gather = tf.function(lambda ids: tf.gather(variable, ids))
        return lambda ids: gather(tf.convert_to_tensor(ids)).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        import numpy as np

        array = jnp.asarray(table)
        take = jax.jit(lambda t, ids: jnp.take(t, ids, axis=0))
        return lambda ids: np.array(take(array, ids))
    if backend == "torch":
        import numpy as np
        import torch

        tensor = torch.from_numpy(table)

        def lookup(ids):
            with torch.no_grad():
                rows = torch.nn.functional.embedding(torch.from_numpy(ids), tensor)
            return np.array(rows.numpy())

        return lookup
    raise ValueError(f"Unknown backend {backend!r}.")


def bench_forward(layer_classes, backend, rng, budget_s, samples):
    import keras

    vocab, dim = CASES["forward"][1:]
    table = rng.standard_normal((vocab, dim), dtype="float32")
    ids = rng.integers(0, vocab, size=(1024, 64), dtype="int32")
    fns = {}
    for name, cls in layer_classes.items():
        layer = cls(vocab, dim)
        model = keras.Sequential([keras.Input((64,), dtype="int32"), layer])
        layer.embeddings.assign(table)
        fns[name] = lambda model=model: model.predict_on_batch(ids)
    native = native_lookup(table, backend)
    fns["native"] = lambda: native(ids)
    reference = fns["keras"]()
    for name, fn in fns.items():
        diff = float(abs(fn() - reference).max())
        assert diff == 0.0, f"{name} disagrees with keras by {diff}"
    return time_interleaved(
        fns, budget_s, min_repeats=15, max_repeats=200, samples=samples
    )


def bench_train(layer_classes, case, rng, budget_s, samples):
    import keras

    vocab, dim = CASES[case][1:]
    table = rng.uniform(-0.05, 0.05, size=(vocab, dim)).astype("float32")
    ids = rng.integers(0, vocab, size=(256, 32), dtype="int32")
    y = rng.standard_normal((256, 1), dtype="float32")
    fns = {}
    for name, cls in layer_classes.items():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((32,), dtype="int32")
        layer = cls(vocab, dim)
        x = keras.layers.GlobalAveragePooling1D()(layer(inputs))
        model = keras.Model(inputs, keras.layers.Dense(1)(x))
        layer.embeddings.assign(table)
        model.compile(keras.optimizers.Adam(1e-3), "mse")
        fns[name] = lambda model=model: model.train_on_batch(ids, y)
    del table
    return time_interleaved(
        fns, budget_s, min_repeats=9, max_repeats=300, samples=samples
    )


def paired_ratio(samples, name, reference):
    """Median over rounds of `name`'s time / `reference`'s time in that round.

    Both ran back to back in every round, so this cancels the machine's drift
    better than a ratio of the two medians.
    """
    return statistics.median(
        a / b for a, b in zip(samples[name], samples[reference], strict=True)
    )


def backend_version(backend):
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    return __import__(module).__version__


def run_backend(budget_s, cases):
    """Time every case on the active backend; return CSV rows."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from keras_embedding_plus import Embedding

    backend = keras.backend.backend()
    layer_classes = {"ours": Embedding, "keras": keras.layers.Embedding}
    print(
        f"Keras {keras.__version__}, backend {backend} {backend_version(backend)}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    rows = []
    for case in cases:
        rng = np.random.default_rng(0)
        samples = {}
        if case == "forward":
            stats = bench_forward(layer_classes, backend, rng, budget_s, samples)
        else:
            stats = bench_train(layer_classes, case, rng, budget_s, samples)
        keras.backend.clear_session()
        gc.collect()
        for name, (median, q1, q3, n) in stats.items():
            rows.append(
                {
                    "backend": backend,
                    "case": case,
                    "contender": name,
                    "median_ms": f"{median:.3f}",
                    "q1_ms": f"{q1:.3f}",
                    "q3_ms": f"{q3:.3f}",
                    "repeats": n,
                    "vs_keras": f"{paired_ratio(samples, name, 'keras'):.3f}",
                    "vs_native": (
                        f"{paired_ratio(samples, name, 'native'):.3f}"
                        if "native" in stats
                        else ""
                    ),
                    "keras_version": keras.__version__,
                    "backend_version": backend_version(backend),
                }
            )
        print_case(case, [r for r in rows if r["case"] == case])
    return rows


def print_case(case, rows):
    print(f"\n{CASES[case][0]}")
    header = ("median ms", "IQR ms", "n", "/keras", "/native")
    print("  (ratios: median over rounds of the per-round ratio)")
    print(f"  {'':8} {{:>10}} {{:>15}} {{:>4}} {{:>7}} {{:>8}}".format(*header))
    by_name = {r["contender"]: r for r in rows}
    for r in rows:
        iqr = f"{float(r['q1_ms']):.2f}-{float(r['q3_ms']):.2f}"
        print(
            f"  {r['contender']:8} {float(r['median_ms']):10.2f} {iqr:>15} "
            f"{r['repeats']:>4} {r['vs_keras']:>7} {r['vs_native'] or '-':>8}"
        )
    for name, reference, limit in TARGETS[case]:
        ratio = float(by_name[name][f"vs_{reference}"])
        verdict = "met" if ratio <= limit else "MISSED"
        print(f"  target {name} <= {limit:.2f}x {reference}: {ratio:.3f}x, {verdict}")
    sys.stdout.flush()


def read_rows():
    if not CSV_PATH.exists():
        return []
    with CSV_PATH.open(newline="") as f:
        return list(csv.DictReader(f))


def write_rows(new_rows):
    """Replace the rows of the backends in `new_rows`, keep the others."""
    replaced = {(r["backend"], r["case"]) for r in new_rows}
    rows = [r for r in read_rows() if (r["backend"], r["case"]) not in replaced]
    rows += new_rows
    order = {b: i for i, b in enumerate(BACKENDS)}
    rows.sort(
        key=lambda r: (
            order.get(r["backend"], 9),
            list(CASES).index(r["case"]),
            CONTENDERS.index(r["contender"]),
        )
    )
    RESULTS.mkdir(exist_ok=True)
    with CSV_PATH.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _ms(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def plot():
    """Grouped bars: one panel per case, backends on x, one bar per contender.

    Bar height: time relative to `keras.layers.Embedding` in the same process
    (the paired ratio), so that panels with 2 ms and 2 s steps read alike; each
    bar is labelled with its median in ms. Dashed lines: the targets.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows()
    if not rows:
        return
    colors = {"ours": "#d95f02", "keras": "#7570b3", "native": "#1b9e77"}
    fig, axes = plt.subplots(1, len(CASES), figsize=(16, 5), sharey=True)
    for ax, (case, (label, _, _)) in zip(axes, CASES.items(), strict=True):
        backends = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
        width = 0.27
        for i, name in enumerate(CONTENDERS):
            found = {
                r["backend"]: r
                for r in rows
                if (r["case"], r["contender"]) == (case, name)
            }
            xs = [j + (i - 1) * width for j, b in enumerate(backends) if b in found]
            cases = [found[b] for b in backends if b in found]
            if not xs:
                continue
            ratios = [float(r["vs_keras"]) for r in cases]
            bars = ax.bar(xs, ratios, width, label=name, color=colors[name])
            for bar, ratio, row in zip(bars, ratios, cases, strict=True):
                ax.annotate(
                    f"{ratio:.2f}x\n{_ms(float(row['median_ms']))} ms",
                    (bar.get_x() + bar.get_width() / 2, ratio),
                    ha="center",
                    va="bottom",
                    fontsize=6.5,
                )
        for _, reference, limit in TARGETS[case]:
            if reference == "keras":
                ax.axhline(limit, color="gray", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(backends)), backends)
        ax.set_title(label, fontsize=9)
        ax.set_ylim(0, 1.45)
    axes[0].set_ylabel("time relative to keras.layers.Embedding (lower is better)")
    axes[0].legend(loc="upper left", fontsize=8, ncols=3)
    fig.suptitle(
        "keras_embedding_plus.Embedding (ours) vs keras.layers.Embedding vs the "
        "native lookup, one process per backend; dashed: target vs Keras",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(PNG_PATH, dpi=110)
    plt.close(fig)
    print(f"wrote {CSV_PATH.relative_to(ROOT)} and {PNG_PATH.relative_to(ROOT)}")


def markdown_table():
    """The CSV as a Markdown table (what README.md shows)."""
    rows = read_rows()
    lines = [
        "| backend | case | ours ms | keras ms | native ms | ours / keras "
        "| ours / native |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for backend in BACKENDS:
        for case in CASES:
            found = {
                r["contender"]: r
                for r in rows
                if (r["backend"], r["case"]) == (backend, case)
            }
            if not found:
                continue
            cells = [backend, case]
            for name in CONTENDERS:
                row = found.get(name)
                cells.append(f"{float(row['median_ms']):.1f}" if row else "-")
            cells += [found["ours"]["vs_keras"], found["ours"]["vs_native"] or "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_all(args):
    """Each backend in its own subprocess, one after the other."""
    for backend in BACKENDS:
        python = ROOT / ".tox" / backend / "bin" / "python"
        python = str(python) if python.exists() else sys.executable
        env = dict(os.environ, KERAS_BACKEND=backend)
        command = [
            python,
            __file__,
            "--budget",
            str(args.budget),
            "--cases",
            *args.cases,
        ]
        print(f"=== {backend}: {python}", flush=True)
        subprocess.run(command, env=env, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="every backend, one by one")
    parser.add_argument("--plot-only", action="store_true", help="redraw the chart")
    parser.add_argument(
        "--markdown", action="store_true", help="print the CSV as a Markdown table"
    )
    parser.add_argument(
        "--budget", type=float, default=30.0, help="seconds of timing per case"
    )
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    args = parser.parse_args()
    if args.markdown:
        print(markdown_table())
        return
    if args.all:
        run_all(args)  # each backend's process redrew the chart
        return
    if not args.plot_only:
        write_rows(run_backend(args.budget, args.cases))
    plot()


if __name__ == "__main__":
    main()
