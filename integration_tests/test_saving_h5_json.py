"""Weights-only files, the legacy `.h5` format and JSON architectures (items 4, 5).

Keras 3.15's own `Embedding(mask_zero=True) -> LSTM` saves to a legacy `.h5` file
that it cannot load (`Unknown layer: 'NotEqual'`): a Functional model records the op
that computed the mask (`keras.ops.not_equal`) as a node of its graph, and the
legacy loader only knows layers. Ours records its mask through `PaddingMask`, an op
registered by `import keras_embedding_plus`, so the same model loads.
"""

import keras
import numpy as np
import pytest

from keras_embedding_plus.testing.saving import (
    Embedding,
    assert_same_embedding,
    assert_same_outputs,
    fill_weights,
    ids,
    outputs,
)

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version


def masked_lstm(embedding_cls=Embedding, input_dim=20):
    inputs = keras.Input((6,), dtype="int32")
    x = embedding_cls(input_dim, 4, mask_zero=True, name="emb")(inputs)
    x = keras.layers.LSTM(3, name="lstm")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(x))


def sequential_input_length():
    return keras.Sequential(
        [
            Embedding(30, 5, input_length=4, name="emb"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, name="head"),
        ]
    )


DATA = {"masked_lstm": ids((3, 6), 20), "sequential": ids((3, 4), 30)}
BUILDERS = {"masked_lstm": masked_lstm, "sequential": sequential_input_length}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_weights_h5_round_trip(name, tmp_path):
    model = BUILDERS[name]()
    fill_weights(model)
    expected = outputs(model, DATA[name])
    model.save_weights(tmp_path / "x.weights.h5")
    fresh = BUILDERS[name]()
    fresh.load_weights(tmp_path / "x.weights.h5")
    assert_same_outputs(expected, outputs(fresh, DATA[name]))
    assert_same_embedding(model.get_layer("emb"), fresh.get_layer("emb"))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_legacy_h5_round_trip(name, tmp_path):
    """Ours beats Keras here for the masked LSTM (see the module docstring)."""
    model = BUILDERS[name]()
    fill_weights(model)
    expected = outputs(model, DATA[name])
    model.save(tmp_path / "m.h5")
    loaded = keras.models.load_model(tmp_path / "m.h5")
    assert_same_outputs(expected, outputs(loaded, DATA[name]))
    assert_same_embedding(model.get_layer("emb"), loaded.get_layer("emb"))
    if name == "masked_lstm":
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(
                loaded.get_layer("emb").compute_mask(DATA[name])
            ),
            DATA[name] != 0,
        )


def test_keras_own_embedding_fails_the_legacy_h5_round_trip(tmp_path):
    """The Keras 3.15 behaviour ours improves on (fails once Keras fixes it)."""
    model = masked_lstm(keras.layers.Embedding)
    model.save(tmp_path / "m.h5")
    with pytest.raises(ValueError, match="Unknown layer: 'NotEqual'"):
        keras.models.load_model(tmp_path / "m.h5")


def test_legacy_h5_load_weights(tmp_path):
    """`load_weights` also reads a full-model legacy `.h5` file."""
    model = masked_lstm()
    fill_weights(model)
    expected = outputs(model, DATA["masked_lstm"])
    model.save(tmp_path / "m.h5")
    fresh = masked_lstm()
    fresh.load_weights(tmp_path / "m.h5")
    assert_same_outputs(expected, outputs(fresh, DATA["masked_lstm"]))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_json_round_trip(name):
    model = BUILDERS[name]()
    fill_weights(model)
    expected = outputs(model, DATA[name])
    rebuilt = keras.models.model_from_json(model.to_json())
    rebuilt.set_weights(model.get_weights())
    assert_same_outputs(expected, outputs(rebuilt, DATA[name]))
    assert_same_embedding(model.get_layer("emb"), rebuilt.get_layer("emb"))
