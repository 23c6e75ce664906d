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
* ``forward_1M``: the same at vocab 1,000,000 x 64, ids 4096 x 50: a table past
  the size (2**25 elements) from which ours is built by row blocks.
* ``train_10k`` / ``train_1M``: one Adam step (``model.train_on_batch``) of
  ``Embedding(vocab, 64) -> GlobalAveragePooling1D -> Dense(1)`` on a 256 x 32 batch;
  ours vs Keras (the target is relative to Keras only).

Contenders are interleaved round by round (the order rotates every round) so that
drift of a shared machine hits them alike; warm-up rounds (compilation) are
excluded (``_bench.time_interleaved``). Reported: each contender's median time,
and each ratio as the median over rounds of the two contenders' per-round ratio
(paired, so drift cancels). The ratios are what carry over between machines.

Usage::

    KERAS_BACKEND=jax python benchmarks/bench_core.py    # one backend
    python benchmarks/bench_core.py --all                # each backend in a subprocess
    python benchmarks/bench_core.py --plot-only          # redraw the chart from the CSV

With ``--all`` each backend runs under ``.tox/<backend>/bin/python`` when that
exists (each tox environment holds only its own backend), else this interpreter.
Results go to ``benchmarks/results/bench_core.csv`` (a run replaces its backend's
rows) and ``benchmarks/results/bench_core.png``.
"""

import gc
import sys

import _bench as bench

CSV_PATH = bench.RESULTS / "bench_core.csv"
PNG_PATH = bench.RESULTS / "bench_core.png"
CONTENDERS = ("ours", "keras", "native")
CASES = {
    # name: (label, vocab, output_dim)
    "forward": ("forward, vocab 100k x 128, ids 1024 x 64", 100_000, 128),
    "forward_1M": ("forward, vocab 1M x 64, ids 4096 x 50", 1_000_000, 64),
    "train_10k": ("Adam train step, vocab 10k x 64, batch 256 x 32", 10_000, 64),
    "train_1M": ("Adam train step, vocab 1M x 64, batch 256 x 32", 1_000_000, 64),
}
# The ids of the forward cases.
IDS_SHAPES = {"forward": (1024, 64), "forward_1M": (4096, 50)}
# (contender, reference, highest allowed ratio) per case: the targets.
TARGETS = {
    "forward": (("ours", "keras", 1.00), ("ours", "native", 1.10)),
    "forward_1M": (("ours", "keras", 1.05), ("ours", "native", 1.10)),
    "train_10k": (("ours", "keras", 1.10),),
    "train_1M": (("ours", "keras", 1.10),),
}
FIELDS = (
    "backend",
    "case",
    "contender",
    *bench.TIMING_FIELDS,
    "vs_keras",
    "vs_native",
    *bench.VERSION_FIELDS,
)


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


def bench_forward(layer_classes, case, backend, rng, budget_s, samples):
    import keras

    vocab, dim = CASES[case][1:]
    table = rng.standard_normal((vocab, dim), dtype="float32")
    ids = rng.integers(0, vocab, size=IDS_SHAPES[case], dtype="int32")
    fns = {}
    for name, cls in layer_classes.items():
        layer = cls(vocab, dim)
        model = keras.Sequential([keras.Input(ids.shape[1:], dtype="int32"), layer])
        layer.embeddings.assign(table)
        fns[name] = lambda model=model: model.predict_on_batch(ids)
    native = native_lookup(table, backend)
    fns["native"] = lambda: native(ids)
    reference = fns["keras"]()
    for name, fn in fns.items():
        diff = float(abs(fn() - reference).max())
        assert diff == 0.0, f"{name} disagrees with keras by {diff}"
    return bench.time_interleaved(
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
    return bench.time_interleaved(
        fns, budget_s, min_repeats=9, max_repeats=300, samples=samples
    )


def run_backend(budget_s, cases):
    """Time every case on the active backend; return CSV rows."""
    backend = bench.start_backend()
    import keras
    import numpy as np

    from keras_embedding_plus import Embedding

    layer_classes = {"ours": Embedding, "keras": keras.layers.Embedding}
    rows = []
    for case in cases:
        rng = np.random.default_rng(0)
        samples = {}
        if case in IDS_SHAPES:
            stats = bench_forward(layer_classes, case, backend, rng, budget_s, samples)
        else:
            stats = bench_train(layer_classes, case, rng, budget_s, samples)
        keras.backend.clear_session()
        gc.collect()
        for name in stats:
            rows.append(
                {
                    "backend": backend,
                    "case": case,
                    "contender": name,
                    **bench.timing_fields(stats[name]),
                    "vs_keras": f"{bench.paired_ratio(samples, name, 'keras'):.3f}",
                    "vs_native": (
                        f"{bench.paired_ratio(samples, name, 'native'):.3f}"
                        if "native" in stats
                        else ""
                    ),
                    **bench.version_fields(backend),
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


def write_rows(new_rows):
    """Replace the rows of the (backend, case) pairs in `new_rows`, keep the
    others."""
    replaced = {(r["backend"], r["case"]) for r in new_rows}
    order = {b: i for i, b in enumerate(bench.BACKENDS)}
    bench.update_csv(
        CSV_PATH,
        FIELDS,
        new_rows,
        lambda r: (r["backend"], r["case"]) in replaced,
        sort_key=lambda r: (
            order.get(r["backend"], 9),
            list(CASES).index(r["case"]),
            CONTENDERS.index(r["contender"]),
        ),
        lineterminator="\n",
    )


def _ms(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def plot():
    """Grouped bars: one panel per case, backends on x, one bar per contender.

    Bar height: time relative to `keras.layers.Embedding` in the same process
    (the paired ratio), so that panels with 2 ms and 2 s steps read alike; each
    bar is labelled with its median in ms. Dashed lines: the targets.
    """
    plt = bench.pyplot()
    rows = bench.read_csv(CSV_PATH)
    if not rows:
        return
    colors = {"ours": "#d95f02", "keras": "#7570b3", "native": "#1b9e77"}
    fig, axes = plt.subplots(1, len(CASES), figsize=(20, 5), sharey=True)
    for ax, (case, (label, _, _)) in zip(axes, CASES.items(), strict=True):
        bench.grouped_bars(
            ax,
            rows,
            case,
            CONTENDERS,
            height=lambda r: float(r["vs_keras"]),
            label=lambda r: (
                f"{float(r['vs_keras']):.2f}x\n{_ms(float(r['median_ms']))} ms"
            ),
            width=0.27,
            colors=colors,
            fontsize=6.5,
        )
        for _, reference, limit in TARGETS[case]:
            if reference == "keras":
                ax.axhline(limit, color="gray", linestyle="--", linewidth=0.8)
        ax.set_title(label, fontsize=9)
        ax.set_ylim(0, 1.45)
    axes[0].set_ylabel("time relative to keras.layers.Embedding (lower is better)")
    axes[0].legend(loc="upper left", fontsize=8, ncols=3)
    title = (
        "keras_embedding_plus.Embedding (ours) vs keras.layers.Embedding vs the "
        "native lookup, one process per backend; dashed: target vs Keras"
    )
    bench.save_chart(fig, PNG_PATH, CSV_PATH, title)


def markdown_table():
    """The CSV as a Markdown table (what README.md shows)."""
    rows = bench.read_csv(CSV_PATH)
    lines = [
        "| backend | case | ours ms | keras ms | native ms | ours / keras "
        "| ours / native |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for backend in bench.BACKENDS:
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


def main():
    parser = bench.case_parser(__doc__, CASES, budget_s=30.0)
    parser.add_argument(
        "--markdown", action="store_true", help="print the CSV as a Markdown table"
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown_table())
        return
    bench.run_cases(args, __file__, run_backend, write_rows, plot)


if __name__ == "__main__":
    main()
