"""`Embedding(sparse=True)`: row-sparse table gradients in `fit` on every backend.

Models with a sparse table (and `SparseTrainer`, which JAX needs) are trained next to
the same models with a dense table and Keras's optimizers. Batches hold each id at
most once where the dense reference would otherwise differ: Keras's own Adam and
Adagrad on TensorFlow add the rows of a `tf.IndexedSlices` without summing
duplicate ids first.
"""

import warnings

import keras
import numpy as np
import pytest

from keras_embedding_plus import Embedding, EmbeddingBag
from keras_embedding_plus.optimizers import LazyAdagrad, LazyAdam, LazySGD
from keras_embedding_plus.testing import compiled
from keras_embedding_plus.training import SparseTrainer, sparse_tables

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version

BACKEND = keras.backend.backend()

VOCAB, LENGTH, DIM, BATCH = 64, 4, 8, 4


@keras.saving.register_keras_serializable(package="test_sparse")
class SparseSequential(SparseTrainer, keras.Sequential):
    pass


def make_model(
    sparse,
    optimizer,
    vocab=VOCAB,
    run_eagerly=False,
    jit_compile="auto",
    **layer_kwargs,
):
    model = (SparseSequential if sparse else keras.Sequential)(
        [
            keras.Input((LENGTH,), dtype="int32"),
            Embedding(
                vocab,
                DIM,
                sparse=sparse,
                embeddings_initializer=keras.initializers.RandomNormal(seed=1),
                **layer_kwargs,
            ),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(
                1, kernel_initializer=keras.initializers.GlorotUniform(seed=2)
            ),
        ]
    )
    model.compile(
        optimizer=optimizer,
        loss="mse",
        run_eagerly=run_eagerly,
        jit_compile=jit_compile,
    )
    return model


def batches(steps, duplicates=False, seed=0):
    """`steps` batches of ids; without `duplicates`, no id twice in a batch."""
    rng = np.random.default_rng(seed)
    if duplicates:
        x = rng.integers(0, 6, size=(steps, BATCH, LENGTH))
    else:
        x = np.stack(
            [
                rng.permutation(VOCAB)[: BATCH * LENGTH].reshape(BATCH, LENGTH)
                for _ in range(steps)
            ]
        )
    y = rng.normal(size=(steps, BATCH, 1))
    return x.astype("int32"), y.astype("float32")


def train(model, x, y):
    for xb, yb in zip(x, y, strict=True):
        model.train_on_batch(xb, yb)
    return model


def table(model):
    return keras.ops.convert_to_numpy(model.layers[0].embeddings)


def test_sparse_argument():
    with pytest.raises(ValueError, match=r"`sparse` must be a boolean.*sparse=1"):
        Embedding(4, 2, sparse=1)
    layer = Embedding(4, 2, sparse=True)
    assert layer.get_config()["sparse"] is True
    assert Embedding.from_config(layer.get_config()).sparse is True
    assert Embedding(4, 2).sparse is False


def test_forward_equals_dense():
    dense, sparse = Embedding(10, 3), Embedding(10, 3, sparse=True)
    dense.build()
    sparse.build()
    sparse.embeddings.assign(dense.embeddings)
    ids = np.array([[1, 9, 1], [0, 3, 4]], "int32")
    expected = keras.ops.convert_to_numpy(dense(ids))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(sparse(ids)), expected)
    out = compiled(lambda i: sparse(i))(keras.ops.convert_to_tensor(ids))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), expected)


@pytest.mark.skipif(
    BACKEND == "jax",
    reason="JAX gradients are dense arrays; SparseTrainer differentiates the rows",
)
def test_table_gradient_is_row_sparse():
    layer = Embedding(1000, 4, sparse=True)
    ids = keras.ops.convert_to_tensor(np.array([[3, 3, 7]], "int32"))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids))
        gradient = tape.gradient(loss, layer.embeddings.value)
        assert isinstance(gradient, tf.IndexedSlices)
        rows = tf.convert_to_tensor(gradient).numpy()
    else:
        layer(ids).sum().backward()
        gradient = layer.embeddings.value.grad
        assert gradient.is_sparse
        rows = gradient.to_dense().cpu().numpy()
    expected = np.zeros((1000, 4), "float32")
    expected[3], expected[7] = 2.0, 1.0
    np.testing.assert_array_equal(rows, expected)


