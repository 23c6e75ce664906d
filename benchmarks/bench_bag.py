"""Pooled multi-hot lookups (issue 12): `EmbeddingBag` vs the Embedding + pooling
recipe vs the backends' own ops, in one process per backend.

Setup: vocabulary 1,000,000 x 64 (float32), batch 4,096 bags whose lengths are
Poisson(20) ("ragged": `(values, offsets)`, ~82k ids), and the same bags padded
with id 0 to length 50 ("padded": `(4096, 50)` ids). Mean pooling; padding counts
nowhere.

Contenders (where the backend has them):

* ``keras_recipe``: `keras.layers.Embedding(mask_zero=True)` ->
  `GlobalAveragePooling1D` on the padded ids.
* ``ours_recipe``: the same with `keras_embedding_plus.Embedding`.
* ``bag_padded`` / ``bag_ragged``: `EmbeddingBag(combiner="mean", padding_idx=0)`
  on the padded ids / on `(values, offsets)`.
* ``torch_bag``: `torch.nn.EmbeddingBag(mode="sum")` on `(values, offsets)`
  (torch; the issue's reference for forward + backward).
* ``tf_safe_sparse``: `tf.nn.safe_embedding_lookup_sparse(combiner="mean")` on a
  `tf.SparseTensor` of the ragged bags (TensorFlow).
* ``keras_rs``: keras-rs `EmbedReduce(combiner="mean", mask_zero=True)` on the
  padded ids, where `import keras_rs` works (it is not a dependency: put it on
  `PYTHONPATH`, e.g. `pip install --no-deps --target DIR keras-rs`).

Cases:

* ``forward``: one pooled lookup (TensorFlow: `tf.function`; JAX: `jax.jit` of
  `stateless_call`; torch: eager under `no_grad`, as Keras runs torch).
* ``fwd_bwd``: forward + backward of `sum(pooled * U)` w.r.t. the table, no
  optimizer (torch only: `EmbeddingBag` sum vs `torch.nn.EmbeddingBag` sum, both
  with `sparse=True`).
* ``train``: one `train_on_batch` of `pooling -> Dense(1)` with `LazyAdam`
  (ours: `sparse=True`, and `SparseTrainer` on JAX; the recipe with Keras's
  layer gets a dense gradient, on which `LazyAdam` is Adam). torch_bag:
  `nn.EmbeddingBag(sparse=True)` + `torch.optim.SparseAdam`.

Peak memory: the growth of the process's peak RSS (`VmHWM`, reset through
`/proc/self/clear_refs`) over its RSS before one call, in MB: roughly what a call
materializes beyond the table and the optimizer state.

Usage::

    KERAS_BACKEND=torch python benchmarks/bench_bag.py [--repeats 5] [--threads 1]

By default every backend runs on one intra-op thread (JAX: one XLA CPU thread),
so that the ratios hold on a shared machine.

Results go to ``benchmarks/results/bench_bag.csv`` (a run replaces its backend's
rows).
"""

import argparse
import gc
import os
import statistics
import sys

from _bench import RESULTS, peak_mb, peak_start, repeat_ms, replace_backend_rows

CSV_PATH = RESULTS / "bench_bag.csv"
VOCAB, DIM, BATCH, MEAN_LENGTH, PADDED = 1_000_000, 64, 4096, 20, 50
FIELDS = ("backend", "case", "contender", "median_ms", "min_ms", "peak_mb", "repeats")


def measure(fn, repeats, warmup=2):
    """`(median_ms, min_ms, peak_mb)` of `fn()`; peak from one extra call."""
    times = repeat_ms(fn, repeats, warmup)
    gc.collect()
    before = peak_start()
    fn()
    return statistics.median(times), min(times), max(0, peak_mb(before))


def make_data(seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.poisson(MEAN_LENGTH, BATCH), PADDED)
    values = rng.integers(1, VOCAB, lengths.sum()).astype("int32")
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype("int32")
    padded = np.zeros((BATCH, PADDED), "int32")
    for b, (start, n) in enumerate(zip(offsets, lengths, strict=True)):
        padded[b, :n] = values[start : start + n]
    y = rng.normal(size=(BATCH, 1)).astype("float32")
    return values, offsets, lengths, padded, y


def sync(x):
    """Wait for `x` (JAX dispatches asynchronously)."""
    if hasattr(x, "block_until_ready"):
        x.block_until_ready()
    return x


