"""`Embedding`'s behaviour: the layer against `keras.layers.Embedding`, masks, losses,
constraints, trainability, dtype policies, dropout and ragged ids."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import Embedding
from keras_embedding_plus.testing import compiled

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version

BACKEND = keras.backend.backend()


def to_np(x):
    return ops.convert_to_numpy(x)


def ids_with_padding(seed=0, shape=(4, 6), vocab=12):
    """Ids with trailing zeros (padding), every row with at least one real id."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=shape)
    lengths = rng.integers(1, shape[1] + 1, size=shape[0])
    for row, length in enumerate(lengths):
        ids[row, length:] = 0
    return ids.astype("int32")


def twin_models(head, mask_zero=True, vocab=12, dim=4, length=6, **kwargs):
    """The same model twice: with our Embedding and with Keras's, same weights."""
    models = []
    for cls in (Embedding, keras.layers.Embedding):
        keras.utils.set_random_seed(7)
        inputs = keras.Input((length,), dtype="int32")
        x = cls(vocab, dim, mask_zero=mask_zero, **kwargs)(inputs)
        models.append(keras.Model(inputs, head(x)))
    ours, theirs = models
    theirs.set_weights(ours.get_weights())
    return ours, theirs


# --- equal to keras.layers.Embedding ----------------------------------------


def test_outputs_equal_keras():
    ours = Embedding(12, 5)
    theirs = keras.layers.Embedding(12, 5)
    ours.build()
    theirs.build()
    theirs.embeddings.assign(ours.embeddings)
    ids = np.random.default_rng(1).integers(0, 12, size=(3, 4, 2))
    np.testing.assert_array_equal(to_np(ours(ids)), to_np(theirs(ids)))
    fn_ours = compiled(lambda x: ours(x))
    fn_theirs = compiled(lambda x: theirs(x))
    ids = ops.convert_to_tensor(ids.astype("int32"))
    np.testing.assert_array_equal(to_np(fn_ours(ids)), to_np(fn_theirs(ids)))


@pytest.mark.parametrize("mask_zero", [True, False])
def test_compute_mask_equals_keras(mask_zero):
    ids = ids_with_padding()
    ours = Embedding(12, 4, mask_zero=mask_zero)
    theirs = keras.layers.Embedding(12, 4, mask_zero=mask_zero)
    mask = ours.compute_mask(ops.convert_to_tensor(ids))
    if not mask_zero:
        assert mask is None
        assert theirs.compute_mask(ops.convert_to_tensor(ids)) is None
        return
    np.testing.assert_array_equal(to_np(mask), ids != 0)
    np.testing.assert_array_equal(
        to_np(mask), to_np(theirs.compute_mask(ops.convert_to_tensor(ids)))
    )
    assert ours.supports_masking


def _mha(x):
    return keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)(x, x)


HEADS = {
    "lstm": lambda x: keras.layers.LSTM(3)(x),
    "gru": lambda x: keras.layers.GRU(3, return_sequences=True)(x),
    "gap": lambda x: keras.layers.GlobalAveragePooling1D()(x),
    "mha": _mha,
}


@pytest.mark.parametrize("head", list(HEADS), ids=list(HEADS))
def test_mask_reaches_downstream_layers_like_keras(head):
    ours, theirs = twin_models(HEADS[head])
    ids = ids_with_padding()
    out_ours = to_np(ours(ids))
    np.testing.assert_allclose(out_ours, to_np(theirs(ids)), rtol=1e-6, atol=1e-6)
    # The mask reached the head: the padding row's vector no longer matters
    # (at the real positions, for heads that return sequences).
    weights = ours.get_weights()
    weights[0][0] += 10.0
    ours.set_weights(weights)
    out_moved = to_np(ours(ids))
    real = ids != 0 if out_ours.ndim == 3 else slice(None)
    np.testing.assert_allclose(out_moved[real], out_ours[real], atol=1e-5)
    if head in ("gap", "mha"):
        # ... while without a mask it does.
        unmasked, _ = twin_models(HEADS[head], mask_zero=False)
        unmasked.set_weights(ours.get_weights())
        assert not np.allclose(to_np(unmasked(ids))[real], out_ours[real], atol=1e-3)


