"""The ids: shapes, `input_length`, id dtypes and the index policy."""

import re
import threading
import time

import keras
import numpy as np
import pytest
from keras import ops

from keras_embedding_plus import Embedding, EmbeddingBag, ReversibleEmbedding
from keras_embedding_plus.lookup import index_policy
from keras_embedding_plus.testing import compiled, full_width_ids, to_tensor

BACKEND = keras.backend.backend()


def to_np(x):
    return ops.convert_to_numpy(x)


TABLE = np.arange(30, dtype="float32").reshape(10, 3) + 1.0  # no zero row


def make_layer(**kwargs):
    return Embedding(10, 3, weights=TABLE, **kwargs)


# --- shapes and input_length -------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(4,), (2, 5), (2, 3, 4), (1, 2, 2, 2)], ids=["1d", "2d", "3d", "4d"]
)
def test_output_shape_any_rank(shape):
    layer = make_layer()
    ids = np.random.default_rng(0).integers(0, 10, size=shape)
    out = to_np(layer(ids))
    assert out.shape == (*shape, 3)
    np.testing.assert_array_equal(out, TABLE[ids])
    assert layer.compute_output_shape(shape) == (*shape, 3)


def test_documented_sequential_example():
    model = keras.Sequential()
    model.add(Embedding(1000, 64, input_length=10))
    assert model.output_shape == (None, 10, 64)
    input_array = np.random.randint(1000, size=(32, 10))
    model.compile("rmsprop", "mse")
    output_array = model.predict(input_array, verbose=0)
    assert output_array.shape == (32, 10, 64)
    assert model.output_shape == (None, 10, 64)


def test_input_length_lets_flatten_dense_build_without_data():
    model = keras.Sequential()
    model.add(Embedding(50, 4, input_length=6))
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(2))
    assert model.built
    assert model.output_shape == (None, 2)
    assert model.layers[-1].kernel.shape == (24, 2)
    model.compile("sgd", "mse")
    history = model.fit(
        np.random.randint(50, size=(8, 6)), np.zeros((8, 2)), epochs=1, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])


def test_input_length_tuple_nd():
    model = keras.Sequential()
    model.add(Embedding(20, 4, input_length=(3, 5)))
    assert model.output_shape == (None, 3, 5, 4)
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(1))
    assert model.output_shape == (None, 1)
    out = model.predict(np.random.randint(20, size=(2, 3, 5)), verbose=0)
    assert out.shape == (2, 1)


def test_input_length_with_none_entry():
    model = keras.Sequential([Embedding(20, 4, input_length=(None, 5))])
    assert model.output_shape == (None, None, 5, 4)
    assert model.predict(np.zeros((2, 7, 5), "int32"), verbose=0).shape == (2, 7, 5, 4)


def test_wrong_length_names_both_lengths():
    layer = Embedding(10, 3, input_length=5)
    with pytest.raises(ValueError) as info:
        layer(np.zeros((2, 7), "int32"))
    message = str(info.value)
    assert "expects ids of length 5" in message
    assert "ids of length 7" in message


def test_wrong_length_in_a_model():
    model = keras.Sequential([Embedding(10, 3, input_length=5)])
    with pytest.raises(ValueError, match="ids of length 7"):
        model.predict(np.zeros((2, 7), "int32"), verbose=0)


def test_wrong_nd_length_names_both_shapes():
    layer = Embedding(10, 3, input_length=(2, 3))
    with pytest.raises(ValueError) as info:
        layer(np.zeros((1, 2, 4), "int32"))
    assert "(2, 3)" in str(info.value) and "(2, 4)" in str(info.value)
    with pytest.raises(ValueError, match=re.escape("(2, 3)")):
        layer(np.zeros((1, 6), "int32"))


def test_wrong_length_symbolic():
    with pytest.raises(ValueError, match="ids of length 6"):
        Embedding(10, 3, input_length=5)(keras.Input((6,), dtype="int32"))


def test_symbolic_call():
    inputs = keras.Input((7,), dtype="int32")
    outputs = Embedding(10, 3, dtype="float16")(inputs)
    assert tuple(outputs.shape) == (None, 7, 3)
    assert outputs.dtype == "float16"


