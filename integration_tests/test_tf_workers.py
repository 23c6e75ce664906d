"""Past one process, TensorFlow (issue 24, item 2): the Scaling out page's
`MultiWorkerMirroredStrategy` recipe, as written, in 2 worker processes on
127.0.0.1 (`TF_CONFIG`), with bounded timeouts.

Keras 3.15's `fit` fails under that strategy before its first step (for
Keras's own `Embedding` too), so the recipe trains with a loop of its own
(`strategy.run`, `tf.GradientTape`, the optimizer's `apply`): the path this
tests, with `sparse=True` and `LazyAdam` (the table's gradient crosses the
workers as `IndexedSlices`).
"""

import os
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_embedding_plus import Embedding
from keras_embedding_plus.optimizers import LazyAdam
from keras_embedding_plus.testing import processes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="tf.distribute.MultiWorkerMirroredStrategy is TensorFlow's",
    ),
]

ROOT = Path(__file__).resolve().parents[1]
SCALING_OUT = ROOT / "docs" / "scaling-out.md"
MARKER = "# Scaling out recipe (tensorflow, processes)"
TIMEOUT_S = 180  # The whole run; a worker that hangs fails the test.
# The recipe's model and data.
VOCAB, DIM, LENGTH, ROWS, GLOBAL_BATCH = 100_000, 16, 5, 2048, 256


def _recipe():
    text = SCALING_OUT.read_text()
    start = text.index("```python\n" + MARKER)
    return text[start + len("```python\n") : text.index("```", start + 10)]


def _model():
    """The recipe's model, built in this process (one device)."""
    inputs = keras.Input((LENGTH,), dtype="int32")
    table = Embedding(VOCAB, DIM, sparse=True, name="embedding")
    pooled = keras.layers.GlobalAveragePooling1D()(table(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
    model.compile(LazyAdam(1e-3), "mse")
    return model


def _run_workers(script, workers, cwd):
    """The script in `workers` processes, as the page launches them."""
    addresses = ",".join(f"127.0.0.1:{p}" for p in processes.free_ports(workers))
    commands = []
    for rank in range(workers):
        env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=str(ROOT))
        env.update(WORKERS=addresses, RANK=str(rank))
        env.pop("TF_CONFIG", None)
        commands.append(([sys.executable, str(script)], env))
    return processes.run_together(commands, TIMEOUT_S, cwd=cwd)


def test_multi_worker_recipe_matches_one_process(tmp_path):
    """Two workers, starting from a file one process saved, train 8 global
    batches of 256; each worker's `.keras` file loads into one process with
    the weights and `LazyAdam`'s state of the same steps taken here on the
    whole global batches."""
    keras.utils.set_random_seed(7)  # Not the recipe's seed: the file counts.
    reference = _model()
    reference.optimizer.build(reference.trainable_variables)
    reference.save_weights(tmp_path / "start.weights.h5")
    script = tmp_path / "train.py"
    script.write_text(_recipe())

    procs, outputs = _run_workers(script, 2, tmp_path)
    for rank, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, out[-3000:]
        assert f"worker {rank} of 2 trained 8 steps" in out, out[-3000:]

    rng = np.random.default_rng(0)  # The recipe's data.
    x = rng.integers(0, VOCAB, (ROWS, LENGTH)).astype("int32")
    y = rng.normal(size=(ROWS, 1)).astype("float32")
    for start in range(0, ROWS, GLOBAL_BATCH):
        batch = slice(start, start + GLOBAL_BATCH)
        reference.train_on_batch(x[batch], y[batch])
    expected = [v.numpy() for v in reference.weights]
    expected_state = [v.numpy() for v in reference.optimizer.variables]
    assert np.abs(expected[0]).max() > 0  # Trained, not the zeros of a miss.
    for rank in range(2):
        loaded = keras.saving.load_model(tmp_path / f"worker{rank}.keras")
        got = [v.numpy() for v in loaded.weights]
        state = [v.numpy() for v in loaded.optimizer.variables]
        assert len(got) == len(expected) and len(state) == len(expected_state)
        for a, b in zip(got + state, expected + expected_state, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_a_dead_worker_stops_the_other_naming_it(tmp_path):
    """Worker 1 of 2 exits before its 4th step: worker 0 does not hang. Its
    step fails at once (the connection to worker 1 reset), naming the task."""
    recipe = _recipe()
    loop = "    mine = slice("
    assert loop in recipe
    script = tmp_path / "train.py"
    script.write_text(
        recipe.replace(
            loop,
            "    if rank == 1 and start == 3 * GLOBAL_BATCH:\n"
            "        os._exit(3)\n" + loop,
        )
    )
    procs, outputs = _run_workers(script, 2, tmp_path)
    assert procs[1].returncode == 3, outputs[1][-3000:]
    assert procs[0].returncode != 0, outputs[0][-3000:]
    assert "UnavailableError" in outputs[0], outputs[0][-3000:]
    assert "/job:worker/replica:0/task:1" in outputs[0], outputs[0][-3000:]
    assert not (tmp_path / "worker0.keras").exists()
