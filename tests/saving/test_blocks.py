"""Big tables built and loaded by blocks (`saving.blocks`): the values drawn,
and loading, checked with small thresholds."""

import keras
import numpy as np
import pytest

from keras_embedding_plus import Embedding
from keras_embedding_plus.backends import blocks as native
from keras_embedding_plus.saving import blocks as _chunks

BACKEND = keras.backend.backend()

ROWS, DIM = 1000, 8
IN_PLACE = BACKEND in ("tensorflow", "torch")


@pytest.fixture
def small_blocks(monkeypatch):
    """Every table of this file is "big", in blocks of 37 rows (the last shorter)."""
    monkeypatch.setattr(_chunks, "MIN_ELEMENTS", 64)
    monkeypatch.setattr(_chunks, "BLOCK_ELEMENTS", 37 * DIM)


def _table(initializer, **kwargs):
    layer = Embedding(ROWS, DIM, embeddings_initializer=initializer, **kwargs)
    layer.build()
    return keras.ops.convert_to_numpy(layer.embeddings)


def _keras_table(initializer):
    layer = keras.layers.Embedding(ROWS, DIM, embeddings_initializer=initializer)
    layer.build()
    return keras.ops.convert_to_numpy(layer.embeddings)


def test_backend_writes_in_place_where_expected():
    assert native.writes_rows_in_place() is IN_PLACE
    assert native.builds_by_blocks()  # JAX too: the array being built is donated.


def test_blocks_cover_the_rows(small_blocks):
    blocks = _chunks._blocks((ROWS, DIM))
    assert blocks[0] == (0, 37) and blocks[-1] == (999, 1000)
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))


def test_small_tables_keep_keras_values():
    # Below the threshold (the default one): Keras's own draw.
    assert not _chunks.blockwise("uniform", (ROWS, DIM))
    init = keras.initializers.RandomUniform(seed=3)
    np.testing.assert_array_equal(_table(init), _keras_table(init))


def test_only_elementwise_initializers_go_by_blocks(small_blocks):
    for name in ("uniform", "normal", "truncated_normal", "zeros", "ones"):
        assert _chunks.blockwise(name, (ROWS, DIM)), name
    assert _chunks.blockwise(keras.initializers.Constant(2.0), (ROWS, DIM))
    for name in ("glorot_uniform", "he_normal", "orthogonal", "lecun_uniform"):
        assert not _chunks.blockwise(name, (ROWS, DIM)), name
    # A fan-based initializer is drawn whole: Keras's values, even when big.
    init = keras.initializers.GlorotUniform(seed=5)
    np.testing.assert_array_equal(_table(init), _keras_table(init))


@pytest.mark.parametrize(
    "initializer, low, high, mean, std",
    [
        (
            keras.initializers.RandomUniform(-0.05, 0.05, seed=7),
            -0.05,
            0.05,
            0.0,
            0.1 / np.sqrt(12),
        ),
        (keras.initializers.RandomNormal(0.5, 0.2, seed=7), -np.inf, np.inf, 0.5, 0.2),
        (keras.initializers.TruncatedNormal(0.0, 0.1, seed=7), -0.2, 0.2, 0.0, 0.088),
    ],
)
def test_random_blocks_have_the_distribution(
    small_blocks, initializer, low, high, mean, std
):
    table = _table(initializer)
    assert table.shape == (ROWS, DIM) and table.dtype == np.float32
    assert low <= table.min() and table.max() <= high
    assert abs(table.mean() - mean) < 0.05 * max(std, 1.0) + 3 * std / 80
    assert abs(table.std() - std) < 0.1 * std
    # No block repeats another's draws, and no value repeats at all.
    blocks = [table[a:b] for a, b in _chunks._blocks((ROWS, DIM))]
    assert not np.array_equal(blocks[0], blocks[1][: len(blocks[0])])
    assert len(np.unique(table)) > 0.99 * table.size


def test_int_seed_is_deterministic(small_blocks):
    first = _table(keras.initializers.RandomUniform(seed=11))
    again = _table(keras.initializers.RandomUniform(seed=11))
    other = _table(keras.initializers.RandomUniform(seed=12))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_seed_generator_draws_new_blocks(small_blocks):
    init = keras.initializers.RandomNormal(seed=keras.random.SeedGenerator(4))
    table = _table(init)
    assert len(np.unique(table)) > 0.99 * table.size


def test_constant_initializers_by_blocks(small_blocks):
    np.testing.assert_array_equal(_table("zeros"), np.zeros((ROWS, DIM)))
    np.testing.assert_array_equal(_table("ones"), np.ones((ROWS, DIM)))
    table = _table(keras.initializers.Constant(0.25))
    np.testing.assert_array_equal(table, np.full((ROWS, DIM), 0.25))


def test_padding_row_is_zeros_by_blocks(small_blocks):
    for pad in (0, 40, ROWS - 1):
        table = _table("ones", padding_idx=pad)
        expected = np.ones((ROWS, DIM))
        expected[pad] = 0
        np.testing.assert_array_equal(table, expected)
    table = _table(keras.initializers.RandomUniform(seed=1), padding_idx=74)
    assert not table[74].any() and table[73].all() and table[75].all()


