"""Helpers of the saving tests (`integration_tests/test_saving_*.py` and others).

The saved fixtures stay with the integration tests (`integration_tests/fixtures/`).
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

import keras_embedding_plus
from keras_embedding_plus import Embedding
from keras_embedding_plus.testing.layers import expect

BACKEND = keras.backend.backend()
BACKENDS = ("tensorflow", "jax", "torch")
# The float32 tolerance every round trip must meet.
ATOL = 1e-6


def outputs(model, ids):
    """`model.predict(ids)` as a list of float32 NumPy arrays."""
    out = model.predict(ids, verbose=0)
    if not isinstance(out, (list, tuple)):
        out = [out]
    return [np.asarray(o, dtype=np.float32) for o in out]


def fill_weights(model, seed=1):
    """Deterministic values in [-0.5, 0.5) for every weight of `model`."""
    rng = np.random.RandomState(seed)
    model.set_weights(
        [rng.uniform(-0.5, 0.5, w.shape).astype(w.dtype) for w in model.get_weights()]
    )


def max_abs_diff(expected, received):
    """Largest absolute difference over matching lists of arrays."""
    expect(len(expected) == len(received), (len(expected), len(received)))
    diffs = []
    for a, b in zip(expected, received, strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        expect(a.shape == b.shape, (a.shape, b.shape))
        diffs.append(float(np.max(np.abs(a - b))) if a.size else 0.0)
    return max(diffs)


def assert_same_outputs(expected, received, atol=ATOL):
    diff = max_abs_diff(expected, received)
    expect(diff <= atol, f"max abs difference {diff} > {atol}")


def ids(shape, input_dim, seed=0, pad=True):
    """Deterministic int32 ids in `1 .. input_dim-1`, with trailing padding zeros."""
    values = np.random.RandomState(seed).randint(1, input_dim, size=shape)
    values = values.astype("int32")
    if pad:
        values[0, -2:] = 0
        values[-1, 1:] = 0
    return values


def embedding_layers(model):
    """Every `keras_embedding_plus.Embedding` in `model` (nested models too)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, Embedding):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(embedding_layers(layer))
    return found


def assert_same_embedding(saved, loaded):
    """`loaded` is our class with `saved`'s config and table."""
    expect(type(loaded) is Embedding, type(loaded))
    expect(loaded.get_config() == saved.get_config(), "configs differ")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.embeddings),
        keras.ops.convert_to_numpy(saved.embeddings),
    )


def package_path():
    """The directory holding the `keras_embedding_plus` this process imported."""
    return str(Path(keras_embedding_plus.__file__).resolve().parent.parent)


def run_python(code, cwd, timeout=240):
    """Run `code` in a fresh interpreter (this backend, this package) in `cwd`."""
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    # Import the package this test imported (installed or working tree), and
    # nothing else from the repository: `cwd` is elsewhere.
    env["PYTHONPATH"] = package_path()
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    expect(result.returncode == 0, result.stderr[-3000:])
    return result