def test_symbolic_bool_ids_rejected():
    with pytest.raises(ValueError, match="Received ids of dtype bool"):
        Embedding(10, 3)(keras.Input((7,), dtype="bool"))


# --- id dtypes --------------------------------------------------------------

INT_DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64"]
FLOAT_DTYPES = ["float16", "bfloat16", "float32", "float64"]


def _ids(dtype):
    ids = np.array([[0, 9, 4], [7, 7, 1]])
    if dtype == "int64" and BACKEND == "jax":
        return ids  # JAX without x64 holds int32; NumPy int64 is the int64 case.
    if dtype == "float64" and BACKEND == "jax":
        return ids.astype("float64")
    return ops.cast(ids, dtype)


@pytest.mark.parametrize("dtype", INT_DTYPES + FLOAT_DTYPES)
def test_id_dtypes_eager(dtype):
    layer = make_layer()
    out = to_np(layer(_ids(dtype)))
    np.testing.assert_array_equal(out, TABLE[[[0, 9, 4], [7, 7, 1]]])


# Each dtype is one more (slow) torch.compile: the dtypes with their own paths.
@pytest.mark.parametrize("dtype", ["uint8", "int16", "int64", "float16", "float64"])
def test_id_dtypes_compiled(dtype):
    layer = make_layer()
    layer.build()
    out = to_np(compiled(lambda x: layer(x))(_ids(dtype)))
    np.testing.assert_array_equal(out, TABLE[[[0, 9, 4], [7, 7, 1]]])


def test_numpy_id_dtypes():
    layer = make_layer()
    for dtype in ("int8", "uint8", "int16", "int32", "int64", "uint32", "float32"):
        ids = np.array([3, 0, 9], dtype=dtype)
        np.testing.assert_array_equal(to_np(layer(ids)), TABLE[[3, 0, 9]])


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_ids_are_never_cast_to_float(mode):
    # 2**24 + 1 is the first integer float32 cannot hold: a float32 round trip
    # would read row 2**24 instead.
    n = 2**24 + 2
    layer = Embedding(n, 1, embeddings_initializer="zeros")
    layer.build()
    table = np.zeros((n, 1), "float32")
    table[2**24 + 1] = 1.0
    layer.embeddings.assign(table)
    del table
    ids = np.array([2**24 + 1, 2**24, 2**24 - 1], dtype="int32")
    fn = layer if mode == "eager" else compiled(lambda x: layer(x))
    out = to_np(fn(ops.convert_to_tensor(ids)))
    np.testing.assert_array_equal(out[:, 0], [1.0, 0.0, 0.0])


# --- index policy: eager -------------------------------------------------------


def _message(bad, position, count, total):
    return (
        f"Invalid embedding id {bad} at position {position} of the ids: valid ids "
        f"are the integers 0 to 9 (input_dim=10). {count} of {total} ids are invalid."
    )


@pytest.mark.parametrize(
    "ids, text",
    [
        ([[1, 10], [2, 3]], _message("10", (0, 1), 1, 4)),
        ([[1, 2], [-1, 3]], _message("-1", (1, 0), 1, 4)),
        ([[1, 2], [-1, 300]], _message("-1", (1, 0), 2, 4)),
        ([5, 2**31 - 1], _message(str(2**31 - 1), (1,), 1, 2)),
    ],
    ids=["too-large", "negative", "two-bad", "int32-max"],
)
def test_invalid_int_id_eager_raises(ids, text):
    layer = make_layer()
    with pytest.raises(ValueError, match=re.escape(text)):
        layer(np.array(ids, dtype="int32"))


@pytest.mark.parametrize(
    "value, shown",
    [(1.5, "1.5"), (np.nan, "nan"), (np.inf, "inf"), (-0.5, "-0.5"), (10.0, "10.0")],
    ids=["fraction", "nan", "inf", "negative-fraction", "too-large"],
)
def test_invalid_float_id_eager_raises(value, shown):
    layer = make_layer()
    ids = np.array([[2.0, 3.0, value]], dtype="float32")
    with pytest.raises(ValueError, match=re.escape(_message(shown, (0, 2), 1, 3))):
        layer(ids)


def test_invalid_id_eager_raises_for_backend_tensors():
    layer = make_layer()
    with pytest.raises(ValueError, match=re.escape(_message("12", (0,), 1, 1))):
        layer(ops.convert_to_tensor(np.array([12], "int32")))


