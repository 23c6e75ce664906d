"""Sharding on the distribution engines Keras already has.

JAX: `keras.distribution.ModelParallel` (table rows sharded by a `LayoutMap` over
a `DeviceMesh` of the 8 virtual CPU devices conftest.py sets up) and
`DataParallel`. TensorFlow: `tf.distribute.MirroredStrategy` over the 2 logical
CPU devices. PyTorch: 2 processes over gloo, DDP with a dense table, and the
Scaling out page's recipe (a sparse table, launched with torchrun). Each must
match the single-device run.
"""

import re
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_embedding_plus import Embedding

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
# The slowest tests: run them alone with `-m slow` (CONTRIBUTING.md).
pytestmark = [pytest.mark.keras_version, pytest.mark.slow]

BACKEND = keras.backend.backend()

VOCAB, DIM, LENGTH, BATCH = 64, 4, 5, 16
JAX_ONLY = (
    "Keras's distribution API is implemented for JAX only (TensorFlow: a "
    "'do not use' prototype; PyTorch: none)"
)


@pytest.fixture(autouse=True)
def _no_distribution_left_behind():
    yield
    if BACKEND == "jax":
        keras.distribution.set_distribution(None)


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, size=(BATCH, LENGTH)).astype("int32")
    y = rng.normal(size=(BATCH, LENGTH, 2)).astype("float32")
    return x, y


def make_model(vocab=VOCAB):
    model = keras.Sequential(
        [
            keras.Input((LENGTH,), dtype="int32"),
            Embedding(vocab, DIM, name="embedding"),
            keras.layers.Dense(2, name="dense"),
        ]
    )
    model.compile(keras.optimizers.SGD(0.5), "mse")
    return model


def single_device_run(x, y):
    """Initial weights, predictions and weights after 3 steps on one device."""
    model = make_model()
    weights = model.get_weights()
    before = model.predict(x, verbose=0)
    model.fit(x, y, epochs=3, batch_size=BATCH, shuffle=False, verbose=0)
    return weights, before, model.predict(x, verbose=0), model.get_weights()


def assert_matches_single_device(model, reference, x, y):
    weights, before, after, trained = reference
    model.set_weights(weights)
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=1e-5)
    model.fit(x, y, epochs=3, batch_size=BATCH, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), after, atol=1e-5)
    for got, expected in zip(model.get_weights(), trained, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)


# --- JAX -------------------------------------------------------------------


def model_parallel(shape):
    mesh = keras.distribution.DeviceMesh(
        shape, ("batch", "model"), keras.distribution.list_devices()
    )
    layout_map = keras.distribution.LayoutMap(mesh)
    # Keys are regexes matched against the whole variable path
    # ("sequential/embedding/embeddings" here): hence the leading ".*".
    layout_map[".*embedding/embeddings"] = ("model", None)
    return keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch"
    )


@pytest.mark.skipif(BACKEND != "jax", reason=JAX_ONLY)
@pytest.mark.parametrize("shape", [(1, 8), (2, 4)], ids=["rows-8", "batch2-rows4"])
def test_jax_model_parallel_shards_rows(shape):
    import jax

    x, y = data()
    reference = single_device_run(x, y)
    keras.distribution.set_distribution(model_parallel(shape))
    model = make_model()
    table = model.get_layer("embedding").embeddings
    assert table.value.sharding.spec == jax.sharding.PartitionSpec("model", None)
    rows = VOCAB // shape[1]
    shards = table.value.addressable_shards
    assert len(shards) == 8
    assert {s.data.shape for s in shards} == {(rows, DIM)}
    assert_matches_single_device(model, reference, x, y)
    # Still sharded the same way after training.
    assert table.value.sharding.spec == jax.sharding.PartitionSpec("model", None)
    assert {s.data.shape for s in table.value.addressable_shards} == {(rows, DIM)}


