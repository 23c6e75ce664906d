"""The roofline: achieved GB/s of our lookups as a fraction of this machine's
copy bandwidth, measured in the same run, beside NumPy's `np.take` and the
backend's own compiled gather. One process per backend.

Sizes (issue's): table 1,000,000 x 64 float32, ids 4,096 x 50 drawn uniformly
(n = 204,800 ids, u of them distinct). Cases, each timed with its references
interleaved round by round (`_bench.time_interleaved`):

* ``forward``: `Embedding(1_000_000, 64)` called on the ids (TensorFlow:
  `tf.function`; JAX: `jax.jit` of `stateless_call`; torch: eager under
  `no_grad`, as Keras runs torch), beside the backend's own gather: ``native``
  (`tf.gather` in `tf.function(jit_compile=False)`, jitted `jnp.take`,
  `torch.nn.functional.embedding`) and one variant each, what else the
  backend's public API offers: ``native_xla`` (`tf.gather` with
  `jit_compile=True`), ``native_clip`` (`jnp.take(mode="clip")`: no masking of
  out-of-range ids), ``native_index_select`` (`torch.index_select` of the
  flat ids).
* ``fwd_bwd``: forward, then the gradient of the outputs' sum w.r.t. the
  table. Ours with `sparse=True` (TensorFlow and torch: a row gradient,
  `IndexedSlices` / a sparse COO tensor; JAX: outside `SparseTrainer` a
  gradient is dense, as `jax.grad` of `jnp.take` is). ``native``: the same
  over the backend's gather (torch: `F.embedding(sparse=True)`).
* ``step``: one `train_on_batch` of `Embedding(sparse=True) ->
  GlobalAveragePooling1D -> Dense(1)`, MSE, `LazyAdagrad` (the model a
  `SparseTrainer`, which only JAX needs). torch also has ``native``: the same
  model in plain torch, `F.embedding(sparse=True)` and `torch.optim.Adagrad`
  (which takes sparse gradients).
* ``pooled``: `EmbeddingBag(1_000_000, 64, combiner="sum")` on the ids;
  ``native``: the gather summed over the bag in one compiled function
  (torch: `F.embedding_bag(mode="sum")`).

References, in every case: ``copy`` (`np.copyto` of a 256 MB float32 array)
and ``np_take`` (`np.take(table, ids, axis=0)`, its output allocated by the
call, as every contender's is). No contender converts its output to NumPy.

Bytes moved (the model the GB/s are computed with; D = 64, 4 bytes a float):

* copy: the array read + written, 2 x 256 MB.
* gather (``forward``, ``np_take``): rows read + output written, 2 * n * D * 4
  (105 MB).
* ``fwd_bwd``: the gather, + the output's gradient read + the row gradients
  written: 4 * n * D * 4. A dense gradient (JAX) writes a whole table more,
  which this model does not count: it shows as a lower GB/s.
* ``step``: ``fwd_bwd``'s bytes + the table's and the accumulator's touched
  rows read and written: (4 * n + 4 * u) * D * 4 (the head's and the pooled
  tensor's bytes are not counted).
* ``pooled``: rows read + the pooled output written, (n + 4,096) * D * 4.

Reported: the median time, GB/s = bytes / median time, ``frac_copy`` (GB/s
over the copy's GB/s) and ``vs_np_take`` (GB/s over `np.take`'s), both from
the per-round paired time ratio (`_bench.paired_ratio`) times the bytes
ratio. Target (forward of one `Embedding`): ``vs_np_take`` >= 0.8 on every
backend. Every backend runs on one intra-op thread by default (`--threads`),
as NumPy does.

Usage::

    KERAS_BACKEND=jax python benchmarks/bench_roofline.py    # one backend
    python benchmarks/bench_roofline.py --all                # each in a subprocess
    python benchmarks/bench_roofline.py --plot-only          # redraw the chart
    python benchmarks/bench_roofline.py --markdown           # the docs' table
    KERAS_BACKEND=torch python benchmarks/bench_roofline.py --quick  # smoke test

Results: ``benchmarks/results/bench_roofline.csv`` (a run replaces its
backend's rows) and ``bench_roofline.png``. ``--quick`` shrinks the sizes and
the timing to a smoke test and writes neither (its chart goes to a new temporary
folder).
"""

