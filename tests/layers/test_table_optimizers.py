"""Per-table optimizers (issue 23, item 3): `TableConfig.optimizer` trains its
table in the lookup's backward pass, lazily (only the looked-up rows and their
slots move), while the model's optimizer trains everything else. Checked against
NumPy's float64 steps of Keras's update rules."""

import keras
import numpy as np
import pytest

from keras_embedding_plus import EmbeddingCollection, FeatureConfig, TableConfig
from keras_embedding_plus.optimizers import LazyRowwiseAdagrad
from keras_embedding_plus.testing import forward_and_gradients, to_numpy
from keras_embedding_plus.training import SparseTrainer

BATCH, SAMPLES, DIM = 8, 16, 4
ROWS, USED = 12, 9  # Rows USED.. are never looked up.


class Model(SparseTrainer, keras.Model):
    pass


OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.2),
    "adagrad": lambda: keras.optimizers.Adagrad(0.3, initial_accumulator_value=0.2),
    "rowwise_adagrad": lambda: LazyRowwiseAdagrad(0.3, initial_accumulator_value=0.1),
    "adam": lambda: keras.optimizers.Adam(0.05, beta_1=0.8, beta_2=0.9),
    "ftrl": lambda: keras.optimizers.Ftrl(
        0.3,
        l1_regularization_strength=0.01,
        l2_regularization_strength=0.02,
        l2_shrinkage_regularization_strength=0.03,
        beta=0.1,
    ),
}


