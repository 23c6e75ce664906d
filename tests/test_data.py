"""`BagDataset`: bags of varying length in `fit`, `evaluate` and `predict`.

From NumPy arrays through the `keras.utils.PyDataset` and through `tf.data`:
batches hold the bags; `predict` equals NumPy's pooling of the table for every
combiner (the padding counts nowhere); `fit` equals `train_on_batch` on the same
batches and `evaluate` NumPy's loss; JAX compiles one step per power of two ids.
"""

import math

import keras
import numpy as np
import pytest

from keras_embedding_plus import BagDataset, EmbeddingBag

BACKEND = keras.backend.backend()

VOCAB, DIM, BATCH = 20, 4, 8
_rng = np.random.default_rng(0)
# 20 bags (batches of 8, 8 and 4), an empty one; id 0 is a real id here (the
# padding's id, which must count where it is in a bag).
LENGTHS = _rng.integers(0, 7, 20)
LENGTHS[3] = 0
OFFSETS = np.cumsum(LENGTHS) - LENGTHS
VALUES = _rng.integers(0, VOCAB, LENGTHS.sum()).astype("int32")
VALUES[0] = 0
WEIGHTS = _rng.uniform(0.2, 2.0, VALUES.size).astype("float32")
Y = _rng.normal(size=(20, 1)).astype("float32")
SAMPLE_WEIGHT = _rng.uniform(0.5, 1.5, 20).astype("float32")
BAGS = [VALUES[o : o + n] for o, n in zip(OFFSETS, LENGTHS, strict=True)]
BAG_WEIGHTS = [WEIGHTS[o : o + n] for o, n in zip(OFFSETS, LENGTHS, strict=True)]
TOL = dict(rtol=1e-5, atol=1e-6)

POOLINGS = [
    pytest.param(c, w, id=f"{c}-{'weighted' if w else 'unweighted'}")
    for c in ("sum", "mean", "sqrtn", "max")
    for w in (False, True)
    if not (w and c == "max")
]


def np_pool(table, combiner, weighted):
    """NumPy's pooling of BAGS (float64): the reference."""
    out = np.zeros((len(BAGS), table.shape[1]))
    for b, (ids, w) in enumerate(zip(BAGS, BAG_WEIGHTS, strict=True)):
        if not len(ids):
            continue
        rows = table[ids].astype(np.float64)
        if combiner == "max":
            out[b] = rows.max(axis=0)
            continue
        w = w.astype(np.float64) if weighted else np.ones(len(ids))
        denominator = {"sum": 1.0, "mean": w.sum(), "sqrtn": np.sqrt((w * w).sum())}
        out[b] = (w[:, None] * rows).sum(0) / denominator[combiner]
    return out


def bag_model(combiner="mean", weighted=False, head=True, layer=EmbeddingBag):
    """Inputs named as `BagDataset`'s keys; the pooled bags (through a Dense
    layer with `head`)."""
    values = keras.Input((), dtype="int32", name="values")
    lengths = keras.Input((), dtype="int32", name="lengths")
    inputs = {"values": values, "lengths": lengths}
    weights = None
    if weighted:
        weights = inputs["weights"] = keras.Input((), name="weights")
    out = layer(
        VOCAB,
        DIM,
        combiner=combiner,
        embeddings_initializer=keras.initializers.RandomNormal(seed=3),
        name="bag",
    )({"values": values, "lengths": lengths}, weights=weights)
    if head:
        init = keras.initializers.RandomNormal(seed=4)
        out = keras.layers.Dense(1, kernel_initializer=init)(out)
    return keras.Model(inputs, out)


def table_of(model):
    return keras.ops.convert_to_numpy(model.get_layer("bag").embeddings)


def weighted_bags(**kwargs):
    """The test bags with their targets, per-id weights and sample weights."""
    return BagDataset(
        VALUES,
        OFFSETS,
        Y,
        weights=WEIGHTS,
        sample_weight=SAMPLE_WEIGHT,
        batch_size=BATCH,
        **kwargs,
    )


def _is_power_of_two(n):
    return n > 0 and not n & (n - 1)


# ---- the batches ----------------------------------------------------------------


