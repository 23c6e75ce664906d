"""`Embedding` serialization: get_config / from_config, Keras 1 and tf.keras 2 configs,
`keras.layers.serialize` and a `.keras` round trip."""

import inspect
import json
import re

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import Embedding

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version


def to_np(x):
    return ops.convert_to_numpy(x)


def constructor_arguments():
    names = list(inspect.signature(Embedding.__init__).parameters)
    return [n for n in names if n not in ("self", "kwargs", "weights")]


FULL = dict(
    embeddings_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=3),
    embeddings_regularizer=keras.regularizers.L1L2(l1=0.001, l2=0.01),
    activity_regularizer=keras.regularizers.L2(0.02),
    embeddings_constraint=keras.constraints.MaxNorm(2.0, axis=1),
    mask_zero=True,
    input_length=(4, None),
    dropout=0.25,
    name="emb",
    dtype="mixed_float16",
    trainable=False,
)


def test_get_config_holds_every_constructor_argument_but_weights():
    config = Embedding(20, 6, weights=np.zeros((20, 6))).get_config()
    missing = [n for n in constructor_arguments() if n not in config]
    assert missing == []
    assert "weights" not in config
    json.dumps(config)  # JSON-friendly


def test_get_config_values():
    config = Embedding(20, 6, **FULL).get_config()
    assert config["input_dim"] == 20 and config["output_dim"] == 6
    assert config["mask_zero"] is True
    assert config["input_length"] == [4, None]
    assert config["dropout"] == 0.25
    assert config["name"] == "emb" and config["trainable"] is False
    assert config["embeddings_initializer"]["class_name"] == "RandomNormal"
    assert config["embeddings_regularizer"]["config"]["l2"] == pytest.approx(0.01)
    assert config["activity_regularizer"]["config"]["l2"] == pytest.approx(0.02)
    assert config["embeddings_constraint"]["config"] == {"max_value": 2.0, "axis": 1}


def test_default_config_matches_keras_for_shared_keys():
    ours = Embedding(20, 6, name="e").get_config()
    theirs = keras.layers.Embedding(20, 6, name="e").get_config()
    for key, value in theirs.items():
        if key in ours:
            assert ours[key] == value, key


@pytest.mark.parametrize("kwargs", [{}, FULL], ids=["defaults", "everything"])
def test_from_config_round_trip(kwargs):
    layer = Embedding(20, 6, **kwargs)
    config = layer.get_config()
    clone = Embedding.from_config(config)
    assert clone.get_config() == config
    assert clone.input_length == layer.input_length
    assert clone.dtype_policy.name == layer.dtype_policy.name
    # Same weights, same outputs.
    layer.build()
    clone.build()
    clone.set_weights(layer.get_weights())
    ids = np.array([[[1], [0], [3], [4]]], "int32")  # fits input_length=(4, None)
    np.testing.assert_array_equal(
        to_np(ops.cast(layer(ids), "float32")), to_np(ops.cast(clone(ids), "float32"))
    )


def test_keras_serialize_deserialize():
    layer = Embedding(20, 6, mask_zero=True, input_length=5, dropout=0.1)
    data = keras.layers.serialize(layer)
    assert data["registered_name"] == "keras_embedding_plus>Embedding"
    clone = keras.layers.deserialize(json.loads(json.dumps(data)))
    assert type(clone) is Embedding
    assert clone.get_config() == layer.get_config()


def test_registered_name():
    assert keras.saving.get_registered_name(Embedding) == (
        "keras_embedding_plus>Embedding"
    )
    assert (
        keras.saving.get_registered_object("keras_embedding_plus>Embedding")
        is Embedding
    )


@pytest.mark.parametrize(
    "field, value, text",
    [
        (
            "input_dim",
            0,
            "`input_dim` must be a positive integer. Received: input_dim=0",
        ),
        ("output_dim", -2, "`output_dim` must be a positive integer (or 0"),
        ("dropout", 1.5, "`dropout` must be a float in [0, 1). Received: dropout=1.5"),
        ("mask_zero", "yes", "`mask_zero` must be a boolean. Received: "),
        ("input_length", 0, "`input_length` must be None, a positive integer"),
    ],
    ids=["input_dim", "output_dim", "dropout", "mask_zero", "input_length"],
)
def test_from_config_reraises_constructor_errors_as_type_error(field, value, text):
    config = Embedding(10, 4).get_config()
    with pytest.raises(ValueError, match=re.escape(text)):
        Embedding(**{**config, field: value})
    config[field] = value
    with pytest.raises(TypeError, match=re.escape(text)):
        Embedding.from_config(config)


def test_from_config_both_keras1_and_new_name_is_a_type_error():
    config = Embedding(10, 4).get_config()
    config["init"] = "zeros"
    config["embeddings_initializer"] = "ones"
    with pytest.raises(TypeError, match=re.escape("`init`")):
        Embedding.from_config(config)


# --- configs written by older Keras -------------------------------------------