def compiled_forward(layer, backend):
    """`f(*inputs)`: the layer's forward, compiled the way Keras compiles it."""
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda *x: layer(*x))
    if backend == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        frozen = [v.value for v in layer.non_trainable_variables]
        step = jax.jit(lambda t, n, *x: layer.stateless_call(t, n, *x)[0])
        return lambda *x: sync(step(trainable, frozen, *x))
    import torch

    def forward(*x):
        with torch.no_grad():
            return layer(*x)

    return forward


def recipe(embedding_cls):
    import keras

    def layer():
        return keras.Sequential(
            [
                embedding_cls(VOCAB, DIM, mask_zero=True),
                keras.layers.GlobalAveragePooling1D(),
            ]
        )

    return layer


def forward_contenders(backend, data):
    import keras

    from keras_embedding_plus import Embedding, EmbeddingBag

    values, offsets, lengths, padded, _ = data
    t = keras.ops.convert_to_tensor
    padded_t, ragged_t = t(padded), (t(values), t(offsets))
    out = {}
    for name, make, inputs in (
        ("keras_recipe", recipe(keras.layers.Embedding), (padded_t,)),
        ("ours_recipe", recipe(Embedding), (padded_t,)),
        ("bag_padded", lambda: EmbeddingBag(VOCAB, DIM, padding_idx=0), (padded_t,)),
        ("bag_ragged", lambda: EmbeddingBag(VOCAB, DIM, padding_idx=0), (ragged_t,)),
    ):
        layer = make()
        layer.build((BATCH, PADDED))
        fn = compiled_forward(layer, backend)
        out[name] = (lambda fn=fn, inputs=inputs: fn(*inputs), layer)
    try:
        from keras_rs.layers import EmbedReduce

        layer = EmbedReduce(VOCAB, DIM, combiner="mean", mask_zero=True)
        layer.build((BATCH, PADDED))
        fn = compiled_forward(layer, backend)
        out["keras_rs"] = (lambda fn=fn: fn(padded_t), layer)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        print(f"keras_rs: skipped ({type(e).__name__}: {str(e)[:120]})")
    if backend == "torch":
        import torch

        bag = torch.nn.EmbeddingBag(VOCAB, DIM, mode="sum")
        v, o = torch.tensor(values).long(), torch.tensor(offsets).long()

        def torch_forward():
            with torch.no_grad():
                return bag(v, o)

        out["torch_bag"] = (torch_forward, bag)
    if backend == "tensorflow":
        import numpy as np
        import tensorflow as tf

        table = tf.Variable(tf.random.uniform((VOCAB, DIM), -0.05, 0.05))
        rows = np.repeat(np.arange(BATCH), lengths)
        cols = np.concatenate([np.arange(n) for n in lengths])
        sp = tf.SparseTensor(
            np.stack([rows, cols], 1).astype("int64"),
            values.astype("int64"),
            (BATCH, PADDED),
        )
        fn = tf.function(
            lambda: tf.nn.safe_embedding_lookup_sparse(table, sp, combiner="mean")
        )
        out["tf_safe_sparse"] = (fn, table)
    return out


