"""Quantization: `layer.quantize("int8" | "int4")` and `model.quantize`."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import Embedding
from keras_embedding_plus.testing import compiled

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version

BACKEND = keras.backend.backend()

# Keras's `Model.quantize` warns for every layer without `quantize` (InputLayer,
# pooling...).
IGNORE_NO_QUANTIZE = pytest.mark.filterwarnings(
    "ignore:Layer .* does not have a `quantize` method:UserWarning"
)
# Documented bound of one element, as a fraction of its row's (group's) max |x|.
BOUND = {"int8": 1 / 254, "int4": 1 / 14}
MODES = [
    pytest.param("int8", None, id="int8"),
    pytest.param("int4", None, id="int4"),
    pytest.param("int4", 16, id="int4-block16"),
    pytest.param("int4", "default", id="int4-bare"),  # Keras: block_size=128
]


def to_np(x):
    return ops.convert_to_numpy(x)


def random_table(input_dim, output_dim, seed=0):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.01, 3.0, size=(input_dim, 1))  # rows of many magnitudes
    return (rng.standard_normal((input_dim, output_dim)) * scale).astype("float32")


def quantized_layer(table, mode, block=None, **kwargs):
    """int8, or int4 with one scale per row (`block=None`), per group of `block`
    columns, or as a bare `quantize("int4")` resolves it (`block="default"`)."""
    layer = Embedding(*table.shape, weights=table, **kwargs)
    if mode == "int8" or block == "default":
        layer.quantize(mode)
    else:
        layer.quantize(config=keras.quantizers.Int4QuantizationConfig(block_size=block))
    return layer


def numpy_dequantized(layer):
    """The table from the stored variables, by Keras 3.15's formulas, in NumPy."""
    stored = to_np(layer._embeddings).astype("float32")
    scale = to_np(layer.embeddings_scale)
    out = layer.output_dim
    if layer.quantization_mode == "int4":  # low nibble = even column, sign-extended
        nibbles = np.stack(
            [stored.astype("int8") << 4 >> 4, stored.astype("int8") >> 4]
        )
        stored = np.moveaxis(nibbles, 0, -1).reshape(len(stored), -1)[:, :out]
        stored = stored.astype("float32")
    if not hasattr(layer, "embeddings_zero"):
        return stored / scale[:, None]
    groups = to_np(layer.g_idx).astype(int)
    zero = to_np(layer.embeddings_zero).astype("float32")
    return (stored - zero[:, groups]) * scale[:, groups]


def stored_bytes(layer):
    return sum(
        int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in layer.weights
    )


@pytest.mark.parametrize("mode, block", MODES)
def test_outputs_within_documented_bound(mode, block):
    table = random_table(300, 64)
    ids = np.random.default_rng(1).integers(0, 300, size=(8, 40))
    layer = quantized_layer(table, mode, block)
    out = to_np(layer(ids))
    expected = table[ids]
    if block == "default":  # 128 > 64 columns: one group a row
        block = None
    if block is None:
        row_max = np.abs(table).max(axis=1)[ids][..., None]
    else:
        groups = np.abs(table).reshape(300, -1, block).max(axis=-1)
        row_max = np.repeat(groups, block, axis=1)[ids]
    error = np.abs(out - expected)
    assert out.dtype == np.float32 and out.shape == (8, 40, 64)
    assert np.all(error <= BOUND[mode] * row_max * (1 + 1e-5) + 1e-7)
    # The bound is tight: rounding uses most of it somewhere.
    assert (error / row_max).max() > 0.6 * BOUND[mode]


@pytest.mark.parametrize("mode, block", MODES)
def test_dequantized_embeddings_match_lookups(mode, block):
    table = random_table(40, 10)
    layer = quantized_layer(table, mode, block)
    ids = np.arange(40)
    np.testing.assert_allclose(
        to_np(layer(ids)), numpy_dequantized(layer), rtol=1e-6, atol=1e-7
    )
    # `embeddings` is what Keras's is: the stored integers (int4 unpacked).
    assert keras.backend.standardize_dtype(layer.embeddings.dtype) == "int8"
    assert tuple(layer.embeddings.shape) == (40, 10)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_masks_unchanged(mode):
    table = random_table(20, 6)
    ids = np.array([[3, 0, 5, 0], [0, 0, 1, 19]])
    plain = Embedding(20, 6, weights=table, mask_zero=True)
    layer = quantized_layer(table, mode, mask_zero=True)
    np.testing.assert_array_equal(
        to_np(layer.compute_mask(ids)), to_np(plain.compute_mask(ids))
    )
    np.testing.assert_array_equal(to_np(layer(ids)._keras_mask), ids != 0)


