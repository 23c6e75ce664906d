"""`Embedding` in real models: the documented example, training side by side with
`keras.layers.Embedding`, `input_length` models, shared layers and N-D ids."""

import textwrap

import keras
import numpy as np
import pytest

from keras_embedding_plus import Embedding
from keras_embedding_plus.testing.saving import run_python

BACKEND = keras.backend.backend()

# The example from the Keras docs, as the README shows it.
_DOCUMENTED_EXAMPLE = textwrap.dedent(
    """
    import keras
    import numpy as np
    from keras_embedding_plus import Embedding

    model = keras.Sequential()
    model.add(Embedding(1000, 64, input_length=10))
    assert model.output_shape == (None, 10, 64), model.output_shape
    input_array = np.random.randint(1000, size=(32, 10))
    model.compile("rmsprop", "mse")
    output_array = model.predict(input_array, verbose=0)
    assert output_array.shape == (32, 10, 64)
    print("documented example:", keras.backend.backend(), model.output_shape)
    """
)


def _sentences(n=64, length=8, vocab=30, seed=0):
    """Ids with trailing padding; label 1 when the sentence holds id 1 or 2."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(n, length))
    for row in range(n):
        ids[row, rng.integers(2, length + 1) :] = 0
    labels = rng.integers(0, 2, size=n)
    for row in np.flatnonzero(labels):
        ids[row, 0] = rng.integers(1, 3)
    return ids.astype("int32"), labels.astype("float32")


def _classifier(embedding_cls, recurrent):
    keras.utils.set_random_seed(11)
    inputs = keras.Input((8,), dtype="int32")
    x = embedding_cls(30, 8, mask_zero=True, name="emb")(inputs)
    if recurrent:
        x = keras.layers.GRU(4)(x)
    else:
        x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(0.05), "binary_crossentropy", metrics=["accuracy"]
    )
    return model


@pytest.mark.parametrize("recurrent", [False, True], ids=["pooling", "gru"])
def test_training_matches_keras_embedding(recurrent):
    ids, labels = _sentences()
    ours = _classifier(Embedding, recurrent)
    theirs = _classifier(keras.layers.Embedding, recurrent)
    theirs.set_weights(ours.get_weights())
    fit = dict(epochs=3, batch_size=16, shuffle=False, verbose=0)
    history = ours.fit(ids, labels, **fit).history
    theirs.fit(ids, labels, **fit)
    assert history["loss"][-1] < history["loss"][0]
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        ours.predict(ids, verbose=0), theirs.predict(ids, verbose=0), atol=1e-5
    )


def test_documented_example_and_saved_model_in_a_fresh_process(tmp_path):
    """One fresh interpreter (a backend import is slow) runs the documented
    example, then loads a trained `input_length` model saved here."""
    model = keras.Sequential(
        [
            Embedding(20, 3, input_length=5, name="emb"),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    assert model.output_shape == (None, 1)  # built before any data
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 20, size=(32, 5))
    targets = (ids[:, :1] % 2).astype("float32")
    model.compile(keras.optimizers.Adam(0.05), "mse")
    history = model.fit(ids, targets, epochs=4, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "expected.npy", model.predict(ids, verbose=0))
    code = _DOCUMENTED_EXAMPLE + textwrap.dedent(
        """
        import keras_embedding_plus
        model = keras.saving.load_model("m.keras")
        assert type(model.get_layer("emb")) is keras_embedding_plus.Embedding
        assert model.output_shape == (None, 1), model.output_shape
        out = model.predict(np.load("ids.npy"), verbose=0)
        print("max diff", float(np.abs(out - np.load("expected.npy")).max()))
        """
    )
    result = run_python(code, cwd=tmp_path)
    assert f"documented example: {BACKEND} (None, 10, 64)" in result.stdout
    # Unlike Keras 3.15's own layer, nothing says `input_length` is deprecated.
    assert "input_length" not in result.stderr
    assert float(result.stdout.split("max diff")[-1]) <= 1e-6


def test_shared_embedding_two_inputs_matches_keras():
    def build(cls):
        keras.utils.set_random_seed(5)
        a = keras.Input((4,), dtype="int32")
        b = keras.Input((6,), dtype="int32")
        emb = cls(15, 4, mask_zero=True)
        pool = keras.layers.GlobalAveragePooling1D()
        x = keras.layers.Concatenate()([pool(emb(a)), pool(emb(b))])
        model = keras.Model([a, b], keras.layers.Dense(1)(x))
        model.compile(keras.optimizers.SGD(0.1), "mse")
        return model

    ours, theirs = build(Embedding), build(keras.layers.Embedding)
    theirs.set_weights(ours.get_weights())
    rng = np.random.default_rng(6)
    data = [rng.integers(0, 15, size=(16, 4)), rng.integers(0, 15, size=(16, 6))]
    target = rng.normal(size=(16, 1))
    ours.fit(data, target, epochs=2, batch_size=8, shuffle=False, verbose=0)
    theirs.fit(data, target, epochs=2, batch_size=8, shuffle=False, verbose=0)
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_nd_ids_model():
    inputs = keras.Input((3, 4), dtype="int32")
    x = Embedding(25, 2, input_length=(3, 4))(inputs)  # (batch, 3, 4, 2)
    x = keras.layers.Reshape((3, 8))(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    assert model.output_shape == (None, 1)
    model.compile(keras.optimizers.Adam(0.05), "mse")
    ids = np.random.default_rng(3).integers(0, 25, size=(16, 3, 4))
    history = model.fit(ids, np.ones((16, 1)), epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="jit_compile=True (XLA) is TensorFlow's compiler"
)
def test_invalid_ids_under_xla_give_zero_rows():
    table = np.arange(1, 13, dtype="float32").reshape(4, 3)
    model = keras.Sequential(
        [keras.Input((3,), dtype="int32"), Embedding(4, 3, weights=table)]
    )
    model.compile(jit_compile=True)
    out = model.predict(np.array([[1, 4, -1]]), verbose=0)
    np.testing.assert_array_equal(out[0], [table[1], np.zeros(3), np.zeros(3)])


def test_keras2_pretrained_pattern():
    """The tf.keras 2 recipe: `weights=[matrix]`, `input_length`, frozen table."""
    matrix = np.random.default_rng(8).normal(size=(40, 5)).astype("float32")
    model = keras.Sequential(
        [
            Embedding(40, 5, weights=[matrix], input_length=6, trainable=False),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    assert model.output_shape == (None, 1)
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    ids = np.random.default_rng(9).integers(0, 40, size=(32, 6))
    labels = (ids[:, 0] < 20).astype("float32")
    model.fit(ids, labels, epochs=2, batch_size=8, verbose=0)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.layers[0].embeddings), matrix
    )
    assert len(model.trainable_weights) == 2  # the Dense kernel and bias only