@pytest.mark.skipif(
    BACKEND != "torch", reason="Keras's default predict is eager only on torch"
)
def test_invalid_id_raises_in_torch_predict():
    model = keras.Sequential([keras.Input((3,), dtype="int32"), make_layer()])
    with pytest.raises(ValueError, match=re.escape(_message("10", (0, 2), 1, 6))):
        model.predict(np.array([[1, 2, 10], [0, 0, 0]]), verbose=0)


@pytest.mark.skipif(
    BACKEND != "torch", reason="Keras's default fit is eager only on torch"
)
def test_invalid_id_raises_in_torch_fit():
    model = keras.Sequential([keras.Input((3,), dtype="int32"), make_layer()])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="Invalid embedding id -1"):
        model.fit(np.array([[1, -1, 2]]), np.zeros((1, 3, 3)), verbose=0)


def test_invalid_id_raises_in_eager_predict_on_every_backend():
    model = keras.Sequential([keras.Input((3,), dtype="int32"), make_layer()])
    model.compile(run_eagerly=True)
    with pytest.raises(ValueError, match=re.escape(_message("-3", (1, 0), 1, 6))):
        model.predict(np.array([[1, 2, 3], [-3, 0, 0]]), verbose=0)


# --- index policy: compiled ----------------------------------------------------

BAD_INTS = np.array([[1, 10, -1, 9], [-7, 0, 2**31 - 1, 3]], dtype="int32")
BAD_FLOATS = np.array(
    [[1.0, 1.5, np.nan, 9.0], [-1.0, 0.0, np.inf, 3.0]], dtype="float32"
)


def _expected(ids):
    ids = np.asarray(ids)
    valid = (ids >= 0) & (ids < 10) & (np.floor(ids) == ids)
    safe = np.where(valid, ids, 0).astype("int64")
    return np.where(valid[..., None], TABLE[safe], 0.0)


@pytest.mark.parametrize("ids", [BAD_INTS, BAD_FLOATS], ids=["int", "float"])
def test_invalid_ids_compiled_give_zero_rows(ids):
    layer = make_layer()
    layer.build()
    out = to_np(compiled(lambda x: layer(x))(ops.convert_to_tensor(ids)))
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out, _expected(ids))


def test_all_valid_ids_compiled_are_exact():
    layer = make_layer()
    layer.build()
    ids = np.array([[0, 1, 2], [9, 8, 7]], "int32")
    out = to_np(compiled(lambda x: layer(x))(ops.convert_to_tensor(ids)))
    np.testing.assert_array_equal(out, TABLE[ids])


@pytest.mark.skipif(
    BACKEND == "torch", reason="Keras's predict on torch is eager (it raises)"
)
@pytest.mark.parametrize("ids", [BAD_INTS, BAD_FLOATS], ids=["int", "float"])
def test_invalid_ids_in_compiled_predict_give_zero_rows(ids):
    model = keras.Sequential([keras.Input((4,), dtype=str(ids.dtype)), make_layer()])
    out = model.predict(ids, verbose=0)
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out, _expected(ids))


@pytest.mark.skipif(
    BACKEND == "torch", reason="Keras's fit on torch is eager (it raises)"
)
def test_invalid_ids_in_compiled_fit_leave_table_finite():
    layer = make_layer()
    model = keras.Sequential([keras.Input((4,), dtype="int32"), layer])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    # The invalid ids are counted, with one warning per epoch.
    with pytest.warns(UserWarning, match="met 4 invalid embedding ids"):
        model.fit(BAD_INTS, np.ones((2, 4, 3)), epochs=2, verbose=0)
    table = to_np(layer.embeddings)
    assert np.isfinite(table).all()
    # Rows that no valid id touched keep their values.
    untouched = sorted(set(range(10)) - {0, 1, 2, 3, 9})
    np.testing.assert_array_equal(table[untouched], TABLE[untouched])


