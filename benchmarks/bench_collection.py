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

Peers (``--peers``, torch only): the run on PyTorch in the torchrec venv
(`peers_README.md`), which adds, interleaved in the same rounds (their ratio:
paired against ours, as every contender's):

* ``fbgemm_tbe``: FBGEMM's CPU table-batched embedding
  (`SplitTableBatchedEmbeddingBagsCodegen`), FP32, row-wise Adagrad fused in
  its backward (``train``), and its forward;
* ``torch_26_embedding_bag``: 26 `torch.nn.EmbeddingBag(mode="sum",
  sparse=True)` + `torch.optim.Adagrad`;

each with the same `Linear(26 * 64, 1)` head and MSE, on the same batch as
real bags (values and offsets, without the padding ours is given: see
`_peers_collection.py`), every contender on one torch thread. keras-rs
contends there only if the venv has it (`pip install --no-deps
keras-rs==0.4.0`); else its rows are missing from the run.

Usage (the figures in the docs: PyTorch on one thread, as `bench_dynamic.py`)::

    KERAS_BACKEND=jax python benchmarks/bench_collection.py
    KERAS_BACKEND=tensorflow python benchmarks/bench_collection.py
    OMP_NUM_THREADS=1 KERAS_BACKEND=torch python benchmarks/bench_collection.py
    python benchmarks/bench_collection.py --peers   # torch + FBGEMM, torchrec venv
    KERAS_BACKEND=jax python benchmarks/bench_collection.py --quick  # smoke test
    KERAS_BACKEND=jax python benchmarks/bench_collection.py --memory
    # 4x the rows a table, two contenders, timings and peak memory:
    KERAS_BACKEND=jax python benchmarks/bench_collection.py --rows 400000 \
        --only ours_table_rowwise,keras_26 [--memory]

``--quick`` (a smoke test: 26 tables of 1,000 rows, batch 64, a short timing)
writes no CSV. A run replaces its backend's rows of
``benchmarks/results/bench_collection.csv``.
"""

import argparse
import ctypes
import os
import subprocess
import sys

import _bench as bench

CSV_PATH = bench.RESULTS / "bench_collection.csv"
TABLES = 26
ROWS = 100_000
DIM = 64
BATCH = 2048
MEAN_IDS = 10
FIELDS = ("backend", "case", "contender", "value", "unit", "ratio", "note")
FULL = {"rows": ROWS, "batch": BATCH, "repeats": (5, 50)}
QUICK = {"rows": 1_000, "batch": 64, "repeats": (3, 5)}
# What the peers' rows add to the note (`_peers_collection.py`).
PEER_NOTES = {
    "ours_flat": "; ours called on the real bags as (values, offsets), no padding "
    "(one fused embedding_bag a stack), with the head, outside Keras's predict",
    "ours_table_rowwise_flat": "; ours with each table's own row-wise Adagrad, "
    "called on the real bags as (values, offsets), no padding, with the head, "
    "MSE and backward, outside Keras's train_on_batch",
    "fbgemm_tbe": "; FBGEMM CPU TBE, FP32, row-wise Adagrad fused in backward, "
    "real bags (values + offsets, no padding)",
    "torch_26_embedding_bag": "; 26 nn.EmbeddingBag(sparse=True) + "
    "torch.optim.Adagrad, real bags (values + offsets, no padding)",
}


def _data(rng, rows=ROWS, batch=BATCH):
    import numpy as np

    lengths = np.maximum(rng.poisson(MEAN_IDS, size=(TABLES, batch)), 1)
    width = int(lengths.max())
    ids, weights = {}, {}
    for t in range(TABLES):
        i = rng.integers(0, rows, size=(batch, width)).astype("int32")
        w = (np.arange(width)[None, :] < lengths[t][:, None]).astype("float32")
        ids[f"f{t}"], weights[f"f{t}"] = i * (w > 0), w
    return ids, weights


def _models(ids, rows=ROWS, only=None):
    """`{contender: compiled model}` (`only`: those alone, a name or names)."""
    import keras

    from keras_embedding_plus import EmbeddingCollection
    from keras_embedding_plus.optimizers import LazyAdagrad, LazyRowwiseAdagrad
    from keras_embedding_plus.training import SparseTrainer

    def wanted(name):
        return only is None or name == only or name in only

    batch, width = ids["f0"].shape
    names = sorted(ids)

    def inputs():
        return (
            {n: keras.Input((width,), dtype="int32", name=n) for n in names},
            {n: keras.Input((width,), dtype="float32", name=f"w_{n}") for n in names},
        )

    def head(x, w, outputs):
        pooled = keras.layers.Concatenate()([outputs[n] for n in names])
        return keras.Model([x, w], keras.layers.Dense(1)(pooled))

    def features(module, **table):
        return {
            n: module.FeatureConfig(
                name=n,
                table=module.TableConfig(
                    name=n,
                    vocabulary_size=rows,
                    embedding_dim=DIM,
                    combiner="sum",
                    **table,
                ),
                input_shape=(batch, width),
                output_shape=(batch, DIM),
            )
            for n in names
        }

    import keras_embedding_plus as kep

    models = {}
    if wanted("ours"):
        x, w = inputs()
        models["ours"] = head(x, w, EmbeddingCollection(features(kep))(x, w))
        models["ours"].compile(keras.optimizers.Adagrad(0.01), "mse")

    class Sparse(SparseTrainer, keras.Model):
        pass

    if wanted("ours_sparse"):
        x, w = inputs()
        out = EmbeddingCollection(features(kep), sparse=True)(x, w)
        pooled = keras.layers.Concatenate()([out[n] for n in names])
        models["ours_sparse"] = Sparse([x, w], keras.layers.Dense(1)(pooled))
        models["ours_sparse"].compile(LazyAdagrad(0.01), "mse")

    if wanted("ours_table_rowwise"):
        # FBGEMM's setup: each table's own row-wise Adagrad, applied in the
        # lookup's backward pass; the model's Adagrad trains the head.
        x, w = inputs()
        table = {"optimizer": LazyRowwiseAdagrad(0.01)}
        out = EmbeddingCollection(features(kep, **table))(x, w)
        pooled = keras.layers.Concatenate()([out[n] for n in names])
        models["ours_table_rowwise"] = Sparse([x, w], keras.layers.Dense(1)(pooled))
        models["ours_table_rowwise"].compile(keras.optimizers.Adagrad(0.01), "mse")

    keras_rs = None
    if wanted("keras_rs"):
        try:
            import keras_rs
        except ImportError:
            print("keras_rs is not importable here: no keras_rs rows", flush=True)
    if keras_rs is not None:
        x, w = inputs()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rs = keras_rs.layers.DistributedEmbedding(features(keras_rs.layers))
        models["keras_rs"] = head(x, w, rs(x, w))
        models["keras_rs"].compile(keras.optimizers.Adagrad(0.01), "mse")

    if wanted("keras_26"):
        x, w = inputs()
        outputs = {}
        for n in names:
            looked_up = keras.layers.Embedding(rows, DIM, name=f"emb_{n}")(x[n])
            outputs[n] = keras.ops.sum(
                looked_up * keras.ops.expand_dims(w[n], -1), axis=1
            )
        models["keras_26"] = head(x, w, outputs)
        models["keras_26"].compile(keras.optimizers.Adagrad(0.01), "mse")
    return models


def run_backend(budget_s, sizes=FULL, only=None):
    backend = bench.start_backend()
    import numpy as np

    rng = np.random.default_rng(0)
    ids, weights = _data(rng, sizes["rows"], sizes["batch"])
    y = rng.normal(size=(sizes["batch"], 1)).astype("float32")
    models = _models(ids, sizes["rows"], only=only)
    peers = {} if only else _peers(backend, ids, weights, sizes["rows"])
    x = [ids, weights]
    rows = []
    # Ratios against ours (or, with `--only`, the last of those named).
    reference = "ours" if "ours" in models else sorted(models)[-1]
    note = (
        f"{TABLES} tables of {sizes['rows']:,} x {DIM}, batch {sizes['batch']}, "
        f"Poisson({MEAN_IDS}) ids a bag, sum; ratio: time vs {reference}"
    )
    trained_only = ("ours_sparse", "ours_table_rowwise")
    forward = {n: m for n, m in models.items() if n not in trained_only}
    flat, flat_train = {}, {}
    if "ours" in models:
        flat = _flat_forward(backend, models["ours"], ids, weights)
    if "ours_table_rowwise" in models:
        flat_train = _flat_train(backend, models["ours_table_rowwise"], ids, weights, y)
    for case, fns in (
        (
            "forward",
            {
                **{n: (lambda m=m: m.predict_on_batch(x)) for n, m in forward.items()},
                **flat,
                **{n: p.forward for n, p in peers.items()},
            },
        ),
        (
            "train",
            {
                **{n: (lambda m=m: m.train_on_batch(x, y)) for n, m in models.items()},
                **flat_train,
                **{n: (lambda p=p: p.train_step(y)) for n, p in peers.items()},
            },
        ),
    ):
        if reference not in fns:  # `--only` with no contender of this case
            continue
        samples = {}
        stats = bench.time_interleaved(
            fns, budget_s, *sizes["repeats"], samples=samples
        )
        for name in fns:
            ratio = bench.paired_ratio(samples, name, reference)
            rows.append(
                {
                    "backend": backend,
                    "case": _case(case, sizes),
                    "contender": name,
                    "value": f"{stats[name][0]:.1f}",
                    "unit": "ms",
                    "ratio": "" if name == reference else f"{ratio:.2f}",
                    "note": note + PEER_NOTES.get(name, ""),
                }
            )
    return rows


MEMORY_CONTENDERS = ("ours", "ours_sparse", "ours_table_rowwise", "keras_26")


def _case(case, sizes):
    """The CSV case: `case`, suffixed with the tables' rows when they are not
    the issue's (`--rows`)."""
    rows = sizes["rows"]
    return case if rows in (ROWS, QUICK["rows"]) else f"{case}_{rows // 1000}k"


def _memory_one(name, sizes=FULL):
    """In this process: the rise of resident memory over the resident memory
    before, at its peak during 3 train steps of `name` (after 2 warm-up
    steps), in MB. Linux: the peak (`VmHWM`) is reset by writing 5 to
    `/proc/self/clear_refs`, after glibc's `malloc_trim` gives freed memory
    back."""
    bench.start_backend()
    import numpy as np

    rng = np.random.default_rng(0)
    ids, weights = _data(rng, sizes["rows"], sizes["batch"])
    y = rng.normal(size=(sizes["batch"], 1)).astype("float32")
    model = _models(ids, sizes["rows"], only=(name,))[name]
    for _ in range(2):
        model.train_on_batch([ids, weights], y)

    def status(field):
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith(field + ":"))
        return int(line.split()[1]) / 1024  # kB -> MB

    # Freed memory that malloc keeps would hide a step's temporaries: give it
    # back first (glibc), so that the peak counts them.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(3):
        model.train_on_batch([ids, weights], y)
    print(f"PEAK_MB {status('VmHWM') - before:.1f}", flush=True)


