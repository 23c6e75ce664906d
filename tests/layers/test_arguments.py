"""`Embedding`'s constructor: argument checks, Keras 1 aliases, `weights`, `build()`."""

import re
import time

import keras
import numpy as np
import pytest
from keras import ops

import keras_embedding_plus as kep
from keras_embedding_plus import Embedding
from keras_embedding_plus.saving import limits

# Depends on the installed Keras (tox env keras-min runs it with the oldest).
pytestmark = pytest.mark.keras_version


def to_np(x):
    return ops.convert_to_numpy(x)


# --- input_dim / output_dim -------------------------------------------------


@pytest.mark.parametrize(
    "value, shown",
    [
        (0, "input_dim=0 (of type int)"),
        (-3, "input_dim=-3 (of type int)"),
        (3.0, "input_dim=3.0 (of type float)"),
        (3.7, "input_dim=3.7 (of type float)"),
        (True, "input_dim=True (of type bool)"),
        ("10", "input_dim='10' (of type str)"),
        (None, "input_dim=None (of type NoneType)"),
        (np.float32(4), "(of type float32)"),
    ],
    ids=["zero", "negative", "float-whole", "float", "bool", "str", "none", "np-float"],
)
def test_input_dim_invalid(value, shown):
    with pytest.raises(ValueError, match=re.escape(shown)) as info:
        Embedding(value, 4)
    assert "`input_dim` must be a positive integer. Received: " in str(info.value)


@pytest.mark.parametrize(
    "value, shown",
    [
        (-1, "output_dim=-1 (of type int)"),
        (2.0, "output_dim=2.0 (of type float)"),
        (False, "output_dim=False (of type bool)"),
        ("4", "output_dim='4' (of type str)"),
    ],
    ids=["negative", "float", "bool", "str"],
)
def test_output_dim_invalid(value, shown):
    with pytest.raises(ValueError, match=re.escape(shown)) as info:
        Embedding(10, value)
    assert "`output_dim` must be a positive integer (or 0" in str(info.value)


@pytest.mark.parametrize(
    "dtype", [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64]
)
def test_numpy_integer_dims(dtype):
    layer = Embedding(dtype(7), dtype(3))
    assert (layer.input_dim, layer.output_dim) == (7, 3)
    assert type(layer.input_dim) is int and type(layer.output_dim) is int
    assert to_np(layer(np.array([[0, 6]]))).shape == (1, 2, 3)
    # The config stays JSON-friendly.
    config = layer.get_config()
    assert type(config["input_dim"]) is int and type(config["output_dim"]) is int


def test_output_dim_zero_gives_empty_last_axis():
    layer = Embedding(5, 0)
    out = layer(np.array([[1, 2, 3], [4, 0, 1]]))
    assert to_np(out).shape == (2, 3, 0)
    assert tuple(layer.embeddings.shape) == (5, 0)
    assert layer.compute_output_shape((None, 3)) == (None, 3, 0)


def test_input_dim_one_is_allowed():
    layer = Embedding(1, 2, embeddings_initializer="ones")
    np.testing.assert_array_equal(to_np(layer(np.array([[0, 0]]))), np.ones((1, 2, 2)))


# --- other arguments ----------------------------------------------------------


@pytest.mark.parametrize(
    "value", [1, 0, "yes", None, 1.0], ids=["int1", "int0", "str", "none", "float"]
)
def test_mask_zero_invalid(value):
    with pytest.raises(ValueError, match=re.escape(f"mask_zero={value!r}")) as info:
        Embedding(10, 4, mask_zero=value)
    assert "`mask_zero` must be a boolean. Received: " in str(info.value)


def test_mask_zero_numpy_bool():
    assert Embedding(10, 4, mask_zero=np.bool_(True)).mask_zero is True


@pytest.mark.parametrize(
    "value",
    [-0.1, 1.0, 1.5, "0.5", True, None, float("nan")],
    ids=["negative", "one", "above-one", "str", "bool", "none", "nan"],
)
def test_dropout_invalid(value):
    with pytest.raises(ValueError, match=re.escape(f"dropout={value!r}")) as info:
        Embedding(10, 4, dropout=value)
    assert "`dropout` must be a float in [0, 1). Received: " in str(info.value)


@pytest.mark.parametrize("value", [0, 0.0, 0.5, np.float32(0.25), 0.999])
def test_dropout_valid(value):
    layer = Embedding(10, 4, dropout=value)
    assert layer.dropout == pytest.approx(float(value))
    assert type(layer.dropout) is float