import gc
import os
import sys
import tempfile
import warnings
from pathlib import Path

import _bench as bench
from bench_bag import set_threads

CSV_PATH = bench.RESULTS / "bench_roofline.csv"
PNG_PATH = bench.RESULTS / "bench_roofline.png"
CASES = {
    "forward": "forward: Embedding(1M, 64), ids 4096 x 50",
    "fwd_bwd": "forward + backward (sum of outputs)",
    "step": "LazyAdagrad train_on_batch, sparse=True",
    "pooled": 'EmbeddingBag(combiner="sum") forward',
}
REFERENCES = ("copy", "np_take")
# The backend's own variants of the gather, tried in the forward case.
VARIANTS = {
    "tensorflow": "native_xla",
    "jax": "native_clip",
    "torch": "native_index_select",
}
TARGET = 0.8  # forward: ours >= 0.8x np.take's GB/s
FIELDS = (
    "backend",
    "case",
    "contender",
    *bench.TIMING_FIELDS,
    "bytes_mb",
    "gb_s",
    "frac_copy",
    "vs_np_take",
    *bench.VERSION_FIELDS,
)
FULL = {"rows": 1_000_000, "ids": (4096, 50), "copy": 1 << 26, "repeats": (9, 300)}
QUICK = {"rows": 50_000, "ids": (256, 50), "copy": 1 << 20, "repeats": (3, 10)}
DIM = 64
FLOAT = 4


def sync(x):
    """Wait for `x`, an array or a list of arrays (JAX dispatches
    asynchronously)."""
    for array in x if isinstance(x, (list, tuple)) else [x]:
        if hasattr(array, "block_until_ready"):
            array.block_until_ready()
    return x


# ---- the contenders, per backend ---------------------------------------------


def native_fns(backend, table, ids):
    """The backend's own `{case: {name: fn}}` over a copy of `table`."""
    if backend == "tensorflow":
        return _native_tensorflow(table, ids)
    if backend == "jax":
        return _native_jax(table, ids)
    return _native_torch(table, ids)


def _native_tensorflow(table, ids):
    import tensorflow as tf

    variable = tf.Variable(table)
    tf_ids = tf.convert_to_tensor(ids)
    gather = tf.function(lambda i: tf.gather(variable, i), jit_compile=False)
    gather_xla = tf.function(lambda i: tf.gather(variable, i), jit_compile=True)

    @tf.function(jit_compile=False)
    def fwd_bwd(i):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(variable, i))
        return tape.gradient(loss, variable)

    pooled = tf.function(lambda i: tf.reduce_sum(tf.gather(variable, i), axis=1))
    return {
        "forward": {
            "native": lambda: gather(tf_ids),
            "native_xla": lambda: gather_xla(tf_ids),
        },
        "fwd_bwd": {"native": lambda: fwd_bwd(tf_ids)},
        "pooled": {"native": lambda: pooled(tf_ids)},
    }


def _native_jax(table, ids):
    import jax
    import jax.numpy as jnp

    array = jnp.asarray(table)
    jax_ids = jnp.asarray(ids)
    take = jax.jit(lambda t, i: jnp.take(t, i, axis=0))
    take_clip = jax.jit(lambda t, i: jnp.take(t, i, axis=0, mode="clip"))
    grad = jax.jit(jax.grad(lambda t, i: jnp.sum(jnp.take(t, i, axis=0))))
    pooled = jax.jit(lambda t, i: jnp.sum(jnp.take(t, i, axis=0), axis=1))
    return {
        "forward": {
            "native": lambda: sync(take(array, jax_ids)),
            "native_clip": lambda: sync(take_clip(array, jax_ids)),
        },
        "fwd_bwd": {"native": lambda: sync(grad(array, jax_ids))},
        "pooled": {"native": lambda: sync(pooled(array, jax_ids))},
    }