def run_memory(backend, sizes=FULL, only=None):
    """One fresh process per contender (`_memory_one`): the peak extra
    memory of a train step, against the tables' size."""
    table_mb = TABLES * sizes["rows"] * DIM * 4 / 2**20
    rows = []
    for name in only or MEMORY_CONTENDERS:
        env = dict(os.environ, KERAS_BACKEND=backend)
        args = [sys.executable, __file__, "--memory-one", name]
        args += ["--quick"] if sizes is QUICK else ["--rows", str(sizes["rows"])]
        out = subprocess.run(
            args, env=env, check=True, capture_output=True, text=True
        ).stdout
        peak = float(
            next(x for x in out.splitlines() if x.startswith("PEAK_MB")).split()[1]
        )
        rows.append(
            {
                "backend": backend,
                "case": _case("train_peak", sizes),
                "contender": name,
                "value": f"{peak:.0f}",
                "unit": "MB",
                "ratio": f"{peak / table_mb:.2f}",
                "note": f"peak resident memory a train step adds; ratio: vs the "
                f"{TABLES} tables ({table_mb:.0f} MB)",
            }
        )
    return rows


def _real_bags(ids, weights):
    """Per feature, the real bags as `(values, offsets)` (no padding) and
    their weights."""
    import numpy as np

    flat, flat_w = {}, {}
    for name in ids:
        keep = np.asarray(weights[name]) > 0
        offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))[:-1]])
        flat[name] = (ids[name][keep].astype("int32"), offsets.astype("int32"))
        flat_w[name] = weights[name][keep]
    return flat, flat_w


