"""Table placement: `Embedding(device=...)` vs the default placement, per backend.

Cases (Keras's own entry points, compiled on TensorFlow and JAX, eager on torch):

* ``forward``: ``model.predict_on_batch``, vocab 100,000 x 128, ids 1024 x 64.
* ``train``: one Adam ``model.train_on_batch`` of ``Embedding(100k, 64) ->
  GlobalAveragePooling1D -> Dense(1)`` on a 256 x 32 batch.

Contenders: ``default`` (``device=None``), ``other`` (the table on another device:
``cpu:1`` of the 4 virtual JAX CPU devices or the 2 logical TensorFlow CPUs; on
torch, which has one CPU device, ``cpu`` -- the placement code path on the same
device) and ``host`` (host memory: JAX memory kind ``pinned_host`` of the compute
device; TensorFlow ``/device:CPU:0``; torch ``cpu``). On this CPU-only machine
"devices" share the same cores and RAM, so the numbers are the cost of the
placement machinery (dispatch, copies, host-memory gathers), not of a PCIe link.

Timing: interleaved rounds and medians (``_bench.time_interleaved``).

Usage::

    KERAS_BACKEND=jax python benchmarks/bench_placement.py   # one backend
    python benchmarks/bench_placement.py --all               # each, in a subprocess

Results: ``benchmarks/results/bench_placement.csv`` (a run replaces its backend's
rows).
"""

import argparse
import os
import warnings

from _bench import (
    RESULTS,
    replace_backend_rows,
    run_each_backend,
    start_backend,
    time_interleaved,
)

CSV_PATH = RESULTS / "bench_placement.csv"
OTHER = {"jax": "cpu:1", "tensorflow": "cpu:1", "torch": "cpu"}
FIELDS = ("backend", "case", "contender", "device", "median_ms", "ratio")


def setup_devices(backend):
    """Several devices on one CPU; must run before the backend is imported."""
    if backend == "jax":
        flag = "--xla_force_host_platform_device_count=4"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}"
    if backend == "tensorflow":
        import tensorflow as tf

        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
        )


def make_models(backend, case, rng):
    import keras

    from keras_embedding_plus import Embedding

    contenders = {"default": None, "other": OTHER[backend], "host": "host"}
    models, weights = {}, None
    for name, device in contenders.items():
        keras.utils.set_random_seed(0)
        if case == "forward":
            model = keras.Sequential(
                [
                    keras.Input((64,), dtype="int32"),
                    Embedding(100_000, 128, device=device),
                ]
            )
        else:
            model = keras.Sequential(
                [
                    keras.Input((32,), dtype="int32"),
                    Embedding(100_000, 64, device=device),
                    keras.layers.GlobalAveragePooling1D(),
                    keras.layers.Dense(1),
                ]
            )
            model.compile("adam", "mse")
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        models[name] = (model, device)
    if case == "forward":
        x = rng.integers(0, 100_000, size=(1024, 64)).astype("int32")
        return {
            n: (lambda m=m: m.predict_on_batch(x), d) for n, (m, d) in models.items()
        }
    x = rng.integers(0, 100_000, size=(256, 32)).astype("int32")
    y = rng.normal(size=(256, 1)).astype("float32")
    return {n: (lambda m=m: m.train_on_batch(x, y), d) for n, (m, d) in models.items()}


def run_backend(budget_s):
    backend = start_backend()
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for case in ("forward", "train"):
        fns = make_models(backend, case, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # JAX: "compiles a step for one device"
            stats = time_interleaved(
                {n: f for n, (f, _) in fns.items()}, budget_s, 10, 200
            )
        base = stats["default"][0]
        for name, (_, device) in fns.items():
            median = stats[name][0]
            rows.append(
                {
                    "backend": backend,
                    "case": case,
                    "contender": name,
                    "device": str(device),
                    "median_ms": f"{median:.2f}",
                    "ratio": f"{median / base:.2f}",
                }
            )
            print(
                f"{backend:10s} {case:8s} {name:8s} device={device!s:6s} "
                f"{median:8.2f} ms  {median / base:.2f}x default",
                flush=True,
            )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every backend")
    parser.add_argument("--budget", type=float, default=8.0, help="seconds a case")
    args = parser.parse_args()
    if args.all:
        run_each_backend(__file__, ["--budget", args.budget])
        return
    setup_devices(os.environ.get("KERAS_BACKEND", "tensorflow"))
    rows = run_backend(args.budget)
    replace_backend_rows(CSV_PATH, FIELDS, rows, rows[0]["backend"])


if __name__ == "__main__":
    main()