def test_bfloat16_table_by_blocks(small_blocks):
    table = _table("ones", dtype="bfloat16", padding_idx=3)
    assert table.dtype.name == "bfloat16"
    assert float(table.astype(np.float32).sum()) == (ROWS - 1) * DIM


def test_assign_by_blocks(small_blocks):
    layer = Embedding(ROWS, DIM)
    layer.build()
    value = np.random.default_rng(0).normal(size=(ROWS, DIM))  # float64: cast
    _chunks.assign(layer._embeddings, value)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.embeddings), value.astype(np.float32)
    )


def test_write_rows():
    variable = keras.Variable(np.zeros((10, 3), np.float32))
    native.write_rows(variable, 4, np.ones((2, 3), np.float32))
    expected = np.zeros((10, 3))
    expected[4:6] = 1
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), expected)


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_save_and_load_by_blocks(small_blocks, monkeypatch, tmp_path, lora, suffix):
    from keras_embedding_plus import compat as _compat
    from keras_embedding_plus import load_model, load_weights

    datasets = []

    def stored_rows(store, key):
        dataset = _compat_stored_rows(store, key)
        datasets.append(dataset)
        return dataset

    _compat_stored_rows = _compat.stored_rows
    monkeypatch.setattr(_compat, "stored_rows", stored_rows)

    def build():
        inputs = keras.Input((4,), dtype="int32")
        layer = Embedding(ROWS, DIM, lora_rank=2 if lora else None, padding_idx=1)
        return keras.Model(inputs, layer(inputs))

    model = build()
    if lora:
        b = model.layers[1].lora_embeddings_b
        b.assign(np.random.default_rng(1).normal(size=b.shape))
    expected = keras.ops.convert_to_numpy(model.layers[1].embeddings)
    path = str(tmp_path / f"m{suffix}")
    if suffix == ".keras":
        model.save(path)
        loaded = load_model(path)
    else:
        model.save_weights(path)
        loaded = build()
        load_weights(loaded, path)
    table = keras.ops.convert_to_numpy(loaded.layers[1]._embeddings)
    np.testing.assert_allclose(table, expected, rtol=1e-6, atol=1e-6)
    # The table was read from the file's dataset (by blocks where in place).
    assert datasets and datasets[0] is not None


def test_stored_rows_only_for_h5_stores():
    from keras_embedding_plus import compat as _compat

    assert _compat.stored_rows({"0": np.zeros(3)}, "0") is None


@pytest.mark.parametrize("lora", [False, True])
def test_saved_by_blocks_is_one_numpy_copy(small_blocks, lora):
    layer = Embedding(ROWS, DIM, lora_rank=2 if lora else None)
    layer.build()
    if lora:
        b = layer.lora_embeddings_b
        b.assign(np.random.default_rng(1).normal(size=b.shape))
    store = {}
    layer.save_own_variables(store)
    value = store["0"]
    assert isinstance(value, _chunks._Saved)
    first = np.array(value)
    again = np.array(value)  # A second conversion is a real copy.
    assert not np.shares_memory(first, again)
    expected = keras.ops.convert_to_numpy(layer.embeddings)
    np.testing.assert_allclose(first, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(first, again)
    # Loading what was saved gives the same table (LoRA: merged, B at zero).
    layer.load_own_variables({"0": first})
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.embeddings), expected, rtol=1e-6, atol=1e-6
    )


def test_computed_embeddings_not_listed_for_keras_saving():
    # Keras's saving reads every attribute `dir` lists: a LoRA or quantized
    # layer's `embeddings` (a computed table) is not listed, yet still there.
    layer = Embedding(ROWS, DIM)
    layer.build()
    assert "embeddings" in dir(layer)
    layer.enable_lora(2)
    assert "embeddings" not in dir(layer)
    assert tuple(layer.embeddings.shape) == (ROWS, DIM)


def test_load_model_draws_no_big_table_it_replaces(small_blocks, monkeypatch, tmp_path):
    """`load_model` builds big tables as zeros and does not draw them (the
    file's values replace them: less time, and on JAX less peak memory); a
    plain build draws them. The loaded values are the saved ones."""
    from keras_embedding_plus import load_model

    draws = []
    block_initializer = _chunks._block_initializer

    def counted(initializer, index):
        draws.append(index)
        return block_initializer(initializer, index)

    monkeypatch.setattr(_chunks, "_block_initializer", counted)
    inputs = keras.Input((4,), dtype="int32")
    model = keras.Model(inputs, Embedding(ROWS, DIM, name="emb")(inputs))
    assert draws  # The plain build drew its blocks.
    path = str(tmp_path / "m.keras")
    model.save(path)
    del draws[:]
    loaded = load_model(path)
    assert draws == []
    ids = np.arange(ROWS, dtype="int32").reshape(-1, 4)
    np.testing.assert_array_equal(
        loaded.predict(ids, verbose=0), model.predict(ids, verbose=0)
    )
