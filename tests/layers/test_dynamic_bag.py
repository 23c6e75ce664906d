"""`DynamicEmbeddingBag` (issue 22, the pooled form): `DynamicEmbedding`'s
growing table behind `EmbeddingBag`'s combiners, checked against NumPy pooling
of the held keys' rows."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import DynamicEmbeddingBag, load_model
from keras_embedding_plus.optimizers import LazyAdam
from keras_embedding_plus.testing.dynamic import key_dtype
from keras_embedding_plus.training import SparseTrainer

KEY_DTYPE = key_dtype()
HUGE = 2**40 if KEY_DTYPE == "int64" else 2**30
PAD = -1
KEYS = np.asarray(
    [[3, HUGE, PAD, 3], [-7, PAD, PAD, PAD], [PAD, PAD, PAD, PAD], [HUGE, 5, -7, 9]],
    KEY_DTYPE,
)
WEIGHTS = np.asarray(
    [[0.5, 2.0, 9.0, 1.0], [3.0, 1.0, 1.0, 1.0], [1.0] * 4, [1.0, -1.0, 0.5, 2.0]],
    "float32",
)


def _numpy_pool(layer, keys, weights, combiner):
    """NumPy's pooling of the held keys' rows (padding and keys not held count
    nowhere; an empty bag pools to zeros)."""
    table = ops.convert_to_numpy(layer.embeddings)
    rows = layer.rows_of(keys)
    out = np.zeros(keys.shape[:-1] + (table.shape[1],), "float32")
    for i in np.ndindex(keys.shape[:-1]):
        keep = rows[i] >= 0
        if not keep.any():
            continue
        vectors = table[rows[i][keep]]
        w = np.ones(keep.sum(), "float32") if weights is None else weights[i][keep]
        if combiner == "max":
            out[i] = vectors.max(axis=0)
            continue
        total = (w[:, None] * vectors).sum(axis=0)
        denominator = {"sum": 1.0, "mean": w.sum(), "sqrtn": np.sqrt((w**2).sum())}
        out[i] = total / denominator[combiner]
    return out


def _bag(combiner, capacity=16, **kwargs):
    return DynamicEmbeddingBag(
        4,
        capacity,
        combiner=combiner,
        key_dtype=KEY_DTYPE,
        mask_zero=True,
        mask_key=PAD,
        **kwargs,
    )


# Weights where a combiner takes them (a weighted maximum is refused:
# test_weights_with_max_are_refused); unweighted sums in the flat-bags test.
@pytest.mark.parametrize(
    "combiner, weighted",
    [("sum", True), ("mean", True), ("sqrtn", True), ("max", False)],
)
def test_bags_pool_the_held_rows_as_numpy_does(combiner, weighted):
    weights = WEIGHTS if weighted else None
    layer = _bag(combiner)
    layer(KEYS[:2], None if weights is None else weights[:2], training=True)
    held = np.unique(KEYS[:2][KEYS[:2] != PAD])
    np.testing.assert_array_equal(layer.keys(), held)
    # Inference: bag 3 holds keys not admitted (5, 9), which count nowhere.
    out = ops.convert_to_numpy(layer(KEYS, weights))
    assert out.shape == (4, 4)
    np.testing.assert_allclose(
        out, _numpy_pool(layer, KEYS, weights, combiner), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(out[2], 0.0)


@pytest.mark.parametrize("combiner", ["sum", "max"])  # segment sums and maxima
def test_values_and_offsets_pool_as_the_dense_bags(combiner):
    layer = _bag(combiner)
    layer(KEYS, training=True)
    values, offsets = [], []
    for bag in KEYS:
        offsets.append(len(values))
        values.extend(k for k in bag if k != PAD)
    values = np.asarray(values, KEY_DTYPE)
    offsets = np.asarray(offsets, "int32")
    flat = ops.convert_to_numpy(layer((values, offsets)))
    np.testing.assert_allclose(
        flat, _numpy_pool(layer, KEYS, None, combiner), rtol=1e-6, atol=1e-6
    )


def test_weights_with_max_are_refused():
    with pytest.raises(ValueError, match="combiner='max'"):
        _bag("max")(KEYS, WEIGHTS)


def test_bad_combiner_names_itself():
    with pytest.raises(ValueError, match="combiner"):
        DynamicEmbeddingBag(4, 8, combiner="avg", key_dtype=KEY_DTYPE)


class SparseModel(SparseTrainer, keras.Model):
    pass


def _model(layer, optimizer, cls=SparseModel):
    keys = keras.Input((4,), dtype=KEY_DTYPE)
    out = keras.layers.Dense(1)(layer(keys))
    model = cls(keys, out)
    model.compile(optimizer, "mse")
    return model


def test_fit_admits_every_key_and_trains_sparse_rows():
    rng = np.random.default_rng(0)
    keys = rng.integers(HUGE, HUGE + 40, size=(64, 4)).astype(KEY_DTYPE)
    keys[rng.random(keys.shape) < 0.2] = PAD
    y = rng.random((64, 1)).astype("float32")
    layer = _bag("mean", capacity=64, sparse=True)
    model = _model(layer, LazyAdam(0.05))
    before = model.evaluate(keys, y, verbose=0, return_dict=True)["loss"]
    model.fit(keys, y, epochs=5, batch_size=16, verbose=0)
    np.testing.assert_array_equal(layer.keys(), np.unique(keys[keys != PAD]))
    after = model.evaluate(keys, y, verbose=0, return_dict=True)["loss"]
    assert after < before


def test_saved_bag_loads_with_its_keys_and_combiner(tmp_path):
    layer = _bag("sqrtn")
    model = _model(layer, keras.optimizers.Adam(0.01), keras.Model)
    model.train_on_batch(KEYS, np.ones((4, 1), "float32"))
    path = str(tmp_path / "bag.keras")
    model.save(path)
    loaded = load_model(path)
    twin = loaded.layers[1]
    assert twin.combiner == "sqrtn"
    np.testing.assert_array_equal(twin.keys(), layer.keys())
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(KEYS)), ops.convert_to_numpy(model(KEYS))
    )
