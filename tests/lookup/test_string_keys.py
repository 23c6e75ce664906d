"""String keys (issue 22): `hash_strings`, one 64-bit hash on every backend, in
every process and in TensorFlow graphs; `DynamicEmbedding(key_dtype="string")`."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import DynamicEmbedding, hash_strings
from keras_embedding_plus.testing.dynamic import key_dtype

WORDS = ["", "a", "apple", "Äpfel", "苹果", "apple ", "b" * 300]
NEEDS_X64 = pytest.mark.skipif(
    key_dtype() != "int64",
    reason="JAX holds the 64-bit string keys only with x64 enabled "
    "(this suite runs JAX without it; the docs page runs it with)",
)


def test_distinct_strings_get_distinct_int64_keys_in_their_shape():
    keys = hash_strings(np.asarray(WORDS * 2).reshape(2, -1))
    assert keys.dtype == np.int64 and keys.shape == (2, len(WORDS))
    np.testing.assert_array_equal(keys[0], keys[1])
    assert len(set(keys[0].tolist())) == len(WORDS)
    # str and its UTF-8 bytes are one key; lists, scalars, object arrays too.
    np.testing.assert_array_equal(
        hash_strings([w.encode("utf-8") for w in WORDS]), keys[0]
    )
    assert hash_strings("apple") == keys[0][2]
    np.testing.assert_array_equal(hash_strings(np.asarray(WORDS, object)), keys[0])


def test_the_hash_is_the_same_in_another_process():
    """Python's own `hash` of a str changes with PYTHONHASHSEED; this does not."""
    code = (
        "import sys; from keras_embedding_plus import hash_strings; "
        "print(list(hash_strings(sys.argv[1:])))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code, *WORDS[1:]],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert eval(out) == hash_strings(WORDS[1:]).tolist()


def test_tensorflow_strings_in_graphs_hash_as_numpy_does():
    tf = pytest.importorskip("tensorflow", reason="tf.data needs TensorFlow")
    data = tf.data.Dataset.from_tensor_slices(np.asarray(WORDS).reshape(-1, 1))
    graph = np.concatenate(list(data.map(hash_strings).as_numpy_iterator()))
    np.testing.assert_array_equal(graph, hash_strings(WORDS))


def test_non_strings_are_refused():
    with pytest.raises(ValueError, match="takes strings"):
        hash_strings(np.arange(3))
    with pytest.raises(ValueError, match="takes strings"):
        hash_strings(["a", 3])


@NEEDS_X64
def test_string_layer_admits_the_hashes_and_looks_strings_up():
    layer = DynamicEmbedding(4, 16, key_dtype="string", mask_zero=True)
    batch = np.asarray([["apple", "pear", ""], ["苹果", "apple", "fig"]])
    layer(batch, training=True)
    held = np.unique(hash_strings(batch[batch != ""]))
    np.testing.assert_array_equal(layer.keys(), held)
    rows = layer.rows_of(batch)
    assert rows[0, 2] == -1 and (rows[batch != ""] >= 0).all()
    np.testing.assert_array_equal(rows, layer.rows_of(hash_strings(batch)))
    # Strings and their keys look up the same rows (keys as the pipeline gives).
    by_string = ops.convert_to_numpy(layer(batch))
    by_key = ops.convert_to_numpy(layer(hash_strings(batch)))
    np.testing.assert_array_equal(by_string, by_key)
    np.testing.assert_array_equal(by_string[0, 2], 0.0)
    mask = ops.convert_to_numpy(layer.compute_mask(batch))
    np.testing.assert_array_equal(mask, batch != "")


def _model(layer, shape, dtype):
    model = keras.Sequential(
        [
            keras.Input(shape, dtype=dtype),
            layer,
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    model.compile("adam", "mse")
    return model


@NEEDS_X64
def test_fit_on_hashed_keys_on_every_backend():
    rng = np.random.default_rng(0)
    words = np.asarray([f"user-{i}" for i in range(30)])
    batch = rng.choice(words, size=(64, 3))
    layer = DynamicEmbedding(4, 64, key_dtype="string")
    model = _model(layer, (3,), "int64")
    model.fit(hash_strings(batch), rng.random((64, 1)), epochs=1, verbose=0)
    np.testing.assert_array_equal(layer.keys(), np.unique(hash_strings(batch)))


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="JAX and PyTorch tensors hold no strings: strings are hashed in the "
    "data pipeline there (test_fit_on_hashed_keys_on_every_backend)",
)
def test_tensorflow_fit_takes_string_inputs():
    rng = np.random.default_rng(1)
    batch = rng.choice(np.asarray(["x", "y", "z", "w"]), size=(32, 2))
    layer = DynamicEmbedding(4, 8, key_dtype="string")
    model = _model(layer, (2,), "string")
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((batch, rng.random((32, 1))))
    model.fit(data.batch(8), epochs=1, shuffle=False, verbose=0)
    np.testing.assert_array_equal(layer.keys(), np.unique(hash_strings(batch)))
    # In a graph (predict's `tf.function`), strings hash as on the host.
    np.testing.assert_allclose(
        model.predict(tf.constant(batch), verbose=0),
        keras.Sequential(model.layers[1:]).predict(
            ops.convert_to_numpy(layer(hash_strings(batch))), verbose=0
        ),
        rtol=1e-6,
    )


@NEEDS_X64
def test_string_mask_key_must_be_a_string():
    with pytest.raises(ValueError, match="`mask_key` must be a string"):
        DynamicEmbedding(4, 8, key_dtype="string", mask_zero=True, mask_key=0)