@pytest.mark.parametrize(
    "mode, limit, keras_ratio", [("int8", 0.27, 0.266), ("int4", 0.15, 0.145)]
)
def test_table_memory_at_output_dim_64(mode, limit, keras_ratio):
    table = random_table(1000, 64)
    float_bytes = table.nbytes
    layer = quantized_layer(table, mode)  # int4: one scale per row
    ratio = stored_bytes(layer) / float_bytes
    assert ratio <= limit
    assert ratio <= keras_ratio + 1e-9  # int8: 68 / 256, int4: 36 / 256
    assert {w.dtype for w in layer.weights} == {"int8", "float32"}


def test_int4_odd_output_dim_packs_two_values_a_byte():
    table = random_table(30, 7)
    layer = quantized_layer(table, "int4")
    assert tuple(layer.weights[0].shape) == (30, 4)
    error = np.abs(to_np(layer(np.arange(30))) - table)
    assert np.all(error <= np.abs(table).max(1, keepdims=True) / 14 * (1 + 1e-5))


@IGNORE_NO_QUANTIZE
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_model_quantize_reaches_the_layer_and_saves_quantized(mode, tmp_path):
    table = random_table(2000, 64)
    ids = np.random.default_rng(2).integers(0, 2000, size=(4, 12))

    def model():
        inputs = keras.Input((12,), dtype="int32")
        x = Embedding(2000, 64, weights=table, mask_zero=True, name="emb")(inputs)
        return keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(x))

    float_model = model()
    float_path = tmp_path / "float.keras"
    float_model.save(float_path)
    quantized = model()
    quantized.quantize(mode)
    layer = quantized.get_layer("emb")
    assert layer.quantization_mode == mode
    assert layer.weights[0].dtype == "int8"
    expected = quantized.predict(ids, verbose=0)
    path = tmp_path / f"{mode}.keras"
    quantized.save(path)
    loaded = keras.saving.load_model(path)
    loaded_layer = loaded.get_layer("emb")
    assert loaded_layer.quantization_mode == mode
    # Keras's layout; a bare "int4" is grouped (block_size=128) with zero points.
    dtypes = {
        "int8": ["int8", "float32"],
        "int4": ["int8", "float32", "int8", "float32"],
    }
    assert [w.dtype for w in loaded_layer.weights] == dtypes[mode]
    np.testing.assert_array_equal(loaded.predict(ids, verbose=0), expected)
    # The file holds the small table: int8 ~0.27x, int4 ~0.15x of float + overhead.
    ratio = os.path.getsize(path) / os.path.getsize(float_path)
    assert ratio < {"int8": 0.35, "int4": 0.22}[mode]


def test_dtype_policy_records_mode_and_setting_it_quantizes():
    layer = Embedding(10, 4)
    layer.build()
    layer.dtype_policy = "int8_from_float32"
    assert layer.quantization_mode == "int8"
    assert layer.weights[0].dtype == "int8"
    layer = quantized_layer(random_table(10, 8), "int4")
    assert layer.dtype_policy.name == "int4/-1_from_float32"
    config = layer.get_config()
    rebuilt = Embedding.from_config(config)
    rebuilt.build()
    assert [tuple(w.shape) for w in rebuilt.weights] == [(10, 4), (10,)]
    # A bare "int4" resolves as Keras resolves it: groups of 128 columns.
    layer = quantized_layer(random_table(10, 8), "int4", "default")
    assert layer.dtype_policy.name == "int4/128_from_float32"
    rebuilt = Embedding.from_config(layer.get_config())
    rebuilt.build()
    shapes = [tuple(w.shape) for w in rebuilt.weights]
    assert shapes == [(10, 4), (10, 1), (10, 1), (8,)]


@pytest.mark.parametrize(
    "policy, mode",
    [
        ("mixed_bfloat16", "int8"),
        ("bfloat16", "int8"),
        ("float16", "int4"),
        ("mixed_float16", "int4"),
    ],
)
def test_quantized_output_in_compute_dtype(policy, mode):
    table = random_table(20, 8)
    table[0] *= 1e-4 / np.abs(table[0]).max()  # int4 scale 7e4: over float16's max
    layer = Embedding(20, 8, weights=table, dtype=policy)
    layer.quantize(mode)
    out = layer(np.arange(20))
    assert keras.backend.standardize_dtype(out.dtype) == layer.compute_dtype
    # Scales stay float32; rows are dequantized in float32, then cast.
    assert layer.weights[1].dtype == "float32"
    stored = table.astype(layer.variable_dtype).astype("float32")
    error = np.abs(to_np(ops.cast(out, "float32")) - stored)
    row_max = np.abs(stored).max(axis=1, keepdims=True)
    assert np.all(error <= (BOUND[mode] + 2**-8) * row_max)


def test_int8_with_float16_compute_is_refused_before_anything_changes():
    layer = Embedding(20, 8, dtype="mixed_float16")
    layer.build()
    with pytest.raises(
        ValueError, match="doesn't work well with compute_dtype='float16'"
    ):
        layer.quantize("int8")
    assert layer.quantization_mode is None and layer.weights[0].dtype == "float32"


