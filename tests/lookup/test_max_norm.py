"""`max_norm` / `norm_type`: looked-up rows renormalised (outputs only)."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import Embedding
from keras_embedding_plus.testing import compiled

BACKEND = keras.backend.backend()


def to_np(x):
    return ops.convert_to_numpy(x)


def table():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 5)).astype("float32")
    w[0] = 0.0  # an all-zero row
    w[1] = [0.1, 0.0, 0.0, 0.0, 0.0]  # well under any bound used here
    w[2] *= 10.0  # well over
    return w


def renormed(rows, max_norm, p):
    """PyTorch's `embedding_renorm_` rule, on a copy."""
    if math.isinf(p):
        norms = np.abs(rows).max(-1, keepdims=True)
    else:
        norms = (np.abs(rows.astype("float64")) ** p).sum(-1, keepdims=True) ** (1 / p)
    factor = np.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0)
    return (rows * factor).astype("float32")


def gradient(layer, ids, weight):
    """d sum(weight * layer(ids)) / d table, on every backend."""
    variable = layer.trainable_weights[0]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids) * weight)
        return to_np(tape.gradient(loss, variable.value))
    if BACKEND == "jax":
        import jax

        def loss(value):
            out, _ = layer.stateless_call([value], [], ids)
            return (out * weight).sum()

        return np.asarray(jax.grad(loss)(variable.value))
    value = variable.value
    value.grad = None
    (layer(ids) * ops.convert_to_tensor(weight)).sum().backward()
    return to_np(value.grad)


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, math.inf], ids=["l2", "l1", "l3", "inf"])
def test_rows_over_max_norm_are_renormalised(p):
    w = table()
    layer = Embedding(12, 5, weights=w, max_norm=1.5, norm_type=p)
    ids = np.array([[0, 1, 2, 3], [4, 5, 2, 11]])
    out = to_np(layer(ids))
    np.testing.assert_allclose(out, renormed(w[ids], 1.5, p), rtol=1e-5, atol=1e-6)
    if math.isinf(p):
        norms = np.abs(out).max(-1)
    else:
        norms = (np.abs(out.astype("float64")) ** p).sum(-1) ** (1 / p)
    assert norms.max() <= 1.5 * (1 + 1e-5)
    np.testing.assert_array_equal(out[0, :2], w[[0, 1]])  # under the bound: as is


def test_outputs_only_the_table_is_unchanged():
    w = table()
    layer = Embedding(12, 5, weights=w, max_norm=1.0)
    layer(np.array([[2, 3, 4]]))
    compiled(lambda x: layer(x))(np.array([[2, 3, 4]], "int32"))
    np.testing.assert_array_equal(to_np(layer.embeddings), w)


@pytest.mark.parametrize("p", [2.0, 1.0, math.inf], ids=["l2", "l1", "inf"])
def test_gradients_finite_including_zero_rows(p):
    w = table()
    layer = Embedding(12, 5, weights=w, max_norm=1.0, norm_type=p)
    ids = np.array([[0, 0, 1, 2, 3]])
    weight = np.random.default_rng(1).standard_normal((1, 5, 5)).astype("float32")
    grad = gradient(layer, ids, weight)
    assert np.isfinite(grad).all()
    # Rows under the bound pass the output gradient through unchanged.
    np.testing.assert_allclose(grad[0], weight[0, 0] + weight[0, 1], rtol=1e-6)
    np.testing.assert_allclose(grad[1], weight[0, 2], rtol=1e-6)
    assert np.abs(grad[2]).max() > 0 and not np.allclose(grad[2], weight[0, 3])
    np.testing.assert_array_equal(grad[4:], 0.0)


def test_training_with_max_norm_stays_finite():
    w = np.zeros((12, 5), "float32")
    w[3] = 50.0
    model = keras.Sequential(
        [keras.Input((4,), dtype="int32"), Embedding(12, 5, weights=w, max_norm=2.0)]
    )
    model.compile(keras.optimizers.SGD(0.1), "mse")
    ids = np.array([[0, 3, 5, 3], [0, 0, 3, 7]])
    model.fit(ids, np.ones((2, 4, 5), "float32"), epochs=3, verbose=0)
    weights = to_np(model.layers[0].embeddings)
    assert np.isfinite(weights).all() and not np.allclose(weights, w)
    out = model.predict(ids, verbose=0)
    assert np.linalg.norm(out, axis=-1).max() <= 2.0 * (1 + 1e-5)


@pytest.mark.parametrize("mode", ["int8", "lora"])
def test_with_quantized_and_lora_tables(mode):
    w = table()
    layer = Embedding(12, 5, weights=w, max_norm=1.0)
    if mode == "int8":
        layer.quantize("int8")
    else:
        layer.enable_lora(2)
        layer.lora_embeddings_b.assign(np.full((2, 5), 0.3, "float32"))
    ids = np.array([[0, 2, 3, 4]])
    rows = to_np(layer.embeddings)[ids]  # dequantized / adapted table
    np.testing.assert_allclose(
        to_np(layer(ids)), renormed(rows, 1.0, 2.0), rtol=1e-5, atol=1e-6
    )


def test_index_policy_holds():
    w = table()
    layer = Embedding(12, 5, weights=w, max_norm=1.0)
    with pytest.raises(ValueError, match="Invalid embedding id 12"):
        layer(np.array([[1, 12]]))
    out = to_np(compiled(lambda x: layer(x))(np.array([[12, -1, 2]], "int32")))
    np.testing.assert_array_equal(out[0, :2], 0.0)
    np.testing.assert_allclose(out[0, 2], renormed(w[[2]], 1.0, 2.0)[0], rtol=1e-5)


def test_dtype_policy_output():
    layer = Embedding(12, 5, weights=table(), max_norm=1.0, dtype="mixed_bfloat16")
    out = layer(np.array([[2, 3]]))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    norms = np.linalg.norm(to_np(ops.cast(out, "float32")), axis=-1)
    assert norms.max() <= 1.0 + 1e-2


def test_config_round_trip():
    layer = Embedding(12, 5, max_norm=3, norm_type=1)
    config = layer.get_config()
    assert config["max_norm"] == 3.0 and config["norm_type"] == 1.0
    assert Embedding.from_config(config).get_config() == config
    assert Embedding(12, 5).get_config()["max_norm"] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_norm": 0}, r"`max_norm` must be None or a positive finite number"),
        ({"max_norm": -1.0}, r"Received: max_norm=-1\.0 \(of type float\)"),
        ({"max_norm": True}, r"Received: max_norm=True \(of type bool\)"),
        ({"max_norm": math.inf}, r"Received: max_norm=inf"),
        ({"max_norm": "1"}, r"Received: max_norm='1' \(of type str\)"),
        ({"norm_type": 0.5}, r"`norm_type` must be a number >= 1"),
        ({"norm_type": None}, r"Received: norm_type=None"),
        ({"norm_type": math.nan}, r"Received: norm_type=nan"),
    ],
    ids=["zero", "negative", "bool", "inf", "str", "p-half", "p-none", "p-nan"],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Embedding(12, 5, **kwargs)
    config = Embedding(12, 5).get_config()
    config.update(kwargs)
    with pytest.raises(TypeError, match=message):
        Embedding.from_config(config)
