"""`EmbeddingBag`: pooled lookups against NumPy, torch and TensorFlow.

Every combiner x input form x weights is compared with a NumPy reference, forward
and the gradient of `sum(outputs * U)` with respect to the table; then with
`torch.nn.functional.embedding_bag` (torch) and `tf.nn.safe_embedding_lookup_sparse`
(TensorFlow), with the options of `Embedding`, and in `fit` with row-sparse
gradients.
"""

import os

import keras
import numpy as np
import pytest

from keras_embedding_plus import EmbeddingBag
from keras_embedding_plus.optimizers import LazyAdam, LazySGD
from keras_embedding_plus.testing import compiled, make_sparse
from keras_embedding_plus.testing import layers as layer_test
from keras_embedding_plus.training import SparseTrainer

BACKEND = keras.backend.backend()

VOCAB, DIM, PAD = 12, 4, 0
COMBINERS = ("sum", "mean", "sqrtn", "max")
# Bags with duplicates within and across bags, an empty bag, a bag of padding.
BAGS = [[3, 5, 3], [7], [], [1, 2, 4, 5], [9, 9]]
LENGTH = 5
RNG = np.random.default_rng(0)
WEIGHTS = [list(RNG.uniform(0.2, 2.0, size=len(b))) for b in BAGS]
UPSTREAM = RNG.normal(size=(len(BAGS), DIM))
TOL = dict(rtol=1e-6, atol=1e-6)

FORMS = ["dense", "offsets", "ragged", "sparse"]
# Weights with "max" are refused (test_max_refuses_weights).
POOLINGS = [
    pytest.param(c, w, id=f"{c}-{'weighted' if w else 'unweighted'}")
    for c in COMBINERS
    for w in (False, True)
    if not (w and c == "max")
]


def _skip_form(form):
    if form == "ragged" and BACKEND != "tensorflow":
        pytest.skip("ragged ids need TensorFlow (tf.RaggedTensor)")


# ---- NumPy references ---------------------------------------------------------


def _kept(bags, weights, excluded):
    """`(bag index, ids, weights)` of the ids that count, for each non-empty bag."""
    for b, bag in enumerate(bags):
        w = np.ones(len(bag)) if weights is None else np.asarray(weights[b], float)
        keep = np.array([i not in excluded for i in bag], bool)
        if keep.any():
            yield b, np.asarray(bag)[keep], w[keep]


def np_bag(table, bags, weights, combiner, excluded=(PAD,)):
    out = np.zeros((len(bags), table.shape[1]))
    for b, ids, w in _kept(bags, weights, excluded):
        rows = table[ids].astype(np.float64)
        if combiner == "max":
            out[b] = rows.max(axis=0)
            continue
        total = (w[:, None] * rows).sum(0)
        den = {"sum": 1.0, "mean": w.sum(), "sqrtn": np.sqrt((w * w).sum())}
        out[b] = total / den[combiner] if den[combiner] else 0.0
    return out


def np_bag_grad(table, bags, weights, combiner, upstream, excluded=(PAD,)):
    """Gradient of `sum(np_bag(...) * upstream)` w.r.t. the table: a scatter-add."""
    grad = np.zeros(table.shape)
    for b, ids, w in _kept(bags, weights, excluded):
        if combiner == "max":
            rows = table[ids]
            for col in range(table.shape[1]):
                grad[ids[np.argmax(rows[:, col])], col] += upstream[b, col]
            continue
        den = {"sum": 1.0, "mean": w.sum(), "sqrtn": np.sqrt((w * w).sum())}
        for i, wi in zip(ids, w, strict=True):
            grad[i] += wi / den[combiner] * upstream[b]
    return grad


# ---- inputs in every form -----------------------------------------------------