def train_contenders(backend, data):
    import keras

    from keras_embedding_plus import Embedding, EmbeddingBag
    from keras_embedding_plus.optimizers import LazyAdam
    from keras_embedding_plus.training import SparseTrainer

    class Model(SparseTrainer, keras.Model):
        pass

    values, offsets, _, padded, y = data
    out = {}

    def model_of(inputs, pooled, sparse):
        outputs = keras.layers.Dense(1)(pooled)
        model = (Model if sparse else keras.Model)(inputs, outputs)
        model.compile(optimizer=LazyAdam(1e-3), loss="mse")
        return model

    ids = keras.Input((PADDED,), dtype="int32")
    for name, cls, sparse in (
        ("keras_recipe", keras.layers.Embedding, False),
        ("ours_recipe", Embedding, True),
    ):
        kwargs = {"sparse": True} if sparse else {}
        x = cls(VOCAB, DIM, mask_zero=True, **kwargs)(ids)
        model = model_of(ids, keras.layers.GlobalAveragePooling1D()(x), sparse)
        out[name] = lambda m=model: m.train_on_batch(padded, y)
    bag = EmbeddingBag(VOCAB, DIM, padding_idx=0, sparse=True)
    model = model_of(ids, bag(ids), True)
    out["bag_padded"] = lambda m=model: m.train_on_batch(padded, y)
    v_in = keras.Input((), batch_size=len(values), dtype="int32")
    o_in = keras.Input((), batch_size=BATCH, dtype="int32")
    bag = EmbeddingBag(VOCAB, DIM, padding_idx=0, sparse=True)
    model = model_of([v_in, o_in], bag((v_in, o_in)), True)
    out["bag_ragged"] = lambda m=model: m.train_on_batch([values, offsets], y)
    if backend == "torch":
        import torch

        bag = torch.nn.EmbeddingBag(VOCAB, DIM, mode="sum", sparse=True)
        dense = torch.nn.Linear(DIM, 1)
        sparse_opt = torch.optim.SparseAdam(bag.parameters(), 1e-3)
        dense_opt = torch.optim.Adam(dense.parameters(), 1e-3)
        v, o = torch.tensor(values).long(), torch.tensor(offsets).long()
        target = torch.tensor(y)

        def torch_step():
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
            loss = ((dense(bag(v, o)) - target) ** 2).mean()
            loss.backward()
            sparse_opt.step()
            dense_opt.step()

        out["torch_bag"] = torch_step
    return out


def fwd_bwd_contenders(data):
    """torch only: forward + backward, `EmbeddingBag` sum vs `nn.EmbeddingBag` sum."""
    import torch

    from keras_embedding_plus import EmbeddingBag

    values, offsets, *_ = data
    v, o = torch.tensor(values), torch.tensor(offsets)
    upstream = torch.randn(BATCH, DIM)
    ours = EmbeddingBag(VOCAB, DIM, combiner="sum", sparse=True)
    ours.build()
    theirs = torch.nn.EmbeddingBag(VOCAB, DIM, mode="sum", sparse=True)
    vl, ol = v.long(), o.long()

    def ours_step():
        ours.embeddings.value.grad = None
        (ours((v, o)) * upstream).sum().backward()

    def theirs_step():
        theirs.weight.grad = None
        (theirs(vl, ol) * upstream).sum().backward()

    return {"bag_ragged_sum": ours_step, "torch_bag": theirs_step}


def run(backend, repeats, cases):
    data = make_data()
    rows = []

    def record(case, name, fn):
        try:
            median, best, peak = measure(fn, repeats)
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            print(f"{case:8s} {name:16s} failed: {type(e).__name__}: {str(e)[:200]}")
            return
        print(
            f"{case:8s} {name:16s} {median:9.1f} ms  (min {best:7.1f})  {peak:7.0f} MB"
        )
        rows.append(
            dict(
                backend=backend,
                case=case,
                contender=name,
                median_ms=round(median, 2),
                min_ms=round(best, 2),
                peak_mb=round(peak, 1),
                repeats=repeats,
            )
        )

    if "forward" in cases:
        for name, (fn, _) in forward_contenders(backend, data).items():
            record("forward", name, fn)
        gc.collect()
    if "fwd_bwd" in cases and backend == "torch":
        for name, fn in fwd_bwd_contenders(data).items():
            record("fwd_bwd", name, fn)
        gc.collect()
    if "train" in cases:
        for name, fn in train_contenders(backend, data).items():
            record("train", name, fn)
    return rows


def save(rows, backend):
    replace_backend_rows(CSV_PATH, FIELDS, rows, backend)


def set_threads(n):
    """Limit each backend to `n` intra-op threads (before it starts)."""
    if not n:
        return
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "jax":
        flags = f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}"
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " " + flags
        ).strip()
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    elif backend == "torch":
        import torch

        torch.set_num_threads(n)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cases", default="forward,fwd_bwd,train", help="comma-separated cases"
    )
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads per backend (default 1: stable ratios on a shared "
        "machine; 0 leaves each backend's default)",
    )
    args = parser.parse_args()
    set_threads(args.threads)
    import keras

    backend = keras.backend.backend()
    print(f"backend={backend} keras={keras.__version__} python={sys.version[:6]}")
    print(f"vocab {VOCAB} x {DIM}, batch {BATCH}, Poisson({MEAN_LENGTH}) / {PADDED}")
    rows = run(backend, args.repeats, args.cases.split(","))
    if not args.no_save:
        save(rows, backend)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
