"""`.keras` round trips (saving and loading, and the files' contents).

Sequential, Functional and subclassed models holding `keras_embedding_plus.Embedding`
(`mask_zero=True` feeding a masked layer, a regularizer and a constraint,
`input_length`, mixed precision) save and load with `model.save("m.keras")` /
`keras.models.load_model`, in this process and in a fresh one that only imports the
package.
"""

import keras
import numpy as np
import pytest

from keras_embedding_plus import Embedding
from keras_embedding_plus.testing.saving import (
    assert_same_embedding,
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


def sequential_input_length():
    model = keras.Sequential(
        [
            Embedding(30, 5, input_length=4, name="emb"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    return model, ids((3, 4), 30)


def functional_masked():
    # A masked layer after the embedding (pooling: cheap to compile; the legacy
    # `.h5` tests use an LSTM).
    inputs = keras.Input((6,), dtype="int32")
    x = Embedding(20, 4, mask_zero=True, name="emb")(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x)), ids((3, 6), 20)


def functional_regularized():
    inputs = keras.Input((5,), dtype="int32")
    x = Embedding(
        15,
        3,
        embeddings_regularizer=keras.regularizers.L2(0.01),
        activity_regularizer=keras.regularizers.L1(0.001),
        embeddings_constraint=keras.constraints.MaxNorm(1.0, axis=1),
        mask_zero=True,
        name="emb",
    )(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x)), ids((3, 5), 15)


@keras.saving.register_keras_serializable(package="keras_embedding_plus_tests")
class TinyClassifier(keras.Model):
    """A subclassed model: its own `call`, our layer's mask passed by hand."""

    def __init__(self, input_dim=20, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = input_dim
        self.emb = Embedding(input_dim, 4, mask_zero=True, name="emb")
        self.pool = keras.layers.GlobalAveragePooling1D()
        self.head = keras.layers.Dense(1)

    def call(self, inputs):
        x = self.emb(inputs)
        return self.head(self.pool(x, mask=self.emb.compute_mask(inputs)))

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim}


def subclassed():
    model = TinyClassifier(20)
    data = ids((3, 6), 20)
    model(data)
    return model, data


MODELS = {
    "sequential_input_length": sequential_input_length,
    "functional_masked": functional_masked,
    "functional_regularized": functional_regularized,
    "subclassed_masked": subclassed,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_keras_round_trip(name, tmp_path):
    model, data = MODELS[name]()
    fill_weights(model)
    expected = outputs(model, data)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert_same_outputs(expected, outputs(loaded, data))
    (saved_layer,) = embedding_layers(model)
    (loaded_layer,) = embedding_layers(loaded)
    assert_same_embedding(saved_layer, loaded_layer)


def test_masked_round_trip_keeps_the_mask(tmp_path):
    """The mask reaches the pooling after loading: more padding changes nothing."""
    model, data = functional_masked()
    fill_weights(model)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    padded = np.concatenate([data, np.zeros((3, 3), "int32")], axis=1)
    inputs = keras.Input((9,), dtype="int32")
    longer = keras.Model(
        inputs, loaded.layers[-1](loaded.layers[-2](loaded.get_layer("emb")(inputs)))
    )
    assert_same_outputs(outputs(loaded, data), outputs(longer, padded))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.get_layer("emb").compute_mask(data)),
        data != 0,
    )


def test_regularizer_and_constraint_survive(tmp_path):
    model, data = functional_regularized()
    fill_weights(model)
    model(data)
    losses = [float(keras.ops.convert_to_numpy(x)) for x in model.losses]
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    loaded(data)
    loaded_losses = [float(keras.ops.convert_to_numpy(x)) for x in loaded.losses]
    np.testing.assert_allclose(loaded_losses, losses, rtol=1e-6)
    layer = loaded.get_layer("emb")
    assert isinstance(layer.embeddings_constraint, keras.constraints.MaxNorm)
    # The constraint still acts: one SGD step with a huge rate, rows stay <= 1.
    loaded.compile(keras.optimizers.SGD(100.0), "mse")
    loaded.fit(data, np.ones((3, 2)), epochs=1, verbose=0)
    norms = np.linalg.norm(keras.ops.convert_to_numpy(layer.embeddings), axis=1)
    assert norms.max() <= 1.0 + 1e-5, norms


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_round_trip(policy, tmp_path):
    inputs = keras.Input((5,), dtype="int32")
    x = Embedding(12, 4, mask_zero=True, dtype=policy, name="emb")(inputs)
    x = keras.layers.GlobalAveragePooling1D(dtype=policy)(x)
    model = keras.Model(inputs, keras.layers.Dense(2, dtype="float32")(x))
    fill_weights(model)
    data = ids((3, 5), 12)
    expected = outputs(model, data)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert_same_outputs(expected, outputs(loaded, data), atol=0.0)
    layer = loaded.get_layer("emb")
    assert_same_embedding(model.get_layer("emb"), layer)
    assert layer.dtype_policy.name == policy
    assert layer.embeddings.dtype == "float32"
    assert keras.backend.standardize_dtype(layer(data).dtype) == policy[6:]


_FRESH = """
import keras, numpy as np
for path in ("m.keras", "m.h5"):
    try:
        keras.models.load_model(path)
    except Exception as e:
        # What saving.md tells serving code: the registered name is in the error.
        assert "keras_embedding_plus>" in str(e), str(e)[:500]
    else:
        raise SystemExit(path + " loaded before keras_embedding_plus was imported")
import keras_embedding_plus
for path in ("m.keras", "m.h5"):
    model = keras.models.load_model(path)
    layer = model.get_layer("emb")
    assert type(layer) is keras_embedding_plus.Embedding, type(layer)
    np.save(path + ".npy", model.predict(np.load("ids.npy"), verbose=0))
print("fresh process:", keras.backend.backend(), keras_embedding_plus.__file__)
"""


def test_fresh_process_loads_with_only_the_import(tmp_path):
    """Registration happens on `import keras_embedding_plus`: no custom_objects."""
    model, data = functional_masked()
    fill_weights(model)
    expected = outputs(model, data)
    work = tmp_path / "elsewhere"
    work.mkdir()
    model.save(work / "m.keras")
    model.save(work / "m.h5")
    np.save(work / "ids.npy", data)
    result = run_python(_FRESH, cwd=work)
    assert f"fresh process: {BACKEND}" in result.stdout
    for path in ("m.keras", "m.h5"):
        assert_same_outputs(expected, [np.load(work / f"{path}.npy")])