def make_inputs(form, bags=BAGS, weights=None, pad=PAD, length=LENGTH):
    """`(ids, weights)` for `bags` in `form` (weights `None` stays `None`)."""
    if form == "dense":
        ids = np.full((len(bags), length), pad, "int32")
        w = np.zeros((len(bags), length), "float32")
        for b, bag in enumerate(bags):
            ids[b, : len(bag)] = bag
            if weights is not None:
                w[b, : len(bag)] = weights[b]
        return ids, (None if weights is None else w)
    values = np.array([i for bag in bags for i in bag], "int32")
    flat_w = np.array([x for ws in (weights or []) for x in ws], "float32")
    if form == "offsets":
        offsets = np.cumsum([0] + [len(b) for b in bags[:-1]]).astype("int32")
        return (values, offsets), (None if weights is None else flat_w)
    if form == "ragged":
        import tensorflow as tf

        lengths = [len(b) for b in bags]
        ids = tf.RaggedTensor.from_row_lengths(values, lengths)
        w = None
        if weights is not None:
            w = tf.RaggedTensor.from_row_lengths(flat_w, lengths)
        return ids, w
    indices = np.array([[b, j] for b, bag in enumerate(bags) for j in range(len(bag))])
    indices = indices.reshape(-1, 2).astype("int64")
    shape = (len(bags), length)
    return make_sparse(indices, values, shape), (
        None if weights is None else make_sparse(indices, flat_w, shape)
    )


def make_bag(combiner, **kwargs):
    kwargs.setdefault("padding_idx", PAD)
    bag = EmbeddingBag(
        VOCAB,
        DIM,
        combiner=combiner,
        embeddings_initializer=keras.initializers.RandomNormal(seed=3),
        **kwargs,
    )
    bag.build()
    return bag


def table_of(bag):
    return keras.ops.convert_to_numpy(bag.embeddings).astype(np.float64)


def to_numpy(x):
    return np.asarray(layer_test.to_numpy(x), np.float64)


def forward_and_grad(layer, ids, weights, compile_=False, upstream=UPSTREAM):
    """`(outputs, d sum(outputs * U) / d table)` by each backend's autodiff."""
    out, grads = layer_test.forward_and_gradients(
        layer, ids, upstream.astype("float32"), compile_=compile_, weights=weights
    )
    return to_numpy(out), to_numpy(grads["embeddings"])


# ---- forward and gradients vs NumPy -------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("combiner", "weighted"), POOLINGS)
def test_matches_numpy(combiner, form, weighted):
    _skip_form(form)
    bag = make_bag(combiner)
    weights = WEIGHTS if weighted else None
    ids, w = make_inputs(form, weights=weights)
    out, grad = forward_and_grad(bag, ids, w)
    table = table_of(bag)
    np.testing.assert_allclose(out, np_bag(table, BAGS, weights, combiner), **TOL)
    expected = np_bag_grad(table, BAGS, weights, combiner, UPSTREAM)
    np.testing.assert_allclose(grad, expected, **TOL)
    assert not grad[PAD].any()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("combiner", "weighted"), POOLINGS)
def test_compiled_matches_numpy(combiner, form, weighted):
    _skip_form(form)
    if form == "sparse" and BACKEND == "torch":
        pytest.skip("torch.compile cannot trace sparse tensors (eager only)")
    bag = make_bag(combiner)
    weights = WEIGHTS if weighted else None
    ids, w = make_inputs(form, weights=weights)
    out, grad = forward_and_grad(bag, ids, w, compile_=True)
    table = table_of(bag)
    np.testing.assert_allclose(out, np_bag(table, BAGS, weights, combiner), **TOL)
    expected = np_bag_grad(table, BAGS, weights, combiner, UPSTREAM)
    np.testing.assert_allclose(grad, expected, **TOL)


@pytest.mark.parametrize("combiner", COMBINERS)
def test_higher_rank_dense_ids(combiner):
    bag = make_bag(combiner)
    ids, _ = make_inputs("dense")
    stacked = np.stack([ids, ids[::-1]])  # (2, batch, L)
    out = keras.ops.convert_to_numpy(bag(stacked))
    table = table_of(bag)
    expected = np_bag(table, BAGS, None, combiner)
    np.testing.assert_allclose(out, np.stack([expected, expected[::-1]]), **TOL)