@pytest.mark.parametrize(
    "value",
    [0, -2, 2.5, "10", True, (3, 0), (3, 2.0), [True]],
    ids=[
        "zero",
        "negative",
        "float",
        "str",
        "bool",
        "tuple-zero",
        "tuple-float",
        "list-bool",
    ],
)
def test_input_length_invalid(value):
    with pytest.raises(ValueError, match=re.escape(f"input_length={value!r}")) as info:
        Embedding(10, 4, input_length=value)
    assert "`input_length` must be None, a positive integer" in str(info.value)
    assert f"(of type {type(value).__name__})." in str(info.value)


@pytest.mark.parametrize(
    "value, stored",
    [
        (None, None),
        (5, 5),
        (np.int64(5), 5),
        ((3, 4), (3, 4)),
        ([3, None], (3, None)),
        ((None,), (None,)),
        ((), ()),
    ],
    ids=["none", "int", "np-int", "tuple", "list-none", "tuple-none", "rank-1"],
)
def test_input_length_valid(value, stored):
    layer = Embedding(10, 4, input_length=value)
    assert layer.input_length == stored


def test_unknown_keyword_is_an_error_as_in_keras():
    with pytest.raises(Exception) as ours:
        Embedding(10, 4, foo=1)
    with pytest.raises(Exception) as theirs:
        keras.layers.Embedding(10, 4, foo=1)
    assert type(ours.value) is type(theirs.value)
    assert "foo" in str(ours.value)


def test_base_layer_kwargs_pass_through():
    layer = Embedding(10, 4, name="emb", trainable=False, dtype="float16")
    assert layer.name == "emb"
    assert layer.trainable is False
    assert layer.dtype_policy.name == "float16"


# --- initializer / regularizer / constraint forms ------------------------------


@pytest.mark.parametrize(
    "initializer",
    [
        "ones",
        {"class_name": "Constant", "config": {"value": 1.0}},
        keras.initializers.Ones(),
        lambda shape, dtype=None: ops.ones(shape, dtype=dtype),
    ],
    ids=["name", "config", "instance", "callable"],
)
def test_initializer_forms(initializer):
    layer = Embedding(6, 3, embeddings_initializer=initializer)
    layer.build()
    np.testing.assert_array_equal(to_np(layer.embeddings), np.ones((6, 3)))


def _weights_sq_sum(layer):
    return float(np.sum(np.square(to_np(layer.embeddings))))


@pytest.mark.parametrize(
    "regularizer, factor",
    [
        ("l2", 0.01),
        ({"class_name": "L2", "config": {"l2": 0.5}}, 0.5),
        (keras.regularizers.L2(0.25), 0.25),
        (lambda w: 0.125 * ops.sum(ops.square(w)), 0.125),
    ],
    ids=["name", "config", "instance", "callable"],
)
def test_regularizer_forms(regularizer, factor):
    layer = Embedding(6, 3, embeddings_regularizer=regularizer)
    layer.build()
    assert len(layer.losses) == 1
    np.testing.assert_allclose(
        float(to_np(layer.losses[0])), factor * _weights_sq_sum(layer), rtol=1e-5
    )


@pytest.mark.parametrize(
    "constraint",
    [
        "non_neg",
        {"class_name": "NonNeg", "config": {}},
        keras.constraints.NonNeg(),
        lambda w: ops.maximum(w, 0.0),
    ],
    ids=["name", "config", "instance", "callable"],
)
def test_constraint_forms(constraint):
    layer = Embedding(6, 3, embeddings_constraint=constraint)
    layer.build()
    assert layer.embeddings.constraint is not None
    w = to_np(layer.embeddings.constraint(ops.convert_to_tensor(-np.ones((6, 3)))))
    np.testing.assert_array_equal(w, np.zeros((6, 3)))


@pytest.mark.parametrize(
    "argument",
    [
        "embeddings_initializer",
        "embeddings_regularizer",
        "activity_regularizer",
        "embeddings_constraint",
    ],
)
@pytest.mark.parametrize("value", ["not_a_known_name", 3], ids=["name", "int"])
def test_invalid_initializer_regularizer_constraint(argument, value):
    with pytest.raises(ValueError, match=f"Could not interpret .*{value}"):
        Embedding(6, 3, **{argument: value})


# --- Keras 1 aliases ------------------------------------------------------------


def test_keras1_init_alias_warns_and_applies():
    with pytest.warns(DeprecationWarning, match="`embeddings_initializer`"):
        layer = Embedding(6, 3, init="ones")
    assert isinstance(layer.embeddings_initializer, keras.initializers.Ones)
    layer.build()
    np.testing.assert_array_equal(to_np(layer.embeddings), np.ones((6, 3)))


def test_keras1_w_regularizer_alias_warns_and_applies():
    with pytest.warns(DeprecationWarning, match="`embeddings_regularizer`"):
        layer = Embedding(6, 3, W_regularizer=keras.regularizers.L2(0.5))
    layer.build()
    assert len(layer.losses) == 1
    np.testing.assert_allclose(
        float(to_np(layer.losses[0])), 0.5 * _weights_sq_sum(layer), rtol=1e-5
    )


