"""`EmbeddingCollection` (issue 23, item 1 and 2): keras-rs's configs and call
contract, outputs equal to keras-rs 0.4.0's `DistributedEmbedding` with the
same tables, tables of one width stacked, one entry per table when saved."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import EmbeddingCollection, FeatureConfig, TableConfig
from keras_embedding_plus.testing import forward_and_gradients, to_numpy

keras_rs = pytest.importorskip("keras_rs")

BATCH = 6


def _rs_features():
    """keras-rs configs: two 8-wide tables (one shared by two features), one
    4-wide; 2-D features pooled by each combiner, a 1-D one not pooled."""
    t_user = keras_rs.layers.TableConfig(
        name="user", vocabulary_size=20, embedding_dim=8, combiner="mean"
    )
    t_item = keras_rs.layers.TableConfig(
        name="item", vocabulary_size=30, embedding_dim=8, combiner="sqrtn"
    )
    t_cat = keras_rs.layers.TableConfig(
        name="category", vocabulary_size=7, embedding_dim=4, combiner="sum"
    )
    return {
        "user": keras_rs.layers.FeatureConfig(
            name="user", table=t_user, input_shape=(BATCH, 3), output_shape=(BATCH, 8)
        ),
        "history": keras_rs.layers.FeatureConfig(
            name="history",
            table=t_item,
            input_shape=(BATCH, 5),
            output_shape=(BATCH, 8),
        ),
        "item": keras_rs.layers.FeatureConfig(
            name="item", table=t_item, input_shape=(BATCH,), output_shape=(BATCH, 8)
        ),
        "category": keras_rs.layers.FeatureConfig(
            name="category",
            table=t_cat,
            input_shape=(BATCH, 2),
            output_shape=(BATCH, 4),
        ),
    }


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    ids = {
        "user": rng.integers(0, 20, (BATCH, 3)),
        "history": rng.integers(0, 30, (BATCH, 5)),
        "item": rng.integers(0, 30, (BATCH,)),
        "category": rng.integers(0, 7, (BATCH, 2)),
    }
    weights = {
        k: rng.uniform(0.1, 2.0, v.shape).astype("float32") for k, v in ids.items()
    }
    return {k: v.astype("int32") for k, v in ids.items()}, weights


def _same_tables(ours, theirs):
    """Copy keras-rs's tables into ours (`get_embedding_tables` both ways)."""
    ours.build()
    tables = {
        k: ops.convert_to_numpy(v) for k, v in theirs.get_embedding_tables().items()
    }
    placement = ours.table_placement()
    for index, variable in enumerate(ours.stacks):
        names = sorted(
            (n for n, p in placement.items() if p[0] == index),
            key=lambda n: placement[n][1],
        )
        variable.assign(np.concatenate([tables[n] for n in names]))
    return tables


@pytest.mark.parametrize("with_weights", [False, True])
def test_outputs_equal_keras_rs(with_weights):
    features = _rs_features()
    theirs = keras_rs.layers.DistributedEmbedding(features)
    with pytest.warns(UserWarning, match="optimizer"):
        ours = EmbeddingCollection(features)
    ids, weights = _inputs()
    if not with_weights:
        weights = None
    expected = theirs(ids, weights)
    tables = _same_tables(ours, theirs)
    got = ours(ids, weights)
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_allclose(
            ops.convert_to_numpy(got[name]),
            ops.convert_to_numpy(expected[name]),
            rtol=1e-6,
            atol=1e-6,
            err_msg=name,
        )
    for name, table in ours.get_embedding_tables().items():
        np.testing.assert_array_equal(ops.convert_to_numpy(table), tables[name])


