"""`DynamicEmbedding` (issue 22): key -> row lookup throughput, the training step
against a static `Embedding(capacity, dim, sparse=True)`, and the bytes of state
held per key. One process per backend; peers side by side where their virtual
environment exists (see `peers_README.md`).

Cases (the issue's sizes; 1M rows is past every size threshold of the code):

* ``lookup``: capacity 1,000,000 filled to 80% (800,000 keys drawn from 2**40),
  65,536 keys a call, all held: ``find`` compiled the way each backend
  compiles (``tf.function``, ``jax.jit``, ``torch.compile``). Reported: keys/s.
* ``train``: capacity 1,000,000 filled to 80%, batch 4096 x 8 keys with 1% new
  keys a batch (the rest drawn from the held ones): one ``train_on_batch`` of
  ``DynamicEmbedding(capacity, 64, sparse=True) -> mean -> Dense(1)`` with
  ``LazyAdam``, against the same model on a static ``Embedding(1_000_000, 64,
  sparse=True)`` fed row ids. Contenders are interleaved round by round. A
  second case, ``train_full``, does the same on a full map (every admission
  evicts a key).
* ``memory``: the bytes of the map's state per held key (every variable but
  the rows), from the variables' sizes.

Usage::

    KERAS_BACKEND=jax python benchmarks/bench_dynamic.py
    python benchmarks/bench_dynamic.py --all
"""

import argparse
import sys

import _bench as bench

CSV_PATH = bench.RESULTS / "bench_dynamic.csv"
CAPACITY = 1_000_000
DIM = 64
FILL = 0.8
BATCH = (4096, 8)
NEW = 0.01
LOOKUP_KEYS = 1 << 16
FIELDS = ("backend", "case", "contender", "value", "unit", "ratio", "note")


def _key_dtype():
    import numpy as np
    from keras import backend, ops

    return backend.standardize_dtype(ops.convert_to_tensor(np.zeros((), "int64")).dtype)


def _filled(layer_factory, keys, key_dtype):
    """A compiled model around a new `DynamicEmbedding`, its map filled with
    `keys` by training calls."""
    import keras

    from keras_embedding_plus.optimizers import LazyAdam
    from keras_embedding_plus.training import SparseTrainer

    class Model(SparseTrainer, keras.Model):
        pass

    layer = layer_factory()
    inputs = keras.Input((BATCH[1],), dtype=key_dtype)
    pooled = keras.layers.GlobalAveragePooling1D()(layer(inputs))
    model = Model(inputs, keras.layers.Dense(1)(pooled))
    model.compile(LazyAdam(1e-3), "mse")
    _fill(model, keys)
    return model, layer


