"""Past one process, JAX (issue 24, item 1): real processes on 127.0.0.1,
`jax.distributed` through `keras.distribution.initialize`, gloo CPU
collectives, bounded timeouts (`_jax_process_worker.py` is one process).

* `ModelParallel` with a `LayoutMap` sharding the table's rows over 2 and 4
  processes, and `DataParallel` over 2: 20 training steps equal the same
  training in one process to 1e-6, with Keras's `Adam` and with
  `sparse=True` + `SparseTrainer` + `LazyAdam`.
* Each process holds only its rows: its resident memory rises by about its
  share of the table and of the optimizer's slots, not the whole.
* Weights files move between one process and several; a process that dies
  stops the others; the Scaling out page's recipe runs as written.
"""

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_embedding_plus.testing import processes

pytestmark = pytest.mark.slow

BACKEND = keras.backend.backend()
JAX_ONLY = (
    "Keras's distribution API (keras.distribution.initialize, ModelParallel) "
    "is implemented for JAX only"
)
WORKER = Path(__file__).with_name("_jax_process_worker.py")
TIMEOUT_S = 240  # The whole run; a process that hangs fails the test.
VOCAB, DIM, LENGTH, BATCH, STEPS = 64, 8, 5, 16, 20


def _run(world, spec, tmp_path):
    """Run `world` worker processes; their results, by rank."""
    procs, logs = _finish(*_start(world, spec, tmp_path))
    failed = [
        f"rank {r} (exit {proc.returncode}):\n{log[-3000:]}"
        for r, (proc, log) in enumerate(zip(procs, logs, strict=True))
        if proc.returncode != 0
    ]
    assert not failed, "\n".join(failed)
    return [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(world)]