def test_outputs_equal_numpy_pooling():
    """Without keras-rs: each feature's rows, pooled by its table's combiner
    (mean: / sum of weights; sqrtn: / their L2 norm; 1-D: the row itself)."""
    t8 = TableConfig("a", 20, 8, combiner="mean")
    t8b = TableConfig("b", 30, 8, combiner="sqrtn")
    t4 = TableConfig("c", 7, 4, combiner="sum")
    features = [
        FeatureConfig("f0", t8),
        FeatureConfig("f1", t8b),
        (FeatureConfig("f2", t8b), FeatureConfig("f3", t4)),
    ]
    ours = EmbeddingCollection(features)
    ids, weights = _inputs(1)
    x = [ids["user"], ids["history"], (ids["item"], ids["category"])]
    w = [weights["user"], weights["history"], (weights["item"], weights["category"])]
    out = ours(x, w)
    tables = {
        k: ops.convert_to_numpy(v) for k, v in ours.get_embedding_tables().items()
    }

    def pooled(table, i, wt, combiner):
        rows = tables[table][i] * wt[..., None]
        if i.ndim == 1:
            return tables[table][i] * (wt[..., None] if combiner == "sum" else 1)
        total = rows.sum(-2)
        if combiner == "mean":
            return total / wt.sum(-1, keepdims=True)
        if combiner == "sqrtn":
            return total / np.sqrt((wt**2).sum(-1, keepdims=True))
        return total

    expected = [
        pooled("a", x[0], w[0], "mean"),
        pooled("b", x[1], w[1], "sqrtn"),
        (pooled("b", x[2][0], w[2][0], "sqrtn"), pooled("c", x[2][1], w[2][1], "sum")),
    ]
    got = keras.tree.flatten(keras.tree.map_structure(ops.convert_to_numpy, out))
    for g, e in zip(got, keras.tree.flatten(expected), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_tables_of_one_width_share_one_variable():
    features = {
        "a": FeatureConfig("a", TableConfig("a", 10, 8)),
        "b": FeatureConfig("b", TableConfig("b", 5, 8)),
        "c": FeatureConfig("c", TableConfig("c", 3, 4)),
    }
    layer = EmbeddingCollection(features)
    layer.build()
    assert [tuple(v.shape) for v in layer.stacks] == [(15, 8), (3, 4)]
    assert len(layer.trainable_variables) == 2
    assert layer.table_placement() == {"a": (0, 0, 10), "b": (0, 10, 5), "c": (1, 0, 3)}
    tables = layer.get_embedding_tables()
    assert {k: tuple(v.shape) for k, v in tables.items()} == {
        "a": (10, 8),
        "b": (5, 8),
        "c": (3, 4),
    }


def test_flat_bags_and_weights():
    """`(values, offsets)` and `{"values", "lengths"}` features pool as their
    dense equivalent, beside a dense feature of the same stack."""
    table = TableConfig("t", 12, 4, combiner="mean")
    other = TableConfig("u", 9, 4, combiner="sqrtn")
    layer = EmbeddingCollection(
        {
            "x": FeatureConfig("x", table),
            "y": FeatureConfig("y", table),
            "z": FeatureConfig("z", other),
        }
    )
    values = np.asarray([1, 2, 3, 4, 5, 6], "int32")
    offsets = np.asarray([0, 2, 4], "int32")
    z = np.asarray([[1, 8, 2, 2], [0, 3, 5, 7], [6, 6, 6, 1]], "int32")
    out = layer(
        {
            "x": (values, offsets),
            "y": {"values": values, "lengths": offsets * 0 + 2},
            "z": z,
        }
    )
    dense = layer({"x": values.reshape(3, 2), "y": values.reshape(3, 2), "z": z})
    tables = {
        k: ops.convert_to_numpy(v) for k, v in layer.get_embedding_tables().items()
    }
    np.testing.assert_allclose(
        ops.convert_to_numpy(out["z"]), tables["u"][z].sum(1) / 2.0, rtol=1e-5
    )
    for name in ("x", "y", "z"):
        np.testing.assert_allclose(
            ops.convert_to_numpy(out[name]),
            ops.convert_to_numpy(dense[name]),
            rtol=1e-6,
        )


def test_trains_in_fit_and_saves_one_entry_per_table(tmp_path):
    features = {
        "a": FeatureConfig("a", TableConfig("a", 10, 8, combiner="sum")),
        "b": FeatureConfig("b", TableConfig("b", 6, 8)),
    }
    inputs = {
        "a": keras.Input((3,), dtype="int32", name="a"),
        "b": keras.Input((2,), dtype="int32", name="b"),
    }
    out = EmbeddingCollection(features, name="emb")(inputs)
    model = keras.Model(
        inputs, keras.layers.Dense(1)(keras.layers.Concatenate()([out["a"], out["b"]]))
    )
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    x = {
        "a": rng.integers(0, 10, (16, 3)).astype("int32"),
        "b": rng.integers(0, 6, (16, 2)).astype("int32"),
    }
    y = rng.normal(size=(16, 1)).astype("float32")
    before = ops.convert_to_numpy(model.get_layer("emb").stacks[0])
    model.fit(x, y, epochs=2, verbose=0)
    assert (
        np.abs(ops.convert_to_numpy(model.get_layer("emb").stacks[0]) - before).max()
        > 0
    )
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    weights = str(tmp_path / "m.weights.h5")
    model.save_weights(weights)
    import h5py

    with h5py.File(weights) as f:
        names = []
        f.visit(names.append)
    assert any(n.endswith("vars/a") for n in names), names
    assert any(n.endswith("vars/b") for n in names), names


@pytest.mark.parametrize(
    "table, match",
    [
        (dict(name="t", vocabulary_size=0, embedding_dim=4), "vocabulary_size"),
        (
            dict(name="t", vocabulary_size=4, embedding_dim=4, combiner="max"),
            "combiner",
        ),
        (
            dict(name="t", vocabulary_size=4, embedding_dim=4, placement="sparsecore"),
            "placement",
        ),
    ],
)
def test_bad_tables_are_refused(table, match):
    with pytest.raises(ValueError, match=match):
        EmbeddingCollection(FeatureConfig("f", TableConfig(**table)))


def test_refusals_name_what_is_wrong():
    with pytest.raises(ValueError, match="named 't'"):
        EmbeddingCollection(
            [
                FeatureConfig("a", TableConfig("t", 4, 4)),
                FeatureConfig("b", TableConfig("t", 4, 4)),
            ]
        )
    layer = EmbeddingCollection({"a": FeatureConfig("a", TableConfig("t", 4, 4))})
    with pytest.raises(ValueError, match="structure"):
        layer({"b": np.zeros((2, 3), "int32")})
    with pytest.raises(ValueError, match="valid"):
        layer({"a": np.full((2, 3), 4, "int32")})


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.RaggedTensor and tf.SparseTensor are TensorFlow's",
)
def test_ragged_and_sparse_features_equal_keras_rs():
    import tensorflow as tf

    table = keras_rs.layers.TableConfig(
        name="t", vocabulary_size=15, embedding_dim=4, combiner="mean"
    )
    other = keras_rs.layers.TableConfig(
        name="u", vocabulary_size=9, embedding_dim=4, combiner="sqrtn"
    )
    features = {
        "r": keras_rs.layers.FeatureConfig(
            name="r", table=table, input_shape=(3, None), output_shape=(3, 4)
        ),
        "s": keras_rs.layers.FeatureConfig(
            name="s", table=other, input_shape=(3, 4), output_shape=(3, 4)
        ),
    }
    ragged = tf.ragged.constant([[1, 2, 3], [4], [5, 14]], dtype=tf.int32)
    ragged_w = tf.ragged.constant([[0.5, 1.0, 2.0], [3.0], [1.5, 0.25]])
    sparse = tf.sparse.SparseTensor([[0, 0], [0, 3], [2, 1]], [3, 8, 1], [3, 4])
    sparse_w = tf.sparse.SparseTensor([[0, 0], [0, 3], [2, 1]], [2.0, 0.5, 4.0], [3, 4])
    theirs = keras_rs.layers.DistributedEmbedding(features)
    with pytest.warns(UserWarning, match="optimizer"):
        ours = EmbeddingCollection(features)
    inputs = {"r": ragged, "s": tf.cast(sparse, tf.int32)}
    weights = {"r": ragged_w, "s": sparse_w}
    expected = theirs(inputs, weights)
    _same_tables(ours, theirs)
    got = ours(inputs, weights)
    for name in ("r", "s"):
        np.testing.assert_allclose(
            got[name].numpy(), expected[name].numpy(), rtol=1e-6, atol=1e-6
        )
    # Bag 1 of the sparse feature has no id: zeros, as keras-rs.
    np.testing.assert_array_equal(got["s"].numpy()[1], 0.0)