@pytest.mark.parametrize("combiner", COMBINERS)
def test_higher_rank_sparse_ids(combiner):
    """Sparse `(2, batch, L)` ids pool to `(2, batch, dim)`."""
    bags = BAGS + BAGS[::-1]
    indices = np.array(
        [
            (n // len(BAGS), n % len(BAGS), j)
            for n, bag in enumerate(bags)
            for j in range(len(bag))
        ],
        "int64",
    )
    values = np.array([i for bag in bags for i in bag], "int32")
    ids = make_sparse(indices, values, (2, len(BAGS), LENGTH))
    bag = make_bag(combiner)
    out = keras.ops.convert_to_numpy(bag(ids))
    expected = np_bag(table_of(bag), bags, None, combiner)
    np.testing.assert_allclose(out, expected.reshape(2, len(BAGS), DIM), **TOL)


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_mask_zero_excludes_zero(combiner):
    """With `mask_zero=True` and no `padding_idx`, id 0 counts nowhere."""
    bag = make_bag(combiner, padding_idx=None, mask_zero=True)
    ids, w = make_inputs("dense", weights=WEIGHTS)
    out = keras.ops.convert_to_numpy(bag(ids, weights=w))
    np.testing.assert_allclose(
        out, np_bag(table_of(bag), BAGS, WEIGHTS, combiner, excluded=(0,)), **TOL
    )
    assert bag.compute_mask(ids) is None


@pytest.mark.parametrize("combiner", ["mean", "max"])
def test_padding_idx_and_mask_zero_both_count_nowhere(combiner):
    bags = [[3, 0, 11, 5], [11, 11], [0]]
    bag = make_bag(combiner, padding_idx=-1, mask_zero=True)
    ids, _ = make_inputs("offsets", bags=bags)
    out = keras.ops.convert_to_numpy(bag(ids))
    expected = np_bag(table_of(bag), bags, None, combiner, excluded=(0, 11))
    np.testing.assert_allclose(out, expected, **TOL)


def test_no_padding_counts_every_id():
    bag = make_bag("mean", padding_idx=None)
    ids = np.array([[0, 1, 0]], "int32")
    out = keras.ops.convert_to_numpy(bag(ids))
    table = table_of(bag)
    np.testing.assert_allclose(out[0], (2 * table[0] + table[1]) / 3, **TOL)


def test_zero_weight_sum_gives_zeros():
    bag = make_bag("mean")
    ids = np.array([[2, 3], [2, 3]], "int32")
    w = np.array([[1.0, -1.0], [0.0, 0.0]], "float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bag(ids, weights=w)), 0)


# ---- the index policy ---------------------------------------------------------


@pytest.mark.parametrize("form", ["dense", "offsets"])
def test_invalid_id_eager_raises(form):
    bag = make_bag("mean")
    ids, _ = make_inputs(form, bags=[[1, VOCAB], [2]])
    with pytest.raises(ValueError, match=rf"Invalid embedding id {VOCAB}"):
        bag(ids)


@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("form", ["dense", "offsets"])
def test_invalid_id_compiled_counts_nowhere(form, combiner):
    bags = [[1, VOCAB, 4], [-3], [2]]
    bag = make_bag(combiner)
    ids, _ = make_inputs(form, bags=bags)
    ids = keras.tree.map_structure(keras.ops.convert_to_tensor, ids)
    out = keras.ops.convert_to_numpy(compiled(lambda i: bag(i))(ids))
    expected = np_bag(table_of(bag), bags, None, combiner, excluded=(PAD, VOCAB, -3))
    np.testing.assert_allclose(out, expected, **TOL)


# ---- against the backends' own ops --------------------------------------------


@pytest.mark.skipif(
    BACKEND != "torch", reason="torch.nn.functional.embedding_bag exists only on torch"
)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("form", ["dense", "offsets"])
@pytest.mark.parametrize("combiner", ["sum", "mean", "max"])
def test_matches_torch_embedding_bag(combiner, form, weighted):
    import torch
    import torch.nn.functional as F

    if weighted and combiner != "sum":
        pytest.skip("torch takes per_sample_weights with mode='sum' only")
    bag = make_bag(combiner)
    ids, w = make_inputs(form, weights=WEIGHTS if weighted else None)
    out, grad = forward_and_grad(bag, ids, w)
    table = torch.tensor(keras.ops.convert_to_numpy(bag.embeddings), requires_grad=True)
    if form == "dense":
        args = (torch.tensor(ids), table)
    else:
        args = (torch.tensor(ids[0]), table, torch.tensor(ids[1]))
    reference = F.embedding_bag(
        *args,
        mode=combiner,
        per_sample_weights=None if w is None else torch.tensor(w),
        padding_idx=PAD,
    )
    (reference * torch.tensor(UPSTREAM, dtype=torch.float32)).sum().backward()
    np.testing.assert_allclose(out, reference.detach().numpy(), **TOL)
    np.testing.assert_allclose(grad, table.grad.numpy(), **TOL)


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="tf.nn.safe_embedding_lookup_sparse exists only on TensorFlow",
)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("form", ["sparse", "ragged"])
@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_matches_tf_safe_embedding_lookup_sparse(combiner, form, weighted):
    import tensorflow as tf

    bag = make_bag(combiner, padding_idx=None)
    ids, w = make_inputs(form, weights=WEIGHTS if weighted else None)
    out, grad = forward_and_grad(bag, ids, w)
    table = tf.Variable(keras.ops.convert_to_numpy(bag.embeddings))
    sp_ids, sp_w = make_inputs("sparse", weights=WEIGHTS if weighted else None)
    sp_ids = tf.SparseTensor(
        sp_ids.indices, tf.cast(sp_ids.values, "int64"), sp_ids.dense_shape
    )
    with tf.GradientTape() as tape:
        reference = tf.nn.safe_embedding_lookup_sparse(
            table, sp_ids, sp_w, combiner=combiner
        )
        loss = tf.reduce_sum(reference * UPSTREAM.astype("float32"))
    expected_grad = tf.convert_to_tensor(tape.gradient(loss, table))
    np.testing.assert_allclose(out, reference.numpy(), **TOL)
    np.testing.assert_allclose(grad, expected_grad.numpy(), **TOL)


# ---- errors -------------------------------------------------------------------


def test_combiner_is_checked():
    with pytest.raises(ValueError, match=r"`combiner` must be one of 'sum'.*'max'"):
        EmbeddingBag(4, 2, combiner="avg")


def test_max_refuses_weights():
    bag = make_bag("max")
    ids, w = make_inputs("dense", weights=WEIGHTS)
    with pytest.raises(ValueError, match=r"combiner='max' with weights"):
        bag(ids, weights=w)


def test_weights_shape_is_checked():
    bag = make_bag("sum")
    ids, _ = make_inputs("dense")
    with pytest.raises(ValueError, match=r"`weights` must have the shape of the ids"):
        bag(ids, weights=np.ones((2, 2), "float32"))
    (values, offsets), _ = make_inputs("offsets")
    with pytest.raises(ValueError, match=r"one weight per value"):
        bag((values, offsets), weights=np.ones((3,), "float32"))


def test_offsets_are_checked():
    bag = make_bag("sum")
    values = np.array([1, 2, 3], "int32")
    for offsets in ([1, 2], [0, 2, 1], [0, 4], []):
        with pytest.raises(ValueError, match=r"`offsets` must start at 0"):
            bag((values, np.array(offsets, "int32")))
    with pytest.raises(ValueError, match=r"must be `\(values, offsets\)`"):
        bag((values, values, values))


def test_dense_ids_need_a_bag_axis():
    with pytest.raises(ValueError, match=r"Dense bags must have shape"):
        make_bag("sum")(np.array([1, 2], "int32"))


# ---- options of Embedding -----------------------------------------------------


def test_quantized_int8_matches_keras_rows():
    """The bag pools what Keras's int8 `Embedding` looks up for the same table."""
    bag = make_bag("mean")
    theirs = keras.layers.Embedding(VOCAB, DIM)
    theirs.build()
    theirs.embeddings.assign(bag.embeddings)
    bag.quantize("int8")
    theirs.quantize("int8")
    table = keras.ops.convert_to_numpy(theirs(np.arange(VOCAB))).astype(np.float64)
    ids, w = make_inputs("offsets", weights=WEIGHTS)
    out = keras.ops.convert_to_numpy(bag(ids, weights=w))
    np.testing.assert_allclose(out, np_bag(table, BAGS, WEIGHTS, "mean"), **TOL)


def test_lora_matches_numpy():
    bag = make_bag("sqrtn", lora_rank=2, lora_alpha=4)
    b = RNG.normal(size=(2, DIM)).astype("float32")
    bag.lora_embeddings_b.assign(b)
    table = keras.ops.convert_to_numpy(bag._embeddings).astype(np.float64)
    a = keras.ops.convert_to_numpy(bag.lora_embeddings_a)
    adapted = table + 2.0 * a @ b
    ids, w = make_inputs("dense", weights=WEIGHTS)
    out = keras.ops.convert_to_numpy(bag(ids, weights=w))
    np.testing.assert_allclose(out, np_bag(adapted, BAGS, WEIGHTS, "sqrtn"), **TOL)


def test_device_and_dropout_options():
    """`device="cpu"` reads rows where the table lives; dropout is off in inference."""
    bag = make_bag("mean", device="cpu", dropout=0.5)
    ids, w = make_inputs("offsets", weights=WEIGHTS)
    out = keras.ops.convert_to_numpy(bag(ids, weights=w))
    np.testing.assert_allclose(out, np_bag(table_of(bag), BAGS, WEIGHTS, "mean"), **TOL)


def test_max_norm_matches_numpy():
    bag = make_bag("sum", max_norm=0.5)
    table = table_of(bag)
    norms = np.linalg.norm(table, axis=1, keepdims=True)
    renormed = table * np.minimum(1.0, 0.5 / np.maximum(norms, 1e-7))
    ids, _ = make_inputs("offsets")
    out = keras.ops.convert_to_numpy(bag(ids))
    np.testing.assert_allclose(out, np_bag(renormed, BAGS, None, "sum"), rtol=1e-5)


# ---- row-sparse gradients and training ----------------------------------------


@pytest.mark.skipif(
    BACKEND == "jax",
    reason="JAX gradients are dense arrays; SparseTrainer differentiates the rows",
)
@pytest.mark.parametrize("combiner", COMBINERS)
def test_sparse_gradient_is_row_sparse(combiner):
    bag = make_bag(combiner, sparse=True)
    ids, _ = make_inputs("offsets")
    upstream = keras.ops.convert_to_tensor(UPSTREAM.astype("float32"))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(bag(ids) * upstream)
        grad = tape.gradient(loss, bag.embeddings.value)
        assert isinstance(grad, tf.IndexedSlices)
    else:
        (bag(ids) * upstream).sum().backward()
        grad = bag.embeddings.value.grad
        assert grad.is_sparse
    expected = np_bag_grad(table_of(bag), BAGS, None, combiner, UPSTREAM)
    np.testing.assert_allclose(to_numpy(grad), expected, **TOL)


@keras.saving.register_keras_serializable(package="test_bag")
class SparseModel(SparseTrainer, keras.Model):
    pass


def _bag_model(sparse, optimizer, combiner="mean"):
    ids = keras.Input((LENGTH,), dtype="int32")
    inputs, weights = [ids], None
    if combiner != "max":
        weights = keras.Input((LENGTH,))
        inputs.append(weights)
    pooled = EmbeddingBag(
        VOCAB,
        DIM,
        combiner=combiner,
        padding_idx=PAD,
        sparse=sparse,
        embeddings_initializer=keras.initializers.RandomNormal(seed=1),
        name="bag",
    )(ids, weights=weights)
    out = keras.layers.Dense(1, kernel_initializer="ones")(pooled)
    model = (SparseModel if sparse else keras.Model)(inputs, out)
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _table(model):
    return keras.ops.convert_to_numpy(model.get_layer("bag").embeddings)


def _train_batches(steps=3):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 5, size=(steps, 6, LENGTH)).astype("int32")
    w = rng.uniform(0.5, 1.5, size=ids.shape).astype("float32")
    y = rng.normal(size=(steps, 6, 1)).astype("float32")
    return ids, w, y