def run_backend(budget_s):
    backend = bench.start_backend()
    import keras
    import numpy as np
    from keras import ops

    from keras_embedding_plus import DynamicEmbedding, Embedding
    from keras_embedding_plus.lookup import dynamic_keys
    from keras_embedding_plus.optimizers import LazyAdam
    from keras_embedding_plus.testing import compiled
    from keras_embedding_plus.training import SparseTrainer

    key_dtype = _key_dtype()
    high = 2**40 if key_dtype == "int64" else 2**30
    rng = np.random.default_rng(0)
    held = rng.choice(high, size=int(FILL * CAPACITY), replace=False).astype(key_dtype)
    rows = []

    def factory():
        return DynamicEmbedding(DIM, CAPACITY, key_dtype=key_dtype, sparse=True)

    model, layer = _filled(factory, held, key_dtype)

    # ---- lookup ----
    state = dynamic_keys.KeyState(*(v.value for v in layer.key_map))
    queries = ops.convert_to_tensor(held[rng.integers(0, len(held), LOOKUP_KEYS)])
    find = compiled(dynamic_keys.find)
    contenders = {"ours": lambda: ops.convert_to_numpy(find(state, queries))}
    peer = _torchrec(backend, held)
    if peer is not None:
        peer_queries = ops.convert_to_numpy(queries)
        contenders["torchrec"] = lambda: peer.remap(peer_queries).numpy()
    samples = {}
    stats = bench.time_interleaved(
        contenders, budget_s, min_repeats=10, max_repeats=200, samples=samples
    )
    for name in contenders:
        keys_per_s = LOOKUP_KEYS / (stats[name][0] / 1e3)
        ratio = bench.paired_ratio(samples, name, "ours")
        rows.append(
            {
                "backend": backend,
                "case": "lookup",
                "contender": name,
                "value": f"{keys_per_s / 1e6:.1f}",
                "unit": "M keys/s",
                "ratio": f"{ratio:.2f}" if name != "ours" else "",
                "note": f"capacity {CAPACITY:,}, {FILL:.0%} full, "
                f"{LOOKUP_KEYS:,} keys; ratio: time vs ours",
            }
        )

    # ---- train: ours (80% full, then full) vs a static sparse Embedding ----
    class Static(SparseTrainer, keras.Model):
        pass

    inputs = keras.Input((BATCH[1],), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(
        Embedding(CAPACITY, DIM, sparse=True)(inputs)
    )
    static = Static(inputs, keras.layers.Dense(1)(pooled))
    static.compile(LazyAdam(1e-3), "mse")
    y = np.zeros((BATCH[0], 1), "float32")
    static_ids = rng.integers(0, CAPACITY, size=BATCH).astype("int32")

    def batch():
        keys = held[rng.integers(0, len(held), size=BATCH)]
        new = rng.integers(high, 2 * high, size=BATCH).astype(key_dtype)
        return np.where(rng.random(BATCH) < NEW, new, keys)

    batches = [batch() for _ in range(16)]
    step = {"i": 0}

    def ours():
        model.train_on_batch(batches[step["i"] % len(batches)], y)
        step["i"] += 1

    for case in ("train", "train_full"):
        if case == "train_full":
            # Fill the rest: every later admission evicts a key.
            free = CAPACITY - len(layer.keys())
            extra = rng.integers(2 * high, 3 * high, size=free + 8).astype(key_dtype)
            _fill(model, extra)
        contenders = {
            "ours": ours,
            "static": lambda: static.train_on_batch(static_ids, y),
        }
        if peer is not None and case == "train":
            contenders["torchrec"] = lambda: peer.train_step(
                batches[step["i"] % len(batches)], y
            )
        samples = {}
        stats = bench.time_interleaved(
            contenders, budget_s, min_repeats=10, max_repeats=100, samples=samples
        )
        for name in contenders:
            ratio = bench.paired_ratio(samples, name, "static")
            rows.append(
                {
                    "backend": backend,
                    "case": case,
                    "contender": name,
                    "value": f"{stats[name][0]:.1f}",
                    "unit": "ms",
                    "ratio": f"{ratio:.2f}" if name != "static" else "",
                    "note": f"{len(layer.keys()):,} keys held, {NEW:.0%} new a "
                    "batch; ratio: time vs static",
                }
            )

    rows.extend(_tfkeras_case(backend, budget_s, key_dtype))

    # ---- memory: the state's bytes per held key ----
    state_bytes = sum(
        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        for v in layer.non_trainable_weights
    )
    rows.append(
        {
            "backend": backend,
            "case": "memory",
            "contender": "ours",
            "value": f"{state_bytes / CAPACITY:.0f}",
            "unit": "bytes / key",
            "ratio": "",
            "note": "every state variable but the rows, per row",
        }
    )
    keras.backend.clear_session()
    return rows


def _torchrec(backend, held):
    """TorchRec's `MCHManagedCollisionModule` filled with `held`, where this
    interpreter has it (the torchrec venv of `peers_README.md`), else None."""
    if backend != "torch":
        return None
    try:
        import _peers_dynamic as peers
        import torchrec  # noqa: F401
    except ImportError:
        return None
    return peers.torchrec_mch(
        CAPACITY,
        DIM,
        held,
        # The history window takes the largest call: the lookup case.
        batch_keys=max(BATCH[0] * BATCH[1], LOOKUP_KEYS),
        sparse=True,
    )


SMALL = 10_000  # tf-keras's layer compares every key with every vocabulary key


def _tfkeras_case(backend, budget_s, key_dtype):
    """`train_10k`: ours vs tf-keras's `DynamicEmbedding` at capacity 10,000,
    where this interpreter has tf-keras (the tfkeras venv), else no rows."""
    if backend != "tensorflow":
        return []
    try:
        import _peers_dynamic as peers
        import tf_keras  # noqa: F401
    except ImportError:
        return []
    import numpy as np

    from keras_embedding_plus import DynamicEmbedding

    rng = np.random.default_rng(1)
    held = rng.choice(2**40, size=int(FILL * SMALL), replace=False)
    held = held.astype(key_dtype)
    peer = peers.tfkeras_dynamic(SMALL, DIM, held, batch_keys=BATCH[0] * BATCH[1])
    model, _ = _filled(
        lambda: DynamicEmbedding(DIM, SMALL, key_dtype=key_dtype, eviction="lfu"),
        held,
        key_dtype,
    )
    y = np.zeros((BATCH[0], 1), "float32")

    def batch():
        keys = held[rng.integers(0, len(held), size=BATCH)]
        new = rng.integers(2**40, 2**41, size=BATCH).astype(key_dtype)
        return np.where(rng.random(BATCH) < NEW, new, keys)

    batches = [batch() for _ in range(8)]
    step = {"i": 0}

    def ours():
        model.train_on_batch(batches[step["i"] % 8], y)
        step["i"] += 1

    samples = {}
    stats = bench.time_interleaved(
        {"ours": ours, "tf_keras": lambda: peer.train_step(batches[step["i"] % 8], y)},
        budget_s,
        min_repeats=5,
        max_repeats=50,
        samples=samples,
    )
    ratio = bench.paired_ratio(samples, "tf_keras", "ours")
    return [
        {
            "backend": backend,
            "case": "train_10k",
            "contender": name,
            "value": f"{stats[name][0]:.1f}",
            "unit": "ms",
            "ratio": f"{ratio:.2f}" if name == "tf_keras" else "",
            "note": f"capacity {SMALL:,}, LFU, {NEW:.0%} new a batch; ratio: time "
            "vs ours",
        }
        for name in ("ours", "tf_keras")
    ]


def _fill(model, keys):
    import numpy as np

    chunk = 100_000
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        part = part[: len(part) // BATCH[1] * BATCH[1]].reshape(-1, BATCH[1])
        model.train_on_batch(part, np.zeros((len(part), 1), "float32"))


def _run_with_peers(budget_s):
    """TensorFlow under the tfkeras venv, torch under the torchrec venv
    (`PEER_TFKERAS_PYTHON`, `PEER_TORCHREC_PYTHON`), each in its own process,
    torch on one thread for every contender."""
    import os
    import subprocess

    for backend, name in (("tensorflow", "tfkeras"), ("torch", "torchrec")):
        python = os.environ.get(
            f"PEER_{name.upper()}_PYTHON", f"/work/peers/{name}/bin/python"
        )
        env = dict(os.environ, KERAS_BACKEND=backend, OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join([str(bench.ROOT), str(bench.HERE)])
        print(f"=== {backend}: {python}", flush=True)
        script = [python, __file__, "--budget", str(budget_s)]
        subprocess.run(script, env=env, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every backend, one by one")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds a case")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="torch in the torchrec venv, TensorFlow in the tfkeras venv",
    )
    args = parser.parse_args()
    if args.all:
        bench.run_each_backend(__file__, ["--budget", str(args.budget)])
        return
    if args.peers:
        _run_with_peers(args.budget)
        return
    rows = run_backend(args.budget)
    backend = rows[0]["backend"]
    bench.replace_backend_rows(CSV_PATH, FIELDS, rows, backend)
    for row in rows:
        print(
            f"  {row['case']:11} {row['contender']:7} {row['value']:>9} "
            f"{row['unit']:12} {row['ratio']:>5}  {row['note']}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