# Sparse model with our optimizer == dense model with Keras's optimizer, over
# the trade-offs `Embedding(sparse=True)` documents.
EQUAL_TO_DENSE = {
    "LazySGD": (lambda: LazySGD(0.5), lambda: keras.optimizers.SGD(0.5), {}),
    "LazyAdagrad": (
        lambda: LazyAdagrad(0.5),
        lambda: keras.optimizers.Adagrad(0.5),
        {},
    ),
    "keras_SGD": (
        lambda: keras.optimizers.SGD(0.5),
        lambda: keras.optimizers.SGD(0.5),
        {},
    ),
    "regularizer": (
        lambda: LazySGD(0.5),
        lambda: keras.optimizers.SGD(0.5),
        {"embeddings_regularizer": keras.regularizers.L2(0.1)},
    ),
    "constraint": (
        lambda: LazySGD(0.5),
        lambda: keras.optimizers.SGD(0.5),
        {"embeddings_constraint": keras.constraints.MaxNorm(1.0, axis=1)},
    ),
    "clipnorm": (
        lambda: LazyAdagrad(0.5, clipnorm=0.01),
        lambda: keras.optimizers.Adagrad(0.5, clipnorm=0.01),
        {},
    ),
    "global_clipnorm": (
        lambda: LazySGD(0.5, global_clipnorm=0.05),
        lambda: keras.optimizers.SGD(0.5, global_clipnorm=0.05),
        {},
    ),
    "clipvalue": (
        lambda: LazySGD(0.5, clipvalue=0.005),
        lambda: keras.optimizers.SGD(0.5, clipvalue=0.005),
        {},
    ),
    "ema": (
        lambda: LazyAdagrad(0.5, use_ema=True, ema_overwrite_frequency=2),
        lambda: keras.optimizers.Adagrad(0.5, use_ema=True, ema_overwrite_frequency=2),
        {},
    ),
    "gradient_accumulation": (
        lambda: LazyAdagrad(0.5, gradient_accumulation_steps=2),
        lambda: keras.optimizers.Adagrad(0.5, gradient_accumulation_steps=2),
        {},
    ),
    "weight_decay": (
        lambda: LazySGD(0.5, weight_decay=0.1),
        lambda: keras.optimizers.SGD(0.5, weight_decay=0.1),
        {},
    ),
    "loss_scale_factor": (
        # Scaling by a power of 2 is exact. (Keras's own `loss_scale_factor`
        # fails on TensorFlow's `IndexedSlices`: they have no `/`.)
        lambda: LazyAdagrad(0.5, loss_scale_factor=8.0),
        lambda: keras.optimizers.Adagrad(0.5),
        {},
    ),
}


@pytest.mark.parametrize("case", list(EQUAL_TO_DENSE), ids=list(EQUAL_TO_DENSE))
def test_fit_equals_dense_training(case):
    ours, reference, layer_kwargs = EQUAL_TO_DENSE[case]
    x, y = batches(4)
    # Compiling costs more than these few steps (the compiled JAX step is
    # tested by the tests below).
    eager = BACKEND == "jax"
    sparse = train(make_model(True, ours(), run_eagerly=eager, **layer_kwargs), x, y)
    dense = train(
        make_model(False, reference(), run_eagerly=eager, **layer_kwargs), x, y
    )
    np.testing.assert_allclose(table(sparse), table(dense), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(sparse.layers[-1].kernel),
        keras.ops.convert_to_numpy(dense.layers[-1].kernel),
        rtol=1e-5,
        atol=1e-6,
    )
    if case == "constraint":
        assert np.linalg.norm(table(sparse), axis=1).max() <= 1.0 + 1e-6


@pytest.mark.parametrize("optimizer", [LazySGD, LazyAdagrad, LazyAdam])
def test_duplicate_ids_are_summed(optimizer):
    # `sparse=False` gives a dense gradient on JAX and PyTorch, duplicates
    # summed by autodiff; both must agree with the sparse path.
    x, y = batches(3, duplicates=True)
    sparse = train(make_model(True, optimizer(0.1)), x, y)
    dense = train(make_model(False, optimizer(0.1)), x, y)
    assert len(np.unique(x[0])) < x[0].size
    np.testing.assert_allclose(table(sparse), table(dense), rtol=1e-5, atol=1e-6)


# Raised by torch.compile and Keras's compiled torch train step: not ours.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not")
def test_jit_compile():
    """XLA on TensorFlow, `torch.compile` on PyTorch (JAX always compiles)."""
    x, y = batches(3, duplicates=True)
    sparse = train(make_model(True, LazyAdam(0.1), jit_compile=True), x, y)
    dense = train(make_model(False, LazyAdam(0.1)), x, y)
    assert sparse.jit_compile
    np.testing.assert_allclose(table(sparse), table(dense), rtol=1e-5, atol=1e-6)


def test_lazy_adam_first_step_and_untouched_rows():
    x, y = batches(1)
    start = table(make_model(False, "sgd"))
    lazy = train(make_model(True, LazyAdam(0.1)), x, y)
    adam = train(make_model(False, keras.optimizers.Adam(0.1)), x, y)
    touched = np.unique(x)
    untouched = np.setdiff1d(np.arange(VOCAB), touched)
    np.testing.assert_allclose(table(lazy)[touched], table(adam)[touched], rtol=1e-5)
    np.testing.assert_array_equal(table(lazy)[untouched], start[untouched])
    for v in lazy.optimizer.variables:
        if v.shape == (VOCAB, DIM):  # The moments of the table.
            values = keras.ops.convert_to_numpy(v)
            np.testing.assert_array_equal(values[untouched], 0.0)
            assert np.all(np.abs(values[touched]).sum(axis=1) > 0)