def _flat_train(backend, model, ids, weights, y):
    """On PyTorch: `{"ours_table_rowwise_flat": fn}`, one train step of the
    `ours_table_rowwise` model on the real bags as `(values, offsets)` (the
    peers' input): the collection called directly, the head, MSE,
    `backward()` (which updates the tables), the model's optimizer on the
    head; what Keras's PyTorch train step does, without its data handling.
    Else `{}`."""
    if backend != "torch":
        return {}
    import torch

    from keras_embedding_plus import EmbeddingCollection

    layer = next(lay for lay in model.layers if isinstance(lay, EmbeddingCollection))
    head = model.layers[-1]
    flat, flat_w = _real_bags(ids, weights)
    target = torch.as_tensor(y)
    variables = model.trainable_variables

    def step():
        for v in variables:
            v.value.grad = None
        out = layer(flat, flat_w, training=True)
        pooled = head(torch.cat([out[n] for n in sorted(out)], dim=-1))
        torch.mean((pooled - target) ** 2).backward()
        model.optimizer.apply([v.value.grad for v in variables], variables)

    return {"ours_table_rowwise_flat": step}


def _flat_forward(backend, model, ids, weights):
    """On PyTorch (eager, as Keras runs it there): `{"ours_flat": fn}`, our
    collection called directly on the real bags as `(values, offsets)` (no
    padding: the peers' input), with the head, without grad. Else `{}`."""
    if backend != "torch":
        return {}
    import torch

    from keras_embedding_plus import EmbeddingCollection

    layer = next(lay for lay in model.layers if isinstance(lay, EmbeddingCollection))
    head = model.layers[-1]
    flat, flat_w = _real_bags(ids, weights)

    def forward():
        with torch.no_grad():
            out = layer(flat, flat_w)
            return head(torch.cat([out[n] for n in sorted(out)], dim=-1))

    return {"ours_flat": forward}


