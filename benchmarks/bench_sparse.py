"""Training-step time and memory against vocabulary size (issue 7).

Model: ``Embedding(vocab, 64) -> GlobalAveragePooling1D -> Dense(1)``, MSE, one
``model.train_on_batch`` on a 256 x 32 batch of int32 ids, vocab 10k, 1M and 5M.

Variants:

* ``keras``: ``keras.layers.Embedding`` with Keras's ``SGD`` / ``Adagrad`` / ``Adam``
  (Keras's defaults: compiled on TensorFlow and JAX, eager on torch).
* ``keras_xla`` (TensorFlow only): the same with ``jit_compile=True``.
* ``ours_lazy``: ``Embedding(sparse=True)`` with ``LazySGD`` / ``LazyAdagrad`` /
  ``LazyAdam`` (on JAX in a ``SparseTrainer`` model).
* ``ours_keras_sgd`` (TensorFlow, torch): ``Embedding(sparse=True)`` with Keras's
  own ``SGD``.

The vocab sizes of one variant are timed interleaved, round by round, so that the
drift of a shared machine hits them alike. Reported per case: the median step
time, the median over rounds of its ratio to the same variant's 10k step, and
``step_peak_mb``: how far the process's resident memory rises above its
level before a timed step, the highest over the rounds (Linux ``VmHWM`` after
resetting it through ``/proc/self/clear_refs``): a dense ``(vocab, 64)``
gradient would show as ``vocab x 256`` bytes (256 MB at 1M). ``state_mb`` is
the table plus optimizer slots, allocated before that baseline.

Usage::

    KERAS_BACKEND=torch python benchmarks/bench_sparse.py   # one backend
    python benchmarks/bench_sparse.py --plot-only           # chart from the CSV

Run the backends one after the other (a 5M x 64 Adam state is 3.8 GB). Each run
replaces its backend's rows of ``benchmarks/results/bench_sparse.csv`` and redraws
``benchmarks/results/bench_sparse.png``.
"""

import argparse
import gc
import os
import statistics
import time

from _bench import (
    RESULTS,
    peak_mb,
    pyplot,
    read_csv,
    replace_backend_rows,
    reset_peak,
    save_chart,
    status_kb,
)

CSV_PATH = RESULTS / "bench_sparse.csv"
PNG_PATH = RESULTS / "bench_sparse.png"
VOCABS = (10_000, 1_000_000, 5_000_000)
OPTIMIZERS = ("SGD", "Adagrad", "Adam")
DIM, BATCH, LENGTH = 64, 256, 32
FIELDS = (
    "backend",
    "variant",
    "optimizer",
    "vocab",
    "step_ms",
    "ratio_vs_10k",
    "step_peak_mb",
    "state_mb",
)


def variants(backend):
    names = ["keras"]
    if backend == "tensorflow":
        names.append("keras_xla")
    names.append("ours_lazy")
    if backend != "jax":
        names.append("ours_keras_sgd")
    return names


