"""`DynamicEmbedding` (issue 22): admission and eviction in compiled training
steps follow the plain Python oracle; inference gives zero rows for keys not
held; new keys' rows start from the initializer; saving keeps the map."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import DynamicEmbedding, compat, load_model
from keras_embedding_plus import load_weights as kep_load_weights
from keras_embedding_plus.lookup import dynamic_keys
from keras_embedding_plus.optimizers import (
    LazyAdagrad,
    LazyAdam,
    LazyRowwiseAdagrad,
    LazySGD,
)
from keras_embedding_plus.testing.dynamic import Oracle, key_dtype
from keras_embedding_plus.training import SparseTrainer

KEY_DTYPE = key_dtype()
BIG = [2**40 + 1, -(2**45)] if KEY_DTYPE == "int64" else [2**31 - 2, -(2**31)]


def _stream(seed=0, steps=6):
    """Batches of 4 x 3 keys: small repeated ones, negative and huge ones."""
    rng = np.random.default_rng(seed)
    pool = np.asarray(list(range(-6, 6)) + BIG, KEY_DTYPE)
    return [rng.choice(pool, size=(4, 3)) for _ in range(steps)]


TARGETS = np.linspace(-1, 1, 4, dtype="float32").reshape(4, 1)


class SparseSequential(SparseTrainer, keras.Sequential):
    pass


def _model(layer, optimizer=None, cls=keras.Sequential):
    model = cls(
        [
            keras.Input((3,), dtype=KEY_DTYPE),
            layer,
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1, kernel_initializer="ones"),
        ]
    )
    model.compile(optimizer or keras.optimizers.SGD(0.1), "mse")
    return model


def _table(layer):
    return ops.convert_to_numpy(layer.embeddings)


@pytest.mark.parametrize("min_count", [1, 2])
@pytest.mark.parametrize("eviction", dynamic_keys.POLICIES)
def test_training_steps_follow_the_oracle(eviction, min_count):
    layer = DynamicEmbedding(
        4,
        5,
        key_dtype=KEY_DTYPE,
        eviction=eviction,
        min_count=min_count,
        candidate_capacity=4,
    )
    model = _model(layer)
    oracle = Oracle(5, eviction, min_count, 4)
    for batch in _stream():
        model.train_on_batch(batch, TARGETS)
        oracle.train([int(k) for k in batch.reshape(-1)])
        held = oracle.held()
        keys = sorted(held)
        np.testing.assert_array_equal(layer.keys(), keys)
        np.testing.assert_array_equal(layer.rows_of(keys), [held[k] for k in keys])
        np.testing.assert_array_equal(
            layer.counts(), [oracle.count[held[k]] for k in keys]
        )
        assert layer.evictions == oracle.evictions


def test_inference_reads_held_rows_and_zeros_and_changes_nothing():
    layer = DynamicEmbedding(4, 5, key_dtype=KEY_DTYPE)
    model = _model(layer)
    for batch in _stream(steps=3):
        model.train_on_batch(batch, TARGETS)
    held = layer.keys()
    queries = np.asarray([[held[0], 99, held[-1]], [BIG[0] - 1, held[1], 77]])
    queries = queries.astype(KEY_DTYPE)
    rows = layer.rows_of(queries)
    assert (rows >= 0).sum() == 3
    table = _table(layer)
    expected = np.where((rows >= 0)[..., None], table[np.maximum(rows, 0)], 0.0)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(queries)), expected)
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(queries, training=False)), expected
    )
    inner = keras.Sequential([keras.Input((3,), dtype=KEY_DTYPE), layer])
    np.testing.assert_allclose(inner.predict(queries, verbose=0), expected, atol=1e-7)
    np.testing.assert_array_equal(layer.keys(), held)


def test_new_keys_start_from_the_initializer_and_others_move_only_by_training():
    start = 0.5
    layer = DynamicEmbedding(
        4,
        2,
        key_dtype=KEY_DTYPE,
        embeddings_initializer=keras.initializers.Constant(start),
    )
    model = _model(layer)
    ones = np.ones((4, 3), KEY_DTYPE)
    model.train_on_batch(ones * 1, TARGETS)  # key 1 admitted: its first row
    np.testing.assert_array_equal(_table(layer)[layer.rows_of([1])[0]], start)
    model.train_on_batch(ones * 1, TARGETS)  # key 1 trains
    trained = _table(layer)[layer.rows_of([1])[0]]
    assert np.abs(trained - start).max() > 1e-4
    model.train_on_batch(ones * 2, TARGETS)  # key 2: the free row
    model.train_on_batch(ones * 2, TARGETS)
    before = _table(layer)
    model.train_on_batch(ones * 3, TARGETS)  # key 3 evicts key 1 (LRU)
    assert list(layer.keys()) == [2, 3]
    assert layer.evictions == 1
    row_3, row_2 = layer.rows_of([3, 2])
    after = _table(layer)
    np.testing.assert_array_equal(after[row_3], start)
    # Key 2 is not in the batch: plain SGD leaves its row as it was.
    np.testing.assert_array_equal(after[row_2], before[row_2])


def test_sparse_rows_with_a_lazy_optimizer_equal_dense_training():
    def layer(sparse):
        return DynamicEmbedding(
            4,
            5,
            key_dtype=KEY_DTYPE,
            eviction="lfu",
            sparse=sparse,
            embeddings_initializer=keras.initializers.RandomUniform(seed=7),
        )

    dense, sparse = layer(False), layer(True)
    dense_model = _model(dense, keras.optimizers.SGD(0.1))
    sparse_model = _model(sparse, LazySGD(0.1), cls=SparseSequential)
    np.testing.assert_array_equal(_table(sparse), _table(dense))
    for batch in _stream(seed=3):
        dense_model.train_on_batch(batch, TARGETS)
        sparse_model.train_on_batch(batch, TARGETS)
    np.testing.assert_array_equal(sparse.keys(), dense.keys())
    np.testing.assert_allclose(_table(sparse), _table(dense), atol=1e-6)


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_saved_map_loads_and_training_resumes_as_uninterrupted(tmp_path, suffix):
    stream = _stream(seed=1, steps=8)
    layer = DynamicEmbedding(4, 5, key_dtype=KEY_DTYPE, min_count=2)
    model = _model(layer, keras.optimizers.Adam(0.05))
    for batch in stream[:4]:
        model.train_on_batch(batch, TARGETS)
    path = str(tmp_path / f"model{suffix}")
    if suffix == ".keras":
        model.save(path)
        loaded = load_model(path)
    else:
        model.save_weights(path)
        loaded = _model(
            DynamicEmbedding(4, 5, key_dtype=KEY_DTYPE, min_count=2),
            keras.optimizers.Adam(0.05),
        )
        loaded.build((None, 3))
        loaded.optimizer.build(loaded.trainable_variables)
        loaded.load_weights(path)
    twin = loaded.layers[0]
    np.testing.assert_array_equal(twin.keys(), layer.keys())
    np.testing.assert_array_equal(twin.counts(), layer.counts())
    for batch in stream[4:]:
        model.train_on_batch(batch, TARGETS)
        loaded.train_on_batch(batch, TARGETS)
    np.testing.assert_array_equal(twin.keys(), layer.keys())
    np.testing.assert_array_equal(twin.counts(), layer.counts())
    if suffix == ".keras":  # `.weights.h5` holds no optimizer state.
        np.testing.assert_allclose(_table(twin), _table(layer), atol=1e-6)


def test_mask_key_is_padding():
    layer = DynamicEmbedding(3, 4, key_dtype=KEY_DTYPE, mask_zero=True, mask_key=-1)
    model = _model(layer)
    batch = np.asarray([[-1, 4, -1], [5, -1, 4], [-1, -1, -1], [6, 6, -1]], KEY_DTYPE)
    model.train_on_batch(batch, TARGETS)
    assert -1 not in layer.keys()
    np.testing.assert_array_equal(layer.keys(), np.unique(batch[batch != -1]))
    out = ops.convert_to_numpy(layer(batch))
    np.testing.assert_array_equal(out[batch == -1], 0.0)
    mask = ops.convert_to_numpy(layer.compute_mask(ops.convert_to_tensor(batch)))
    np.testing.assert_array_equal(mask, batch != -1)


def test_config_round_trip():
    layer = DynamicEmbedding(
        8,
        16,
        key_dtype=KEY_DTYPE,
        eviction="lfu",
        min_count=3,
        candidate_capacity=5,
        mask_zero=True,
        mask_key=7,
        max_norm=1.0,
    )
    config = layer.get_config()
    again = DynamicEmbedding.from_config(config)
    assert again.get_config() == config
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(restored, DynamicEmbedding)
    assert restored.get_config() == config


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"eviction": "fifo"}, "eviction"),
        ({"key_dtype": "float32"}, "key_dtype"),
        ({"capacity": 0}, "capacity"),
        ({"min_count": 0}, "min_count"),
        ({"candidate_capacity": 0}, "candidate_capacity"),
        ({"mask_key": "zero"}, "mask_key"),
        ({"max_norm": -1.0}, "max_norm"),
        ({"output_dim": 0}, "output_dim"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    arguments = {"output_dim": 4, "capacity": 8, "key_dtype": KEY_DTYPE, **kwargs}
    with pytest.raises(ValueError, match=f"`{name}"):
        DynamicEmbedding(**arguments)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_dim": 8},
        {"input_length": 3},
        {"padding_idx": 0},
        {"weights": [np.zeros((8, 4), "float32")]},
        {"lora_rank": 2},
        {"dropout": 0.5},
        {"device": "cpu"},
    ],
    ids=lambda kwargs: next(iter(kwargs)),
)
def test_embedding_options_it_does_not_take_are_refused(kwargs):
    (name,) = kwargs
    with pytest.raises(ValueError, match=f"does not take `{name}`"):
        DynamicEmbedding(4, 8, key_dtype=KEY_DTYPE, **kwargs)


def test_quantize_is_refused():
    layer = DynamicEmbedding(4, 8, key_dtype=KEY_DTYPE)
    layer.build()
    with pytest.raises(ValueError, match="cannot be quantized"):
        layer.quantize("int8")


def test_dtype_policies_compute_in_their_dtype():
    layer = DynamicEmbedding(4, 8, key_dtype=KEY_DTYPE, dtype="mixed_bfloat16")
    out = layer(np.asarray([[1, 2]], KEY_DTYPE), training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(layer.embeddings.dtype) == "float32"


def test_int64_keys_need_x64_on_jax_only():
    if KEY_DTYPE == "int64":
        assert DynamicEmbedding(4, 8, key_dtype="int64").key_dtype == "int64"
    else:  # JAX without x64.
        with pytest.raises(ValueError, match="x64"):
            DynamicEmbedding(4, 8, key_dtype="int64")


def test_float_keys_are_refused():
    layer = DynamicEmbedding(4, 8, key_dtype=KEY_DTYPE)
    with pytest.raises(ValueError, match="integer keys"):
        layer(np.ones((2, 3), "float32"))


@pytest.mark.parametrize(
    "optimizer, slots",
    [
        (lambda: LazyAdam(0.05), {"_momentums": 0.0, "_velocities": 0.0}),
        (lambda: LazyAdagrad(0.05), {"_accumulators": 0.1}),
        (lambda: LazySGD(0.05, momentum=0.9), {"momentums": 0.0}),
        (lambda: LazyRowwiseAdagrad(0.05, 0.1), {"_accumulators": 0.1}),
    ],
    ids=["adam", "adagrad", "sgd_momentum", "rowwise_adagrad"],
)
def test_lazy_optimizers_reset_the_slots_of_evicted_rows(optimizer, slots):
    """Key 1 trains, then is evicted by key 3: its row's slots start afresh
    (the optimizer's initial values); the other row, not in the batch, keeps
    its slots (lazy updates of row-sparse gradients)."""
    layer = DynamicEmbedding(4, 2, key_dtype=KEY_DTYPE, sparse=True)
    model = _model(layer, optimizer(), cls=SparseSequential)
    ones = np.ones((4, 3), KEY_DTYPE)
    for key in (1, 1, 2, 2):
        model.train_on_batch(ones * key, TARGETS)

    def slot_values():
        return {
            name: ops.convert_to_numpy(
                compat.optimizer_slot(model.optimizer, name, layer.embeddings)
            )
            for name in slots
        }

    before = slot_values()
    row_1, row_2 = layer.rows_of([1, 2])
    for name in slots:
        assert np.abs(before[name][row_1] - slots[name]).max() > 0
    model.train_on_batch(ones * 3, TARGETS)
    assert layer.rows_of([3])[0] == row_1
    after = slot_values()
    for name, initial in slots.items():
        np.testing.assert_allclose(after[name][row_1], initial, rtol=1e-6)
        np.testing.assert_array_equal(after[name][row_2], before[name][row_2])


@pytest.mark.parametrize(
    "optimizer, slots",
    [
        (lambda: keras.optimizers.Adam(0.05, amsgrad=True), 3),
        (lambda: keras.optimizers.Adagrad(0.05), 1),
        (lambda: keras.optimizers.RMSprop(0.05, momentum=0.5, centered=True), 3),
        (lambda: keras.optimizers.Ftrl(0.05, initial_accumulator_value=1e-9), 2),
    ],
    ids=["adam", "adagrad", "rmsprop", "ftrl"],
)
def test_keras_optimizers_reset_the_slots_of_evicted_rows(optimizer, slots):
    """As with the lazy optimizers, in Keras's own, compiled: key 1's row goes
    to key 3 with its slots at their initial values (zeros; Adagrad's and
    Ftrl's `initial_accumulator_value`), read from the optimizer's variables
    named after the table; the other row's are left as the update made them."""
    layer = DynamicEmbedding(4, 2, key_dtype=KEY_DTYPE)
    model = _model(layer, optimizer())
    ones = np.ones((4, 3), KEY_DTYPE)
    for key in (1, 1, 2, 2):
        model.train_on_batch(ones * key, TARGETS)
    prefix = layer.embeddings.path.replace("/", "_") + "_"
    found = {
        v.name[len(prefix) :]: v
        for v in model.optimizer.variables
        if v.name.startswith(prefix)
    }
    assert len(found) == slots, sorted(found)
    initial = {
        name: getattr(model.optimizer, "initial_accumulator_value", 0.0)
        if name == "accumulator"
        else 0.0
        for name in found
    }
    row_1, row_2 = layer.rows_of([1, 2])
    for name, slot in found.items():
        assert np.abs(ops.convert_to_numpy(slot)[row_1] - initial[name]).max() > 0
    model.train_on_batch(ones * 3, TARGETS)
    assert layer.rows_of([3])[0] == row_1
    for name, slot in found.items():
        after = ops.convert_to_numpy(slot)
        np.testing.assert_allclose(after[row_1], initial[name], rtol=1e-6)
        assert np.abs(after[row_2] - initial[name]).max() > 0, name


# Keras warns about its own containers whenever a `.weights.h5` load fails.
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_kep_load_weights_is_all_or_nothing_for_the_map(tmp_path):
    """A file that fails half-way (here at the Dense after the map) leaves the
    map, the table and the seed of new rows as they were."""
    source = _model(DynamicEmbedding(4, 5, key_dtype=KEY_DTYPE))
    for batch in _stream(seed=4):
        source.train_on_batch(batch, TARGETS)
    path = str(tmp_path / "source.weights.h5")
    source.save_weights(path)
    layer = DynamicEmbedding(4, 5, key_dtype=KEY_DTYPE)
    target = keras.Sequential(
        [
            keras.Input((3,), dtype=KEY_DTYPE),
            layer,
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2),  # The source's Dense has 1 unit.
        ]
    )
    target.compile(keras.optimizers.SGD(0.1), "mse")
    for batch in _stream(seed=5):
        target.train_on_batch(batch, np.repeat(TARGETS, 2, axis=1))
    assert not np.array_equal(layer.keys(), source.layers[0].keys())

    def state():
        seed = ops.convert_to_numpy(layer.seed_generator.state)
        return [layer.keys(), layer.counts(), _table(layer), seed]

    before = state()
    with pytest.raises(ValueError, match="source.weights.h5"):
        kep_load_weights(target, path)
    for was, now in zip(before, state(), strict=True):
        np.testing.assert_array_equal(now, was)


def test_keras_compiles_the_step_where_the_search_compiles():
    """jit_compile="auto": XLA on JAX, as for any model; TensorFlow's XLA
    would turn the key search into an all-pairs compare, so the layer asks
    Keras for no XLA there (Keras also leaves it off on CPU-only TensorFlow and
    on PyTorch)."""
    model = _model(DynamicEmbedding(4, 8, key_dtype=KEY_DTYPE))
    model.compile("sgd", "mse", jit_compile="auto")
    assert model.jit_compile == (keras.backend.backend() == "jax")