@pytest.mark.parametrize(
    "ids", [np.int64(3), np.array(3), np.zeros((2, 0), "int32")], ids=str
)
def test_scalar_and_empty_ids_like_keras(ids):
    ours = make_layer()
    theirs = keras.layers.Embedding(10, 3)
    theirs.build()
    theirs.embeddings.assign(TABLE)
    np.testing.assert_array_equal(to_np(ours(ids)), to_np(theirs(ids)))
    assert to_np(ours(ids)).shape == (*np.shape(ids), 3)


NARROW = [
    ("uint8", 1000, [240, 255, 0], []),
    ("uint8", 200, [199, 200, 255], [1, 2]),
    ("int8", 1000, [127, 5, -1], [2]),
    ("int16", 100_000, [32767, -5, 0], [1]),
    ("uint16", 100_000, [65535, 7], []),
    ("bfloat16", 257, [256, 255, -1], [2]),
    ("float16", 70_000, [65504, 2048, 0.5], [2]),
    # torch compares uint16 / uint32 in few ops ("lt_cpu" not implemented).
    ("uint16", 1000, [65535, 999, 0], [0]),
    ("uint32", 100, [2**31 + 2**20, 99, 100], [0, 2]),
]


@pytest.mark.parametrize(
    "dtype, input_dim, ids, invalid",
    NARROW,
    ids=[f"{d}-into-{n}" for d, n, _, _ in NARROW],
)
@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_narrow_id_dtypes_near_the_bounds(mode, dtype, input_dim, ids, invalid):
    """Bounds are not wrapped into the ids' dtype (`uint8(1000)` is 232)."""
    table = np.arange(1, input_dim + 1, dtype="float32")[:, None]
    layer = Embedding(input_dim, 1, weights=table)
    tensor = ops.cast(np.array(ids, dtype="float32"), dtype)
    expected = [0.0 if i in invalid else v + 1.0 for i, v in enumerate(ids)]
    if mode == "compiled":
        out = to_np(compiled(lambda x: layer(x))(tensor))
        np.testing.assert_array_equal(out[:, 0], expected)
    elif invalid:
        with pytest.raises(ValueError, match="Invalid embedding id"):
            layer(tensor)
    else:
        np.testing.assert_array_equal(to_np(layer(tensor))[:, 0], expected)


@pytest.mark.parametrize("policy", ["float16", "mixed_float16", "mixed_bfloat16"])
def test_float_ids_are_not_autocast_to_the_compute_dtype(policy):
    # float16 cannot hold 2049 (nor bfloat16 257): a cast would read another row.
    table = np.zeros((3000, 1), "float32")
    table[[257, 2049]] = 1.0
    layer = Embedding(3000, 1, weights=table, dtype=policy)
    ids = np.array([2049.0, 257.0, 2048.0, 256.0], "float32")
    out = to_np(ops.cast(layer(ids), "float32"))[:, 0]
    np.testing.assert_array_equal(out, [1.0, 1.0, 0.0, 0.0])


# --- index policy: 64-bit ids, checked on their true values --------------------

# Whether the backend holds int64 ids in 32 bits (JAX without x64).
NARROWS_64_BIT = (
    keras.backend.standardize_dtype(ops.convert_to_tensor(np.zeros(1, "int64")).dtype)
    != "int64"
)

WIDE = [
    ("int64", -(2**63), str(-(2**63))),
    ("int64", 2**32, "4294967296"),
    ("int64", 2**32 + 3, "4294967299"),
    ("int64", 2**63 - 1, "9223372036854775807"),
    ("uint64", 2**63, "9223372036854775808"),
    ("float64", 9.0000001, "9.0000001"),
]
WIDE_IDS = [f"{dtype}-{shown}" for dtype, _, shown in WIDE]


def _wide(dtype, value):
    ids = np.array([[5, 0], [7, 1]], dtype=dtype)
    ids[1, 0] = value
    return ids


@pytest.mark.parametrize("dtype, value, shown", WIDE, ids=WIDE_IDS)
@pytest.mark.parametrize("cls", [Embedding, EmbeddingBag, ReversibleEmbedding])
def test_64_bit_numpy_ids_are_checked_on_their_true_values(cls, dtype, value, shown):
    # JAX without x64 would read 2**32 + 3 as 3, 2**63 - 1 as -1 and 9.0000001
    # as 9.0: the check runs on the NumPy ids, before any conversion.
    layer = cls(10, 3, weights=TABLE)
    with pytest.raises(ValueError) as info:
        layer(_wide(dtype, value))
    message = str(info.value)
    assert f"Invalid embedding id {shown} at position (1, 0) of the ids" in message
    assert "1 of 4 ids are invalid" in message
    assert ("x64" in message) == NARROWS_64_BIT
    if NARROWS_64_BIT:
        assert 'jax.config.update("jax_enable_x64", True)' in message
        assert "JAX_ENABLE_X64=1" in message


