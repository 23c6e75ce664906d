"""`DynamicEmbedding` with int64 keys on JAX, which holds them only with x64
enabled (`JAX_ENABLE_X64=1`): a fresh process, as a user would run it.

The other backends hold int64 natively: `tests/layers/test_dynamic.py` runs
its oracle test with int64 keys there; on JAX without x64 it runs with int32.
"""

import os
import subprocess
import sys

import keras
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="TensorFlow and PyTorch hold int64 keys without a flag: "
    "tests/layers/test_dynamic.py covers them",
)

# Compiled `fit` steps on keys past 2**31 and below -2**31, LFU with admission
# on the second sighting, checked after each batch against the plain Python
# oracle; then the same keys looked up by a compiled `predict`.
SCRIPT = """
import jax
assert jax.config.jax_enable_x64
import keras, numpy as np
from keras_embedding_plus import DynamicEmbedding
from keras_embedding_plus.testing.dynamic import Oracle

rng = np.random.default_rng(0)
pool = np.asarray([3, -7, 2**40 + 1, -(2**45), 2**62, 2**31 + 5, -(2**31) - 9])
layer = DynamicEmbedding(4, 4, eviction="lfu", min_count=2, candidate_capacity=3)
model = keras.Sequential([keras.Input((3,), dtype="int64"), layer,
                          keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
model.compile("sgd", "mse")
oracle = Oracle(4, "lfu", 2, 3)
for step in range(8):
    batch = rng.choice(pool, size=(4, 3)).astype("int64")
    model.fit(batch, np.zeros((4, 1), "float32"), epochs=1, verbose=0)
    oracle.train([int(k) for k in batch.reshape(-1)])
    held = oracle.held()
    keys = sorted(held)
    assert layer.keys().dtype == np.int64
    np.testing.assert_array_equal(layer.keys(), keys)
    np.testing.assert_array_equal(layer.rows_of(keys), [held[k] for k in keys])
    np.testing.assert_array_equal(layer.counts(), [oracle.count[held[k]] for k in keys])
    assert layer.evictions == oracle.evictions
inner = keras.Sequential([keras.Input((1,), dtype="int64"), layer])
out = inner.predict(pool.reshape(-1, 1), verbose=0)[:, 0]
table = keras.ops.convert_to_numpy(layer.embeddings)
rows = layer.rows_of(pool)
expected = np.where((rows >= 0)[:, None], table[np.maximum(rows, 0)], 0.0)
np.testing.assert_allclose(out, expected, atol=1e-7)
print("held", len(layer.keys()), "evictions", layer.evictions)
"""


def test_int64_keys_train_compiled_with_x64():
    env = dict(os.environ, JAX_ENABLE_X64="1", KERAS_BACKEND="jax")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "held 4" in done.stdout, done.stdout