def make_model(variant, optimizer, vocab):
    import keras

    from keras_embedding_plus import Embedding, optimizers
    from keras_embedding_plus.training import SparseTrainer

    class Model(SparseTrainer, keras.Model):
        pass

    ours = variant.startswith("ours")
    inputs = keras.Input((LENGTH,), dtype="int32")
    if ours:
        x = Embedding(vocab, DIM, sparse=True)(inputs)
    else:
        x = keras.layers.Embedding(vocab, DIM)(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(1)(x)
    model = (Model if ours else keras.Model)(inputs, outputs)
    if variant == "ours_lazy":
        opt = getattr(optimizers, "Lazy" + optimizer)()
    else:
        opt = getattr(keras.optimizers, optimizer)()
    jit_compile = True if variant == "keras_xla" else "auto"
    model.compile(optimizer=opt, loss="mse", jit_compile=jit_compile)
    return model


def run_series(variant, optimizer, vocabs, rounds):
    """Step times of one variant at every vocab, interleaved round by round."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    cases = []
    for vocab in vocabs:
        keras.utils.set_random_seed(0)
        model = make_model(variant, optimizer, vocab)
        x = rng.integers(0, vocab, size=(BATCH, LENGTH)).astype("int32")
        y = rng.normal(size=(BATCH, 1)).astype("float32")
        model.train_on_batch(x, y)  # builds the optimizer, compiles
        model.train_on_batch(x, y)
        state = sum(
            int(np.prod(v.shape)) * 4
            for v in model.trainable_variables + model.optimizer.variables
        )
        cases.append(dict(model=model, x=x, y=y, state=state, times=[], peak=0.0))
    for _ in range(rounds):
        for case in cases:
            gc.collect()
            before = status_kb("VmRSS")
            reset_peak()
            start = time.perf_counter()
            case["model"].train_on_batch(case["x"], case["y"])
            case["times"].append(time.perf_counter() - start)
            case["peak"] = max(case["peak"], peak_mb(before))
    results = []
    for case in cases:
        ratios = [
            t / t0 for t, t0 in zip(case["times"], cases[0]["times"], strict=True)
        ]
        results.append(
            (
                statistics.median(case["times"]) * 1e3,
                statistics.median(ratios),
                case["peak"],
                case["state"] / 2**20,
            )
        )
    del cases
    keras.backend.clear_session()
    gc.collect()
    return results


def run(backend, rounds, vocabs=VOCABS):
    rows = []
    for variant in variants(backend):
        for optimizer in OPTIMIZERS:
            if variant == "ours_keras_sgd" and optimizer != "SGD":
                continue
            # Keras's dense steps at 5M take seconds: fewer rounds.
            n = rounds if variant.startswith("ours") else max(3, rounds // 2)
            results = run_series(variant, optimizer, vocabs, n)
            for vocab, (ms, ratio, peak, state) in zip(vocabs, results, strict=True):
                row = dict(
                    backend=backend,
                    variant=variant,
                    optimizer=optimizer,
                    vocab=vocab,
                    step_ms=round(ms, 2),
                    ratio_vs_10k=round(ratio, 2),
                    step_peak_mb=round(peak, 1),
                    state_mb=round(state, 1),
                )
                print(row, flush=True)
                rows.append(row)
    return rows


def plot():
    plt = pyplot()
    rows = read_csv(CSV_PATH)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    every = sorted({(r["backend"], r["variant"]) for r in rows})
    colors = {key: f"C{i}" for i, key in enumerate(every)}
    for ax, optimizer in zip(axes, OPTIMIZERS, strict=True):
        series = sorted(
            {(r["backend"], r["variant"]) for r in rows if r["optimizer"] == optimizer}
        )
        for backend, variant in series:
            points = [
                (int(r["vocab"]), float(r["step_ms"]))
                for r in rows
                if (r["backend"], r["variant"], r["optimizer"])
                == (backend, variant, optimizer)
            ]
            points.sort()
            style = "-" if variant.startswith("ours") else "--"
            ax.plot(
                *zip(*points, strict=True),
                style,
                marker="o",
                color=colors[backend, variant],
                label=f"{backend} {variant}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{optimizer} train step, batch {BATCH} x {LENGTH}, dim {DIM}")
        ax.set_xlabel("vocabulary size")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median step time (ms)")
    axes[0].legend(fontsize=7)
    save_chart(fig, PNG_PATH)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument(
        "--vocabs", type=int, nargs="+", default=VOCABS, help="a quicker run"
    )
    args = parser.parse_args()
    if not args.plot_only:
        import keras

        backend = keras.backend.backend()
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        rows = run(backend, args.rounds, args.vocabs)
        replace_backend_rows(CSV_PATH, FIELDS, rows, backend)
    plot()


if __name__ == "__main__":
    main()