def test_sparse_tables_skips_regularized_and_frozen():
    model = make_model(True, LazySGD(), embeddings_regularizer="l2")
    assert sparse_tables(model) == []
    model = make_model(True, LazySGD())
    assert sparse_tables(model) == [model.layers[0].embeddings]
    model.layers[0].trainable = False
    assert sparse_tables(model) == []


class SparseModel(SparseTrainer, keras.Model):
    pass


def dense_training_warnings(caught):
    return [str(w.message) for w in caught if "trained densely" in str(w.message)]


@pytest.mark.parametrize("mixin", [False, True], ids=["plain", "SparseTrainer"])
def test_sparse_without_the_mixin_warns_once_on_jax(mixin):
    """JAX trains a sparse table densely without `SparseTrainer`: warned once,
    naming the remedy. TensorFlow and PyTorch keep the gradient row-sparse in
    any model (`test_table_gradient_is_row_sparse`): no warning there. Frozen
    and regularized tables train densely by design: no warning for them."""
    ids = keras.Input((LENGTH,), dtype="int32")
    plain = Embedding(VOCAB, DIM, sparse=True, name="plain")
    frozen = Embedding(VOCAB, DIM, sparse=True, trainable=False, name="frozen")
    regularized = Embedding(
        VOCAB, DIM, sparse=True, embeddings_regularizer="l2", name="regularized"
    )
    bag = EmbeddingBag(VOCAB, DIM, sparse=True, name="bag")
    x = keras.layers.Add()([plain(ids), frozen(ids), regularized(ids)])
    x = keras.layers.Add()([keras.layers.GlobalAveragePooling1D()(x), bag(ids)])
    model = (SparseModel if mixin else keras.Model)(ids, keras.layers.Dense(1)(x))
    model.compile(optimizer=LazySGD(0.1), loss="mse")
    x, y = batches(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # An eager call in training mode differentiates nothing.
        plain(x[0], training=True)
    assert dense_training_warnings(caught) == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train_on_batch(x[0], y[0])
        if not mixin:  # Another batch size: the train step is traced again.
            model.train_on_batch(x[0][:2], y[0][:2])
    found = dense_training_warnings(caught)
    if BACKEND == "jax" and not mixin:
        assert len(found) == 2, found  # One for each layer, not each trace.
        assert sorted(m.split("'")[1] for m in found) == ["bag", "plain"]
        assert all("SparseTrainer" in m for m in found)
    else:
        assert found == []


def synthetic_task(n, seed):
    """Sequences of ids; label 1 when one of the first 20 ids occurs."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 400, size=(n, 8))
    y = (x < 20).any(axis=1)
    return x.astype("int32"), y.astype("float32")[:, None]


def test_lazy_trains_to_dense_accuracy():
    """LazyAdam with a sparse table reaches Adam's accuracy within 0.05."""
    x, y = synthetic_task(2048, seed=0)
    x_test, y_test = synthetic_task(512, seed=1)
    accuracy = {}
    for sparse, optimizer in [(True, LazyAdam(0.02)), (False, "adam")]:
        keras.utils.set_random_seed(3)
        model = (SparseSequential if sparse else keras.Sequential)(
            [
                keras.Input((8,), dtype="int32"),
                Embedding(400, 16, sparse=sparse),
                keras.layers.GlobalMaxPooling1D(),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        if not sparse:
            optimizer = keras.optimizers.Adam(0.02)
        model.compile(optimizer=optimizer, loss="bce", metrics=["accuracy"])
        model.fit(x, y, batch_size=64, epochs=4, verbose=0, shuffle=False)
        accuracy[sparse] = model.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy[False] > 0.85, accuracy
    assert abs(accuracy[True] - accuracy[False]) <= 0.05, accuracy


def test_save_and_resume_training(tmp_path):
    x, y = batches(3, duplicates=True)
    model = train(make_model(True, LazyAdam(0.1)), x[:2], y[:2])
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is SparseSequential
    assert type(loaded.optimizer) is LazyAdam
    assert loaded.layers[0].sparse is True
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )
    train(model, x[2:], y[2:])
    train(loaded, x[2:], y[2:])
    np.testing.assert_allclose(table(loaded), table(model), rtol=1e-6, atol=1e-7)


def test_mixed_float16_loss_scaling():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        if BACKEND == "torch":
            # Refused where it is set: torch cannot carry the sparse gradient back
            # through the cast to float16 (nor could Keras's LossScaleOptimizer
            # check it for finiteness).
            with pytest.raises(ValueError, match="mixed dtype policy 'mixed_float16'"):
                make_model(True, LazyAdam(0.01))
            return
        x, y = batches(3, duplicates=True)
        sparse = train(make_model(True, LazyAdam(0.01)), x, y)
        dense = train(make_model(False, LazyAdam(0.01)), x, y)
    finally:
        keras.config.set_dtype_policy("float32")
    assert type(sparse.optimizer).__name__ == "LossScaleOptimizer"
    assert sparse.layers[0].embeddings.dtype == "float32"
    np.testing.assert_allclose(table(sparse), table(dense), rtol=1e-3, atol=1e-4)
    assert not np.allclose(table(sparse), table(make_model(False, "sgd")))