@pytest.mark.parametrize("pad", [True, False], ids=["padded", "unpadded"])
def test_batches_hold_the_bags_in_order(pad):
    data = weighted_bags(pad=pad)
    assert len(data) == 3
    for i in range(len(data)):
        x, y, sample_weight = data[i]
        chosen = slice(i * BATCH, (i + 1) * BATCH)
        assert sorted(x) == ["lengths", "values", "weights"]
        total = LENGTHS[chosen].sum()
        size = len(x["values"])
        if pad:
            assert _is_power_of_two(size) and total <= size < 2 * max(total, 1)
        else:
            assert size == total
        np.testing.assert_array_equal(x["lengths"], LENGTHS[chosen])
        np.testing.assert_array_equal(x["values"][:total], np.concatenate(BAGS[chosen]))
        np.testing.assert_array_equal(
            x["weights"][:total], np.concatenate(BAG_WEIGHTS[chosen])
        )
        assert not x["values"][total:].any() and not x["weights"][total:].any()
        np.testing.assert_array_equal(y, Y[chosen])
        np.testing.assert_array_equal(sample_weight, SAMPLE_WEIGHT[chosen])
    assert len(data[2][1]) == 4  # The last batch: the 4 bags left.
    (x,) = BagDataset(VALUES, OFFSETS, batch_size=BATCH)[0]
    assert sorted(x) == ["lengths", "values"]


def test_shuffle_draws_a_new_order_each_epoch():
    """Each epoch holds every bag once, with its own target; orders differ from
    epoch to epoch, and repeat with the seed."""
    index = np.arange(len(BAGS))

    def epoch(data):
        seen = []
        for i in range(len(data)):
            x, y = data[i]
            starts = np.cumsum(x["lengths"]) - x["lengths"]
            for bag, start, length in zip(y, starts, x["lengths"], strict=True):
                ids = x["values"][start : start + length]
                np.testing.assert_array_equal(ids, BAGS[bag])
                seen.append(int(bag))
        data.on_epoch_end()
        return seen

    data = BagDataset(VALUES, OFFSETS, index, batch_size=BATCH, shuffle=True, seed=5)
    first, second = epoch(data), epoch(data)
    assert sorted(first) == sorted(second) == index.tolist()
    assert first != second and first != index.tolist()
    again = BagDataset(VALUES, OFFSETS, index, batch_size=BATCH, shuffle=True, seed=5)
    assert epoch(again) == first


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"offsets": [1, 2]}, r"`offsets` must be integers that start at 0"),
        ({"offsets": [0, 3, 2]}, r"never decrease"),
        ({"offsets": [0, 99]}, r"do not exceed the number of values \(5\)"),
        ({"offsets": []}, r"`offsets` is empty, but there are 5 values"),
        ({"values": [[1, 2]], "offsets": [0]}, r"`values` must be 1-D"),
        ({"values": [1.5, 2.0]}, r"`values` must hold integer ids"),
        ({"weights": [1.0, 2.0]}, r"`weights` must hold one weight per value"),
        ({"y": np.ones((3, 1))}, r"`y` must have one row per bag \(2"),
        ({"y": [np.ones(2), np.ones(3)]}, r"`y` must have one row per bag"),
        ({"y": None, "sample_weight": np.ones(2)}, r"it needs targets `y`"),
        ({"sample_weight": np.ones(5)}, r"`sample_weight` must have one row"),
        ({"batch_size": 0}, r"`batch_size` must be a positive integer"),
        ({"batch_size": True}, r"`batch_size` must be a positive integer"),
    ],
)
def test_arguments_are_checked(kwargs, match):
    arguments = {"values": [1, 2, 3, 4, 5], "offsets": [0, 2], "y": np.ones(2)}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        BagDataset(arguments.pop("values"), arguments.pop("offsets"), **arguments)


def test_lists_numpy_integers_and_no_bags_are_taken():
    data = BagDataset([1, 2, 3], [0, 2], [0.5, 1.5], batch_size=np.int64(1))
    assert len(data) == 2
    x, y = data[1]
    assert x["values"].tolist() == [3] and x["lengths"].tolist() == [1]
    assert y.tolist() == [1.5]
    empty = BagDataset([], [], batch_size=4)
    assert len(empty) == 0
    with pytest.raises(IndexError, match=r"Batch 0 of a BagDataset of 0 batches"):
        empty[0]


# ---- predict, fit and evaluate through the PyDataset ----------------------------


def test_predict_equals_numpy_pooling():
    """Padding (id 0, weight 0, after the last bag) counts nowhere: every
    combiner, weighted or not, no `padding_idx`, the last batch of 4 bags. (One
    model of every pooling: one compiled step on JAX and TensorFlow.)"""
    values = keras.Input((), dtype="int32", name="values")
    lengths = keras.Input((), dtype="int32", name="lengths")
    weights = keras.Input((), name="weights")
    bags = {"values": values, "lengths": lengths}
    layers, outputs = {}, {}
    for case in POOLINGS:
        combiner, weighted = case.values
        layers[case.id] = EmbeddingBag(VOCAB, DIM, combiner=combiner)
        outputs[case.id] = layers[case.id](bags, weights=weights if weighted else None)
    model = keras.Model({**bags, "weights": weights}, outputs)
    data = BagDataset(VALUES, OFFSETS, weights=WEIGHTS, batch_size=BATCH)
    predicted = model.predict(data, verbose=0)
    for case in POOLINGS:
        table = keras.ops.convert_to_numpy(layers[case.id].embeddings)
        expected = np_pool(table, *case.values)
        np.testing.assert_allclose(predicted[case.id], expected, **TOL, err_msg=case.id)