def test_mask_reaches_downstream_in_compiled_predict():
    ours, theirs = twin_models(HEADS["lstm"])
    ids = ids_with_padding()
    np.testing.assert_allclose(
        ours.predict(ids, verbose=0), theirs.predict(ids, verbose=0), atol=1e-6
    )


def test_masked_average_pooling_values():
    table = np.arange(1, 13 * 2 + 1, dtype="float32").reshape(13, 2)
    ids = np.array([[3, 5, 0, 0]], "int32")
    for mask_zero, expected in ((True, (table[3] + table[5]) / 2), (False, None)):
        inputs = keras.Input((4,), dtype="int32")
        x = Embedding(13, 2, mask_zero=mask_zero, weights=table)(inputs)
        model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(x))
        if expected is None:
            expected = table[[3, 5, 0, 0]].mean(axis=0)
        np.testing.assert_allclose(to_np(model(ids))[0], expected, rtol=1e-6)


def _sgd_step(model, ids, targets):
    model.compile(keras.optimizers.SGD(0.5), "mse")
    model.train_on_batch(ids, targets)
    return [to_np(w) for w in model.get_weights()]


# (A masked GRU trained side by side with Keras's layer: integration_tests/.)
@pytest.mark.parametrize("head", ["dense", "gap"])
def test_gradients_equal_keras(head):
    """One SGD step moves every weight (table included) as Keras's layer does."""

    def dense(x):
        return keras.layers.Dense(2)(keras.layers.Flatten()(x))

    if head == "dense":  # Flatten would drop (and warn about) a mask.
        ours, theirs = twin_models(dense, mask_zero=False)
    else:
        ours, theirs = twin_models(lambda x: keras.layers.Dense(3)(HEADS[head](x)))
    ids = ids_with_padding(seed=3)
    ids[0, 0] = ids[1, 0] = 5  # a repeated id: its gradients add up
    targets = np.random.default_rng(4).normal(size=(4, 2 if head == "dense" else 3))
    before = to_np(ours.get_weights()[0])
    after_ours = _sgd_step(ours, ids, targets)
    after_theirs = _sgd_step(theirs, ids, targets)
    assert not np.allclose(after_ours[0], before)
    for a, b in zip(after_ours, after_theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Rows of ids not in the batch do not move.
    unused = sorted(set(range(12)) - set(ids.ravel().tolist()))
    np.testing.assert_array_equal(after_ours[0][unused], before[unused])


# --- losses, constraints, trainable -------------------------------------------


def test_regularizer_loss_in_layer_and_model_losses():
    layer = Embedding(8, 3, embeddings_regularizer=keras.regularizers.L2(0.1))
    model = keras.Sequential([keras.Input((2,), dtype="int32"), layer])
    table = to_np(layer.embeddings)
    expected = 0.1 * np.sum(table**2)
    assert len(layer.losses) == 1 and len(model.losses) == 1
    np.testing.assert_allclose(float(to_np(model.losses[0])), expected, rtol=1e-5)
    theirs = keras.layers.Embedding(8, 3, embeddings_regularizer="l2")
    theirs.build()
    theirs.embeddings.assign(table)
    ours = Embedding(8, 3, embeddings_regularizer="l2", weights=table)
    np.testing.assert_allclose(
        float(to_np(ours.losses[0])), float(to_np(theirs.losses[0])), rtol=1e-6
    )


def test_regularizer_loss_enters_the_fit_loss():
    table = np.ones((8, 3), "float32")
    model = keras.Sequential(
        [
            keras.Input((2,), dtype="int32"),
            Embedding(8, 3, weights=table, embeddings_regularizer="l1"),
        ]
    )
    model.compile(keras.optimizers.SGD(0.0), "mse")
    logs = model.train_on_batch(
        np.array([[1, 2]]), np.ones((1, 2, 3)), return_dict=True
    )
    np.testing.assert_allclose(float(logs["loss"]), 0.01 * 24, rtol=1e-5)


def test_activity_regularizer_equals_keras():
    table = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    ours = Embedding(8, 3, weights=table, activity_regularizer="l2")
    theirs = keras.layers.Embedding(8, 3, activity_regularizer="l2")
    theirs.build()
    theirs.embeddings.assign(table)
    ids = np.array([[1, 2, 2]], "int32")
    ours(ids)
    theirs(ids)
    assert len(ours.losses) == 1
    expected = 0.01 * np.sum(table[[1, 2, 2]] ** 2)
    np.testing.assert_allclose(float(to_np(ours.losses[0])), expected, rtol=1e-5)
    np.testing.assert_allclose(
        float(to_np(ours.losses[0])), float(to_np(theirs.losses[0])), rtol=1e-6
    )


def test_maxnorm_rows_after_fit():
    layer = Embedding(
        10,
        4,
        embeddings_initializer=keras.initializers.RandomUniform(-3.0, 3.0),
        embeddings_constraint=keras.constraints.MaxNorm(1.0, axis=1),
    )
    model = keras.Sequential([keras.Input((5,), dtype="int32"), layer])
    assert np.linalg.norm(to_np(layer.embeddings), axis=1).max() > 1.5
    model.compile(keras.optimizers.SGD(0.1), "mse")
    ids = np.random.default_rng(0).integers(0, 10, size=(16, 5))
    model.fit(ids, np.full((16, 5, 4), 5.0), epochs=2, batch_size=8, verbose=0)
    norms = np.linalg.norm(to_np(layer.embeddings), axis=1)
    assert norms.max() <= 1.0 + 1e-5


def test_trainable_false_freezes_the_table():
    layer = Embedding(10, 4, trainable=False)
    model = keras.Sequential(
        [keras.Input((3,), dtype="int32"), layer, keras.layers.Dense(1)]
    )
    before = to_np(layer.embeddings).copy()
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 1
    model.compile(keras.optimizers.SGD(0.5), "mse")
    model.fit(np.array([[1, 2, 3]] * 4), np.ones((4, 3, 1)), epochs=2, verbose=0)
    np.testing.assert_array_equal(to_np(layer.embeddings), before)
    # ... while the layer after it did learn.
    assert len(model.trainable_weights) == 2


def test_trainable_toggle_after_build():
    layer = Embedding(10, 4)
    model = keras.Sequential(
        [keras.Input((3,), dtype="int32"), layer, keras.layers.Dense(1)]
    )
    layer.trainable = False
    before = to_np(layer.embeddings).copy()
    model.compile(keras.optimizers.SGD(0.5), "mse")
    model.fit(np.array([[1, 2, 3]]), np.ones((1, 3, 1)), verbose=0)
    np.testing.assert_array_equal(to_np(layer.embeddings), before)


# --- dtype policies ---------------------------------------------------------

POLICIES = {
    "float32": ("float32", "float32"),
    "float16": ("float16", "float16"),
    "bfloat16": ("bfloat16", "bfloat16"),
    "mixed_float16": ("float32", "float16"),
    "mixed_bfloat16": ("float32", "bfloat16"),
}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_dtype_policies(policy):
    variable_dtype, compute_dtype = POLICIES[policy]
    layer = Embedding(10, 4, dtype=policy)
    theirs = keras.layers.Embedding(10, 4, dtype=policy)
    ids = np.array([[1, 2, 9]], "int32")
    out = layer(ids)
    theirs.build()
    theirs.embeddings.assign(ops.cast(layer.embeddings, theirs.embeddings.dtype))
    assert keras.backend.standardize_dtype(layer.embeddings.dtype) == variable_dtype
    assert keras.backend.standardize_dtype(out.dtype) == compute_dtype
    expected = theirs(ids)
    assert keras.backend.standardize_dtype(expected.dtype) == compute_dtype
    np.testing.assert_array_equal(
        to_np(ops.cast(out, "float32")), to_np(ops.cast(expected, "float32"))
    )
    # The symbolic output agrees with the eager one.
    spec = layer.compute_output_spec(keras.KerasTensor((None, 3), dtype="int32"))
    assert spec.dtype == compute_dtype


def test_global_mixed_policy():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = Embedding(10, 4)
        out = layer(np.array([[1, 2]]))
        assert keras.backend.standardize_dtype(layer.embeddings.dtype) == "float32"
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
    finally:
        keras.config.set_dtype_policy("float32")


# --- dropout ------------------------------------------------------------------


def _dropout_layer(rate, vocab=40):
    return Embedding(vocab, 3, embeddings_initializer="ones", dropout=rate)


def test_dropout_drops_whole_rows_in_training():
    rate = 0.5
    layer = _dropout_layer(rate)
    ids = np.tile(np.arange(40), (3, 1)).astype("int32")  # every id three times
    ids[1] = ids[1][::-1]
    out = to_np(layer(ids, training=True))
    # Each vector is either all zeros or all 1 / (1 - rate).
    assert set(np.unique(out).tolist()) == {0.0, 1.0 / (1.0 - rate)}
    np.testing.assert_array_equal(out.min(axis=-1), out.max(axis=-1))
    kept = {}
    for (row, col), value in np.ndenumerate(out[..., 0]):
        kept.setdefault(int(ids[row, col]), set()).add(value)
    # Every occurrence of one id got the same answer.
    assert all(len(values) == 1 for values in kept.values())
    dropped = sum(values == {0.0} for values in kept.values())
    assert 5 <= dropped <= 35


def test_dropout_differs_between_steps():
    layer = _dropout_layer(0.5)
    ids = np.arange(40)[None].astype("int32")
    first = to_np(layer(ids, training=True))
    second = to_np(layer(ids, training=True))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("training", [None, False])
def test_dropout_has_no_effect_at_inference(training):
    layer = _dropout_layer(0.9)
    ids = np.arange(40)[None].astype("int32")
    np.testing.assert_array_equal(to_np(layer(ids, training=training)), 1.0)


def test_dropout_in_fit_and_predict():
    layer = Embedding(20, 2, embeddings_initializer="ones", dropout=0.5)
    model = keras.Sequential([keras.Input((4,), dtype="int32"), layer])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    ids = np.random.default_rng(0).integers(0, 20, size=(8, 4))
    logs = model.evaluate(ids, np.ones((8, 4, 2)), return_dict=True, verbose=0)
    assert logs["loss"] == pytest.approx(0.0)  # inference: no dropout
    history = model.fit(ids, np.ones((8, 4, 2)), epochs=1, verbose=0)
    assert history.history["loss"][0] > 0.1  # training: rows dropped / scaled
    np.testing.assert_array_equal(model.predict(ids, verbose=0), 1.0)


def test_dropout_zero_is_identity_in_training():
    layer = Embedding(10, 3, embeddings_initializer="ones", dropout=0.0)
    out = to_np(layer(np.array([[1, 2, 3]]), training=True))
    np.testing.assert_array_equal(out, 1.0)


# --- ragged ids (TensorFlow only) ---------------------------------------------


@pytest.mark.skipif(BACKEND != "tensorflow", reason="ragged tensors need TensorFlow")
def test_ragged_ids_like_keras():
    import tensorflow as tf

    ids = tf.ragged.constant([[1, 2, 3], [4], [5, 6]], dtype="int32")
    ours = Embedding(8, 3, mask_zero=False)
    theirs = keras.layers.Embedding(8, 3)
    ours.build()
    theirs.build()
    theirs.embeddings.assign(ours.embeddings)
    out = ours(ids)
    expected = theirs(ids)
    assert isinstance(out, tf.RaggedTensor)
    np.testing.assert_array_equal(out.flat_values.numpy(), expected.flat_values.numpy())
    np.testing.assert_array_equal(out.row_lengths().numpy(), [3, 1, 2])


@pytest.mark.skipif(BACKEND != "tensorflow", reason="ragged tensors need TensorFlow")
def test_ragged_ids_index_policy():
    import tensorflow as tf

    layer = Embedding(8, 3, embeddings_initializer="ones")
    with pytest.raises(ValueError, match="Invalid embedding id 9"):
        layer(tf.ragged.constant([[1, 2], [9]]))
    fn = tf.function(lambda x: layer(x))
    out = fn(tf.ragged.constant([[1, -1], [9]], dtype="int64"))
    np.testing.assert_array_equal(out.flat_values.numpy(), [[1] * 3, [0] * 3, [0] * 3])