def _start(world, spec, tmp_path):
    """`world` worker processes, started; and their log files."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # One CPU device a process.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root), *filter(None, [env.get("PYTHONPATH")])]
    )
    (port,) = processes.free_ports()
    outs = [tmp_path / f"rank{r}.npz" for r in range(world)]
    logs = [open(tmp_path / f"rank{r}.log", "w+") for r in range(world)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), str(world), str(port)]
            + [str(spec_path), str(outs[r])],
            env=env,
            stdout=logs[r],
            stderr=subprocess.STDOUT,
        )
        for r in range(world)
    ]
    return procs, logs


def _finish(procs, logs, timeout=TIMEOUT_S):
    """Wait for the processes (killed past `timeout`: a hang fails the
    test); `(procs, texts of their logs)`."""
    hung = []
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for r, proc in enumerate(procs):
            if proc.poll() is None:
                hung.append(r)
                proc.kill()
                proc.wait()
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    assert not hung, f"ranks {hung} still ran after {timeout} s"
    return procs, texts


def _data(tmp_path, vocab=VOCAB):
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab, size=(STEPS * BATCH, LENGTH)).astype("int32")
    y = rng.normal(size=(STEPS * BATCH, 1)).astype("float32")
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    return x, y, str(path)


def _spec(data, layout="model_parallel", sparse=True, vocab=VOCAB, dim=DIM, **extra):
    """What `_jax_process_worker.py` runs (see its docstring)."""
    return dict(
        layout=layout,
        sparse=sparse,
        vocab=vocab,
        dim=dim,
        batch=BATCH,
        data=data,
        **extra,
    )


def _worker():
    """`_jax_process_worker.py` as a module: its `build_model`."""
    module_spec = importlib.util.spec_from_file_location("_jax_worker", WORKER)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _model(sparse, layer="embedding"):
    spec = {"vocab": VOCAB, "dim": DIM, "sparse": sparse, "layer": layer}
    return _worker().build_model(spec, LENGTH)[0]


@pytest.mark.skipif(BACKEND != "jax", reason=JAX_ONLY)
@pytest.mark.parametrize(
    "world, layout, sparse, layer",
    [
        (2, "model_parallel", True, "embedding"),
        (4, "model_parallel", False, "embedding"),
        (2, "data_parallel", False, "embedding"),
        (2, "model_parallel", True, "bag"),
        (2, "model_parallel", True, "collection"),
        (2, "model_parallel", True, "dynamic"),
        (2, "data_parallel", False, "dynamic"),
    ],
    ids=[
        "2-rows-sparse",
        "4-rows-adam",
        "2-batch-adam",
        "bag-2-rows-sparse",
        "collection-2-rows-sparse",
        "dynamic-2-rows-sparse",
        "dynamic-2-batch-adam",
    ],
)
def test_processes_train_as_one(tmp_path, world, layout, sparse, layer):
    """The processes load the one-process model's `.weights.h5`, train 20
    steps and equal the same 20 steps in one process. With `Embedding`,
    `EmbeddingCollection` and `DynamicEmbedding` (its key map sharded as its
    rows), sharded and sparse, each process also saves a
    `.weights.h5` and a `.keras` file (the table's rows and `LazyAdam`'s
    slots gathered from both), which load into one process with the trained
    weights and optimizer state: files move from 1 process to 2 and back."""
    x, y, data = _data(tmp_path)
    model = _model(sparse, layer)
    start = str(tmp_path / "one.weights.h5")
    model.save_weights(start)
    initial = model.get_weights()[0]
    files = (world, layout, sparse) == (2, "model_parallel", True) and layer in (
        "embedding",
        "collection",
        "dynamic",
    )
    spec = _spec(
        data, layout=layout, sparse=sparse, layer=layer, load=start, save=files
    )
    results = _run(world, spec, tmp_path)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    expected = model.get_weights()
    got = [results[0][f"w{i}"] for i in range(len(expected))]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)
    assert not np.allclose(got[0], initial)  # It trained.
    rows = [int(r["local_rows"]) for r in results]
    total = int(results[0]["rows"])
    if layout == "model_parallel":
        assert rows == [total // world] * world
    else:
        assert rows == [total] * world
    if layer == "dynamic":  # The key map's arrays are split as its rows.
        assert [int(r["local_keys"][0]) for r in results] == rows
    if not files:
        return
    for rank, kind in itertools.product(range(world), (".weights.h5", ".keras")):
        path = str(tmp_path / f"rank{rank}{kind}")
        if kind == ".keras":
            model_class = _worker().model_class()
            loaded = keras.saving.load_model(
                path, custom_objects={"Model": model_class}
            )
        else:
            loaded = _model(sparse, layer)
            loaded.optimizer.build(loaded.trainable_variables)
            loaded.load_weights(path)
        for g, gathered in zip(loaded.get_weights(), got, strict=True):
            np.testing.assert_array_equal(g, gathered)
        # The optimizer's state too (its slots of the table were sharded).
        for g, e in zip(
            loaded.optimizer.variables, model.optimizer.variables, strict=True
        ):
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(g),
                keras.ops.convert_to_numpy(e),
                rtol=1e-6,
                atol=1e-6,
            )


@pytest.mark.skipif(BACKEND != "jax", reason=JAX_ONLY)
def test_each_process_holds_its_rows_only(tmp_path):
    """A 2M x 32 table (256 MB) and `LazyAdam`'s two slots (512 MB more) over
    2 processes: each process's memory rises by less than 0.75 of that state
    (its half, plus the batch's rows and the runtime), where one process would
    hold it all."""
    vocab = 2_000_000
    _, _, data = _data(tmp_path, vocab)
    spec = _spec(data, vocab=vocab, dim=32, gather=False)
    state = 3 * vocab * 32 * 4  # The table, the two moments.
    results = _run(2, spec, tmp_path)
    rises = [int(r["rise"]) for r in results]
    assert [int(r["local_rows"]) for r in results] == [vocab // 2] * 2
    assert all(rise < 0.75 * state for rise in rises), (rises, state)
    assert all(rise > 0.4 * state for rise in rises), (rises, state)  # Its half.


SCALING_OUT = Path(__file__).resolve().parents[1] / "docs" / "scaling-out.md"


@pytest.mark.skipif(BACKEND != "jax", reason=JAX_ONLY)
def test_scaling_out_recipe_runs_as_written(tmp_path):
    """The Scaling out page's recipe, as written, in 2 processes launched as
    the page launches them (COORDINATOR, WORLD_SIZE, RANK): each holds half
    of the rows."""
    text = SCALING_OUT.read_text()
    start = text.index("```python\n# Scaling out recipe (jax, processes)")
    code = text[start + len("```python\n") : text.index("```", start + 10)]
    script = tmp_path / "train.py"
    script.write_text(code)
    root = Path(__file__).resolve().parents[1]
    (port,) = processes.free_ports()
    commands = []
    for rank in range(2):
        env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
        env.pop("XLA_FLAGS", None)
        env.update(COORDINATOR=f"127.0.0.1:{port}", WORLD_SIZE="2", RANK=str(rank))
        env["PYTHONPATH"] = str(root)
        commands.append(([sys.executable, str(script)], env))
    procs, outputs = processes.run_together(commands, TIMEOUT_S, cwd=tmp_path)
    for rank, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, out[-3000:]
        assert f"process {rank} holds 500000 of 1000000 rows" in out, out[-3000:]


@pytest.mark.skipif(BACKEND != "jax", reason=JAX_ONLY)
def test_a_dead_process_stops_the_others_naming_it(tmp_path):
    """Process 1 of 2 dies after 5 steps: process 0 does not hang. Its next
    step fails (gloo: the connection to its peer reset or closed), and JAX's
    coordination service stops it within its heartbeat timeout (3 s here),
    naming task 1."""
    _, _, data = _data(tmp_path)
    spec = _spec(data, die=1, heartbeat_s=3, gather=False)
    procs, logs = _finish(*_start(2, spec, tmp_path), timeout=120)
    assert procs[1].returncode == 3, logs[1][-3000:]
    assert procs[0].returncode != 0, logs[0][-3000:]
    # "Connection reset by peer" or "Connection closed by peer".
    assert "Gloo all-reduce failed" in logs[0], logs[0][-3000:]
    assert "by peer" in logs[0], logs[0][-3000:]
    assert "Task 1 heartbeat timeout" in logs[0], logs[0][-3000:]