def _native_torch(table, ids):
    import torch
    import torch.nn.functional as F

    weight = torch.nn.Parameter(torch.from_numpy(table.copy()))
    torch_ids = torch.from_numpy(ids.astype("int64"))
    flat = torch_ids.reshape(-1)

    def forward():
        with torch.no_grad():
            return F.embedding(torch_ids, weight)

    def index_select():
        with torch.no_grad():
            return torch.index_select(weight, 0, flat).view(*ids.shape, DIM)

    def fwd_bwd():
        weight.grad = None
        F.embedding(torch_ids, weight, sparse=True).sum().backward()
        return weight.grad

    def pooled():
        with torch.no_grad():
            return F.embedding_bag(torch_ids, weight, mode="sum")

    # The step: the model of ours in plain torch (Keras's Adagrad defaults).
    head = torch.nn.Linear(DIM, 1)
    optimizers = [
        torch.optim.Adagrad([p], lr=1e-3, initial_accumulator_value=0.1, eps=1e-7)
        for p in (weight, *head.parameters())
    ]
    y = torch.zeros(ids.shape[0], 1)

    # torch.optim.Adagrad rebuilds the sparse update and warns about checks.
    warnings.filterwarnings("ignore", message="Sparse invariant checks")

    def step():
        vectors = F.embedding(torch_ids, weight, sparse=True).mean(dim=1)
        loss = F.mse_loss(head(vectors), y)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        return loss.detach()

    return {
        "forward": {"native": forward, "native_index_select": index_select},
        "fwd_bwd": {"native": fwd_bwd},
        "step": {"native": step},
        "pooled": {"native": pooled},
    }


def ours_fns(backend, table, ids):
    """Our `{case: {"ours": fn}}`, each layer's table a copy of `table`."""
    import keras
    import numpy as np

    from keras_embedding_plus import Embedding, EmbeddingBag
    from keras_embedding_plus.optimizers import LazyAdagrad
    from keras_embedding_plus.training import SparseTrainer

    rows = table.shape[0]
    x = keras.ops.convert_to_tensor(ids)

    def built(layer):
        layer.build(ids.shape)
        layer.embeddings.assign(table)
        return layer

    forward = compiled_forward(backend, built(Embedding(rows, DIM)))
    pooled = compiled_forward(backend, built(EmbeddingBag(rows, DIM, combiner="sum")))
    fwd_bwd = compiled_fwd_bwd(backend, built(Embedding(rows, DIM, sparse=True)))

    class Model(SparseTrainer, keras.Model):
        pass

    inputs = keras.Input(ids.shape[1:], dtype="int32")
    layer = Embedding(rows, DIM, sparse=True)
    pooled_rows = keras.layers.GlobalAveragePooling1D()(layer(inputs))
    model = Model(inputs, keras.layers.Dense(1)(pooled_rows))
    layer.embeddings.assign(table)
    model.compile(LazyAdagrad(1e-3), "mse")
    y = np.zeros((ids.shape[0], 1), "float32")
    return {
        "forward": {"ours": lambda: forward(x)},
        "fwd_bwd": {"ours": lambda: fwd_bwd(x)},
        "step": {"ours": lambda: model.train_on_batch(ids, y)},
        "pooled": {"ours": lambda: pooled(x)},
    }


def compiled_forward(backend, layer):
    """`f(ids)`: the layer's forward, compiled the way Keras compiles it."""
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda i: layer(i))
    if backend == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        frozen = [v.value for v in layer.non_trainable_variables]
        call = jax.jit(lambda t, n, i: layer.stateless_call(t, n, i)[0])
        return lambda i: sync(call(trainable, frozen, i))
    import torch

    def forward(i):
        with torch.no_grad():
            return layer(i)

    return forward


def compiled_fwd_bwd(backend, layer):
    """`f(ids)`: the gradients of `sum(layer(ids))` w.r.t. the layer's
    trainable variables."""
    import keras

    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def fwd_bwd(i):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(i))
            return tape.gradient(loss, layer.trainable_variables)

        return fwd_bwd
    if backend == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        frozen = [v.value for v in layer.non_trainable_variables]

        def loss(t, n, i):
            return keras.ops.sum(layer.stateless_call(t, n, i)[0])

        grad = jax.jit(jax.grad(loss))
        return lambda i: sync(grad(trainable, frozen, i))
    parameters = [v.value for v in layer.trainable_variables]

    def fwd_bwd(i):
        for p in parameters:
            p.grad = None
        keras.ops.sum(layer(i)).backward()
        return [p.grad for p in parameters]

    return fwd_bwd


# ---- timing ----------------------------------------------------------------------


