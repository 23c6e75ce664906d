"""`ReversibleEmbedding`, checked against NumPy on every backend."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import Embedding, ReversibleEmbedding
from keras_embedding_plus.testing import compiled

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version

VOCAB, DIM = 12, 6


def to_np(x):
    return np.asarray(ops.convert_to_numpy(ops.cast(x, "float32")))


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def make_layer(tie_weights=True, **kwargs):
    """A built layer with a random table (and reverse matrix) set from NumPy."""
    table = randn(VOCAB, DIM, seed=1)
    layer = ReversibleEmbedding(
        VOCAB, DIM, tie_weights=tie_weights, weights=table, **kwargs
    )
    if not tie_weights:
        layer.reverse_embeddings.assign(randn(DIM, VOCAB, seed=2))
    return layer


def reverse_kernel(layer):
    if layer.tie_weights:
        return randn(VOCAB, DIM, seed=1).T
    return to_np(layer.reverse_embeddings)


IDS = np.array([[0, 3, 11], [5, 5, 1]])
X = randn(2, 4, DIM, seed=3)
TIES = pytest.mark.parametrize("tie_weights", [True, False], ids=["tied", "untied"])


@TIES
def test_weights_shapes_and_order(tie_weights):
    layer = make_layer(tie_weights)
    names = [w.path.split("/")[-1] for w in layer.weights]
    assert names == ["embeddings"] + ([] if tie_weights else ["reverse_embeddings"])
    assert len(layer.trainable_weights) == (1 if tie_weights else 2)
    if not tie_weights:
        assert tuple(layer.reverse_embeddings.shape) == (DIM, VOCAB)


@TIES
def test_forward_is_numpy_take(tie_weights):
    layer = make_layer(tie_weights)
    out = layer(IDS)
    assert tuple(out.shape) == (2, 3, DIM)
    np.testing.assert_allclose(to_np(out), randn(VOCAB, DIM, seed=1)[IDS])


@TIES
def test_reverse_is_numpy_matmul(tie_weights):
    layer = make_layer(tie_weights)
    logits = layer(X, reverse=True)
    assert tuple(logits.shape) == (2, 4, VOCAB)
    expected = X @ reverse_kernel(layer)
    np.testing.assert_allclose(to_np(logits), expected, rtol=1e-5, atol=1e-5)


@TIES
@pytest.mark.parametrize("cap", [0.5, 3, 50.0])
def test_logit_soft_cap_is_tanh(tie_weights, cap):
    layer = make_layer(tie_weights, logit_soft_cap=cap)
    logits = X @ reverse_kernel(layer)
    np.testing.assert_allclose(
        to_np(layer(X, reverse=True)),
        np.tanh(logits / cap) * cap,
        rtol=1e-5,
        atol=1e-5,
    )


@TIES
def test_reverse_dtype_casts_operands_and_logits(tie_weights):
    layer = make_layer(tie_weights, reverse_dtype="bfloat16")
    logits = layer(X, reverse=True)
    assert keras.backend.standardize_dtype(logits.dtype) == "bfloat16"
    np.testing.assert_allclose(
        to_np(logits), X @ reverse_kernel(layer), rtol=0.05, atol=0.1
    )
    # The forward lookup keeps the compute dtype.
    assert keras.backend.standardize_dtype(layer(IDS).dtype) == "float32"
    spec = layer.compute_output_spec(keras.KerasTensor((2, 4, DIM)), reverse=True)
    assert spec.dtype == "bfloat16"


@TIES
def test_reverse_dtype_float32_under_a_mixed_policy(tie_weights):
    layer = make_layer(tie_weights, reverse_dtype="float32", dtype="mixed_bfloat16")
    logits = layer(X, reverse=True)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    # Untied: the float32 variable. Tied: the table is read through Keras's
    # autocast scope (bfloat16), as in Keras's layer, then cast.
    tolerance = 1e-5 if not tie_weights else 2e-2
    np.testing.assert_allclose(
        to_np(logits), X @ reverse_kernel(layer), rtol=tolerance, atol=tolerance
    )
    plain = make_layer(tie_weights, dtype="mixed_bfloat16")
    assert keras.backend.standardize_dtype(plain(X, reverse=True).dtype) == "bfloat16"


def test_masks_as_keras():
    layer = make_layer(mask_zero=True)
    out = layer(IDS)
    np.testing.assert_array_equal(ops.convert_to_numpy(out._keras_mask), IDS != 0)
    assert getattr(layer(X, reverse=True), "_keras_mask", None) is None
    assert layer.compute_mask(IDS) is None
    # Without `mask_zero`, no mask.
    assert getattr(make_layer()(IDS), "_keras_mask", None) is None


def test_mask_propagates_in_a_functional_model():
    ids = keras.Input((3,), dtype="int32")
    layer = ReversibleEmbedding(VOCAB, DIM, mask_zero=True)
    vectors = layer(ids)
    assert vectors._keras_mask is not None
    pooled = keras.layers.GlobalAveragePooling1D()(vectors)
    model = keras.Model(ids, pooled)
    table = randn(VOCAB, DIM, seed=1)
    layer.embeddings.assign(table)
    rows = table[IDS]
    keep = (IDS != 0)[..., None]
    expected = (rows * keep).sum(1) / keep.sum(1)
    np.testing.assert_allclose(to_np(model(IDS)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        model.predict(IDS, verbose=0), expected, rtol=1e-5, atol=1e-6
    )


def tied_language_model(tie_weights, length=5):
    ids = keras.Input((length,), dtype="int32")
    embedding = ReversibleEmbedding(
        VOCAB, DIM, tie_weights=tie_weights, mask_zero=True, logit_soft_cap=5.0
    )
    x = embedding(ids)
    x = keras.layers.Dense(DIM, activation="tanh")(x)
    logits = embedding(x, reverse=True)
    return keras.Model(ids, logits)


@TIES
def test_language_model_trains_saves_and_loads(tie_weights, tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, VOCAB, size=(32, 6))
    x, y = tokens[:, :-1], (tokens[:, :-1] + 1) % VOCAB
    model = tied_language_model(tie_weights)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    assert len(model.weights) == (3 if tie_weights else 4)
    loss0 = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=5, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0) < loss0
    expected = model.predict(x, verbose=0)
    path = tmp_path / "lm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[1], ReversibleEmbedding)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-5)


def test_get_config_and_from_config():
    layer = ReversibleEmbedding(
        VOCAB,
        DIM,
        tie_weights=False,
        reverse_dtype="float16",
        logit_soft_cap=30,
        mask_zero=True,
        input_length=3,
    )
    config = layer.get_config()
    assert config["tie_weights"] is False
    assert config["reverse_dtype"] == "float16"
    assert config["logit_soft_cap"] == 30
    clone = ReversibleEmbedding.from_config(config)
    assert clone.get_config() == config
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(restored, ReversibleEmbedding)
    assert restored.get_config() == config


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"tie_weights": "yes"}, "`tie_weights` must be a boolean"),
        ({"logit_soft_cap": 0}, "`logit_soft_cap` must be None or a positive"),
        ({"logit_soft_cap": True}, "`logit_soft_cap` must be None or a positive"),
        ({"reverse_dtype": "float7"}, "float7"),
    ],
    ids=["tie_weights", "soft_cap_zero", "soft_cap_bool", "reverse_dtype"],
)
def test_invalid_arguments(kwargs, text):
    with pytest.raises(ValueError, match=text):
        ReversibleEmbedding(VOCAB, DIM, **kwargs)
    config = ReversibleEmbedding(VOCAB, DIM).get_config()
    with pytest.raises(TypeError, match=text):
        ReversibleEmbedding.from_config({**config, **kwargs})


@TIES
@pytest.mark.parametrize(
    "mode, block_size",
    [("int8", None), ("int4", None), ("int4", 4)],
    ids=["int8", "int4_per_row", "int4_block4"],
)
def test_quantized_reverse_logits_close_to_float(tie_weights, mode, block_size):
    layer = make_layer(tie_weights)
    expected = X @ reverse_kernel(layer)
    config = None
    if mode == "int4":
        config = keras.quantizers.Int4QuantizationConfig(block_size=block_size)
    layer.quantize(mode, config=config)
    assert layer.quantization_mode == mode
    logits = to_np(layer(X, reverse=True))
    # Each kernel element is within max|column| / 254 (int8) or / 14 (int4).
    step = 254 if mode == "int8" else 14
    kernel_max = np.abs(reverse_kernel(make_layer(tie_weights))).max()
    bound = np.abs(X).sum(-1, keepdims=True) * kernel_max / step
    assert np.all(np.abs(logits - expected) <= bound + 1e-5)
    assert np.corrcoef(logits.ravel(), expected.ravel())[0, 1] > 0.98
    if not tie_weights:
        assert keras.backend.standardize_dtype(layer.reverse_embeddings.dtype) == (
            "int8"
        )
        assert not layer.trainable_weights


@pytest.mark.parametrize("block_size", [None, 4], ids=["per_row", "block4"])
def test_quantized_untied_layout_and_round_trip(block_size, tmp_path):
    layer = make_layer(tie_weights=False, mask_zero=True)
    config = keras.quantizers.Int4QuantizationConfig(block_size=block_size)
    layer.quantize("int4", config=config)
    names = [w.path.split("/")[-1] for w in layer.weights]
    groups = (DIM + 3) // 4
    expected = {
        "reverse_embeddings": (DIM // 2, VOCAB),
        "reverse_embeddings_scale": (VOCAB,) if block_size is None else (groups, VOCAB),
    }
    if block_size is not None:
        expected["reverse_embeddings_zero"] = (groups, VOCAB)
    assert names[-len(expected) :] == list(expected)
    for name, shape in expected.items():
        assert tuple(getattr(layer, name).shape) == shape
    ids = keras.Input((3,), dtype="int32")
    model = keras.Model(ids, layer(layer(ids), reverse=True))
    before = model.predict(IDS, verbose=0)
    model.save(tmp_path / "q.keras")
    loaded = keras.saving.load_model(tmp_path / "q.keras")
    np.testing.assert_allclose(loaded.predict(IDS, verbose=0), before, atol=1e-6)
    # Weights only, into a layer quantized the same way.
    model.save_weights(tmp_path / "q.weights.h5")
    fresh = make_layer(tie_weights=False, mask_zero=True)
    fresh.quantize("int4", config=config)
    other = keras.Model(ids, fresh(fresh(ids), reverse=True))
    other.load_weights(tmp_path / "q.weights.h5")
    np.testing.assert_allclose(other.predict(IDS, verbose=0), before, atol=1e-6)


def test_inputs_quantizer_as_keras():
    layer = make_layer()
    layer.quantize("int8")
    assert isinstance(layer.inputs_quantizer, keras.quantizers.AbsMaxQuantizer)
    layer = make_layer()
    config = keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
    layer.quantize("int8", config=config)
    assert layer.inputs_quantizer is None


def test_quantize_refuses_subclasses():
    class Sub(ReversibleEmbedding):
        pass

    layer = Sub(VOCAB, DIM)
    layer.build()
    with pytest.raises(NotImplementedError):
        layer.quantize("int8")


def test_lora_tied_reverse_is_numpy():
    layer = make_layer(lora_rank=2)
    a, b = randn(VOCAB, 2, seed=4), randn(2, DIM, seed=5)
    layer.lora_embeddings_a.assign(a)
    layer.lora_embeddings_b.assign(b)
    adapted = randn(VOCAB, DIM, seed=1) + a @ b  # lora_alpha defaults to rank.
    np.testing.assert_allclose(
        to_np(layer(X, reverse=True)), X @ adapted.T, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(to_np(layer(IDS)), adapted[IDS], rtol=1e-5, atol=1e-5)
    capped = make_layer(lora_rank=2, reverse_dtype="float32")
    capped.lora_embeddings_a.assign(a)
    capped.lora_embeddings_b.assign(b)
    np.testing.assert_allclose(
        to_np(capped(X, reverse=True)), X @ adapted.T, rtol=1e-4, atol=1e-4
    )


def test_max_norm_tied_reverse_uses_renormalised_rows():
    layer = make_layer(max_norm=1.0)
    rows = to_np(layer(np.arange(VOCAB)))
    assert np.all(np.linalg.norm(rows, axis=-1) <= 1.0 + 1e-5)
    np.testing.assert_allclose(
        to_np(layer(X, reverse=True)), X @ rows.T, rtol=1e-5, atol=1e-5
    )


@TIES
def test_compiled_calls(tie_weights):
    layer = make_layer(tie_weights, mask_zero=True, logit_soft_cap=4.0)
    ids = np.array([[1, VOCAB + 3, 0]])  # An invalid id looks up zeros when compiled.
    vectors = to_np(compiled(lambda x: layer(x))(ids))
    table = randn(VOCAB, DIM, seed=1)
    np.testing.assert_allclose(vectors[0, 0], table[1])
    np.testing.assert_array_equal(vectors[0, 1], np.zeros(DIM))
    logits = to_np(compiled(lambda x: layer(x, reverse=True))(X))
    expected = np.tanh(X @ reverse_kernel(layer) / 4.0) * 4.0
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_embedding_options_pass_through():
    model = keras.Sequential([ReversibleEmbedding(VOCAB, DIM, input_length=3)])
    assert model.output_shape == (None, 3, DIM)
    layer = make_layer(tie_weights=False)
    with pytest.raises(ValueError, match="12"):
        layer(np.array([[1, VOCAB]]))
    with pytest.raises(ValueError):
        layer(np.array([[-1, 2]]))
    table = randn(VOCAB, DIM, seed=7)
    layer = ReversibleEmbedding(VOCAB, DIM, tie_weights=False, weights=[table])
    np.testing.assert_allclose(to_np(layer(IDS)), table[IDS])
    assert len(layer.weights) == 2
    assert isinstance(layer, Embedding)


def test_lora_untied_saves_merged_table_then_reverse(tmp_path):
    layer = make_layer(tie_weights=False, lora_rank=2)
    names = [w.path.split("/")[-1] for w in layer.weights]
    # Keras's order after `enable_lora` (Keras's own layer cannot build this).
    assert names == [
        "embeddings",
        "reverse_embeddings",
        "lora_embeddings_a",
        "lora_embeddings_b",
    ]
    assert len(layer.trainable_weights) == 3
    layer.lora_embeddings_a.assign(randn(VOCAB, 2, seed=4))
    layer.lora_embeddings_b.assign(randn(2, DIM, seed=5))
    model = keras.Sequential([keras.Input((3,), dtype="int32"), layer])
    model.save_weights(tmp_path / "lora.weights.h5")
    plain = ReversibleEmbedding(VOCAB, DIM, tie_weights=False)
    other = keras.Sequential([keras.Input((3,), dtype="int32"), plain])
    other.load_weights(tmp_path / "lora.weights.h5")
    np.testing.assert_allclose(to_np(plain(IDS)), to_np(layer(IDS)), atol=1e-5)
    np.testing.assert_allclose(
        to_np(plain(X, reverse=True)), to_np(layer(X, reverse=True)), atol=1e-5
    )