@pytest.mark.parametrize(
    "mode, listed",
    [("float8", r"\('int8', 'int4'\)"), ("int2", "'int8'"), ("gptq", "GPTQConfig")],
)
def test_invalid_mode_is_refused_with_keras_text(mode, listed):
    layer = Embedding(10, 4)
    layer.build()
    # Keras's text ("Invalid quantization mode."), and Keras's error types: a
    # mode Keras knows but the table cannot take is also a NotImplementedError,
    # which `Model.quantize` turns into a warning.
    with pytest.raises(ValueError, match=listed) as info:
        layer.quantize(mode)
    if mode != "gptq":
        assert "Invalid quantization mode." in str(info.value)
    assert isinstance(info.value, NotImplementedError) == (mode == "float8")
    assert layer.quantization_mode is None


def test_quantize_twice_or_unbuilt_is_a_clear_error():
    layer = quantized_layer(random_table(10, 4), "int8")
    with pytest.raises(ValueError, match="is already quantized with dtype_policy="):
        layer.quantize("int4")
    with pytest.raises(
        ValueError, match="Cannot quantize a layer that isn't yet built."
    ):
        Embedding(10, 4).quantize("int8")


def test_model_with_a_quantized_table_trains_the_rest():
    # As Keras: the quantized variables are not trainable; `fit` trains the rest
    # of the model and leaves the table as it is.
    table = random_table(30, 4)
    ids = np.random.default_rng(0).integers(0, 30, size=(16, 5))
    y = np.ones((16, 1), "float32")
    inputs = keras.Input((5,), dtype="int32")
    emb = Embedding(30, 4, weights=table)
    emb.quantize("int8")
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(emb(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse")
    assert emb.trainable and emb.trainable_weights == []
    before = [to_np(w) for w in emb.weights]
    dense_before = to_np(model.layers[-1].kernel)
    model.fit(ids, y, epochs=1, verbose=0)
    assert not np.allclose(to_np(model.layers[-1].kernel), dense_before)
    for w, b in zip(emb.weights, before, strict=True):
        np.testing.assert_array_equal(to_np(w), b)
    # Setting `trainable` cannot unfreeze the stored integers.
    emb.trainable = True
    assert emb.trainable_weights == []


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_index_policy_holds(mode):
    table = random_table(10, 4)
    layer = quantized_layer(table, mode)
    with pytest.raises(ValueError, match="Invalid embedding id 10"):
        layer(np.array([[1, 10]]))
    with pytest.raises(ValueError, match="Invalid embedding id -1"):
        layer(np.array([[-1, 2]]))
    out = to_np(compiled(lambda x: layer(x))(np.array([[1, 10, -1, 3]], "int32")))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0, 1:3], 0.0)
    np.testing.assert_allclose(out[0, [0, 3]], to_np(layer(np.array([1, 3]))))


@pytest.mark.parametrize("block", [None, -1])
def test_keras_quantized_weights_load_into_ours(block):
    # Same variable names and layout as Keras's int8 / per-row int4 Embedding.
    table = random_table(25, 6)
    ids = np.arange(25)
    for mode in ("int8", "int4"):
        theirs = keras.layers.Embedding(25, 6, weights=table)
        ours = Embedding(25, 6)
        ours.build()
        if mode == "int8":
            theirs.quantize("int8")
            ours.quantize("int8")
        else:
            config = keras.quantizers.Int4QuantizationConfig(block_size=block)
            theirs.quantize(config=config)
            ours.quantize(config=config)
        ours.set_weights(theirs.get_weights())
        np.testing.assert_allclose(
            to_np(ours(ids)), to_np(theirs(ids)), rtol=1e-6, atol=1e-7
        )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="ragged ids need TensorFlow")
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_ragged_ids(mode):
    import tensorflow as tf

    table = random_table(10, 6)
    layer = quantized_layer(table, mode)
    out = layer(tf.ragged.constant([[1, 2, 3], [4]]))
    assert isinstance(out, tf.RaggedTensor)
    rows = out.flat_values.numpy()
    row_max = np.abs(table[[1, 2, 3, 4]]).max(1, keepdims=True)
    assert np.all(np.abs(rows - table[[1, 2, 3, 4]]) <= BOUND[mode] * row_max * 1.001)


@pytest.mark.parametrize(
    "mode, block", [("int8", None), ("int4", 4)], ids=["int8", "int4-block4"]
)
def test_float_table_is_the_dequantized_table(mode, block):
    """`float_table()` is what the stored values stand for (Keras's formulas)."""
    layer = quantized_layer(random_table(24, 8), mode, block)
    np.testing.assert_allclose(
        to_np(layer.float_table()), numpy_dequantized(layer), rtol=1e-6, atol=1e-6
    )