def run_backend(budget_s, cases, sizes):
    """Time every case on the active backend; return CSV rows."""
    backend = bench.start_backend()
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    table = rng.standard_normal((sizes["rows"], DIM), dtype="float32")
    ids = rng.integers(0, sizes["rows"], size=sizes["ids"], dtype="int32")
    source = rng.standard_normal(sizes["copy"], dtype="float32")
    target = np.empty_like(source)
    n, u = ids.size, np.unique(ids).size
    gather = 2 * n * DIM * FLOAT
    bytes_moved = {
        "copy": 2 * source.nbytes,
        "np_take": gather,
        "forward": gather,
        "fwd_bwd": 2 * gather,
        "step": (4 * n + 4 * u) * DIM * FLOAT,
        "pooled": (n + ids.shape[0]) * DIM * FLOAT,
    }
    references = {
        "copy": lambda: np.copyto(target, source),
        "np_take": lambda: np.take(table, ids, axis=0),
    }
    native = native_fns(backend, table, ids)
    ours = ours_fns(backend, table, ids)
    check(ours, native, table, ids)
    print(f"  n = {n:,} ids, u = {u:,} distinct, copy of {source.nbytes / 1e6:.0f} MB")
    rows = []
    for case in cases:
        fns = {**references, **native.get(case, {}), **ours[case]}
        samples = {}
        stats = bench.time_interleaved(
            fns, budget_s, *sizes["repeats"], samples=samples
        )
        moved = {n: bytes_moved[n if n in references else case] for n in fns}
        for name in fns:
            rows.append(
                {
                    "backend": backend,
                    "case": case,
                    "contender": name,
                    **bench.timing_fields(stats[name]),
                    "bytes_mb": f"{moved[name] / 1e6:.1f}",
                    "gb_s": f"{moved[name] / stats[name][0] / 1e6:.2f}",
                    "frac_copy": f"{gb_s_ratio(samples, moved, name, 'copy'):.3f}",
                    "vs_np_take": (
                        f"{gb_s_ratio(samples, moved, name, 'np_take'):.3f}"
                    ),
                    **bench.version_fields(backend),
                }
            )
        print_case(case, [r for r in rows if r["case"] == case])
    del native, ours
    keras.backend.clear_session()
    gc.collect()
    return rows


def gb_s_ratio(samples, moved, name, reference):
    """`name`'s GB/s over `reference`'s: their bytes ratio (`moved`: bytes by
    contender) over the median of the rounds' time ratios."""
    return moved[name] / moved[reference] / bench.paired_ratio(samples, name, reference)


def check(ours, native, table, ids):
    """Ours and the native forward and pooled lookups give `np.take`'s values."""
    import keras
    import numpy as np

    expected = np.take(table, ids, axis=0)
    for case, reference in (("forward", expected), ("pooled", expected.sum(axis=1))):
        for name, fn in {**native.get(case, {}), **ours[case]}.items():
            got = keras.ops.convert_to_numpy(fn())
            np.testing.assert_allclose(
                got, reference, rtol=1e-5, atol=1e-4, err_msg=f"{case} {name}"
            )


def print_case(case, rows):
    print(f"\n{CASES[case]}")
    print(
        f"  {'':20} {'median ms':>10} {'n':>4} {'MB':>7} {'GB/s':>7} "
        f"{'/copy':>6} {'/np.take':>8}"
    )
    for r in rows:
        print(
            f"  {r['contender']:20} {float(r['median_ms']):10.2f} {r['repeats']:>4} "
            f"{r['bytes_mb']:>7} {r['gb_s']:>7} {r['frac_copy']:>6} "
            f"{r['vs_np_take']:>8}"
        )
    if case == "forward":
        ratio = float(next(r for r in rows if r["contender"] == "ours")["vs_np_take"])
        verdict = "met" if ratio >= TARGET else "MISSED"
        print(f"  target ours >= {TARGET:.1f}x np.take's GB/s: {ratio:.3f}x, {verdict}")
    sys.stdout.flush()


# ---- results -------------------------------------------------------------------