@pytest.mark.parametrize("combiner", COMBINERS)
def test_sparse_training_equals_dense(combiner):
    """LazySGD on the row-sparse gradient equals Keras's SGD on the dense one
    (duplicate ids summed), and the padding row stays zero."""
    dense = _bag_model(False, keras.optimizers.SGD(0.5), combiner)
    sparse = _bag_model(True, LazySGD(0.5), combiner)
    ids, w, y = _train_batches()
    for i in range(len(ids)):
        x = [ids[i]] if combiner == "max" else [ids[i], w[i]]
        for model in (dense, sparse):
            model.train_on_batch(x, y[i])
    before = _bag_model(False, "sgd", combiner)
    tables = [_table(m) for m in (dense, sparse, before)]
    np.testing.assert_allclose(tables[1], tables[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(tables[1][PAD], 0)
    assert np.abs(tables[1][1:5] - tables[2][1:5]).max() > 1e-3


def test_sparse_lazy_adam_step():
    """One LazyAdam step moves exactly the rows in the batch (padding excluded)."""
    model = _bag_model(True, LazyAdam(0.1))
    before = _table(model)
    ids = np.array([[3, 5, 3, 0, 0], [7, 0, 0, 0, 0]], "int32")
    model.train_on_batch([ids, np.ones(ids.shape, "float32")], np.ones((2, 1)))
    after = _table(model)
    moved = np.flatnonzero(np.abs(after - before).max(axis=1))
    assert moved.tolist() == [3, 5, 7]
    np.testing.assert_array_equal(after[PAD], 0)


# ---- serialization ------------------------------------------------------------


def test_config_round_trip():
    bag = EmbeddingBag(VOCAB, DIM, combiner="sqrtn", padding_idx=-2, sparse=True)
    config = bag.get_config()
    assert config["combiner"] == "sqrtn" and config["padding_idx"] == VOCAB - 2
    again = EmbeddingBag.from_config(config)
    assert again.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(bag)
    )
    assert type(restored) is EmbeddingBag and restored.combiner == "sqrtn"
    with pytest.raises(TypeError, match=r"`combiner` must be one of"):
        EmbeddingBag.from_config({**config, "combiner": "avg"})


def test_keras_file_round_trip(tmp_path):
    model = _bag_model(False, "adam", "sqrtn")
    ids, w, y = _train_batches()
    model.train_on_batch([ids[0], w[0]], y[0])
    expected = model.predict([ids[0], w[0]], verbose=0)
    path = os.path.join(tmp_path, "bag.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("bag")) is EmbeddingBag
    assert loaded.get_layer("bag").combiner == "sqrtn"
    np.testing.assert_allclose(loaded.predict([ids[0], w[0]], verbose=0), expected)


def test_offsets_inputs_train_in_a_functional_model():
    """`(values, offsets)` as two model inputs, through Keras's symbolic build."""
    values = np.array([1, 2, 3, 4, 5], "int32")
    offsets = np.array([0, 2, 3], "int32")
    v_in = keras.Input((), batch_size=5, dtype="int32")
    o_in = keras.Input((), batch_size=3, dtype="int32")
    bag = EmbeddingBag(VOCAB, DIM, padding_idx=PAD, sparse=True, name="bag")
    model = SparseModel([v_in, o_in], bag((v_in, o_in)))
    model.compile(optimizer=LazyAdam(0.1), loss="mse")
    before = table_of(bag)
    model.train_on_batch([values, offsets], np.ones((3, DIM), "float32"))
    after = table_of(bag)
    moved = np.flatnonzero(np.abs(after - before).max(axis=1))
    assert moved.tolist() == [1, 2, 3, 4, 5]
    bags = [[1, 2], [3], [4, 5]]
    np.testing.assert_allclose(
        model.predict_on_batch([values, offsets]),
        np_bag(after, bags, None, "mean"),
        **TOL,
    )


class _OffsetBatches(keras.utils.PyDataset):
    """The same `(values, offsets)` batch twice."""

    def __init__(self, ids, y):
        super().__init__()
        self.ids, self.y = ids, y

    def __len__(self):
        return 2

    def __getitem__(self, index):
        return self.ids, self.y


def test_max_trains_in_fit_with_offsets_inputs():
    """`fit` builds the model by Keras's shape inference first (torch: on the
    "meta" device, where `ops.full` failed; then on tensors of ones, which are no
    valid offsets)."""
    v_in = keras.Input((), dtype="int32")
    o_in = keras.Input((), dtype="int32")
    bag = make_bag("max")
    model = keras.Model([v_in, o_in], bag((v_in, o_in)))
    model.compile(optimizer="sgd", loss="mse")
    ids, _ = make_inputs("offsets")
    model.fit(_OffsetBatches(ids, UPSTREAM.astype("float32")), verbose=0)
    expected = np_bag(table_of(bag), BAGS, None, "max")
    np.testing.assert_allclose(model.predict_on_batch(ids), expected, **TOL)


def test_quantized_bag_keras_file_round_trip(tmp_path):
    ids = keras.Input((LENGTH,), dtype="int32")
    bag = EmbeddingBag(VOCAB, DIM, combiner="sum", padding_idx=PAD, name="bag")
    model = keras.Model(ids, bag(ids))
    bag.quantize("int8")
    x, _ = make_inputs("dense")
    expected = model.predict(x, verbose=0)
    path = os.path.join(tmp_path, "quantized_bag.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("bag").quantization_mode == "int8"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, **TOL)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("combiner", "weighted"), POOLINGS)
def test_zero_output_dim_works_as_embedding_does(combiner, form, weighted):
    # `Embedding(7, 0)` gives `(..., 0)` rows; a bag of them pools to `(bags, 0)`
    # on every backend (torch's fused kernel refuses zero columns).
    # Compiled once per form (torch.compile is slow), eager for every combiner.
    _skip_form(form)
    bag = EmbeddingBag(VOCAB, 0, combiner=combiner)
    weights = WEIGHTS if weighted else None
    ids, w = make_inputs(form, weights=weights)
    out = to_numpy(bag(ids, weights=w))
    np.testing.assert_array_equal(out, np.zeros((len(BAGS), 0)))
    if combiner == "max" and form != "sparse":
        compiled = layer_test.compiled(bag)
        np.testing.assert_array_equal(to_numpy(compiled(ids, weights=w)), out)


# ---- {"values", "lengths"}: bags that end before the values do -----------------

# Ids and weights after the last bag: valid ids that are not padding, non-zero
# weights, rows larger than any bag's (so that "max" would pick them).
TRAILING_IDS = [11, 6, 11]
TRAILING_WEIGHTS = [3.0, -1.0, 2.0]


def _with_lengths(weights, bags=BAGS, trailing=TRAILING_IDS):
    """`({"values", "lengths"}, weights)` of `bags`, `trailing` ids after them."""
    (values, _), w = make_inputs("offsets", bags=bags, weights=weights)
    values = np.concatenate([values, trailing]).astype("int32")
    lengths = np.array([len(b) for b in bags], "int32")
    if w is not None:
        w = np.concatenate([w, TRAILING_WEIGHTS[: len(trailing)]]).astype("float32")
    return {"values": values, "lengths": lengths}, w


# Eager calls (torch: its fused kernel), eager calls of rows read where the table
# lives (`device="cpu"`: the gathered-rows path on every backend), compiled calls
# (the compiled path; twice only, torch.compile is slow).
CALLS = [
    pytest.param(c, w, mode, id=f"{c}-{'weighted' if w else 'unweighted'}-{mode}")
    for c, w in [(p.values[0], p.values[1]) for p in POOLINGS]
    for mode in ("eager", "gathered")
] + [
    pytest.param("max", False, "compiled", id="max-unweighted-compiled"),
    pytest.param("mean", True, "compiled", id="mean-weighted-compiled"),
]


@pytest.mark.parametrize(("combiner", "weighted", "mode"), CALLS)
def test_lengths_values_after_the_last_bag_count_nowhere(combiner, weighted, mode):
    """`{"values", "lengths"}`: the values after `sum(lengths)` change neither
    the output nor the gradient, with no `padding_idx`."""
    options = {"device": "cpu"} if mode == "gathered" else {}
    bag = make_bag(combiner, padding_idx=None, **options)
    table = table_of(bag)
    table[TRAILING_IDS] = 10.0  # The largest rows: "max" would pick them.
    bag.embeddings.assign(table.astype("float32"))
    weights = WEIGHTS if weighted else None
    ids, w = _with_lengths(weights)
    out, grad = forward_and_grad(bag, ids, w, compile_=mode == "compiled")
    np.testing.assert_allclose(out, np_bag(table, BAGS, weights, combiner, ()), **TOL)
    expected = np_bag_grad(table, BAGS, weights, combiner, UPSTREAM, ())
    np.testing.assert_allclose(grad, expected, **TOL)
    assert not grad[TRAILING_IDS].any()


def test_lengths_without_values_after_the_bags_equal_offsets():
    bag = make_bag("sqrtn")
    ids, w = _with_lengths(WEIGHTS, trailing=[])
    offsets_ids, offsets_w = make_inputs("offsets", weights=WEIGHTS)
    np.testing.assert_allclose(
        to_numpy(bag(ids, weights=w)),
        to_numpy(bag(offsets_ids, weights=offsets_w)),
        **TOL,
    )


@pytest.mark.skipif(
    BACKEND == "jax",
    reason="JAX gradients are dense arrays; SparseTrainer differentiates the rows",
)
def test_lengths_sparse_gradient():
    """A row-sparse gradient leaves the rows after the last bag out (torch's own
    `include_last_offset` fails on such values with `sparse=True`)."""
    bag = make_bag("sum", padding_idx=None, sparse=True)
    ids, _ = _with_lengths(None)
    _, grads = layer_test.forward_and_gradients(bag, ids, UPSTREAM.astype("float32"))
    expected = np_bag_grad(table_of(bag), BAGS, None, "sum", UPSTREAM, ())
    np.testing.assert_allclose(to_numpy(grads["embeddings"]), expected, **TOL)


def test_lengths_are_checked():
    values = np.array([1, 2, 3], "int32")
    bag = make_bag("sum")
    for lengths in ([2, 2], [-1, 3], []):
        with pytest.raises(ValueError, match=r"`lengths` must be the number of ids"):
            bag({"values": values, "lengths": np.array(lengths, "int32")})
    with pytest.raises(ValueError, match=r'must be `\{"values": ..., "lengths"'):
        bag({"values": values, "offsets": np.array([0], "int32")})
    with pytest.raises(ValueError, match=r"one weight per value"):
        bag({"values": values, "lengths": np.array([3])}, weights=np.ones(2))


def test_lengths_in_a_functional_model_saved_and_loaded(tmp_path):
    """Keras's symbolic shapes (one row per bag), and a `.keras` round trip."""
    values = keras.Input((), dtype="int32", name="values")
    lengths = keras.Input((), dtype="int32", name="lengths")
    bag = EmbeddingBag(VOCAB, DIM, combiner="max", name="bag")
    pooled = bag({"values": values, "lengths": lengths})
    assert pooled.shape == (None, DIM)
    model = keras.Model({"values": values, "lengths": lengths}, pooled)
    ids, _ = _with_lengths(None)
    expected = np_bag(table_of(bag), BAGS, None, "max", ())
    np.testing.assert_allclose(model.predict_on_batch(ids), expected, **TOL)
    path = os.path.join(tmp_path, "lengths.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict_on_batch(ids), expected, **TOL)


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="only tf.function traces with sizes unknown (None) until the call",
)
@pytest.mark.parametrize("form", ["offsets", "lengths"])
def test_bags_of_unknown_size_under_tf_function(form):
    """One trace for every number of ids and bags, as `fit` traces the batches
    of a `tf.data` pipeline."""
    import tensorflow as tf

    bag = make_bag("mean")
    spec = tf.TensorSpec([None], tf.int32)
    if form == "lengths":
        ids, _ = _with_lengths(None)
        step = tf.function(
            lambda v, n: bag({"values": v, "lengths": n}), input_signature=[spec] * 2
        )
        ids = (ids["values"], ids["lengths"])
    else:
        ids, _ = make_inputs("offsets")
        step = tf.function(lambda v, o: bag((v, o)), input_signature=[spec] * 2)
    out = keras.ops.convert_to_numpy(step(*ids))
    np.testing.assert_allclose(out, np_bag(table_of(bag), BAGS, None, "mean"), **TOL)
