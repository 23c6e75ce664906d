"""`EmbeddingCollection` (issue 23): many tables in one layer, against keras-rs's
`DistributedEmbedding` (its CPU fallback: one `EmbedReduce` per table) and 26
separate Keras `Embedding` layers with a weighted-sum pooling each.

The issue's setup: 26 tables of 100,000 x 64, batch 2048, Poisson(10) ids a
bag, sum pooling. Every contender takes the same dense `(2048, L)` ids (`L`
the longest bag) with per-id weights, 0 on padding. One process per backend,
contenders interleaved round by round (a ratio is the median of the rounds'
ratios against ours):

* ``forward``: one call of the layer(s), compiled as the backend compiles a
  model's predict step (``predict_on_batch``).
* ``train``: one ``train_on_batch`` of layer(s) -> concat -> Dense(1), MSE,
  Keras's ``Adagrad`` for the baselines; ours as well, and ours with
  ``sparse=True`` and ``LazyAdagrad`` (only the looked-up rows move).

FBGEMM's table-batched kernels are not in this run (see issue 23).

Usage (the figures in the docs: PyTorch on one thread, as `bench_dynamic.py`)::

    KERAS_BACKEND=jax python benchmarks/bench_collection.py
    KERAS_BACKEND=tensorflow python benchmarks/bench_collection.py
    OMP_NUM_THREADS=1 KERAS_BACKEND=torch python benchmarks/bench_collection.py
"""

import argparse
import sys

import _bench as bench

CSV_PATH = bench.RESULTS / "bench_collection.csv"
TABLES = 26
ROWS = 100_000
DIM = 64
BATCH = 2048
MEAN_IDS = 10
FIELDS = ("backend", "case", "contender", "value", "unit", "ratio", "note")


def _data(rng):
    import numpy as np

    lengths = np.maximum(rng.poisson(MEAN_IDS, size=(TABLES, BATCH)), 1)
    width = int(lengths.max())
    ids, weights = {}, {}
    for t in range(TABLES):
        i = rng.integers(0, ROWS, size=(BATCH, width)).astype("int32")
        w = (np.arange(width)[None, :] < lengths[t][:, None]).astype("float32")
        ids[f"f{t}"], weights[f"f{t}"] = i * (w > 0), w
    return ids, weights


def _models(ids):
    import keras
    import keras_rs

    from keras_embedding_plus import EmbeddingCollection
    from keras_embedding_plus.optimizers import LazyAdagrad
    from keras_embedding_plus.training import SparseTrainer

    width = ids["f0"].shape[1]
    names = sorted(ids)

    def inputs():
        return (
            {n: keras.Input((width,), dtype="int32", name=n) for n in names},
            {n: keras.Input((width,), dtype="float32", name=f"w_{n}") for n in names},
        )

    def head(x, w, outputs):
        pooled = keras.layers.Concatenate()([outputs[n] for n in names])
        return keras.Model([x, w], keras.layers.Dense(1)(pooled))

    def features(module):
        return {
            n: module.FeatureConfig(
                name=n,
                table=module.TableConfig(
                    name=n, vocabulary_size=ROWS, embedding_dim=DIM, combiner="sum"
                ),
                input_shape=(BATCH, width),
                output_shape=(BATCH, DIM),
            )
            for n in names
        }

    import keras_embedding_plus as kep

    models = {}
    x, w = inputs()
    models["ours"] = head(x, w, EmbeddingCollection(features(kep))(x, w))
    models["ours"].compile(keras.optimizers.Adagrad(0.01), "mse")

    class Sparse(SparseTrainer, keras.Model):
        pass

    x, w = inputs()
    out = EmbeddingCollection(features(kep), sparse=True)(x, w)
    pooled = keras.layers.Concatenate()([out[n] for n in names])
    models["ours_sparse"] = Sparse([x, w], keras.layers.Dense(1)(pooled))
    models["ours_sparse"].compile(LazyAdagrad(0.01), "mse")

    x, w = inputs()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rs = keras_rs.layers.DistributedEmbedding(features(keras_rs.layers))
    models["keras_rs"] = head(x, w, rs(x, w))
    models["keras_rs"].compile(keras.optimizers.Adagrad(0.01), "mse")

    x, w = inputs()
    outputs = {}
    for n in names:
        rows = keras.layers.Embedding(ROWS, DIM, name=f"emb_{n}")(x[n])
        outputs[n] = keras.ops.sum(rows * keras.ops.expand_dims(w[n], -1), axis=1)
    models["keras_26"] = head(x, w, outputs)
    models["keras_26"].compile(keras.optimizers.Adagrad(0.01), "mse")
    return models


def run_backend(budget_s):
    backend = bench.start_backend()
    import numpy as np

    rng = np.random.default_rng(0)
    ids, weights = _data(rng)
    y = rng.normal(size=(BATCH, 1)).astype("float32")
    models = _models(ids)
    x = [ids, weights]
    rows = []
    note = (
        f"{TABLES} tables of {ROWS:,} x {DIM}, batch {BATCH}, Poisson({MEAN_IDS}) "
        "ids a bag, sum; ratio: time vs ours"
    )
    forward = {n: m for n, m in models.items() if n != "ours_sparse"}
    for case, fns in (
        (
            "forward",
            {n: (lambda m=m: m.predict_on_batch(x)) for n, m in forward.items()},
        ),
        ("train", {n: (lambda m=m: m.train_on_batch(x, y)) for n, m in models.items()}),
    ):
        samples = {}
        stats = bench.time_interleaved(
            fns, budget_s, min_repeats=5, max_repeats=50, samples=samples
        )
        for name in fns:
            ratio = bench.paired_ratio(samples, name, "ours")
            rows.append(
                {
                    "backend": backend,
                    "case": case,
                    "contender": name,
                    "value": f"{stats[name][0]:.1f}",
                    "unit": "ms",
                    "ratio": "" if name == "ours" else f"{ratio:.2f}",
                    "note": note,
                }
            )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every backend, one by one")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds a case")
    args = parser.parse_args()
    if args.all:
        bench.run_each_backend(__file__, ["--budget", str(args.budget)])
        return
    rows = run_backend(args.budget)
    backend = rows[0]["backend"]
    bench.replace_backend_rows(CSV_PATH, FIELDS, rows, backend)
    for row in rows:
        print(
            f"  {row['case']:8} {row['contender']:12} {row['value']:>8} "
            f"{row['unit']:3} {row['ratio']:>6}  {row['note']}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