def write_rows(new_rows):
    """Replace the rows of the (backend, case) pairs in `new_rows`."""
    replaced = {(r["backend"], r["case"]) for r in new_rows}
    order = {b: i for i, b in enumerate(bench.BACKENDS)}
    bench.update_csv(
        CSV_PATH,
        FIELDS,
        new_rows,
        lambda r: (r["backend"], r["case"]) in replaced,
        sort_key=lambda r: (order.get(r["backend"], 9), list(CASES).index(r["case"])),
        lineterminator="\n",
    )


def plot(rows, png_path, csv_path=None):
    """One panel per case, backends on x: GB/s of ours, the native gather and
    its variant (bars), of the copy (dashed) and `np.take` (dotted) measured in
    the same rounds (lines over each backend's group)."""
    if not rows:
        return
    plt = bench.pyplot()
    # Each backend's variant of its gather shares one bar slot.
    variant = "native variant (" + " / ".join(VARIANTS.values()) + ")"
    rows = [
        {**r, "contender": variant} if r["contender"] in VARIANTS.values() else r
        for r in rows
    ]
    names = [
        n for n in ("native", variant, "ours") if n in {r["contender"] for r in rows}
    ]
    colors = {"ours": "#d95f02", "native": "#1b9e77", variant: "#66c2a5"}
    fig, axes = plt.subplots(1, len(CASES), figsize=(20, 5), sharey=True)
    for ax, (case, label) in zip(axes, CASES.items(), strict=True):
        backends = bench.grouped_bars(
            ax,
            rows,
            case,
            names,
            height=lambda r: float(r["gb_s"]),
            label=lambda r: f"{float(r['gb_s']):.1f}",
            width=0.2,
            colors=colors,
            fontsize=7,
        )
        for j, backend in enumerate(backends):
            for name, style in (("copy", "--"), ("np_take", ":")):
                found = [
                    r
                    for r in rows
                    if (r["backend"], r["case"], r["contender"])
                    == (backend, case, name)
                ]
                if found:
                    ax.hlines(
                        float(found[0]["gb_s"]),
                        j - 0.45,
                        j + 0.45,
                        colors="gray",
                        linestyles=style,
                        label=name if j == 0 else None,
                    )
        ax.set_title(label, fontsize=9)
    axes[0].set_ylabel("GB/s (bytes moved model: see bench_roofline.py)")
    legend = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    axes[0].legend(legend.values(), legend.keys(), loc="upper right", fontsize=7)
    title = (
        "Roofline: GB/s of ours and the backend's own gather; dashed: np.copyto, "
        "dotted: np.take, in the same rounds; one thread, one process per backend"
    )
    bench.save_chart(fig, png_path, csv_path, title)


def markdown_table():
    """The CSV as the docs' Markdown table."""
    rows = bench.read_csv(CSV_PATH)
    lines = [
        "| backend | case | ours GB/s | native GB/s | np.take GB/s | copy GB/s "
        "| ours / copy | ours / np.take |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in bench.BACKENDS:
        for case in CASES:
            found = {
                r["contender"]: r
                for r in rows
                if (r["backend"], r["case"]) == (backend, case)
            }
            if "ours" not in found:
                continue
            cells = [backend, case]
            for name in ("ours", "native", "np_take", "copy"):
                cells.append(found[name]["gb_s"] if name in found else "-")
            cells += [found["ours"]["frac_copy"], found["ours"]["vs_np_take"]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = bench.case_parser(__doc__, CASES, budget_s=10.0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads per backend (default 1, as NumPy; 0: the "
        "backend's default)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: small sizes, short timing, no CSV",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the CSV as a Markdown table"
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown_table())
        return
    if args.all:
        extra = ["--threads", args.threads, *(["--quick"] if args.quick else [])]
        bench.run_each_backend(
            __file__, ["--budget", args.budget, "--cases", *args.cases, *extra]
        )
        return
    if args.plot_only:
        plot(bench.read_csv(CSV_PATH), PNG_PATH, CSV_PATH)
        return
    set_threads(args.threads)
    if args.quick:
        rows = run_backend(min(args.budget, 0.5), args.cases, QUICK)
        plot(rows, Path(tempfile.mkdtemp()) / "bench_roofline.png")
        print("--quick: nothing written to benchmarks/results/")
        return
    write_rows(run_backend(args.budget, args.cases, FULL))
    plot(bench.read_csv(CSV_PATH), PNG_PATH, CSV_PATH)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