def test_invalid_ids_are_counted_per_table():
    """Compiled `fit`: each table's invalid ids in the logs under
    `<layer>_<table>_invalid_ids` (NumPy's count per epoch; features sharing a
    table add up). PyTorch's `fit` runs eagerly, where an invalid id raises."""
    shared = TableConfig("shared", 10, 4, combiner="sum")
    clean = TableConfig("clean", 10, 4, combiner="sum")
    features = {
        "x": FeatureConfig("x", shared),
        "y": FeatureConfig("y", shared),
        "z": FeatureConfig("z", clean),
    }
    inputs = {n: keras.Input((3,), dtype="int32", name=n) for n in features}
    out = EmbeddingCollection(features, name="emb")(inputs)
    model = keras.Model(inputs, keras.layers.Concatenate()([out[n] for n in "xyz"]))
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x = {
        "x": rng.integers(0, 14, (32, 3)).astype("int32"),
        "y": rng.integers(0, 12, (32, 3)).astype("int32"),
        "z": rng.integers(0, 10, (32, 3)).astype("int32"),
    }
    y = np.zeros((32, 12), "float32")
    if keras.backend.backend() == "torch":
        with pytest.raises(ValueError, match="10"):
            model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        return
    expected = int((x["x"] >= 10).sum() + (x["y"] >= 10).sum())
    assert expected > 0
    with pytest.warns(UserWarning, match="invalid embedding ids"):
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert history["emb_shared_invalid_ids"] == [expected, expected]
    assert history["emb_clean_invalid_ids"] == [0, 0]