@pytest.mark.skipif(BACKEND != "jax", reason=JAX_ONLY)
def test_jax_data_parallel_replicates_the_table():
    x, y = data()
    reference = single_device_run(x, y)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    )
    model = make_model()
    value = model.get_layer("embedding").embeddings.value
    assert len(value.sharding.device_set) == 8
    assert value.sharding.is_fully_replicated
    assert_matches_single_device(model, reference, x, y)


@pytest.mark.skipif(BACKEND != "jax", reason=JAX_ONLY)
def test_jax_vocabulary_not_divisible_by_the_mesh_axis_says_what_to_change():
    keras.distribution.set_distribution(model_parallel((1, 8)))
    with pytest.raises(ValueError, match=r"Make `input_dim` a multiple of 8") as info:
        make_model(vocab=60)
    message = str(info.value)
    assert "input_dim=64" in message and "Received: input_dim=60" in message


@pytest.mark.skipif(BACKEND != "jax", reason=JAX_ONLY)
def test_jax_device_is_ignored_under_a_distribution():
    keras.distribution.set_distribution(model_parallel((1, 8)))
    layer = Embedding(VOCAB, DIM, device="cpu:2", name="embedding")
    with pytest.warns(UserWarning, match="ignored under a Keras distribution"):
        layer.build()
    assert len(layer.embeddings.value.sharding.device_set) == 8


# --- TensorFlow ------------------------------------------------------------


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute is TensorFlow's")
def test_tf_mirrored_strategy_matches_single_device():
    import tensorflow as tf

    x, y = data()
    reference = single_device_run(x, y)
    # Not the default all-reduce: in TF 2.21 a second MirroredStrategy in one
    # process (the Big tables page recipe's) whose collective all-reduce sees other
    # shapes fails with "Shape mismatch in the collective instance", with
    # `keras.layers.Embedding` too. The docs recipe runs the default.
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = make_model()
        table = model.get_layer("embedding").embeddings
        assert_matches_single_device(model, reference, x, y)
    devices = sorted(v.device for v in table.value.values)
    assert [d.rsplit(":", 1)[-1] for d in devices] == ["0", "1"]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute is TensorFlow's")
def test_tf_device_is_ignored_under_a_strategy():
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        layer = Embedding(VOCAB, DIM, device="cpu:1")
        with pytest.warns(UserWarning, match="ignored under a `tf.distribute`"):
            layer.build()
    assert len(layer.embeddings.value.values) == 2  # mirrored, not placed


# --- PyTorch ---------------------------------------------------------------


@pytest.mark.skipif(BACKEND != "torch", reason="what Keras offers on torch")
def test_torch_keras_distribution_is_not_implemented_and_ignored():
    # Keras 3.15 has no torch implementation of its distribution API: it
    # cannot list devices, and a distribution set with explicit devices is
    # ignored (variables get no layout, training is one process).
    with pytest.raises(AttributeError):
        keras.distribution.list_devices()
    x, y = data()
    reference = single_device_run(x, y)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=["cpu:0"])
    )
    try:
        model = make_model()
        assert model.get_layer("embedding").embeddings._layout is None
        assert_matches_single_device(model, reference, x, y)
    finally:
        keras.distribution.set_distribution(None)