def test_keras1_w_constraint_alias_warns_and_applies():
    with pytest.warns(DeprecationWarning, match="`embeddings_constraint`"):
        layer = Embedding(6, 3, W_constraint="non_neg")
    assert isinstance(layer.embeddings_constraint, keras.constraints.NonNeg)


def test_keras1_all_aliases_together():
    with pytest.warns(DeprecationWarning) as record:
        layer = Embedding(
            6,
            3,
            init="zero",
            W_regularizer={"name": "WeightRegularizer", "l1": 0.0, "l2": 0.01},
            W_constraint={"name": "MaxNorm", "m": 2, "axis": 1},
        )
    assert len(record) == 3
    assert isinstance(layer.embeddings_initializer, keras.initializers.Zeros)
    assert layer.embeddings_regularizer.get_config()["l2"] == pytest.approx(0.01)
    assert layer.embeddings_constraint.get_config() == {"max_value": 2, "axis": 1}


@pytest.mark.parametrize(
    "old, new, value",
    [
        ("init", "embeddings_initializer", "zeros"),
        ("W_regularizer", "embeddings_regularizer", "l2"),
        ("W_constraint", "embeddings_constraint", "non_neg"),
    ],
)
def test_keras1_alias_and_new_name_together_is_an_error(old, new, value):
    with pytest.raises(ValueError, match=re.escape(f"`{old}`")) as info:
        Embedding(6, 3, **{old: value, new: value})
    assert f"`{new}`" in str(info.value)
    assert f"Received: {old}=" in str(info.value)


# --- weights ------------------------------------------------------------------


def test_weights_array():
    table = np.arange(12, dtype="float32").reshape(4, 3)
    layer = Embedding(4, 3, weights=table)
    np.testing.assert_array_equal(to_np(layer.embeddings), table)
    np.testing.assert_array_equal(to_np(layer(np.array([[3, 1]]))), table[[[3, 1]]])


def test_weights_one_element_list_keras1_form():
    table = np.arange(12, dtype="float32").reshape(4, 3)
    layer = Embedding(4, 3, weights=[table])
    np.testing.assert_array_equal(to_np(layer.embeddings), table)


def test_weights_in_a_model_survive_build():
    table = np.arange(12, dtype="float32").reshape(4, 3)
    model = keras.Sequential(
        [keras.Input((2,), dtype="int32"), Embedding(4, 3, weights=table)]
    )
    np.testing.assert_array_equal(
        model.predict(np.array([[2, 0]]), verbose=0)[0], table[[2, 0]]
    )


@pytest.mark.parametrize(
    "weights", [np.zeros((3, 3)), [np.zeros((4, 2))], np.zeros(12)], ids=str
)
def test_weights_wrong_shape(weights):
    shape = np.asarray(weights[0] if isinstance(weights, list) else weights).shape
    with pytest.raises(ValueError) as info:
        Embedding(4, 3, weights=weights)
    message = str(info.value)
    assert "(4, 3)" in message and str(shape) in message
    assert "`weights`" in message and "Received: " in message


def test_weights_follow_the_variable_dtype():
    layer = Embedding(4, 3, weights=np.ones((4, 3), "float64"), dtype="float16")
    assert keras.backend.standardize_dtype(layer.embeddings.dtype) == "float16"


# --- build / embeddings -------------------------------------------------------


def test_build_without_argument():
    layer = Embedding(8, 5)
    layer.build()
    assert layer.built
    assert tuple(layer.embeddings.shape) == (8, 5)
    assert len(layer.weights) == 1 and len(layer.trainable_weights) == 1
    layer.build((None, 3))  # building again is a no-op
    assert len(layer.weights) == 1


def test_embeddings_unbuilt_is_a_clear_attribute_error():
    layer = Embedding(8, 5)
    with pytest.raises(AttributeError, match="You must build the layer before"):
        layer.embeddings  # noqa: B018
    # `hasattr` therefore answers False rather than crashing.
    assert not hasattr(layer, "embeddings")


def test_embeddings_is_read_only():
    layer = Embedding(8, 5)
    layer.build()
    with pytest.raises(AttributeError):
        layer.embeddings = np.zeros((8, 5))


def test_embeddings_variable_path_matches_keras():
    ours = Embedding(8, 5, name="emb")
    theirs = keras.layers.Embedding(8, 5, name="emb")
    ours.build()
    theirs.build()
    assert ours.embeddings.path == theirs.embeddings.path


# ---- PyTorch's names get a hint --------------------------------------------------