@pytest.mark.parametrize("sparse", [False, True])
def test_offsets_bags_pool_and_train_as_numpy(sparse):
    """Features given as `(values, offsets)` only (on PyTorch: one fused
    `embedding_bag` for the stack): outputs equal NumPy's weighted pooling per
    combiner, and one SGD step moves the tables as the same bags given dense
    and padded with weight 0 do."""
    rng = np.random.default_rng(3)
    tables = {
        "s": TableConfig("s", 12, 4, combiner="sum"),
        "m": TableConfig("m", 9, 4, combiner="mean"),
        "q": TableConfig("q", 7, 4, combiner="sqrtn"),
    }
    features = {n: FeatureConfig(n, t) for n, t in tables.items()}
    lengths = {n: rng.integers(1, 4, BATCH) for n in tables}
    values = {
        n: rng.integers(0, t.vocabulary_size, lengths[n].sum()).astype("int32")
        for n, t in tables.items()
    }
    weights = {
        n: rng.uniform(0.5, 2.0, v.shape).astype("float32") for n, v in values.items()
    }
    offsets = {n: np.concatenate([[0], np.cumsum(lengths[n])[:-1]]) for n in tables}
    flat = {n: (values[n], offsets[n].astype("int32")) for n in tables}
    dense, dense_w = {}, {}
    for n in tables:
        ids = np.zeros((BATCH, 3), "int32")
        w = np.zeros((BATCH, 3), "float32")
        for b, (start, length) in enumerate(zip(offsets[n], lengths[n], strict=True)):
            ids[b, :length] = values[n][start : start + length]
            w[b, :length] = weights[n][start : start + length]
        dense[n], dense_w[n] = ids, w

    def model():
        layer = EmbeddingCollection(features, sparse=sparse, name="emb")
        layer.build()
        for stack in layer.stacks:
            stack.assign(np.arange(np.prod(stack.shape)).reshape(stack.shape) / 50.0)
        return layer

    layer = model()
    out = layer(flat, weights)
    got_tables = {
        k: ops.convert_to_numpy(v) for k, v in layer.get_embedding_tables().items()
    }
    for n, t in tables.items():
        rows = got_tables[n][dense[n]] * dense_w[n][..., None]
        total = rows.sum(1)
        if t.combiner == "mean":
            total /= dense_w[n].sum(1, keepdims=True)
        elif t.combiner == "sqrtn":
            total /= np.sqrt((dense_w[n] ** 2).sum(1, keepdims=True))
        np.testing.assert_allclose(
            ops.convert_to_numpy(out[n]), total, rtol=1e-5, atol=1e-6
        )

    # The gradients of the flat and the padded dense form agree.
    upstream = rng.normal(size=(BATCH, 12)).astype("float32")
    grads = [
        forward_and_gradients(_Concatenated(model()), x, upstream, weights=w)[1]
        for x, w in ((flat, weights), (dense, dense_w))
    ]
    for name in grads[0]:
        np.testing.assert_allclose(
            to_numpy(grads[0][name]), to_numpy(grads[1][name]), rtol=1e-5, atol=1e-6
        )