TF_KERAS_2_CONFIG = {
    "name": "embedding",
    "trainable": True,
    "batch_input_shape": [None, 10],
    "dtype": "float32",
    "input_dim": 100,
    "output_dim": 8,
    "embeddings_initializer": {
        "class_name": "RandomUniform",
        "config": {"minval": -0.05, "maxval": 0.05, "seed": None},
    },
    "embeddings_regularizer": None,
    "activity_regularizer": None,
    "embeddings_constraint": None,
    "mask_zero": True,
    "input_length": 10,
}

KERAS_1_CONFIG = {
    "name": "embedding_1",
    "trainable": True,
    "batch_input_shape": [None, 12],
    "input_dtype": "int32",
    "input_dim": 50,
    "output_dim": 4,
    "init": "uniform",
    "input_length": 12,
    "mask_zero": False,
    "W_regularizer": {"name": "WeightRegularizer", "l1": 0.0, "l2": 0.01},
    "activity_regularizer": None,
    "W_constraint": {"name": "MaxNorm", "m": 2, "axis": 1},
    "dropout": 0.2,
}


def test_from_tf_keras_2_config():
    layer = Embedding.from_config(dict(TF_KERAS_2_CONFIG))
    assert (layer.input_dim, layer.output_dim) == (100, 8)
    assert layer.input_length == 10
    assert layer.mask_zero is True
    assert layer.dtype_policy.name == "float32"
    assert isinstance(layer.embeddings_initializer, keras.initializers.RandomUniform)
    assert layer.embeddings_initializer.maxval == pytest.approx(0.05)
    model = keras.Sequential([layer])
    assert model.output_shape == (None, 10, 8)


def test_from_tf_keras_2_config_with_input_shape_only():
    config = {k: v for k, v in TF_KERAS_2_CONFIG.items() if k != "input_length"}
    config["batch_input_shape"] = [None, 3, 7]
    layer = Embedding.from_config(config)
    assert layer.input_length == (3, 7)


def test_from_keras_1_config():
    layer = Embedding.from_config(dict(KERAS_1_CONFIG))
    assert (layer.input_dim, layer.output_dim, layer.input_length) == (50, 4, 12)
    assert layer.dropout == pytest.approx(0.2)
    assert isinstance(layer.embeddings_initializer, keras.initializers.RandomUniform)
    regularizer = layer.embeddings_regularizer.get_config()
    assert regularizer["l2"] == pytest.approx(0.01)
    assert regularizer.get("l1", 0.0) == pytest.approx(0.0)
    assert isinstance(layer.embeddings_constraint, keras.constraints.MaxNorm)
    assert layer.embeddings_constraint.get_config() == {"max_value": 2, "axis": 1}
    layer.build()
    table = to_np(layer.embeddings)
    np.testing.assert_allclose(
        float(to_np(layer.losses[0])), 0.01 * np.sum(table**2), rtol=1e-5
    )
    # The translated config round-trips in the current form.
    assert Embedding.from_config(layer.get_config()).get_config() == (
        layer.get_config()
    )


def test_keras_1_config_through_deserialize():
    clone = keras.layers.deserialize(
        {"class_name": "keras_embedding_plus>Embedding", "config": KERAS_1_CONFIG}
    )
    assert type(clone) is Embedding and clone.input_length == 12


# --- .keras round trip --------------------------------------------------------


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input((5,), dtype="int32")
    x = Embedding(30, 4, mask_zero=True, embeddings_regularizer="l2", dropout=0.1)(
        inputs
    )
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs)
    ids = np.random.default_rng(0).integers(0, 30, size=(6, 5))
    ids[:, 3:] = 0
    expected = model.predict(ids, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.layers[1]) is Embedding
    assert loaded.layers[1].get_config() == model.layers[1].get_config()
    np.testing.assert_allclose(loaded.predict(ids, verbose=0), expected, rtol=1e-6)


def test_keras_file_round_trip_sequential_input_length(tmp_path):
    model = keras.Sequential([Embedding(30, 4, input_length=6)])
    ids = np.random.default_rng(1).integers(0, 30, size=(3, 6))
    expected = model.predict(ids, verbose=0)
    model.save(tmp_path / "seq.keras")
    loaded = keras.saving.load_model(tmp_path / "seq.keras")
    assert loaded.output_shape == (None, 6, 4)
    np.testing.assert_array_equal(loaded.predict(ids, verbose=0), expected)


def test_from_tf_keras_2_mixed_precision_policy():
    config = dict(TF_KERAS_2_CONFIG)
    config["dtype"] = {"class_name": "Policy", "config": {"name": "mixed_float16"}}
    layer = Embedding.from_config(config)
    assert layer.dtype_policy.name == "mixed_float16"
    assert layer.variable_dtype == "float32" and layer.compute_dtype == "float16"


def test_from_keras_1_activity_regularizer():
    config = dict(KERAS_1_CONFIG)
    config["activity_regularizer"] = {
        "name": "ActivityRegularizer",
        "l1": 0.0,
        "l2": 0.5,
    }
    layer = Embedding.from_config(config)
    assert layer.activity_regularizer.get_config()["l2"] == pytest.approx(0.5)
