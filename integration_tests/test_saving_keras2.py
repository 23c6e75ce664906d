"""Models saved by tf.keras 2.x and configs written by Keras 1 (item 6).

`fixtures/tf_keras/` holds `.h5` files written by the `tf-keras` package (2.21):
`Sequential([Embedding(20, 4, input_length=6, mask_zero=True), <masked layer>,
Dense(2)])` with a masked LSTM or a masked pooling, and the outputs tf.keras
computed (`scripts/make_fixtures.py --tf-keras PYTHON`).

Keras 3.15 cannot rebuild tf.keras's LSTM from a config (its `time_major` argument
is gone: `Unrecognized keyword arguments passed to LSTM: {'time_major': False}`),
whatever the embedding. With a three-line LSTM that drops `time_major: False`
passed in `custom_objects`, the LSTM model loads into our layer too.
"""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_embedding_plus.testing.saving import Embedding, assert_same_outputs, outputs

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version

FIXTURES = Path(__file__).resolve().parent / "fixtures"

CUSTOM_OBJECTS = {"Embedding": Embedding}


@keras.saving.register_keras_serializable(package="keras_embedding_plus_tests")
class Keras2LSTM(keras.layers.LSTM):
    """tf.keras 2's LSTM config without its `time_major` (always False there)."""

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        assert config.pop("time_major", False) is False
        return super().from_config(config)


def _check_loaded(model, name):
    data = np.load(FIXTURES / "tf_keras" / f"{name}.npz")
    layer = model.layers[0]
    assert type(layer) is Embedding
    assert layer.input_length == 6
    assert layer.mask_zero is True
    assert model.output_shape == (None, *data["output_0"].shape[1:])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer.embeddings), data["embeddings"]
    )
    assert_same_outputs([data["output_0"]], outputs(model, data["ids"]))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer.compute_mask(data["ids"])), data["mask"]
    )


def test_tf_keras_h5_with_masked_pooling_loads_into_our_layer():
    path = FIXTURES / "tf_keras" / "masked_pooling_keras2.h5"
    model = keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS)
    _check_loaded(model, "masked_pooling_keras2")


def test_tf_keras_h5_with_masked_lstm_needs_keras3_lstm_fix():
    path = FIXTURES / "tf_keras" / "masked_lstm_keras2.h5"
    # Keras 3.15's LSTM, not the embedding, rejects the tf.keras config.
    with pytest.raises(ValueError, match="time_major"):
        keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS)
    model = keras.models.load_model(
        path, custom_objects={**CUSTOM_OBJECTS, "LSTM": Keras2LSTM}
    )
    _check_loaded(model, "masked_lstm_keras2")


# A Keras 1.2 `Embedding` config, as `model.to_json()` wrote it then.
KERAS1_CONFIG = {
    "name": "embedding_1",
    "trainable": True,
    "batch_input_shape": [None, 6],
    "input_dtype": "int32",
    "input_dim": 20,
    "output_dim": 4,
    "init": "uniform",
    "input_length": 6,
    "W_regularizer": {"name": "WeightRegularizer", "l1": 0.0, "l2": 0.01},
    "activity_regularizer": None,
    "W_constraint": {"name": "MaxNorm", "m": 2.0, "axis": 1},
    "mask_zero": True,
    "dropout": 0.25,
}


def _equivalent():
    return Embedding(
        20,
        4,
        embeddings_initializer="uniform",
        embeddings_regularizer=keras.regularizers.L1L2(l1=0.0, l2=0.01),
        embeddings_constraint=keras.constraints.MaxNorm(2.0, axis=1),
        mask_zero=True,
        input_length=6,
        dropout=0.25,
        name="embedding_1",
    )


def _comparable(config):
    # Seeds of unseeded initializers are not part of a layer's meaning.
    return json.loads(json.dumps(config, default=str))


@pytest.mark.parametrize("route", ["from_config", "deserialize", "model_from_json"])
def test_keras1_config_deserializes_into_an_equivalent_layer(route):
    if route == "from_config":
        layer = Embedding.from_config(dict(KERAS1_CONFIG))
    elif route == "deserialize":
        layer = keras.layers.deserialize(
            {"class_name": "Embedding", "config": dict(KERAS1_CONFIG)},
            custom_objects=CUSTOM_OBJECTS,
        )
    else:
        legacy = {
            "class_name": "Sequential",
            "config": {
                "name": "sequential_1",
                "layers": [{"class_name": "Embedding", "config": dict(KERAS1_CONFIG)}],
            },
        }
        # Keras 3 reads a config without "module" keys only through
        # `custom_objects`, for the container as for the layer.
        model = keras.models.model_from_json(
            json.dumps(legacy),
            custom_objects={**CUSTOM_OBJECTS, "Sequential": keras.Sequential},
        )
        (layer,) = model.layers
        assert model.output_shape == (None, 6, 4)
    assert type(layer) is Embedding
    expected = _equivalent()
    assert _comparable(layer.get_config()) == _comparable(expected.get_config())
    # Same table, same answers, same regularization loss.
    layer.build()
    expected.build()
    expected.set_weights(layer.get_weights())
    ids = np.array([[1, 5, 19, 0, 0, 0]], "int32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer(ids)),
        keras.ops.convert_to_numpy(expected(ids)),
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.embeddings_regularizer(layer.embeddings)),
        keras.ops.convert_to_numpy(expected.embeddings_regularizer(layer.embeddings)),
    )