class _Concatenated(keras.layers.Layer):
    """A collection's outputs, concatenated in name order (one tensor, for
    `forward_and_gradients`)."""

    def __init__(self, collection):
        super().__init__()
        self.collection = collection
        self.built = collection.built

    def call(self, inputs, weights=None, training=None):
        out = self.collection(inputs, weights)
        return ops.concatenate([out[n] for n in sorted(out)], axis=-1)


def test_sparse_stacks_train_row_sparse_as_dense_adagrad():
    """`sparse=True` in a `SparseTrainer` model: the stacks are trained by
    their rows (on JAX too: `sparse_tables` lists them), and `LazyAdagrad`
    gives the result of the dense gradient (`sparse=False`)."""
    from keras_embedding_plus.optimizers import LazyAdagrad
    from keras_embedding_plus.training import SparseTrainer, sparse_tables

    class Model(SparseTrainer, keras.Model):
        pass

    rng = np.random.default_rng(5)
    x = {
        "a": rng.integers(0, 10, (32, 3)).astype("int32"),
        "b": rng.integers(0, 6, (32, 2)).astype("int32"),
    }
    y = rng.normal(size=(32, 1)).astype("float32")
    tables = []
    for sparse in (False, True):
        features = {
            "a": FeatureConfig("a", TableConfig("a", 10, 4, combiner="sum")),
            "b": FeatureConfig("b", TableConfig("b", 6, 4)),
        }
        inputs = {n: keras.Input(x[n].shape[1:], dtype="int32", name=n) for n in x}
        layer = EmbeddingCollection(features, sparse=sparse, name="emb")
        out = layer(inputs)
        model = Model(
            inputs,
            keras.layers.Dense(1, kernel_initializer="ones")(
                keras.layers.Concatenate()([out["a"], out["b"]])
            ),
        )
        layer.stacks[0].assign(np.linspace(-1, 1, 64).reshape(16, 4))
        # The same optimizer both ways: on a dense gradient it is Keras's
        # Adagrad (Keras's own, on TensorFlow, squares each duplicate id's
        # row of a gather's IndexedSlices apart: not the dense result).
        model.compile(LazyAdagrad(0.1), "mse")
        assert sparse_tables(model) == (layer.stacks if sparse else [])
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        tables.append(ops.convert_to_numpy(layer.stacks[0]))
    np.testing.assert_allclose(tables[1], tables[0], rtol=1e-5, atol=1e-6)
