"""One process of a multi-process JAX run (`test_jax_processes.py`).

Usage: `python _jax_process_worker.py RANK WORLD PORT SPEC OUT`; SPEC is a
JSON file: the layout ("model_parallel": the table's rows sharded over the
processes; "data_parallel": the batch split, the table replicated), whether
the table is `sparse=True` (then `SparseTrainer` + `LazyAdam`, else Keras's
`Adam`), the sizes and the data (`.npz`). Writes the
trained weights (process 0), this process's share of the table and how far
its resident memory rose to OUT (`.npz`); with `"load"`, loads a weights file
first; with `"save"`, saves `OUT` as `.weights.h5` and as `.keras` too; with `"die": r`,
process `r` exits (code 3) after 5 steps; `"heartbeat_s"`: JAX's heartbeat
timeout.

The recipe is the Scaling out page's: gloo CPU collectives, then
`keras.distribution.initialize` on 127.0.0.1, then a `ModelParallel` whose
`LayoutMap` shards `embeddings` by rows (and a `DynamicEmbedding`'s key map
as its rows; OUT's `local_keys`: this process's share of it).
"""

import json
import os
import sys


def _status_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss():
    """The resident memory now; the peak (`VmHWM`) restarts from it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def model_class():
    """The model class: Keras's functional `Model` with `SparseTrainer`."""
    import keras

    from keras_embedding_plus.training import SparseTrainer

    class Model(SparseTrainer, keras.Model):
        pass

    return Model


def build_model(spec, length):
    """The model of `spec` (also built by the test, in one process) and its
    table variable: `spec["layer"]` "embedding" (default) then pooled,
    "bag" (`EmbeddingBag`, mean), "collection" (`EmbeddingCollection`, two
    tables of half the vocabulary in one stack) or "dynamic"
    (`DynamicEmbedding`, `capacity` the vocabulary, int32 keys, then
    pooled); then `Dense(1)`, MSE,
    `LazyAdam` with `sparse=True` in a `SparseTrainer` model, else `Adam`."""
    import keras

    from keras_embedding_plus import (
        DynamicEmbedding,
        Embedding,
        EmbeddingBag,
        EmbeddingCollection,
        FeatureConfig,
        TableConfig,
    )
    from keras_embedding_plus.optimizers import LazyAdam

    vocab, dim, sparse = spec["vocab"], spec["dim"], spec["sparse"]
    kind = spec.get("layer", "embedding")
    inputs = keras.Input((length,), dtype="int32")
    if kind == "embedding":
        layer = Embedding(vocab, dim, sparse=sparse, name="embedding")
        pooled = keras.layers.GlobalAveragePooling1D()(layer(inputs))
        variable = layer.embeddings
    elif kind == "dynamic":
        layer = DynamicEmbedding(
            dim, capacity=vocab, key_dtype="int32", sparse=sparse, name="embedding"
        )
        pooled = keras.layers.GlobalAveragePooling1D()(layer(inputs))
        variable = layer.embeddings
    elif kind == "bag":
        layer = EmbeddingBag(vocab, dim, sparse=sparse, name="embedding")
        pooled = layer(inputs)
        variable = layer.embeddings
    else:
        half = vocab // 2
        features = {
            n: FeatureConfig(n, TableConfig(n, half, dim, combiner="sum"))
            for n in ("a", "b")
        }
        layer = EmbeddingCollection(features, sparse=sparse, name="embedding")
        out = layer({"a": inputs % half, "b": inputs // 2})
        pooled = keras.layers.Concatenate()([out["a"], out["b"]])
        variable = layer.stacks[0]
    model = model_class()(inputs, keras.layers.Dense(1, name="dense")(pooled))
    model.compile(LazyAdam(0.01) if sparse else keras.optimizers.Adam(0.01), "mse")
    return model, variable


def main(rank, world, port, spec_path, out):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras

    keras.config.disable_traceback_filtering()  # Whole tracebacks in the log.
    with open(spec_path) as f:
        spec = json.load(f)
    if "heartbeat_s" in spec:
        # `jax.distributed` itself, to set how soon a silent process counts
        # as dead (Keras's `initialize` keeps JAX's 100 s); the same seed on
        # every process, as Keras's `initialize` sets it.
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=world,
            process_id=rank,
            heartbeat_timeout_seconds=spec["heartbeat_s"],
        )
        keras.utils.set_random_seed(0)
    else:
        keras.distribution.initialize(
            job_addresses=f"127.0.0.1:{port}",
            num_processes=world,
            process_id=rank,
        )
    import numpy as np

    devices = keras.distribution.list_devices()
    assert len(devices) == world, devices
    if spec["layout"] == "model_parallel":
        mesh = keras.distribution.DeviceMesh((1, world), ("batch", "model"), devices)
        layout_map = keras.distribution.LayoutMap(mesh)
        # `Embedding` / `EmbeddingBag`: embeddings; `EmbeddingCollection`:
        # its stack of one width.
        layout_map[".*embedding/(embeddings|stack_0)"] = ("model", None)
        # `DynamicEmbedding`: its key map's arrays, split as its rows.
        layout_map[".*embedding/keys_(stamps|counts|sorted_keys|sorted_rows)"] = (
            "model",
        )
        distribution = keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch", auto_shard_dataset=False
        )
    else:
        distribution = keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=False
        )
    keras.distribution.set_distribution(distribution)
    data = np.load(spec["data"])
    x, y = data["x"], data["y"]
    if spec["layout"] == "data_parallel":
        # Each process feeds its share of every global batch, in rank order.
        def share(a):
            a = a.reshape(-1, world, spec["batch"] // world, *a.shape[1:])
            return a[:, rank].reshape(-1, *a.shape[3:])

        x, y = share(x), share(y)

    baseline = reset_peak_rss()
    model, variable = build_model(spec, x.shape[1])
    if "load" in spec:  # A file saved by one process, into the sharded model.
        model.load_weights(spec["load"])
    callbacks = []
    if spec.get("die") == rank:  # This process dies after 5 steps.

        class Die(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == 4:
                    os._exit(3)

        callbacks.append(Die())
    model.fit(
        x,
        y,
        batch_size=spec["batch"] // (world if spec["layout"] == "data_parallel" else 1),
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    value = variable.value
    local = [s.data for s in value.addressable_shards]
    result = {
        "local_rows": np.asarray(sum(int(s.shape[0]) for s in local)),
        "local_keys": np.asarray(
            [
                sum(int(s.data.shape[0]) for s in w.value.addressable_shards)
                for w in model.non_trainable_weights
                if w.path.endswith("sorted_keys")
            ]
        ),
        "rows": np.asarray(variable.shape[0]),
        # How far this process's memory rose while it built and trained.
        "rise": np.asarray(_status_bytes("VmHWM") - baseline),
    }
    if spec.get("save"):
        # Every process saves (the sharded rows are gathered: a collective),
        # each to its own file.
        model.save_weights(out[: -len(".npz")] + ".weights.h5")
        model.save(out[: -len(".npz")] + ".keras")
    if spec.get("gather", True):
        # The whole trained weights, gathered to every process.
        from jax.experimental import multihost_utils

        weights = [
            np.asarray(multihost_utils.process_allgather(v.value, tiled=True))
            for v in model.weights
        ]
        if rank == 0:
            result.update({f"w{i}": w for i, w in enumerate(weights)})
    np.savez(out, **result)


if __name__ == "__main__":
    rank, world, port = (int(a) for a in sys.argv[1:4])
    os.environ.setdefault("KERAS_BACKEND", "jax")
    main(rank, world, port, sys.argv[4], sys.argv[5])