def test_numpy_ids_as_the_inputs_keyword():
    layer = make_layer()
    with pytest.raises(ValueError, match="Invalid embedding id 4294967299 at"):
        layer(inputs=np.array([1, 2**32 + 3], "int64"))
    out = to_np(layer(inputs=np.array([1, 9], "uint64")))
    np.testing.assert_array_equal(out, TABLE[[1, 9]])


def test_64_bit_numpy_ids_in_bags_of_values_and_offsets():
    bag = EmbeddingBag(10, 3, weights=TABLE, combiner="sum")
    values = np.array([1, 2, 2**32 + 3], "int64")
    with pytest.raises(ValueError, match="Invalid embedding id 4294967299 at"):
        bag((values, np.array([0, 2], "int64")))
    # Offsets are not ids: past `input_dim` is fine.
    values = np.array([1, 2, 3] * 5, "uint64")
    out = to_np(bag((values, np.array([0, 12], "int64"))))
    np.testing.assert_array_equal(
        out, [TABLE[[1, 2, 3] * 4].sum(0), TABLE[[1, 2, 3]].sum(0)]
    )


@pytest.mark.parametrize("dtype", ["uint64", "int64", "float64"])
def test_valid_64_bit_numpy_ids_look_up_their_rows(dtype):
    ids = np.array([[0, 9, 4], [7, 7, 1]], dtype=dtype)
    for cls in (Embedding, ReversibleEmbedding):
        out = to_np(cls(10, 3, weights=TABLE)(ids))
        np.testing.assert_array_equal(out, TABLE[ids.astype("int64")])
    bag = EmbeddingBag(10, 3, weights=TABLE, combiner="sum")
    np.testing.assert_array_equal(to_np(bag(ids)), TABLE[ids.astype("int64")].sum(1))


def test_whole_float64_numpy_ids_beyond_float32():
    # float32 cannot hold 2**24 + 1: a float32 round trip (JAX without x64)
    # would read row 2**24.
    n = 2**24 + 2
    table = np.zeros((n, 1), "float32")
    table[2**24 + 1] = 1.0
    layer = Embedding(n, 1, weights=table)
    del table
    ids = np.array([2**24 + 1, 2**24], "float64")
    np.testing.assert_array_equal(to_np(layer(ids))[:, 0], [1.0, 0.0])


@pytest.mark.parametrize("dtype", ["int64", "uint64", "float64"])
def test_64_bit_ids_compiled_give_zero_rows(dtype):
    # Where the backend holds them (JAX: with x64), 64-bit tensors reach the
    # compiled function as they are, and each invalid id looks up zeros.
    values = [value for d, value, _ in WIDE if d == dtype]
    ids = np.array([5, 0, 9, *values, 1], dtype=dtype)
    expected = TABLE[[5, 0, 9, *[0] * len(values), 1]]
    expected[3 : 3 + len(values)] = 0.0
    layer = make_layer()
    layer.build()
    with full_width_ids():
        x = to_tensor(ids)
        assert keras.backend.standardize_dtype(x.dtype) == dtype
        out = to_np(compiled(lambda x: layer(x))(x))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype, value, shown", WIDE, ids=WIDE_IDS)
def test_64_bit_tensor_ids_eager_name_the_id(dtype, value, shown):
    layer = make_layer()
    with full_width_ids():
        with pytest.raises(ValueError) as info:
            layer(to_tensor(_wide(dtype, value)))
    message = str(info.value)
    assert f"Invalid embedding id {shown} at position (1, 0) of the ids" in message
    assert "x64" not in message


def test_valid_uint64_tensor_ids():
    ids = np.array([[0, 9, 4], [7, 7, 1]], "uint64")
    layer = make_layer()
    layer.build()
    with full_width_ids():
        x = to_tensor(ids)
        eager = to_np(layer(x))
        traced = to_np(compiled(lambda x: layer(x))(x))
    np.testing.assert_array_equal(eager, TABLE[ids.astype("int64")])
    np.testing.assert_array_equal(traced, TABLE[ids.astype("int64")])


