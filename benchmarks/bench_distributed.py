"""Two processes on this machine (issue 24): the step time and the bytes
exchanged per step, sparse against dense, sharded against replicated.

Each case starts 2 processes of this script (``--worker``) on 127.0.0.1 and
trains ``Embedding(1M, 64) -> GlobalAveragePooling1D -> Dense(1)`` on a global
batch of 4096 x 8 ids:

* JAX (`keras.distribution` over `jax.distributed`, gloo), `sparse=True` with
  `SparseTrainer` and `LazyAdam`: ``sharded``, the table's rows split over the
  processes (`ModelParallel`, every process feeding the whole batch), against
  ``replicated``, the whole table on each and the batch split (`DataParallel`).
* PyTorch (`torch.distributed`, gloo), the batch split: ``sparse``, the
  row-sparse gradient all-reduced as a sparse tensor and `LazyAdam`, against
  ``dense``, a dense table whose gradient is all-reduced whole (torch's `SGD`).
* TensorFlow (`tf.distribute.MultiWorkerMirroredStrategy` over `TF_CONFIG`,
  the Scaling out page's training loop), the batch split: ``sparse``, the
  table's `IndexedSlices` gradient all-gathered and `LazyAdam`, against
  ``dense``, a dense table whose gradient is all-reduced whole (Keras's
  `SGD`).

Bytes: what went through the loopback interface during the timed steps
(`/proc/net/dev`, ``lo``, sent bytes of the whole machine, so quiet it), per
step. On 2 cores this shows traffic and correctness, not speed-up: both
processes share the 2 cores with each other.

Usage::

    python benchmarks/bench_distributed.py            # every backend
    python benchmarks/bench_distributed.py --steps 5  # a quick check
    python benchmarks/bench_distributed.py --backends tensorflow
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import _bench as bench

CSV_PATH = bench.RESULTS / "bench_distributed.csv"
FIELDS = ("backend", "case", "step_ms", "mb_per_step", "table_mb", "note")
VOCAB, DIM, BATCH, LENGTH = 1_000_000, 64, 4096, 8
ENGINES = {
    "jax": "gloo",
    "torch": "gloo",
    "tensorflow": "MultiWorkerMirroredStrategy (gRPC)",
}
CASES = {
    "jax": ("sharded", "replicated"),
    "torch": ("sparse", "dense"),
    "tensorflow": ("sparse", "dense"),
}


def _lo_sent_bytes():
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[8])
    return 0


def _data(rank, world, split):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, (BATCH, LENGTH)).astype("int32")
    y = rng.normal(size=(BATCH, 1)).astype("float32")
    if split:
        share = BATCH // world
        x, y = (
            x[rank * share : (rank + 1) * share],
            y[rank * share : (rank + 1) * share],
        )
    return x, y


def _jax_worker(rank, world, port, case, steps):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras

    keras.distribution.initialize(
        job_addresses=f"127.0.0.1:{port}", num_processes=world, process_id=rank
    )
    from keras_embedding_plus import Embedding
    from keras_embedding_plus.optimizers import LazyAdam
    from keras_embedding_plus.training import SparseTrainer

    devices = keras.distribution.list_devices()
    if case == "sharded":
        mesh = keras.distribution.DeviceMesh((1, world), ("batch", "model"), devices)
        layout_map = keras.distribution.LayoutMap(mesh)
        layout_map[".*embedding/embeddings"] = ("model", None)
        distribution = keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch", auto_shard_dataset=False
        )
    else:
        distribution = keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=False
        )
    keras.distribution.set_distribution(distribution)

    class Model(SparseTrainer, keras.Model):
        pass

    inputs = keras.Input((LENGTH,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(
        Embedding(VOCAB, DIM, sparse=True, name="embedding")(inputs)
    )
    model = Model(inputs, keras.layers.Dense(1)(pooled))
    model.compile(LazyAdam(1e-3), "mse")
    x, y = _data(rank, world, split=case == "replicated")

    def step():
        model.train_on_batch(x, y)

    return _timed(step, steps)


def _torch_worker(rank, world, port, case, steps):
    import torch
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    import keras

    from keras_embedding_plus import Embedding
    from keras_embedding_plus.optimizers import LazyAdam

    sparse = case == "sparse"
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((LENGTH,), dtype="int32"),
            Embedding(VOCAB, DIM, sparse=sparse),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    optimizer = LazyAdam(1e-3) if sparse else keras.optimizers.SGD(0.1)
    x, y = (torch.as_tensor(a) for a in _data(rank, world, split=True))

    def step():
        for v in model.trainable_variables:
            v.value.grad = None
        torch.nn.functional.mse_loss(model(x), y).backward()
        for v in model.trainable_variables:
            grad = v.value.grad
            grad = grad.coalesce() if grad.is_sparse else grad
            dist.all_reduce(grad)
            v.value.grad = grad / world
        with torch.no_grad():
            optimizer.apply(
                [v.value.grad for v in model.trainable_variables],
                model.trainable_variables,
            )

    result = _timed(step, steps)
    dist.barrier()
    return result


def _tf_worker(rank, world, port, case, steps):
    ports = [int(p) for p in str(port).split(",")]
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": rank},
        }
    )
    import keras
    import tensorflow as tf

    from keras_embedding_plus import Embedding
    from keras_embedding_plus.optimizers import LazyAdam

    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=300
        )
    )
    sparse = case == "sparse"
    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((LENGTH,), dtype="int32")
        pooled = keras.layers.GlobalAveragePooling1D()(
            Embedding(VOCAB, DIM, sparse=sparse, name="embedding")(inputs)
        )
        model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
        optimizer = LazyAdam(1e-3) if sparse else keras.optimizers.SGD(0.1)
        optimizer.build(model.trainable_variables)
    x, y = (tf.constant(a) for a in _data(rank, world, split=True))

    @tf.function
    def train_step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                error = keras.losses.mean_squared_error(y, model(x, training=True))
                loss = tf.reduce_sum(error) / BATCH
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(gradients, model.trainable_variables)

        strategy.run(replica_step, args=(x, y))

    return _timed(lambda: train_step(x, y), steps)


def _timed(step, steps):
    for _ in range(2):  # Compile / warm up.
        step()
    times, sent = [], _lo_sent_bytes()
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return {"step_ms": statistics.median(times), "sent": _lo_sent_bytes() - sent}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_case(backend, case, steps):
    # TensorFlow: one port a worker; else the coordinator's.
    ports = [_free_port() for _ in range(2 if backend == "tensorflow" else 1)]
    port = ",".join(map(str, ports))
    python = bench.ROOT / ".tox" / backend / "bin" / "python"
    python = str(python) if python.exists() else sys.executable
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(bench.ROOT), str(bench.HERE)])
    procs = [
        subprocess.Popen(
            [python, __file__, "--worker", backend, case, str(rank), str(port)]
            + ["--steps", str(steps)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"{backend} {case}: a worker failed")
    result = json.loads(outs[0].strip().splitlines()[-1])
    # Loopback bytes count every process's sends once: the machine's total.
    return {
        "backend": backend,
        "case": case,
        "step_ms": f"{result['step_ms']:.1f}",
        "mb_per_step": f"{result['sent'] / steps / 1e6:.2f}",
        "table_mb": f"{VOCAB * DIM * 4 / 1e6:.0f}",
        "note": f"2 processes, 127.0.0.1, {ENGINES[backend]}; global batch "
        f"{BATCH} x {LENGTH}",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--backends", default="jax,torch,tensorflow", help="comma-separated"
    )
    parser.add_argument(
        "--worker", nargs=4, metavar=("BACKEND", "CASE", "RANK", "PORT")
    )
    args = parser.parse_args()
    if args.worker:
        backend, case, rank, port = args.worker
        worker = {"jax": _jax_worker, "torch": _torch_worker, "tensorflow": _tf_worker}
        result = worker[backend](int(rank), 2, port, case, args.steps)
        print(json.dumps(result), flush=True)
        os._exit(0)  # No gloo teardown at exit (it can abort a process).
    rows = []
    backends = args.backends.split(",")
    for backend in backends:
        for case in CASES[backend]:
            row = _run_case(backend, case, args.steps)
            print(row, flush=True)
            rows.append(row)
    for backend in backends:
        bench.replace_backend_rows(
            CSV_PATH, FIELDS, [r for r in rows if r["backend"] == backend], backend
        )


if __name__ == "__main__":
    main()