def _model(optimizer, cls=Model):
    t = TableConfig("t", ROWS, DIM, optimizer=optimizer, combiner="sum")
    u = TableConfig("u", 5, DIM, combiner="sum")
    layer = EmbeddingCollection(
        {"a": FeatureConfig("a", t), "b": FeatureConfig("b", u)}
    )
    inputs = {
        "a": keras.Input((3,), dtype="int32", name="a"),
        "b": keras.Input((2,), dtype="int32", name="b"),
    }
    model = cls(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model, layer


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = {
        "a": rng.integers(0, USED, (SAMPLES, 3)).astype("int32"),
        "b": rng.integers(0, 5, (SAMPLES, 2)).astype("int32"),
    }
    y = {k: rng.normal(size=(SAMPLES, DIM)).astype("float32") for k in x}
    return x, y


def _numpy_step(kind, config, step, rows, slots, g):
    """One step of Keras's update rule of `kind` on the rows, in float64."""
    lr = config["learning_rate"]
    if kind == "sgd":
        return rows - lr * g, slots
    if kind == "adagrad":
        acc = slots[0] + g**2
        return rows - lr * g / np.sqrt(acc + config["epsilon"]), [acc]
    if kind == "rowwise_adagrad":
        acc = slots[0] + (g**2).mean(-1)
        return rows - lr * g / (np.sqrt(acc) + config["epsilon"])[:, None], [acc]
    if kind == "adam":
        b1, b2 = config["beta_1"], config["beta_2"]
        m = slots[0] + (g - slots[0]) * (1 - b1)
        v = slots[1] + (g**2 - slots[1]) * (1 - b2)
        alpha = lr * np.sqrt(1 - b2**step) / (1 - b1**step)
        return rows - alpha * m / (np.sqrt(v) + config["epsilon"]), [m, v]
    p = -config["learning_rate_power"]
    l2 = config["l2_regularization_strength"] + config["beta"] / (2 * lr)
    l1 = config["l1_regularization_strength"]
    shrunk = g + 2 * config["l2_shrinkage_regularization_strength"] * rows
    acc = slots[0] + g**2
    linear = slots[1] + shrunk - (acc**p - slots[0] ** p) / lr * rows
    quadratic = acc**p / lr + 2 * l2
    return (np.clip(linear, -l1, l1) - linear) / quadratic, [acc, linear]


def _numpy_training(kind, config, t, u, x, y, steps):
    """Table `t` by its own optimizer (lazily: only the rows looked up),
    table `u` by the model's `SGD(0.1)`; the loss is the sum of each
    output's mean squared error."""
    t, u = t.astype("float64"), u.astype("float64")
    initial = {"adagrad": [config.get("initial_accumulator_value")]}
    if kind == "rowwise_adagrad":
        slots = [np.full(len(t), config["initial_accumulator_value"])]
    elif kind == "adagrad":
        slots = [np.full(t.shape, initial["adagrad"][0])]
    elif kind == "adam":
        slots = [np.zeros(t.shape), np.zeros(t.shape)]
    elif kind == "ftrl":
        slots = [
            np.full(t.shape, config["initial_accumulator_value"]),
            np.zeros(t.shape),
        ]
    else:
        slots = []
    for step in range(1, steps + 1):
        batch = slice((step - 1) * BATCH % SAMPLES, None)
        ids_a, ids_b = x["a"][batch][:BATCH], x["b"][batch][:BATCH]
        ya, yb = y["a"][batch][:BATCH], y["b"][batch][:BATCH]
        grads = []
        for table, ids, target in ((t, ids_a, ya), (u, ids_b, yb)):
            out = table[ids].sum(1)
            d_out = 2 * (out - target) / (BATCH * DIM)
            grad = np.zeros_like(table)
            np.add.at(grad, ids, d_out[:, None, :])
            grads.append(grad)
        touched = np.unique(ids_a)
        new_rows, new_slots = _numpy_step(
            kind,
            config,
            step,
            t[touched],
            [s[touched] for s in slots],
            grads[0][touched],
        )
        t[touched] = new_rows
        for s, value in zip(slots, new_slots, strict=True):
            s[touched] = value
        u = u - 0.1 * grads[1]
    return t, u


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_a_table_trains_by_its_own_optimizer_as_numpy(kind):
    optimizer = OPTIMIZERS[kind]()
    model, layer = _model(optimizer)
    x, y = _data()
    before = {k: to_numpy(v) for k, v in layer.get_embedding_tables().items()}
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    after = {k: to_numpy(v) for k, v in layer.get_embedding_tables().items()}
    t, u = _numpy_training(
        kind, optimizer.get_config(), before["t"], before["u"], x, y, steps=4
    )
    np.testing.assert_allclose(after["t"], t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(after["u"], u, rtol=1e-4, atol=1e-5)
    # Lazy: the rows never looked up have not moved (Keras's dense FTRL would
    # have set them to 0).
    np.testing.assert_array_equal(after["t"][USED:], before["t"][USED:])
    # The model's optimizer never held the table.
    assert not any(v is layer.optimized_stacks[0] for v in model.trainable_variables)


def test_state_saves_and_training_resumes_as_uninterrupted(tmp_path):
    x, y = _data(1)
    model, _ = _model(keras.optimizers.Adam(0.05))
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, custom_objects={"Model": Model})
    for m in (model, loaded):
        m.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    layers = [m.layers[-1] for m in (model, loaded)]
    for name in ("t", "u"):
        np.testing.assert_allclose(
            *[to_numpy(layer.get_embedding_tables()[name]) for layer in layers],
            rtol=1e-6,
            atol=1e-7,
        )


@pytest.mark.parametrize(
    ("optimizer", "message"),
    [
        (keras.optimizers.SGD(0.1, momentum=0.9), "momentum"),
        (keras.optimizers.Adam(amsgrad=True), "amsgrad"),
        (keras.optimizers.Adagrad(clipnorm=1.0), "clipnorm"),
        (keras.optimizers.RMSprop(), "RMSprop"),
        (
            keras.optimizers.SGD(
                keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
            ),
            "schedule",
        ),
        ("no_such_optimizer", "no_such_optimizer"),
    ],
)
def test_an_optimizer_a_table_cannot_honour_is_refused_where_set(optimizer, message):
    with pytest.raises(ValueError, match=message):
        TableConfig("t", 10, 4, optimizer=optimizer)


def test_a_half_precision_table_with_its_own_optimizer_is_refused():
    with pytest.raises(ValueError, match="half-precision"):
        TableConfig("t", 10, 4, optimizer="adagrad", dtype="bfloat16")


def test_without_sparse_trainer_jax_refuses_and_the_others_train():
    model, layer = _model("sgd", cls=keras.Model)
    x, y = _data()
    before = to_numpy(layer.get_embedding_tables()["t"])
    if keras.backend.backend() == "jax":
        # JAX's gradients are values: only SparseTrainer can apply them.
        with pytest.raises(ValueError, match="SparseTrainer"):
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        return
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert np.abs(to_numpy(layer.get_embedding_tables()["t"]) - before).max() > 1e-3


class _Feature(keras.layers.Layer):
    """A collection's one feature "a", as a layer of one input."""

    def __init__(self, collection):
        super().__init__()
        self.collection = collection

    def call(self, ids, training=None):
        return self.collection({"a": ids}, training=training)["a"]


@pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="JAX: a gradient cannot write a variable; a table's own optimizer "
    "runs in SparseTrainer's fit (tested above)",
)
def test_bags_as_values_and_offsets_update_as_dense_ids():
    """PyTorch pools `(values, offsets)` and dense ids by its fused bag kernel
    (and TensorFlow by the rows): the same backward update either way."""
    rng = np.random.default_rng(2)
    ids = rng.integers(0, USED, (6, 3)).astype("int32")
    flat = (ids.reshape(-1), np.arange(0, ids.size, 3, dtype="int32"))
    upstream = rng.normal(size=(6, DIM)).astype("float32")
    layers = []
    for _ in range(2):
        table = TableConfig(
            "t", ROWS, DIM, optimizer=keras.optimizers.Adagrad(0.3), combiner="sum"
        )
        layers.append(_Feature(EmbeddingCollection({"a": FeatureConfig("a", table)})))
        layers[-1](ids)
    layers[1].collection.set_weights(layers[0].collection.get_weights())
    before = to_numpy(layers[0].collection.get_embedding_tables()["t"])
    for layer, inputs in zip(layers, (ids, flat), strict=True):
        inputs = keras.tree.map_structure(keras.ops.convert_to_tensor, inputs)
        forward_and_gradients(layer, inputs, upstream, training=True)
    after = [to_numpy(lay.collection.get_embedding_tables()["t"]) for lay in layers]
    np.testing.assert_allclose(after[1], after[0], rtol=1e-6, atol=1e-7)
    assert np.abs(after[0] - before).max() > 1e-3


def test_more_rows_than_a_piece_step_as_numpy():
    """70,000 rows touched in one step (PyTorch steps them in pieces of
    65,536): row-wise Adagrad as NumPy's."""
    rows = 70_000
    optimizer = LazyRowwiseAdagrad(0.3, initial_accumulator_value=0.1)
    table = TableConfig("t", rows, 2, optimizer=optimizer, combiner="sum")
    layer = EmbeddingCollection({"a": FeatureConfig("a", table)})
    inputs = {"a": keras.Input((1,), dtype="int32", name="a")}
    model = Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    ids = np.random.default_rng(3).permutation(rows).astype("int32")[:, None]
    before = to_numpy(layer.get_embedding_tables()["t"])
    model.fit(
        {"a": ids}, {"a": np.zeros((rows, 2), "float32")}, batch_size=rows, verbose=0
    )
    grad = np.zeros_like(before, dtype="float64")
    grad[ids[:, 0]] = 2 * before[ids[:, 0]] / (rows * 2)
    expected, _ = _numpy_step(
        "rowwise_adagrad",
        optimizer.get_config(),
        1,
        before.astype("float64"),
        [np.full(rows, 0.1)],
        grad,
    )
    after = to_numpy(layer.get_embedding_tables()["t"])
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-6)