@pytest.mark.parametrize("dtype, value, shown", WIDE[2:5], ids=WIDE_IDS[2:5])
def test_numpy_ids_inside_a_compiled_function(dtype, value, shown):
    # `tf.function` and `jax.jit` hand NumPy ids inside a traced function to
    # the layer as they are, constants of known values: checked as in an
    # eager call (on JAX without x64, the one place where a compiled call can
    # see a 64-bit id whole). `torch.compile` traces NumPy arrays as tensors
    # of unknown values: an invalid id looks up zeros.
    layer = make_layer()
    layer.build()
    ids = _wide(dtype, value)
    if BACKEND == "torch":
        out = to_np(compiled(lambda: layer(ids))())
        safe = ids.copy()
        safe[1, 0] = 0
        expected = TABLE[safe.astype("int64")]
        expected[1, 0] = 0.0
        np.testing.assert_array_equal(out, expected)
        return
    with pytest.raises(ValueError) as info:
        compiled(lambda: layer(ids))()
    message = str(info.value)
    assert f"Invalid embedding id {shown} at position (1, 0)" in message
    assert ("x64" in message) == NARROWS_64_BIT


def test_valid_ids_the_backend_cannot_hold_are_refused():
    # A table of more than 2**31 rows (not built here) takes ids JAX without
    # x64 cannot hold: refused, not wrapped. Elsewhere they pass, as int64.
    input_dim = 2**32
    ids = np.array([1, 2**31 + 5], "int64")
    if NARROWS_64_BIT:
        with pytest.raises(ValueError) as info:
            index_policy.check_host_ids(ids, input_dim)
        message = str(info.value)
        assert "Embedding id 2147483653 at position (1,)" in message
        assert "JAX_ENABLE_X64=1" in message
    else:
        checked = index_policy.check_host_ids(ids, input_dim)
        assert checked.dtype == np.int64
        np.testing.assert_array_equal(checked, ids)


# --- index policy: eager checks under concurrency ------------------------------


def _compiling():
    """torch: its process-wide "a compile is running" flag; elsewhere False."""
    if BACKEND != "torch":
        return False
    import torch

    return torch.compiler.is_compiling()


def test_eager_checks_hold_while_another_thread_compiles():
    # torch's `is_compiling()` is one flag for the whole process: read to tell
    # eager from compiled calls, it switched off the eager checks of every
    # thread while one thread ran `torch.compile`.
    layer = make_layer()
    layer.build()
    good = ops.convert_to_tensor(np.array([[1, 2]], "int32"))
    bad = ops.convert_to_tensor(np.array([[1, 10]], "int32"))
    stop, failures = threading.Event(), []

    def compile_loop():
        try:
            while not stop.is_set():
                # `compiled` forgets earlier traces: each is a full compile.
                compiled(lambda x: layer(x) * 2.0)(good)
        except Exception as error:  # pragma: no cover - reported below
            failures.append(error)

    compiled(lambda x: layer(x) * 2.0)(good)  # the compiler's first-use setup
    thread = threading.Thread(target=compile_loop)
    thread.start()
    calls = raised = during_compiles = 0
    start = time.monotonic()

    def running():
        elapsed = time.monotonic() - start
        # torch: on until some calls ran during a compile (else this test could
        # not fail), up to 3 s.
        overlap_due = BACKEND == "torch" and not during_compiles and elapsed < 3.0
        return elapsed < 1.0 or overlap_due

    try:
        while running():
            compiling = _compiling()
            try:
                layer(bad)
            except ValueError as error:
                assert "Invalid embedding id 10 at position (0, 1)" in str(error)
                raised += 1
            calls += 1
            during_compiles += compiling or _compiling()
            time.sleep(0)  # lets the compiling thread run
    finally:
        stop.set()
        thread.join()
    assert not failures, failures
    assert raised == calls, f"{calls - raised} of {calls} eager calls returned rows"
    if BACKEND == "torch":
        # Else this test could not fail: some calls ran during a compile.
        assert during_compiles > 0
