"""Tied output logits: `layer.attend(x)` and `layer(x, reverse=True)`."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import Embedding

# Depends on the installed Keras (tox env keras-min runs it with the oldest):
# quantized and LoRA tables, and a `.keras` round trip.
pytestmark = pytest.mark.keras_version


def to_np(x):
    return ops.convert_to_numpy(x)


def table(input_dim=30, output_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((input_dim, output_dim)).astype("float32")


X = np.random.default_rng(1).standard_normal((3, 5, 8)).astype("float32")


def test_attend_is_x_times_table_transposed():
    w = table()
    layer = Embedding(30, 8, weights=w)
    logits = layer.attend(X)
    assert tuple(logits.shape) == (3, 5, 30)
    np.testing.assert_allclose(to_np(logits), X @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        to_np(layer(X, reverse=True)), X @ w.T, rtol=1e-5, atol=1e-5
    )


def test_attend_builds_an_unbuilt_layer():
    layer = Embedding(30, 8)
    assert tuple(layer.attend(X[0]).shape) == (5, 30)
    assert layer.built


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "bfloat16", "mixed_float16"])
def test_attend_computes_in_the_compute_dtype(policy):
    w = table()
    layer = Embedding(30, 8, weights=w, dtype=policy)
    logits = layer.attend(X)
    assert keras.backend.standardize_dtype(logits.dtype) == layer.compute_dtype
    np.testing.assert_allclose(
        to_np(ops.cast(logits, "float32")), X @ w.T, rtol=0.05, atol=0.15
    )


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_attend_with_a_quantized_table(mode):
    layer = Embedding(30, 8, weights=table())
    layer.quantize(mode)
    # The reference: Keras's own layer, quantized the same way, looks the rows up.
    theirs = keras.layers.Embedding(30, 8, weights=table())
    theirs.quantize(mode)
    dequantized = to_np(theirs(np.arange(30)))
    np.testing.assert_allclose(
        to_np(layer.attend(X)), X @ dequantized.T, rtol=1e-5, atol=1e-5
    )


def test_attend_with_lora_and_max_norm():
    w = table()
    layer = Embedding(30, 8, weights=w, lora_rank=2)
    rng = np.random.default_rng(2)
    a = rng.standard_normal((30, 2)).astype("float32")
    b = rng.standard_normal((2, 8)).astype("float32")
    layer.lora_embeddings_a.assign(a)
    layer.lora_embeddings_b.assign(b)
    adapted = w + a @ b
    np.testing.assert_allclose(
        to_np(layer.attend(X)), X @ adapted.T, rtol=1e-4, atol=1e-4
    )
    capped = Embedding(30, 8, weights=w, max_norm=1.0)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    rows = np.where(norms > 1.0, w / (norms + 1e-7), w)  # torch's renorm, NumPy
    np.testing.assert_allclose(
        to_np(capped.attend(X)), X @ rows.T, rtol=1e-5, atol=1e-6
    )


def test_reverse_call_carries_no_id_mask():
    layer = Embedding(30, 8, mask_zero=True)
    ids = np.array([[0, 3, 4]])
    vectors = layer(ids)
    assert vectors._keras_mask is not None
    assert getattr(layer(X, reverse=True), "_keras_mask", None) is None
    # A forward call after a reverse one masks again.
    assert layer(ids)._keras_mask is not None
    inputs = keras.Input((4, 8))
    assert getattr(layer(inputs, reverse=True), "_keras_mask", None) is None
    assert layer(keras.Input((4,), dtype="int32"))._keras_mask is not None


def tied_language_model(vocab=20, dim=16, length=6):
    """A tiny language model whose output head is its input embedding."""
    ids = keras.Input((length,), dtype="int32")
    embedding = Embedding(vocab, dim, name="tied")
    x = embedding(ids)
    x = keras.layers.Dense(dim, activation="tanh")(x)
    logits = embedding(x, reverse=True)
    model = keras.Model(ids, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_tied_language_model_trains_saves_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 20, size=(64, 7))
    x, y = tokens[:, :-1], (tokens[:, :-1] + 1) % 20  # next id = id + 1
    model = tied_language_model()
    assert len(model.weights) == 3  # one table (shared), the Dense kernel and bias
    # (`return_dict`: the logs also hold the layer's count of invalid ids.)
    loss0 = model.evaluate(x, y, return_dict=True, verbose=0)["loss"]
    model.fit(x, y, epochs=10, batch_size=16, verbose=0)
    assert model.evaluate(x, y, return_dict=True, verbose=0)["loss"] < 0.7 * loss0
    assert tuple(model.output.shape) == (None, 6, 20)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "lm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-5)
