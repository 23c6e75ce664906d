"""Moving models: converted models saved, loaded elsewhere, and
`from_keras` given the path of a `.keras` or `.h5` file."""

import keras
import numpy as np
import pytest

from keras_embedding_plus import from_keras, to_keras
from keras_embedding_plus.testing.saving import (
    Embedding,
    assert_same_outputs,
    embedding_layers,
    fill_weights,
    ids,
    outputs,
    run_python,
)

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version

BACKEND = keras.backend.backend()

DATA = ids((4, 6), 20)


def keras_masked_lstm():
    """A Keras model with two `keras.layers.Embedding`, one in a nested model."""
    inner = keras.Sequential(
        [keras.Input((6,), dtype="int32"), keras.layers.Embedding(20, 3, name="inner")],
        name="inner_model",
    )
    inputs = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(20, 4, mask_zero=True, name="emb")(inputs)
    x = keras.layers.Concatenate()([x, inner(inputs)])
    x = keras.layers.LSTM(3, name="lstm")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(x))


def keras_masked_lstm_h5():
    """The model of test_saving_h5_json.py: Keras 3.15 cannot reload its `.h5`."""
    inputs = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(20, 4, mask_zero=True, name="emb")(inputs)
    x = keras.layers.LSTM(3, name="lstm")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(x))


def keras_sequential():
    return keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras.layers.Embedding(20, 4, name="emb"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, name="head"),
        ]
    )


_FRESH = """
import keras, numpy as np
import keras_embedding_plus
model = keras.models.load_model("m.keras")
layers = (model.get_layer("emb"), model.get_layer("inner_model").layers[0])
types = [type(x).__name__ + ":" + type(x).__module__.split(".")[0] for x in layers]
assert types == ["Embedding:keras_embedding_plus"] * 2, types
np.save("out.npy", model.predict(np.load("ids.npy"), verbose=0))
print("fresh process:", keras.backend.backend())
"""


def test_converted_model_loads_in_a_fresh_process(tmp_path):
    model = keras_masked_lstm()
    fill_weights(model)
    expected = outputs(model, DATA)
    converted = from_keras(model)
    assert len(embedding_layers(converted)) == 2
    assert_same_outputs(expected, outputs(converted, DATA))
    work = tmp_path / "elsewhere"
    work.mkdir()
    converted.save(work / "m.keras")
    np.save(work / "ids.npy", DATA)
    result = run_python(_FRESH, cwd=work)
    assert f"fresh process: {BACKEND}" in result.stdout
    assert_same_outputs(expected, [np.load(work / "out.npy")])


_FRESH_KERAS_ONLY = """
import sys, keras, numpy as np
model = keras.models.load_model("m.keras")
assert type(model.get_layer("emb")) is keras.layers.Embedding
assert "keras_embedding_plus" not in sys.modules
np.save("out.npy", model.predict(np.load("ids.npy"), verbose=0))
"""


def test_to_keras_model_loads_without_the_package(tmp_path):
    """What `to_keras` is for: a model for code that does not install us."""
    ids_input = keras.Input((6,), dtype="int32")
    x = Embedding(20, 4, mask_zero=True, input_length=6, name="emb")(ids_input)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(ids_input, keras.layers.Dense(2)(x))
    fill_weights(model)
    expected = outputs(model, DATA)
    work = tmp_path / "elsewhere"
    work.mkdir()
    to_keras(model).save(work / "m.keras")
    np.save(work / "ids.npy", DATA)
    run_python(_FRESH_KERAS_ONLY, cwd=work)
    assert_same_outputs(expected, [np.load(work / "out.npy")])


@pytest.mark.parametrize(
    "builder, suffix",
    [
        pytest.param(keras_masked_lstm, ".keras", id="functional-keras"),
        pytest.param(keras_sequential, ".keras", id="sequential-keras"),
        # Keras 3.15 cannot load its own masked Functional models from `.h5`
        # (`Unknown layer: 'NotEqual'`, see test_saving_h5_json.py).
        pytest.param(keras_sequential, ".h5", id="sequential-h5"),
    ],
)
@pytest.mark.parametrize("as_path", [str, lambda p: p], ids=["str", "pathlib"])
def test_from_keras_takes_a_path(builder, suffix, as_path, tmp_path):
    model = builder()
    fill_weights(model)
    expected = outputs(model, DATA)
    path = tmp_path / f"m{suffix}"
    model.save(path)
    converted = from_keras(as_path(path))
    layers = embedding_layers(converted)
    assert layers and all(type(layer) is Embedding for layer in layers)
    assert_same_outputs(expected, outputs(converted, DATA))


def test_converted_masked_model_saves_to_h5(tmp_path):
    """Keras's masked LSTM cannot come back from `.h5`; converted, it can."""
    model = keras_masked_lstm_h5()
    fill_weights(model)
    expected = outputs(model, DATA)
    model.save(tmp_path / "keras.h5")
    with pytest.raises(ValueError, match="Unknown layer: 'NotEqual'"):
        keras.models.load_model(tmp_path / "keras.h5")
    from_keras(model).save(tmp_path / "m.h5")
    loaded = keras.models.load_model(tmp_path / "m.h5")
    assert type(loaded.get_layer("emb")) is Embedding
    assert_same_outputs(expected, outputs(loaded, DATA))


def train_4_steps_and_save(model, path):
    """`model` compiled with Adam, trained 4 steps, saved to `path`; the
    targets."""
    fill_weights(model)
    # A loss object: Keras 3.15 cannot load a legacy `.h5` compiled with "mse"
    # (`Could not deserialize 'keras.metrics.mse'`).
    model.compile(keras.optimizers.Adam(0.05), keras.losses.MeanSquaredError())
    targets = np.random.RandomState(2).standard_normal((len(DATA), 1))
    for _ in range(4):
        model.train_on_batch(DATA, targets)
    model.save(path)
    return targets


def test_from_keras_path_keeps_the_optimizer_state(tmp_path):
    """A `.keras` file saved mid-training resumes where it stopped, converted."""
    model = keras_sequential()
    targets = train_4_steps_and_save(model, tmp_path / "m.keras")
    converted = from_keras(tmp_path / "m.keras")
    assert type(converted.get_layer("emb")) is Embedding
    assert int(converted.optimizer.iterations) == 4
    for _ in range(3):
        model.train_on_batch(DATA, targets)
        converted.train_on_batch(DATA, targets)
    assert int(converted.optimizer.iterations) == int(model.optimizer.iterations) == 7
    max_diff = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(model.get_weights(), converted.get_weights(), strict=True)
    )
    assert max_diff <= 1e-6, max_diff


def test_from_keras_legacy_h5_keeps_only_the_step_count(tmp_path):
    """Keras 3.15 reads no optimizer slots from a legacy `.h5` (its own loaded
    model cannot train: its optimizer was built on no variable). The converted
    model trains, from step 4, its slots at zero, and a warning says so.
    Watches for Keras fixing it."""
    model = keras_sequential()
    targets = train_4_steps_and_save(model, tmp_path / "m.h5")
    loaded = keras.models.load_model(tmp_path / "m.h5")
    assert [v.name for v in loaded.optimizer.variables] == [
        "iteration",
        "learning_rate",
    ]
    slots = 2 * len(model.trainable_variables)  # Adam's two moments each.
    with pytest.warns(UserWarning, match=rf"in part: {slots} variable\(s\).*`\.h5`"):
        converted = from_keras(tmp_path / "m.h5")
    assert int(converted.optimizer.iterations) == 4
    converted.train_on_batch(DATA, targets)
    assert int(converted.optimizer.iterations) == 5
