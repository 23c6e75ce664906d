"""LoRA: `lora_rank` / `lora_alpha` and `layer.enable_lora(rank)`."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import Embedding
from keras_embedding_plus.testing import compiled

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version


def to_np(x):
    return ops.convert_to_numpy(x)


def table(input_dim=40, output_dim=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((input_dim, output_dim)).astype("float32")


def set_factors(layer, seed=1):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(tuple(layer.lora_embeddings_a.shape)).astype("float32")
    b = rng.standard_normal(tuple(layer.lora_embeddings_b.shape)).astype("float32")
    layer.lora_embeddings_a.assign(a)
    layer.lora_embeddings_b.assign(b)
    return a, b


def seq_model(layer, length=5):
    model = keras.Sequential([keras.Input((length,), dtype="int32"), layer])
    model.compile(keras.optimizers.SGD(0.5), "mse")
    return model


IDS = np.random.default_rng(3).integers(0, 40, size=(16, 5))


@pytest.mark.parametrize("alpha", [None, 8], ids=["alpha-default", "alpha-8"])
def test_outputs_are_adapted_rows(alpha):
    w = table()
    layer = Embedding(40, 6, weights=w, lora_rank=4, lora_alpha=alpha)
    assert layer.lora_enabled
    a, b = set_factors(layer)
    scale = (alpha or 4) / 4
    expected = (w + scale * a @ b)[IDS]
    np.testing.assert_allclose(to_np(layer(IDS)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        to_np(layer.embeddings), w + scale * a @ b, rtol=1e-5, atol=1e-5
    )


def test_starts_equal_to_the_table():
    w = table()
    layer = Embedding(40, 6, weights=w)
    layer.enable_lora(3)
    np.testing.assert_array_equal(to_np(layer(IDS)), w[IDS])


def test_only_the_factors_train():
    w = table()
    layer = Embedding(40, 6, weights=w, lora_rank=2)
    assert [v.name for v in layer.trainable_weights] == [
        "lora_embeddings_a",
        "lora_embeddings_b",
    ]
    assert [v.name for v in layer.non_trainable_weights] == ["embeddings"]
    layer.trainable = False
    layer.trainable = True  # must not unfreeze the table
    assert [v.name for v in layer.non_trainable_weights] == ["embeddings"]
    model = seq_model(layer)
    a0 = to_np(layer.lora_embeddings_a)
    y = np.random.default_rng(4).standard_normal((16, 5, 6)).astype("float32")
    loss0 = model.evaluate(IDS, y, verbose=0)
    model.fit(IDS, y, epochs=3, verbose=0)
    np.testing.assert_array_equal(to_np(layer._embeddings), w)
    assert not np.allclose(to_np(layer.lora_embeddings_a), a0)
    assert np.abs(to_np(layer.lora_embeddings_b)).max() > 0
    assert model.evaluate(IDS, y, verbose=0) < loss0


def test_saving_merges_the_adapter(tmp_path):
    w = table()
    layer = Embedding(40, 6, weights=w, lora_rank=2, name="emb")
    model = seq_model(layer)
    a, b = set_factors(layer)
    expected = model.predict(IDS, verbose=0)
    path = tmp_path / "lora.keras"
    model.save(path)
    # A LoRA model again, adapter reset to zero on the merged table: same outputs.
    loaded = keras.saving.load_model(path)
    loaded_layer = loaded.get_layer("emb")
    assert loaded_layer.lora_enabled and loaded_layer.lora_rank == 2
    np.testing.assert_allclose(
        to_np(loaded_layer._embeddings), w + a @ b, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(to_np(loaded_layer.lora_embeddings_b), 0.0)
    np.testing.assert_allclose(loaded.predict(IDS, verbose=0), expected, atol=1e-5)
    # The weights load into a plain layer ("anywhere") with the same outputs.
    plain = seq_model(Embedding(40, 6, name="emb"))
    plain.load_weights(path)
    np.testing.assert_allclose(plain.predict(IDS, verbose=0), expected, atol=1e-5)
    # And into Keras's own Embedding.
    theirs = seq_model(keras.layers.Embedding(40, 6, name="emb"))
    weights_path = tmp_path / "lora.weights.h5"
    model.save_weights(weights_path)
    theirs.load_weights(weights_path)
    np.testing.assert_allclose(theirs.predict(IDS, verbose=0), expected, atol=1e-5)


def test_training_continues_after_loading(tmp_path):
    model = seq_model(Embedding(40, 6, lora_rank=2, name="emb"))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    y = np.ones((16, 5, 6), "float32")
    loss0 = loaded.evaluate(IDS, y, verbose=0)
    loaded.fit(IDS, y, epochs=3, verbose=0)
    assert loaded.evaluate(IDS, y, verbose=0) < loss0


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_lora_on_a_quantized_layer(mode, tmp_path):
    w = table(40, 8)
    layer = Embedding(40, 8, weights=w, name="emb")
    layer.quantize(mode)
    base = to_np(layer(IDS))
    layer.enable_lora(2)
    model = seq_model(layer)
    a, b = set_factors(layer)
    out = model.predict(IDS, verbose=0)
    np.testing.assert_allclose(out, base + (a @ b)[IDS], rtol=1e-5, atol=1e-5)
    y = np.zeros((16, 5, 8), "float32")
    stored = [to_np(v) for v in (layer._embeddings, layer.embeddings_scale)]
    model.fit(IDS, y, epochs=2, verbose=0)  # trains the factors: no error
    for v, s in zip((layer._embeddings, layer.embeddings_scale), stored, strict=True):
        np.testing.assert_array_equal(to_np(v), s)
    expected = model.predict(IDS, verbose=0)
    path = tmp_path / "qlora.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("emb").quantization_mode == mode
    # Saving re-quantizes the merged table: within the quantization bound.
    row_max = np.abs(expected).max(axis=-1, keepdims=True)  # merged rows of IDS
    bound = {"int8": 1 / 254, "int4": 1 / 14}[mode]
    error = np.abs(loaded.predict(IDS, verbose=0) - expected)
    assert np.all(error <= bound * row_max * (1 + 1e-4) + 1e-6)


def test_constraint_is_a_clear_error():
    constraint = keras.constraints.MaxNorm(1.0, axis=1)
    with pytest.raises(
        ValueError, match="Lora is incompatible with embedding constraints"
    ):
        Embedding(10, 4, embeddings_constraint=constraint, lora_rank=2)
    layer = Embedding(10, 4, embeddings_constraint=constraint)
    layer.build()
    with pytest.raises(ValueError, match="embeddings_constraint"):
        layer.enable_lora(2)
    assert not layer.lora_enabled


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lora_rank": 0}, r"`lora_rank` must be None or a positive integer\. "),
        ({"lora_rank": 2.0}, r"Received: lora_rank=2\.0 \(of type float\)"),
        ({"lora_rank": True}, r"Received: lora_rank=True \(of type bool\)"),
        ({"lora_rank": 2, "lora_alpha": 0}, r"Received: lora_alpha=0 "),
        ({"lora_rank": 2, "lora_alpha": "x"}, r"`lora_alpha` must be None"),
    ],
    ids=["rank-0", "rank-float", "rank-bool", "alpha-0", "alpha-str"],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Embedding(10, 4, **kwargs)
    config = Embedding(10, 4).get_config()
    config.update(kwargs)
    with pytest.raises(TypeError, match=message):
        Embedding.from_config(config)


def test_enable_lora_errors():
    layer = Embedding(10, 4)
    with pytest.raises(ValueError, match="Cannot enable lora on a layer that isn't"):
        layer.enable_lora(2)
    layer.build()
    with pytest.raises(ValueError, match=r"`rank` must be a positive integer"):
        layer.enable_lora(-1)
    layer.enable_lora(2)
    with pytest.raises(ValueError, match="lora is already enabled. This can only"):
        layer.enable_lora(2)


def test_config_round_trip():
    layer = Embedding(10, 4, lora_rank=3, lora_alpha=6.0)
    config = layer.get_config()
    assert config["lora_rank"] == 3 and config["lora_alpha"] == 6.0
    rebuilt = Embedding.from_config(config)
    rebuilt.build()
    assert rebuilt.lora_enabled and rebuilt.get_config() == config
    plain = Embedding(10, 4)
    plain.build()
    plain.enable_lora(5, lora_alpha=2)
    assert plain.get_config()["lora_rank"] == 5
    assert plain.get_config()["lora_alpha"] == 2


def test_index_policy_holds():
    w = table(10, 4)
    layer = Embedding(10, 4, weights=w, lora_rank=2)
    a, b = set_factors(layer)
    with pytest.raises(ValueError, match="Invalid embedding id 10"):
        layer(np.array([[1, 10]]))
    out = to_np(compiled(lambda x: layer(x))(np.array([[1, 10, -1, 3]], "int32")))
    np.testing.assert_array_equal(out[0, 1:3], 0.0)
    np.testing.assert_allclose(out[0, [0, 3]], (w + a @ b)[[1, 3]], rtol=1e-5)


def test_mixed_precision_output_dtype():
    layer = Embedding(40, 6, lora_rank=2, dtype="mixed_bfloat16")
    out = layer(IDS)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert layer.lora_embeddings_a.dtype == "float32"


def test_sparse_lora_invalid_ids_are_zero_rows_in_compiled_calls():
    # Regression: with sparse=True, LoRA's `A` rows came from the row-sparse
    # gather, which leaves invalid ids' rows to the caller, and `model.predict`
    # on JAX gave non-zero rows for -1 and 12.
    w = table(10, 3)
    layer = Embedding(10, 3, weights=w, sparse=True, lora_rank=2)
    model = seq_model(layer, length=3)
    a, b = set_factors(layer)  # B non-zero: the delta shows.
    assert np.abs(b).min() > 0
    ids = np.array([[1, -1, 12]], "int32")
    if keras.backend.backend() == "torch":
        # Keras's predict runs eagerly on torch, where the policy refuses the ids;
        # the compiled call checks the rows.
        with pytest.raises(ValueError, match=r"Invalid embedding id -1 at position"):
            model.predict(ids, verbose=0)
        out = to_np(compiled(lambda x: model(x))(ops.convert_to_tensor(ids)))
    else:
        out = model.predict(ids, verbose=0)  # compiled on TensorFlow and JAX
    np.testing.assert_array_equal(out[0, 1:], 0.0)
    np.testing.assert_allclose(out[0, 0], (w + a @ b)[1], rtol=1e-5, atol=1e-6)


def test_float_table_adds_the_adapter():
    """`float_table()`: the table plus `scale * A @ B`, in float32."""
    w = table()
    layer = Embedding(40, 6, weights=w, lora_rank=4, lora_alpha=8)
    a, b = set_factors(layer)
    out = layer.float_table()
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(to_np(out), w + 2.0 * a @ b, rtol=1e-5, atol=1e-5)
