"""`keras_embedding_plus.optimizers`: lazy updates on row-sparse gradients.

Gradients are built in each backend's row-sparse type (what the layer produces:
`tf.IndexedSlices`, a sparse COO tensor, JAX's `IndexedRows`) and compared with
Keras's optimizers applied to the same gradient made dense.
"""

import keras
import numpy as np
import pytest

from keras_embedding_plus import optimizers

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version

BACKEND = keras.backend.backend()

VOCAB, DIM = 10, 3

LAZY = {
    "sgd": (optimizers.LazySGD, keras.optimizers.SGD, {"learning_rate": 0.1}),
    "sgd_momentum": (
        optimizers.LazySGD,
        keras.optimizers.SGD,
        {"learning_rate": 0.1, "momentum": 0.9},
    ),
    "adagrad": (
        optimizers.LazyAdagrad,
        keras.optimizers.Adagrad,
        {"learning_rate": 0.1},
    ),
    "adam": (optimizers.LazyAdam, keras.optimizers.Adam, {"learning_rate": 0.1}),
    "adam_amsgrad": (
        optimizers.LazyAdam,
        keras.optimizers.Adam,
        {"learning_rate": 0.1, "amsgrad": True},
    ),
}


def row_sparse(ids, values):
    """A `(VOCAB, DIM)` row-sparse gradient in the backend's own type."""
    ids = np.asarray(ids, "int64")
    values = np.asarray(values, "float32")
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.IndexedSlices(
            tf.constant(values), tf.constant(ids), tf.constant([VOCAB, DIM])
        )
    if BACKEND == "torch":
        import torch

        return torch.sparse_coo_tensor(
            torch.tensor(ids)[None],
            torch.tensor(values),
            (VOCAB, DIM),
            check_invariants=True,
        )
    import jax.numpy as jnp

    from keras_embedding_plus.backends.jax.sparse import IndexedRows

    return IndexedRows(jnp.asarray(ids, "int32"), jnp.asarray(values), (VOCAB, DIM))


def dense(ids, values):
    out = np.zeros((VOCAB, DIM), "float32")
    np.add.at(out, np.asarray(ids), np.asarray(values, "float32"))
    return keras.ops.convert_to_tensor(out)


def apply(optimizer, variable, gradient):
    optimizer.apply([gradient], [variable])


def table(seed=0):
    rng = np.random.default_rng(seed)
    return keras.Variable(rng.normal(size=(VOCAB, DIM)).astype("float32"))


# Three steps, with duplicate ids within a step and rows that come and go.
STEPS = [
    ([1, 4, 1, 7], [[1, 2, 3], [0.5, -1, 2], [-2, 0.5, 1], [3, 3, -3]]),
    ([4, 4, 9], [[1, 1, 1], [2, -1, 0], [0.1, 0.2, 0.3]]),
    ([1, 2], [[-1, 0, 1], [2, 2, 2]]),
]


def slot(optimizer, name):
    """The optimizer variable holding `name` for the (single) table."""
    (variable,) = [v for v in optimizer.variables if v.path.endswith(name)]
    return keras.ops.convert_to_numpy(variable)


def assert_trains_like_keras(name, gradient, **kwargs):
    """Three steps of the lazy optimizer on `gradient(ids, values)` equal Keras's
    optimizer on the dense gradient."""
    lazy_cls, keras_cls, base = LAZY[name]
    a, b = table(), table()
    lazy, reference = lazy_cls(**base, **kwargs), keras_cls(**base, **kwargs)
    for ids, values in STEPS:
        apply(lazy, a, gradient(ids, values))
        apply(reference, b, dense(ids, values))
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(LAZY), ids=list(LAZY))
def test_dense_gradient_is_keras(name):
    assert_trains_like_keras(name, dense)


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_sparse_sgd_adagrad_equal_dense(name):
    assert_trains_like_keras(name, row_sparse)


@pytest.mark.parametrize("name", ["adam", "adam_amsgrad", "sgd_momentum"])
def test_lazy_first_step_equals_keras_on_touched_rows(name):
    lazy_cls, keras_cls, kwargs = LAZY[name]
    a, b, start = table(), table(), table().numpy()
    lazy, reference = lazy_cls(**kwargs), keras_cls(**kwargs)
    ids, values = STEPS[0]
    apply(lazy, a, row_sparse(ids, values))
    apply(reference, b, dense(ids, values))
    touched = sorted(set(ids))
    untouched = [i for i in range(VOCAB) if i not in touched]
    np.testing.assert_allclose(a.numpy()[touched], b.numpy()[touched], rtol=1e-6)
    np.testing.assert_array_equal(a.numpy()[untouched], start[untouched])
    for slot_name in ["momentum", "velocity"]:
        if any(slot_name in v.path for v in lazy.variables):
            np.testing.assert_allclose(
                slot(lazy, slot_name)[touched],
                slot(reference, slot_name)[touched],
                rtol=1e-6,
            )
            np.testing.assert_array_equal(slot(lazy, slot_name)[untouched], 0.0)


