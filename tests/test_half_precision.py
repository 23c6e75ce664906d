"""Half-precision tables (issue 23, item 4): float16 / bfloat16 storage, the
lazy optimizers' state in float32, updates stored with stochastic rounding."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import EmbeddingCollection, FeatureConfig, TableConfig
from keras_embedding_plus.optimizers import (
    LazyAdam,
    LazyRowwiseAdagrad,
    LazySGD,
)
from keras_embedding_plus.training import SparseTrainer

# Each dtype's spacing just below 1.0.
SPACING_BELOW_ONE = {"bfloat16": 2.0**-8, "float16": 2.0**-11}


def _numpy(x):
    return ops.convert_to_numpy(ops.cast(x, "float32")).astype(np.float64)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stochastic_rounding_keeps_updates_too_small_for_round_to_nearest(dtype):
    """1e5 updates (5,000 values x 20 steps) of a quarter of the spacing: the
    mean stored value is within 1e-3 of the exact one (float64, NumPy) with
    stochastic rounding; round-to-nearest leaves every value at 1.0."""
    steps, step = 20, SPACING_BELOW_ONE[dtype] / 4
    exact = 1.0 - steps * step
    means = {}
    for stochastic in (True, False):
        variable = keras.Variable(np.ones((50, 100)), dtype=dtype, name="table")
        optimizer = LazySGD(1.0, stochastic_rounding=stochastic)
        gradient = ops.full((50, 100), step, "float32")
        for _ in range(steps):
            optimizer.apply([ops.cast(gradient, dtype)], [variable])
        values = _numpy(variable)
        assert str(variable.dtype) == dtype
        means[stochastic] = values.mean()
        if not stochastic:
            np.testing.assert_array_equal(values, 1.0)
    assert abs(means[True] - exact) / exact < 1e-3, means
    assert abs(means[False] - exact) / exact > 2e-3, means


@pytest.mark.parametrize(
    "optimizer", [LazyAdam, LazyRowwiseAdagrad, lambda lr: LazySGD(lr, momentum=0.9)]
)
def test_half_variables_keep_float32_state(optimizer):
    variable = keras.Variable(np.ones((6, 4)), dtype="bfloat16", name="table")
    instance = optimizer(0.01)
    instance.apply([ops.ones((6, 4), "bfloat16")], [variable])
    slots = [v for v in instance.variables if tuple(v.shape) in ((6, 4), (6,))]
    assert slots and all(str(v.dtype) == "float32" for v in slots), [
        (v.name, v.dtype) for v in instance.variables
    ]
    assert str(variable.dtype) == "bfloat16"
    assert _numpy(variable).max() < 1.0


def _model(dtype, sparse):
    tables = [
        TableConfig(f"t{i}", 200, 8, combiner="sum", dtype=dtype) for i in range(3)
    ]
    features = {t.name: FeatureConfig(t.name, t) for t in tables}
    inputs = {n: keras.Input((4,), dtype="int32", name=n) for n in features}
    out = EmbeddingCollection(features, sparse=sparse, name="emb")(inputs)
    head = keras.layers.Dense(1, name="head")(
        keras.layers.Concatenate()([out[n] for n in sorted(out)])
    )

    class Model(SparseTrainer, keras.Model):
        pass

    return Model(inputs, head)


def test_half_tables_train_within_half_a_percent_of_float32():
    """The same model, data and initial values (the half tables rounded from
    the float32 ones): after 40 steps of `LazyRowwiseAdagrad` on row-sparse
    gradients, the bfloat16 and float16 runs' losses are within 0.5% of the
    float32 run's."""
    rng = np.random.default_rng(0)
    x = {f"t{i}": rng.integers(0, 200, (512, 4)).astype("int32") for i in range(3)}
    truth = rng.normal(size=(3, 200))
    y = sum(truth[i][x[f"t{i}"]].sum(1) for i in range(3))[:, None].astype("float32")
    losses = {}
    reference = None
    for table_dtype in ("float32", "bfloat16", "float16"):
        model = _model(table_dtype, sparse=True)
        if reference is None:
            reference = [ops.convert_to_numpy(w) for w in model.get_weights()]
        model.set_weights(reference)
        model.compile(LazyRowwiseAdagrad(0.1), "mse")
        history = model.fit(x, y, batch_size=64, epochs=5, shuffle=False, verbose=0)
        losses[table_dtype] = history.history["loss"]
        stack = model.get_layer("emb").stacks[0]
        assert str(stack.dtype) == table_dtype
    first, last = losses["float32"][0], losses["float32"][-1]
    assert last < 0.5 * first, losses  # It learned.
    for dtype in ("bfloat16", "float16"):
        assert abs(losses[dtype][-1] - last) / last < 5e-3, losses


def test_half_tables_stack_apart_save_and_load(tmp_path):
    """Tables of one width but another dtype are another stack; a `.keras`
    file keeps the dtype, the values and the optimizer's float32 state."""
    features = {
        "a": FeatureConfig("a", TableConfig("a", 10, 4, dtype="bfloat16")),
        "b": FeatureConfig("b", TableConfig("b", 6, 4)),
        "c": FeatureConfig("c", TableConfig("c", 5, 4, dtype="bfloat16")),
    }
    inputs = {n: keras.Input((2,), dtype="int32", name=n) for n in features}
    layer = EmbeddingCollection(features, name="emb")
    out = layer(inputs)
    assert [(tuple(v.shape), str(v.dtype)) for v in layer.stacks] == [
        ((15, 4), "bfloat16"),
        ((6, 4), "float32"),
    ]
    model = keras.Model(inputs, keras.layers.Concatenate()([out[n] for n in "abc"]))
    model.compile(LazyAdam(0.01), "mse")
    rng = np.random.default_rng(0)
    x = {n: rng.integers(0, 5, (8, 2)).astype("int32") for n in features}
    model.fit(x, rng.normal(size=(8, 12)).astype("float32"), epochs=2, verbose=0)
    path = str(tmp_path / "half.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    stacks = loaded.get_layer("emb").stacks
    assert str(stacks[0].dtype) == "bfloat16"
    np.testing.assert_array_equal(_numpy(stacks[0]), _numpy(layer.stacks[0]))
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    for saved, variable in zip(
        model.optimizer.variables, loaded.optimizer.variables, strict=True
    ):
        np.testing.assert_array_equal(_numpy(variable), _numpy(saved))


def test_table_dtype_is_checked():
    with pytest.raises(ValueError, match="`dtype` must be None or one of"):
        EmbeddingCollection(FeatureConfig("f", TableConfig("t", 4, 4, dtype="int8")))