def _peers(backend, ids, weights, rows):
    """`{name: peer}` of `_peers_collection` where this interpreter has
    FBGEMM (the torchrec venv) and the backend is torch, else `{}`. With
    peers, torch runs on one thread, ours included."""
    if backend != "torch":
        return {}
    try:
        import _peers_collection as peers
        import fbgemm_gpu  # noqa: F401
    except ImportError:
        return {}
    import torch

    torch.set_num_threads(1)
    bags = peers.flat_bags(ids, weights, sorted(ids))
    return {
        "fbgemm_tbe": peers.fbgemm_tbe(rows, DIM, bags),
        "torch_26_embedding_bag": peers.torch_embedding_bags(rows, DIM, bags),
    }


def _run_with_peers(args):
    """This script on torch under the torchrec venv (`PEER_TORCHREC_PYTHON`),
    one thread."""
    python = os.environ.get("PEER_TORCHREC_PYTHON", "/work/peers/torchrec/bin/python")
    env = dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(bench.ROOT), str(bench.HERE), *filter(None, [env.get("PYTHONPATH")])]
    )
    print(f"=== torch: {python}", flush=True)
    script = [python, __file__, "--budget", str(args.budget)]
    subprocess.run(script + (["--quick"] if args.quick else []), env=env, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every backend, one by one")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds a case")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="torch in the torchrec venv, with FBGEMM and 26 torch EmbeddingBags",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: small sizes, no CSV"
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="the peak memory a train step adds, one process a contender",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=ROWS,
        help="rows a table (the issue's: 100,000); other sizes get their own "
        "CSV cases (`train_400k`, `train_peak_400k`)",
    )
    parser.add_argument(
        "--only", help="these contenders alone, comma-separated (with --rows)"
    )
    parser.add_argument("--memory-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = QUICK if args.quick else dict(FULL, rows=args.rows)
    only = tuple(args.only.split(",")) if args.only else None
    if args.memory_one:
        _memory_one(args.memory_one, sizes)
        return
    if args.memory:
        backend = os.environ.get("KERAS_BACKEND", "jax")
        rows = run_memory(backend, sizes, only)
        if not args.quick:
            names = {r["contender"] for r in rows}
            bench.update_csv(
                CSV_PATH,
                FIELDS,
                rows,
                lambda r: (
                    r["backend"] == backend
                    and r["case"] == _case("train_peak", sizes)
                    and r["contender"] in names
                ),
            )
        for row in rows:
            print(f"  {row['contender']:22} {row['value']:>8} MB {row['ratio']:>6}")
        return
    if args.all:
        extra = ["--quick"] if args.quick else []
        bench.run_each_backend(__file__, ["--budget", str(args.budget), *extra])
        return
    if args.peers:
        _run_with_peers(args)
        return
    if args.quick:
        rows = run_backend(min(args.budget, 1.0), QUICK)
    else:
        rows = run_backend(args.budget, sizes, only)
        backend = rows[0]["backend"]
        cases = {r["case"] for r in rows}
        bench.update_csv(  # This run's timings; the others stay.
            CSV_PATH,
            FIELDS,
            rows,
            lambda r: r["backend"] == backend and r["case"] in cases,
        )
    for row in rows:
        print(
            f"  {row['case']:8} {row['contender']:22} {row['value']:>8} "
            f"{row['unit']:3} {row['ratio']:>6}  {row['note']}"
        )
    if args.quick:
        print("--quick: nothing written to benchmarks/results/")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
