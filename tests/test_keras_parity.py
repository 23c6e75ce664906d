"""Keras 3 API parity, checked against `keras.layers.Embedding` itself."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import Embedding, nearest
from keras_embedding_plus.testing import compiled

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version

BACKEND = keras.backend.backend()


def to_np(x):
    return ops.convert_to_numpy(x)


TABLE = np.arange(15, dtype="float32").reshape(5, 3) / 7.0


def test_a_keras_3_config_loads_into_ours():
    theirs = keras.layers.Embedding(10, 4, mask_zero=True, name="e")
    ours = Embedding.from_config(theirs.get_config())
    assert ours.quantization_config is None and ours.mask_zero
    assert ours.get_config()["quantization_config"] is None


@pytest.mark.parametrize(
    "config",
    [
        keras.quantizers.Int8QuantizationConfig(
            weight_quantizer=keras.quantizers.AbsMaxQuantizer(
                axis=-1, value_range=(-50, 50)
            )
        ),
        keras.quantizers.Int4QuantizationConfig(block_size=2),
    ],
    ids=["int8-custom-quantizer", "int4-block2"],
)
def test_quantization_config_survives_config_and_matches_keras(config):
    ids = np.array([[0, 4, 2], [1, 1, 3]])
    theirs = keras.layers.Embedding(5, 3, weights=TABLE)
    ours = Embedding(5, 3, weights=TABLE)
    theirs.quantize(config.mode, config=config)
    ours.quantize(config.mode, config=config)
    rebuilt = Embedding.from_config(ours.get_config())
    assert type(rebuilt.quantization_config) is type(config)
    assert rebuilt.get_config()[
        "quantization_config"
    ] == keras.saving.serialize_keras_object(config)
    # Same stored variables and outputs as Keras's quantized layer.
    assert [w.path.split("/")[-1] for w in ours.weights] == [
        w.path.split("/")[-1] for w in theirs.weights
    ]
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(to_np(ours(ids)), to_np(theirs(ids)), atol=1e-6)


def test_bare_int4_resolves_as_keras():
    theirs = keras.layers.Embedding(5, 3, weights=TABLE)
    ours = Embedding(5, 3, weights=TABLE)
    theirs.quantize("int4")
    ours.quantize("int4")
    assert ours.dtype_policy.name == theirs.dtype_policy.name == "int4/128_from_float32"
    assert ours._int4_block_size == theirs._int4_block_size == 128
    assert [w.shape for w in ours.weights] == [w.shape for w in theirs.weights]
    ids = np.array([0, 1, 2, 3, 4])
    np.testing.assert_allclose(to_np(ours(ids)), to_np(theirs(ids)), atol=1e-6)


def test_lora_weights_in_keras_order():
    theirs = keras.layers.Embedding(5, 3, weights=TABLE)
    theirs.enable_lora(2)
    rng = np.random.default_rng(0)
    values = [TABLE, rng.normal(size=(5, 2)), rng.normal(size=(2, 3))]
    theirs.set_weights([v.astype("float32") for v in values])
    ours = Embedding(5, 3)
    ours.build()
    ours.enable_lora(2)
    ours.set_weights(theirs.get_weights())
    assert [w.path.split("/")[-1] for w in ours.weights] == [
        "embeddings",
        "lora_embeddings_a",
        "lora_embeddings_b",
    ]
    ids = np.array([[0, 4], [3, 1]])
    expected = TABLE[ids] + (values[1] @ values[2])[ids]
    np.testing.assert_allclose(to_np(ours(ids)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_np(theirs(ids)), expected, rtol=1e-5, atol=1e-6)
    # `trainable = True` cannot unfreeze the table under LoRA (Keras's can).
    ours.trainable = True
    assert [w.path.split("/")[-1] for w in ours.trainable_weights] == [
        "lora_embeddings_a",
        "lora_embeddings_b",
    ]


def _sparse_ids():
    indices, values, shape = [[0, 0], [1, 2]], [2, 1], (2, 3)
    dense = np.zeros(shape, "int32")
    dense[tuple(np.array(indices).T)] = values
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.SparseTensor(indices, values, shape), dense
    if BACKEND == "jax":
        from jax.experimental import sparse

        return sparse.BCOO((np.array(values), np.array(indices)), shape=shape), dense
    pytest.skip("Keras has no sparse tensors on torch (SUPPORTS_SPARSE_TENSORS)")


def test_sparse_ids_are_dense_ids_with_zeros():
    sparse_ids, dense = _sparse_ids()
    layer = Embedding(5, 3, weights=TABLE)
    np.testing.assert_allclose(to_np(layer(sparse_ids)), TABLE[dense])
    np.testing.assert_allclose(to_np(compiled(layer)(sparse_ids)), TABLE[dense])
    theirs = keras.layers.Embedding(5, 3, weights=TABLE)
    np.testing.assert_allclose(to_np(theirs(sparse_ids)), TABLE[dense])


def test_unsupported_quantized_dtype_policy_is_refused():
    with pytest.raises(ValueError, match="Invalid quantization mode.*float8"):
        Embedding(10, 4, dtype="float8_from_float32")


def test_nearest_on_an_unbuilt_layer_says_to_build_it():
    with pytest.raises(ValueError, match=r"not built yet: call `layer.build\(\)`"):
        nearest(Embedding(10, 4), 1)