# Two processes on this machine, gloo: what Keras's PyTorch guide does for
# multi-device training (torch's DistributedDataParallel around the Keras model),
# with a dense table and torch's SGD. (A sparse table: DDP refuses its gradient;
# the Scaling out page's recipe all-reduces it itself, test below.)
# The test starts the two worker processes itself: no launcher process (its
# import of torch took a second before the workers started).
_DDP_SCRIPT = """
import sys

VOCAB, DIM, LENGTH, BATCH = {sizes}


def model_and_data():
    import keras
    import numpy as np
    import torch

    from keras_embedding_plus import Embedding

    keras.utils.set_random_seed(1337)
    model = keras.Sequential(
        [keras.Input((LENGTH,), dtype="int32"), Embedding(VOCAB, DIM),
         keras.layers.Dense(2)]
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, size=(BATCH, LENGTH)).astype("int32")
    y = rng.normal(size=(BATCH, LENGTH, 2)).astype("float32")
    return model, torch.as_tensor(x), torch.as_tensor(y)


def train(module, x, y, model=None):
    # 3 steps; returns the bytes of the table's gradient each step (what DDP
    # all-reduces for it: the dense table).
    import torch

    model = module if model is None else model
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    sent = []
    for _ in range(3):
        for v in model.trainable_variables:
            v.value.grad = None
        torch.nn.functional.mse_loss(module(x), y).backward()
        grad = model.trainable_variables[0].value.grad
        assert not grad.is_sparse, grad.layout
        sent.append(grad.nbytes)
        optimizer.step()
    return sent


def worker(rank, world, store, out):
    import os

    import numpy as np
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(
        "gloo", init_method="file://" + store, rank=rank, world_size=world
    )
    model, x, y = model_and_data()
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    sent = train(DistributedDataParallel(model), x[part], y[part], model)
    if rank == 0:
        np.savez(out, *model.get_weights(), sent=np.asarray(sent))
    # Both ranks done, then leave without tearing gloo down: its teardown at
    # exit aborted a worker ("terminate called without an active exception",
    # SIGABRT) about once in four runs next to other tests, after the result
    # was written.
    dist.barrier()
    os._exit(0)


if __name__ == "__main__":  # rank, file store, output
    worker(int(sys.argv[1]), 2, sys.argv[2], sys.argv[3])
"""


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed is PyTorch's")
def test_torch_ddp_two_processes_match_one(tmp_path):
    """DDP over 2 processes (gloo), a dense table and torch's SGD, equals one
    process on the whole batch; it all-reduces the whole table each step."""
    import os
    import subprocess
    import sys

    import keras_embedding_plus

    script = _DDP_SCRIPT.format(sizes=(VOCAB, DIM, LENGTH, BATCH))
    path = tmp_path / "ddp.py"
    path.write_text(script)
    root = os.path.dirname(os.path.dirname(keras_embedding_plus.__file__))
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONPATH=root)
    out = tmp_path / "ddp.npz"
    procs = [
        subprocess.Popen(
            [sys.executable, str(path), str(rank), str(tmp_path / "store"), str(out)],
            env=env,
        )
        for rank in range(2)
    ]
    try:
        for proc in procs:
            proc.wait(timeout=180)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0]
    # The same training in this process, on the whole batch.
    namespace = {}
    exec(compile(script, str(path), "exec"), namespace)
    model, x, y = namespace["model_and_data"]()
    initial = model.get_weights()
    namespace["train"](model, x, y)
    with np.load(out) as saved:
        ddp = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
        sent = saved["sent"]
    for got, expected in zip(ddp, model.get_weights(), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(model.get_weights()[0], initial[0])  # it trained
    assert (sent == VOCAB * DIM * 4).all(), sent


SCALING_OUT = Path(__file__).resolve().parents[1] / "docs" / "scaling-out.md"
TORCH_RECIPE = "# Scaling out recipe (torch, processes)"


def _torch_recipe():
    """The Scaling out page's PyTorch recipe, as written."""
    text = SCALING_OUT.read_text()
    start = text.index("```python\n" + TORCH_RECIPE)
    return text[start + len("```python\n") : text.index("```", start + 10)]


def _torchrun(code, tmp_path):
    """`code` as `train.py`, run by `torchrun --nproc-per-node 2 train.py`
    (180 s at most): the launcher's process and its output."""
    import os
    import signal
    import subprocess
    import sys

    import keras_embedding_plus

    (tmp_path / "train.py").write_text(code)
    root = os.path.dirname(os.path.dirname(keras_embedding_plus.__file__))
    env = dict(os.environ, PYTHONPATH=root)
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # = `torchrun`
    proc = subprocess.Popen(
        [*torchrun, "--nproc-per-node", "2", "train.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # torchrun and its workers: one group to kill
    )
    try:
        out = proc.communicate(timeout=180)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc, out


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed is PyTorch's")
def test_torch_scaling_out_recipe_runs_as_written(tmp_path):
    """The Scaling out page's PyTorch recipe, as written, launched as the page
    launches it (`torchrun --nproc-per-node 2 train.py`: 2 processes, gloo,
    localhost, a port torchrun picks): the sparse table's gradient all-reduced
    as sparse and `LazyAdam`. The weights process 0 saves equal Keras's own
    `fit` of the same model on the whole batch in this process (3 steps, to
    1e-5); each process sent its rows for the table, not the table; both
    processes exit with 0 (torchrun says so), after `destroy_process_group`."""
    from keras_embedding_plus.optimizers import LazyAdam

    text = SCALING_OUT.read_text()
    assert "\ntorchrun --nproc-per-node 2 train.py\n" in text
    proc, out = _torchrun(_torch_recipe(), tmp_path)
    assert proc.returncode == 0, out[-3000:]
    # Each process's share: 32 of the 64 examples, 5 ids each.
    sent = sorted(re.findall(r"process (\d): loss [\d.]+, sent (\d+) of", out))
    assert [rank for rank, _ in sent] == ["0", "1"], out[-3000:]
    assert all(0 < int(rows) <= 32 * 5 for _, rows in sent), sent

    # The same model, seed and global batch as the page's, trained by Keras's
    # own `fit` in this process: 3 steps of the whole batch.
    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [
                keras.Input((5,), dtype="int32"),
                Embedding(100_000, 16, sparse=True),
                keras.layers.GlobalAveragePooling1D(),
                keras.layers.Dense(1),
            ]
        )

    reference = model()
    initial = reference.get_weights()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 100_000, (64, 5)).astype("int32")
    y = rng.normal(size=(64, 1)).astype("float32")
    reference.compile(LazyAdam(0.05), "mse")
    reference.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)
    trained = model()
    trained.load_weights(tmp_path / "trained.weights.h5")
    for got, expected in zip(
        trained.get_weights(), reference.get_weights(), strict=True
    ):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(trained.get_weights()[0], initial[0])  # it trained


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed is PyTorch's")
def test_torch_a_dead_process_stops_the_other_naming_its_rank(tmp_path):
    """The page's recipe, process 1 of 2 exiting (code 3) before its second
    step: process 0 does not hang. `torchrun` stops it and fails the run,
    naming the rank that failed and its exit code."""
    code = _torch_recipe()
    loop = "for step in range(3):\n"
    assert loop in code
    code = code.replace(
        loop, loop + "    if rank == 1 and step == 1:\n        os._exit(3)\n"
    )
    proc, out = _torchrun(code, tmp_path)
    assert proc.returncode != 0, out[-3000:]
    assert "ChildFailedError" in out, out[-3000:]
    # Process 0, stopped by torchrun (SIGTERM), not left waiting in gloo.
    assert re.search(r"rank\s*: 0 \(local_rank: 0\)\s+exitcode\s*: -15", out)
    root_cause = out[out.index("Root Cause") :]
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s+exitcode\s*: 3", root_cause)
    assert not (tmp_path / "trained.weights.h5").exists()


# --- The Big tables page's recipes -----------------------------------------
# integration_tests/test_docs.py runs every code block of the docs, these recipes
# included (each on the backend its first line names); here: the page still has
# them all.

BIG_TABLES = Path(__file__).resolve().parents[1] / "docs" / "big-tables.md"
_RECIPE = re.compile(r"```python\n# Big tables recipe \(([\w ]+)\): ")


def test_big_tables_page_has_the_recipes():
    assert sorted(_RECIPE.findall(BIG_TABLES.read_text())) == [
        "every backend",
        "jax",
        "tensorflow",
        "tensorflow",
    ]