@pytest.mark.parametrize(
    "cls,kwargs,ours",
    [
        (Embedding, {"num_embeddings": 10, "embedding_dim": 4}, "input_dim"),
        (Embedding, {"input_dim": 10, "embedding_dim": 4}, "output_dim"),
        (kep.EmbeddingBag, {"num_embeddings": 10, "embedding_dim": 4}, "input_dim"),
        (
            kep.EmbeddingBag,
            {"input_dim": 10, "output_dim": 4, "mode": "sum"},
            "combiner",
        ),
        (Embedding, {"input_dim": 10, "output_dim": 4, "mode": "sum"}, "EmbeddingBag"),
    ],
    ids=["embedding", "embedding_dim", "bag", "mode", "mode-on-embedding"],
)
def test_torch_constructor_names_name_our_equivalent(cls, kwargs, ours):
    torch_name = next(k for k in kwargs if k not in ("input_dim", "output_dim"))
    with pytest.raises(ValueError, match=rf"`{torch_name}` is PyTorch's .*{ours}"):
        cls(**kwargs)


def test_torch_call_names_name_our_equivalent():
    bag = kep.EmbeddingBag(10, 4, combiner="sum")
    ids = np.array([1, 2, 3, 4, 5], "int32")
    offsets = np.array([0, 2], "int32")
    with pytest.raises(
        ValueError, match=r"`per_sample_weights` is PyTorch's .*weights="
    ):
        bag((ids, offsets), per_sample_weights=np.ones(5, "float32"))
    with pytest.raises(ValueError, match=r"bag\(\(ids, offsets\)\)"):
        bag(ids, offsets)  # torch's call style: the offsets land on `weights`.
    with pytest.raises(ValueError, match=r"bag\(\(ids, offsets\)\)"):
        bag(ids, offsets=offsets)
    # The Keras-style calls they point to work, and equal a NumPy pooling.
    out = keras.ops.convert_to_numpy(bag((ids, offsets)))
    table = keras.ops.convert_to_numpy(bag.embeddings)
    np.testing.assert_allclose(
        out, [table[[1, 2]].sum(0), table[[3, 4, 5]].sum(0)], rtol=1e-6
    )


# --- a table larger than the machine -------------------------------------------


needs_memory_size = pytest.mark.skipif(
    limits.physical_memory() is None,
    reason="this platform has no os.sysconf('SC_PHYS_PAGES'): memory unknown",
)


@needs_memory_size
@pytest.mark.parametrize(
    "dims, dtype",
    [
        ((10**12, 8), "float32"),
        ((8, 10**12), "float32"),
        ((10**12, 8), "int4_from_float32"),
        ((10**12, 8), "mixed_bfloat16"),
    ],
    ids=["input_dim", "output_dim", "int4", "mixed"],
)
def test_build_refuses_a_table_larger_than_memory(dims, dtype):
    # A ValueError naming both dims, before the backend's allocator is asked
    # (JaxRuntimeError, ResourceExhaustedError after 10 s, RuntimeError).
    layer = Embedding(*dims, dtype=dtype)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="more than this machine's memory") as info:
        layer.build()
    assert f"input_dim={dims[0]}, output_dim={dims[1]}" in str(info.value)
    assert time.perf_counter() - start < 1.0
    assert not layer.built


@pytest.mark.parametrize(
    "dtype", ["float32", "float16", "mixed_bfloat16", "bfloat16", "int8_from_float32"]
)
def test_table_bytes_are_what_the_built_variables_take(dtype):
    # The size `check_table` compares with the memory is the built table's.
    layer = Embedding(6, 4, dtype=dtype)
    layer.build()
    policy = keras.dtype_policies.get(dtype)
    nbytes = to_np(layer.weights[0]).nbytes  # The stored table.
    assert 6 * 4 * limits.bytes_per_element(policy) == nbytes


def test_table_bytes_int4_are_half_a_byte():
    # int4: two values per stored byte (`keras.quantizers.pack_int4`).
    layer = Embedding(6, 4)
    layer.build()
    layer.quantize("int4")
    nbytes = to_np(layer.weights[0]).nbytes  # The stored, packed table.
    assert 6 * 4 * limits.bytes_per_element(layer.dtype_policy) == nbytes


def test_build_checks_against_the_machine_memory(monkeypatch):
    # The bound is the machine's memory (made small here); under a
    # `keras.distribution` (a table sharded over machines) it is not checked.
    monkeypatch.setattr(limits, "physical_memory", lambda: 6 * 4 * 4 - 1)
    with pytest.raises(ValueError, match="it could never be allocated"):
        Embedding(6, 4).build()
    Embedding(6, 4, dtype="float16").build()  # 48 bytes: fits
    monkeypatch.setattr(keras.distribution, "distribution", lambda: object())
    Embedding(6, 4).build()