@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_lazy_leaves_absent_rows_and_moments_alone(name):
    lazy_cls, _, kwargs = LAZY[name]
    a = table()
    lazy = lazy_cls(**kwargs)
    apply(lazy, a, row_sparse(*STEPS[0]))  # touches rows 1, 4, 7
    before = a.numpy().copy()
    moments = {v.path: keras.ops.convert_to_numpy(v).copy() for v in lazy.variables}
    apply(lazy, a, row_sparse(*STEPS[1]))  # touches rows 4, 9
    after = a.numpy()
    np.testing.assert_array_equal(after[[1, 7]], before[[1, 7]])
    assert not np.allclose(after[[4, 9]], before[[4, 9]])
    for v in lazy.variables:
        if "momentum" in v.path or "velocity" in v.path:
            now = keras.ops.convert_to_numpy(v)
            np.testing.assert_array_equal(now[[1, 7]], moments[v.path][[1, 7]])
            assert not np.array_equal(now[4], moments[v.path][4])


@pytest.mark.parametrize("name", list(LAZY), ids=list(LAZY))
def test_duplicate_ids_are_summed(name):
    lazy_cls, _, kwargs = LAZY[name]
    a, b = table(), table()
    split, summed = lazy_cls(**kwargs), lazy_cls(**kwargs)
    apply(
        split, a, row_sparse([3, 5, 3, 3], [[1, 0, 0], [1, 1, 1], [0, 2, 0], [0, 0, 3]])
    )
    apply(summed, b, row_sparse([5, 3], [[1, 1, 1], [1, 2, 3]]))
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "clip",
    [{"clipnorm": 1.0}, {"clipvalue": 0.5}, {"global_clipnorm": 1.0}],
    ids=["clipnorm", "clipvalue", "global_clipnorm"],
)
@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_clipping_sparse_equals_clipping_dense(name, clip):
    assert_trains_like_keras(name, row_sparse, **clip)


@pytest.mark.parametrize("name", list(LAZY), ids=list(LAZY))
def test_serialization_round_trip(name):
    lazy_cls, keras_cls, kwargs = LAZY[name]
    optimizer = lazy_cls(**kwargs)
    config = keras.optimizers.serialize(optimizer)
    assert config["registered_name"] == f"keras_embedding_plus>{lazy_cls.__name__}"
    restored = keras.optimizers.deserialize(config)
    assert type(restored) is lazy_cls
    assert restored.get_config() == optimizer.get_config()
    assert isinstance(restored, keras_cls)


def rowwise_adagrad_numpy(start, steps, lr, initial, eps):
    """FBGEMM's row-wise Adagrad in NumPy: one accumulator per row."""
    w, acc = start.copy(), np.full((VOCAB,), initial, "float64")
    for ids, values in steps:
        g = np.zeros((VOCAB, DIM))
        np.add.at(g, np.asarray(ids), np.asarray(values))
        acc += (g**2).mean(axis=1)
        w -= lr * g / (np.sqrt(acc)[:, None] + eps)
    return w, acc


@pytest.mark.parametrize("form", ["dense", "row_sparse"])
def test_rowwise_adagrad_equals_numpy(form):
    gradient = dense if form == "dense" else row_sparse
    lr, initial, eps = 0.1, 0.05, 1e-8
    variable, start = table(), table().numpy()
    optimizer = optimizers.LazyRowwiseAdagrad(
        lr, initial_accumulator_value=initial, epsilon=eps
    )
    for ids, values in STEPS:
        apply(optimizer, variable, gradient(ids, values))
    expected, accumulator = rowwise_adagrad_numpy(start, STEPS, lr, initial, eps)
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-6)
    # One accumulator a row: 1 / DIM of Adagrad's state.
    np.testing.assert_allclose(
        slot(optimizer, "rowwise_accumulator"), accumulator, rtol=1e-5
    )
    assert slot(optimizer, "rowwise_accumulator").shape == (VOCAB,)


def test_rowwise_adagrad_bias_is_per_element_and_config_round_trips():
    bias = keras.Variable(np.ones((DIM,), "float32"))
    optimizer = optimizers.LazyRowwiseAdagrad(0.5)
    g = np.asarray([1.0, -2.0, 0.0], "float32")
    optimizer.apply([keras.ops.convert_to_tensor(g)], [bias])
    expected = 1.0 - 0.5 * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(bias.numpy(), expected, rtol=1e-6)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is optimizers.LazyRowwiseAdagrad
    assert restored.get_config() == optimizer.get_config()
    with pytest.raises(ValueError, match="epsilon"):
        optimizers.LazyRowwiseAdagrad(epsilon=0)