def test_fit_equals_train_on_batch_and_evaluate_equals_numpy():
    """Two epochs of `fit` on the PyDataset move every weight as
    `train_on_batch` on its batches does; `evaluate` gives the mean loss over
    the bags (the last batch, of 4 bags, weighs 4 of 20)."""

    def model():
        keras.utils.set_random_seed(1)
        m = bag_model("mean", weighted=True)
        m.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        return m

    data = weighted_bags()
    fitted, stepped = model(), model()
    before = table_of(fitted)
    fitted.fit(data, epochs=2, shuffle=False, verbose=0)
    for _ in range(2):
        for i in range(len(data)):
            x, y, sample_weight = data[i]
            stepped.train_on_batch(x, y, sample_weight=sample_weight)
    for ours, theirs in zip(fitted.weights, stepped.weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs), **TOL
        )
    assert np.abs(table_of(fitted) - before).max() > 1e-3  # It trained.
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in fitted.layers[-1].weights)
    predicted = np_pool(table_of(fitted), "mean", True) @ kernel + bias
    logs = fitted.evaluate(
        BagDataset(VALUES, OFFSETS, Y, weights=WEIGHTS, batch_size=BATCH),
        verbose=0,
        return_dict=True,
    )
    np.testing.assert_allclose(logs["loss"], np.mean((predicted - Y) ** 2), rtol=1e-5)


# ---- tf.data ----------------------------------------------------------------------


def _tensorflow():
    try:
        import tensorflow as tf
    except ImportError:
        pytest.skip(
            f"tf.data needs TensorFlow, not installed with the {BACKEND} backend here"
        )
    return tf


def test_tf_data_equals_the_pydataset():
    """`to_tf_dataset()`: the same batches, so `fit` moves the weights as on the
    PyDataset, and `predict` equals NumPy's pooling (on TensorFlow: one trace
    for batches of every size)."""
    tf = _tensorflow()
    data = BagDataset(VALUES, OFFSETS, Y, weights=WEIGHTS, batch_size=BATCH)
    dataset = data.to_tf_dataset()
    assert isinstance(dataset, tf.data.Dataset)
    assert int(dataset.cardinality()) == len(data)
    models = []
    for source in (dataset, data):
        keras.utils.set_random_seed(1)
        model = bag_model("sqrtn", weighted=True)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        model.fit(source, epochs=1, shuffle=False, verbose=0)
        models.append(model)
    for ours, theirs in zip(models[0].weights, models[1].weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs), **TOL
        )
    pooling = bag_model("max", head=False)
    bags = BagDataset(VALUES, OFFSETS, batch_size=BATCH).to_tf_dataset()
    np.testing.assert_allclose(
        pooling.predict(bags, verbose=0),
        np_pool(table_of(pooling), "max", False),
        **TOL,
    )


# ---- compiled steps: one per power of two -----------------------------------------


class _CountingBag(EmbeddingBag):
    """Records the size of `values` at each call: once per trace when the step
    is compiled."""

    sizes = []

    def call(self, inputs, *args, **kwargs):
        _CountingBag.sizes.append(inputs["values"].shape[0])
        return super().call(inputs, *args, **kwargs)


@pytest.mark.skipif(
    BACKEND == "torch", reason="PyTorch runs `fit` eagerly: it compiles no step"
)
def test_an_epoch_compiles_at_most_log2_of_the_ids_steps():
    """16 batches of 8 bags of 1-12 ids: about 14 different numbers of ids, so
    one compiled step per batch without padding; padded, one per power of two,
    at most log2(most ids of a batch) in all."""
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 13, 128)
    offsets = np.cumsum(lengths) - lengths
    values = rng.integers(0, VOCAB, lengths.sum())
    y = rng.normal(size=(128, 1)).astype("float32")
    totals = lengths.reshape(16, 8).sum(1)
    bound = math.log2(totals.max())
    assert len(set(totals)) > bound  # Unpadded, the bound would not hold.
    model = bag_model(layer=_CountingBag)
    model.compile(optimizer="sgd", loss="mse")
    _CountingBag.sizes.clear()
    model.fit(BagDataset(values, offsets, y, batch_size=8), epochs=1, verbose=0)
    traces = _CountingBag.sizes
    assert 1 <= len(traces) <= bound, traces
    if BACKEND == "jax":  # TensorFlow traces with the size unknown (None).
        assert all(_is_power_of_two(size) for size in traces), traces
