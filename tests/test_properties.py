"""Property-based tests: drawn configurations, ids and call modes,
each checked against a NumPy reference of the layer.

Hypothesis draws a layer configuration (`sparse`, `device`, `lora_rank`,
`max_norm`, `dropout`, `quantize("int8")`, `mask_zero`, the dtype policies), ids
(integer and float dtypes, ranks 1 to 4, empty batches, and a share of bad ids:
too large, negative, fractional, NaN; for the lookups also uint64 ids and
64-bit ids past 32 bits, given as NumPy or as tensors; ragged on TensorFlow; for
`EmbeddingBag` also `(values, offsets)` and sparse: `tf.SparseTensor`, JAX
`BCOO`, torch COO) and the call mode (eager, compiled). Each
case checks outputs and masks, the index policy on bad ids, one step's
gradients, and `get_config` / `.keras` round trips. Refused combinations must
raise their `ValueError` where they are set.

Profiles (the root conftest.py): "fast" (30 derandomized cases a test) in
`python -m tox`; "deep" (600 random cases a test) with `HYPOTHESIS_PROFILE=deep`.
Failing examples found are kept below as `@example`s.
"""

import math
import re

import keras
import numpy as np
import pytest

from keras_embedding_plus.testing import (
    compiled,
    forward_and_gradients,
    make_sparse,
    to_numpy,
    to_tensor,
)

hypothesis = pytest.importorskip("hypothesis", reason="needs Hypothesis")
from hypothesis import assume, event, given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from keras_embedding_plus import Embedding, EmbeddingBag  # noqa: E402

# The slowest tests: run them alone with `-m slow`, or skip them with
# `-m "not slow"` (CONTRIBUTING.md).
pytestmark = pytest.mark.slow

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16", "bfloat16", "float16")
ID_DTYPES = ("int32", "int64", "int16", "uint8", "float32", "float64")
# 64-bit ids past 32 bits (JAX without x64 holds them in 32 bits, where
# 2**32 + 3 is 3) and uint64 ids (Keras's PyTorch converter refuses them).
WIDE_BAD = {
    "int64": [2**32 + 1, -(2**63), 2**63 - 1],
    "uint64": [2**32, 2**63, 2**64 - 1],
    "float64": [1 + 1e-7],  # 1.0 in float32
}
TOLERANCE = {"float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2}


@st.composite
def configurations(draw):
    input_dim = draw(st.integers(1, 12))
    return {
        "input_dim": input_dim,
        "output_dim": draw(st.integers(1, 4)),
        "mask_zero": draw(st.booleans()),
        "sparse": draw(st.booleans()),
        "device": draw(st.sampled_from([None, "cpu", "host"])),
        "lora_rank": draw(st.sampled_from([None, 1, 2])),
        "lora_alpha": draw(st.sampled_from([None, 3.0])),
        "max_norm": draw(st.sampled_from([None, 0.5, 1.5])),
        "norm_type": draw(st.sampled_from([2.0, 2.0, 1.0, 3.0, math.inf])),
        "dropout": draw(st.sampled_from([0.0, 0.4])),
        "quantize": draw(st.sampled_from([None, None, "int8"])),
        "dtype": draw(st.sampled_from(POLICIES)),
        "padding_idx": draw(
            st.one_of(st.none(), st.none(), st.integers(-input_dim, input_dim - 1))
        ),
    }


@st.composite
def id_arrays(draw, input_dim, allow_bad=True, batched=False, wide=False):
    """Ids of a drawn dtype and shape (`batched`: rank >= 2, a non-empty batch;
    `wide`: uint64 ids too, and bad ids past 32 bits)."""
    dtype = draw(st.sampled_from(ID_DTYPES + (("uint64",) if wide else ())))
    rank = draw(st.integers(2 if batched else 1, 4))
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=rank, max_size=rank)))
    if batched:
        shape = (draw(st.integers(1, 3)), *shape[1:])
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids = rng.integers(0, input_dim, shape).astype(dtype)
    if allow_bad and ids.size and draw(st.integers(0, 3)) == 0:
        bad = [input_dim, input_dim + 7]
        if "float" in dtype or np.iinfo(dtype).min < 0:
            bad.append(-1)
        if "float" in dtype:
            bad += [0.5, float("nan")]
        if wide:
            bad += WIDE_BAD.get(dtype, [])
        value = draw(st.sampled_from(bad))
        if dtype == "uint8" and value > 255:
            value = 255 if input_dim <= 255 else value
        position = tuple(int(rng.integers(0, n)) for n in shape)
        ids[position] = value
    return ids


def make_layer(config, cls=Embedding, **extra):
    """The layer of `config` (`cls`, with `extra` arguments), built, or None
    where a `ValueError` refused it (checked to name the options)."""
    kwargs = {
        k: config[k]
        for k in (
            "mask_zero",
            "sparse",
            "device",
            "max_norm",
            "norm_type",
            "dropout",
            "dtype",
            "padding_idx",
            "lora_alpha",
        )
    }
    if config["quantize"] is None:
        kwargs["lora_rank"] = config["lora_rank"]
    try:
        layer = cls(config["input_dim"], config["output_dim"], **kwargs, **extra)
        layer.build()
        if config["quantize"]:
            layer.quantize(config["quantize"])
            if config["lora_rank"]:
                layer.enable_lora(config["lora_rank"], lora_alpha=config["lora_alpha"])
    except ValueError as e:
        message = str(e)
        refused = (
            ("int8" in message and "float16" in message)
            or ("sparse" in message and "device='host'" in message)
            or ("sparse" in message and "mixed" in message)
        )
        assert refused, f"unexpected refusal: {message}"
        return None
    if layer.lora_enabled:  # B = 0 would hide A.
        b = layer.lora_embeddings_b
        b.assign(np.linspace(-0.5, 0.5, math.prod(b.shape)).reshape(b.shape))
    return layer


def _value(variable):
    return np.asarray(
        keras.ops.convert_to_numpy(keras.ops.cast(variable.value, "float32")),
        np.float64,
    )


def reference_params(layer):
    """The layer's parameters as float64 NumPy: the float table (dequantized)
    and LoRA's factors."""
    if layer.quantization_mode == "int8":
        table = _value(layer._embeddings) / _value(layer.embeddings_scale)[:, None]
    else:
        table = _value(layer._embeddings)
    params = {"embeddings": table}
    if layer.lora_enabled:
        params["lora_embeddings_a"] = _value(layer.lora_embeddings_a)
        params["lora_embeddings_b"] = _value(layer.lora_embeddings_b)
    return params


def reference(layer, params, ids):
    """The output of `layer` for valid integer `ids` (float64); rows of invalid
    ids are zero (what compiled calls return)."""
    input_dim = layer.input_dim
    with np.errstate(invalid="ignore"):
        valid = (ids >= 0) & (ids < input_dim) & (np.round(ids) == ids)
    safe = np.where(valid, ids, 0).astype(np.int64)
    rows = params["embeddings"][safe]
    if "lora_embeddings_a" in params:
        scale = (layer.lora_alpha or layer.lora_rank) / layer.lora_rank
        rows = (
            rows
            + scale * params["lora_embeddings_a"][safe] @ params["lora_embeddings_b"]
        )
    if layer.max_norm:
        norm = np.linalg.norm(rows, ord=layer.norm_type, axis=-1, keepdims=True)
        rows = np.where(
            norm > layer.max_norm, rows * layer.max_norm / (norm + 1e-7), rows
        )
    return np.where(valid[..., None], rows, 0.0), valid


def _tolerance(layer):
    compute = keras.backend.standardize_dtype(layer.compute_dtype)
    return TOLERANCE[compute] * (4 if layer.max_norm else 1)


def _ragged(data, ids):
    """On TensorFlow, ids of rank 2 or more are drawn ragged half of the time,
    as rows (the first axis) that each keep a drawn number of their ids. Returns
    `(ids, kept)`: the call's ids and the NumPy ids of its values (row by row),
    or `(None, ids)`."""
    if keras.backend.backend() != "tensorflow" or ids.ndim < 2:
        return None, ids
    if not data.draw(st.booleans(), label="ragged"):
        return None, ids
    import tensorflow as tf

    ids = ids.reshape(len(ids), math.prod(ids.shape[1:]))

    lengths = data.draw(
        st.lists(st.integers(0, ids.shape[1]), min_size=len(ids), max_size=len(ids)),
        label="row lengths",
    )
    ragged = tf.RaggedTensor.from_tensor(ids, lengths=np.array(lengths, "int64"))
    kept = [row[:n] for row, n in zip(ids, lengths, strict=True)]
    return ragged, np.concatenate([np.zeros(0, ids.dtype), *kept])


def _flat(x):
    """A ragged result's values; anything else as it is."""
    return getattr(x, "flat_values", x)


def _held(ids):
    """Whether the backend's tensor of NumPy `ids` holds their values (JAX
    without x64 holds 64-bit ids in 32 bits)."""
    held = keras.ops.convert_to_numpy(to_tensor(ids))
    return held.dtype.itemsize == ids.dtype.itemsize or np.array_equal(
        held.astype(ids.dtype), ids, equal_nan=True
    )


def _as_given(data, ids, mode):
    """`ids` as the call takes them: NumPy (checked by the layer's `__call__`
    on their true values) or a backend tensor, drawn; NumPy where the backend's
    tensor would not hold them. Compiled calls take tensors the backend holds
    (a JAX jit would have converted NumPy ids to 32 bits before the layer)."""
    if mode == "compiled":
        assume(_held(ids))
        return to_tensor(ids)
    if not _held(ids) or data.draw(st.booleans(), label="numpy ids"):
        return ids
    return to_tensor(ids)


def _first_invalid(ids, valid):
    """The message naming the first invalid id of `ids`, as the layer raises."""
    position = tuple(int(i) for i in np.argwhere(~valid)[0])
    return f"Invalid embedding id {ids[position].item()!r} at position {position}"


@given(configurations(), st.data(), st.sampled_from(["eager", "compiled"]))
def test_lookup_matches_numpy(config, data, mode):
    layer = make_layer(config)
    assume(layer is not None)
    ids = data.draw(id_arrays(config["input_dim"], wide=True))
    ragged, ids = _ragged(data, ids)
    event(f"{'ragged' if ragged is not None else 'dense'} {ids.dtype} ids, {mode}")
    note(f"ids {ids.dtype} {ids.shape}: {ids.tolist()}")
    params = reference_params(layer)
    expected, valid = reference(layer, params, ids)
    x = _as_given(data, ids, mode) if ragged is None else ragged
    if mode == "eager" and not valid.all():
        with pytest.raises(ValueError, match=re.escape(_first_invalid(ids, valid))):
            layer(x)
        return
    call = (lambda x: layer(x)) if mode == "eager" else compiled(lambda x: layer(x))
    out = _flat(call(x))
    assert tuple(out.shape) == (*ids.shape, config["output_dim"])
    assert keras.backend.standardize_dtype(out.dtype) == layer.compute_dtype
    tol = _tolerance(layer)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=tol, atol=tol)
    mask = layer.compute_mask(to_tensor(ids) if ragged is None else ragged)
    if config["mask_zero"]:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(_flat(mask)), ids != 0)
    else:
        assert mask is None


def _numeric_gradients(outputs, params, upstream, names):
    """Central differences of `sum(outputs(params) * upstream)`."""
    eps, grads = 1e-6, {}
    for name in names:
        grad = np.zeros_like(params[name])
        for index in np.ndindex(*grad.shape):
            total = []
            for step in (eps, -eps):
                shifted = {k: v.copy() for k, v in params.items()}
                shifted[name][index] += step
                total.append(np.sum(outputs(shifted) * upstream))
            grad[index] = (total[0] - total[1]) / (2 * eps)
        grads[name] = grad
    return grads


@given(configurations(), st.data(), st.sampled_from(["eager", "compiled"]))
def test_gradients_match_numpy(config, data, mode):
    config = {**config, "dtype": "float32", "dropout": 0.0}
    layer = make_layer(config)
    assume(layer is not None and layer.trainable_variables)
    ids = data.draw(id_arrays(config["input_dim"], allow_bad=mode == "compiled"))
    note(f"ids {ids.dtype} {ids.shape}: {ids.tolist()}")
    rng = np.random.default_rng(0)
    upstream = rng.normal(size=(*ids.shape, config["output_dim"])).astype("float32")
    params = reference_params(layer)
    _, grads = forward_and_gradients(
        layer, keras.ops.convert_to_tensor(ids), upstream, False, mode == "compiled"
    )
    # No gradient flows from the positions of `padding_idx` (its row never trains).
    flowing = upstream
    if layer.padding_idx is not None:
        flowing = upstream * (ids != layer.padding_idx)[..., None]
    expected = _numeric_gradients(
        lambda shifted: reference(layer, shifted, ids)[0], params, flowing, list(grads)
    )
    for name, grad in grads.items():
        np.testing.assert_allclose(
            to_numpy(grad), expected[name], rtol=1e-4, atol=1e-4, err_msg=name
        )


@given(config=configurations(), data=st.data())
def test_round_trips_keep_the_outputs(config, data, tmp_path_factory):
    layer = make_layer(config)
    assume(layer is not None)
    ids = data.draw(id_arrays(config["input_dim"], allow_bad=False, batched=True))
    x = keras.ops.convert_to_tensor(ids)
    before = to_numpy(layer(x))
    tol = _tolerance(layer)

    clone = Embedding.from_config(layer.get_config())
    clone.build()
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(clone(x)), before, rtol=tol, atol=tol)

    inputs = keras.Input(ids.shape[1:], dtype=str(ids.dtype))
    model = keras.Model(inputs, layer(inputs))
    path = str(tmp_path_factory.mktemp("properties") / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path).layers[-1]
    out = to_numpy(loaded(x))
    # Saving merges LoRA into a quantized table and quantizes it again (as
    # Keras does): compare with the reference of what was loaded.
    expected, _ = reference(loaded, reference_params(loaded), ids)
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    if not (layer.quantization_mode and layer.lora_enabled):
        np.testing.assert_allclose(out, before, rtol=tol, atol=tol)


# ---- EmbeddingBag: pooled lookups ----------------------------------------------

COMBINERS = ("sum", "mean", "sqrtn", "max")


@st.composite
def bag_configurations(draw):
    """An `Embedding` configuration, plus a combiner and a drawn `padding_idx`."""
    config = draw(configurations())
    config["combiner"] = draw(st.sampled_from(COMBINERS))
    config["padding_idx"] = draw(
        st.one_of(st.none(), st.integers(-config["input_dim"], config["input_dim"] - 1))
    )
    return config


def make_bag(config):
    """The `EmbeddingBag` of `config` (via `make_layer`'s checks), or None."""
    return make_layer(config, EmbeddingBag, combiner=config["combiner"])


BACKEND = keras.backend.backend()
# Where the backend has them: ragged ids (`tf.RaggedTensor`) on TensorFlow; sparse
# ids (`tf.SparseTensor`, JAX `BCOO`, torch COO) on all three.
BAG_FORMS = ("dense", "offsets", "sparse") + (
    ("ragged",) if BACKEND == "tensorflow" else ()
)


class BagCase:
    """A drawn bag input: `form`, the flat ids and weights (NumPy, for the
    reference), the bags as lists of positions in the flat ids, the outer shape
    of the output, `tensors()`, the call's `(ids, weights)` arguments, and
    `arrays`, the same as NumPy (dense and `(values, offsets)` ids; else None)."""

    def __init__(self, form, flat, weights, bags, outer, tensors, arrays=None):
        self.form, self.flat, self.weights = form, flat, weights
        self.bags, self.outer, self.tensors = bags, outer, tensors
        self.arrays = arrays

    def __repr__(self):
        return f"BagCase({self.form}, ids={self.flat.tolist()}, bags={self.bags})"


def _convert(*arrays):
    return tuple(None if a is None else to_tensor(a) for a in arrays)


@st.composite
def bag_inputs(draw, config, allow_bad, wide=False):
    """A `BagCase`: ids dense `(batch, ..., L)`, `(values, offsets)`, sparse
    `(bags, L)` or (TensorFlow) ragged, with weights or None (never with "max").
    `wide`: dense and `(values, offsets)` ids as `id_arrays(wide=True)`."""
    form = draw(st.sampled_from(BAG_FORMS))
    wide = wide and form in ("dense", "offsets")
    ids = draw(
        id_arrays(config["input_dim"], allow_bad=allow_bad, batched=True, wide=wide)
    )
    weighted = config["combiner"] != "max" and draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    weights = rng.uniform(0.1, 2.0, ids.shape).astype("float32")
    flat_w = weights.reshape(-1) if weighted else None
    if form == "dense":
        count, length = math.prod(ids.shape[:-1]), ids.shape[-1]
        bags = [list(range(b * length, (b + 1) * length)) for b in range(count)]
        w = weights if weighted else None
        return BagCase(
            form,
            ids.reshape(-1),
            flat_w,
            bags,
            ids.shape[:-1],
            lambda: _convert(ids, w),
            (ids, w),
        )
    if form == "sparse":
        # Some positions of a `(bags, L)` grid hold an id, in row-major order.
        grid = ids.reshape(math.prod(ids.shape[:-1]), ids.shape[-1])
        held = rng.random(grid.shape) < 0.7
        indices = np.argwhere(held).astype("int64").reshape(-1, 2)
        values, w = grid[held], weights.reshape(grid.shape)[held]
        bags = [list(np.flatnonzero(indices[:, 0] == b)) for b in range(len(grid))]
        w = w if weighted else None

        def sparse_tensors():
            return (
                make_sparse(indices, values, grid.shape),
                None if w is None else make_sparse(indices, w, grid.shape),
            )

        return BagCase(form, values, w, bags, (len(grid),), sparse_tensors)
    values = ids.reshape(-1)
    cuts = sorted(draw(st.lists(st.integers(0, values.size), max_size=4)))
    offsets = np.array([0, *cuts], "int32")
    ends = [*offsets[1:], values.size]
    bags = [list(range(a, b)) for a, b in zip(offsets, ends, strict=True)]
    if form == "offsets":
        return BagCase(
            form,
            values,
            flat_w,
            bags,
            (len(bags),),
            lambda: (_convert(values, offsets), *_convert(flat_w)),
            ((values, offsets), flat_w),
        )

    def ragged_tensors():
        import tensorflow as tf

        splits = np.array([*offsets, values.size], "int64")
        ragged = tf.RaggedTensor.from_row_splits(values, splits)
        if flat_w is None:
            return ragged, None
        return ragged, tf.RaggedTensor.from_row_splits(flat_w, splits)

    return BagCase(form, values, flat_w, bags, (len(bags),), ragged_tensors)


def bag_reference(layer, params, case):
    """NumPy pooling of the reference rows (float64): padding, masked and
    invalid ids count nowhere; empty bags and zero denominators give zeros."""
    flat = case.flat
    rows, valid = reference(layer, params, flat)
    keep = valid.copy()
    if layer.padding_idx is not None:
        keep &= flat != layer.padding_idx
    if layer.mask_zero:
        keep &= flat != 0
    weights = case.weights
    w = np.ones(flat.shape) if weights is None else np.asarray(weights, np.float64)
    out = np.zeros((len(case.bags), rows.shape[-1]))
    for b, positions in enumerate(case.bags):
        kept = [i for i in positions if keep[i]]
        if not kept:
            continue
        if layer.combiner == "max":
            out[b] = rows[kept].max(axis=0)
            continue
        total = (w[kept, None] * rows[kept]).sum(0)
        den = {
            "sum": 1.0,
            "mean": w[kept].sum(),
            "sqrtn": np.sqrt((w[kept] ** 2).sum()),
        }[layer.combiner]
        out[b] = total / den if den else 0.0
    return out.reshape(*case.outer, rows.shape[-1])


def _traceable(case, mode):
    # torch.compile cannot trace sparse tensors (torch's limitation): eager only.
    return not (mode == "compiled" and case.form == "sparse" and BACKEND == "torch")


@given(bag_configurations(), st.data(), st.sampled_from(["eager", "compiled"]))
def test_bag_matches_numpy(config, data, mode):
    layer = make_bag(config)
    assume(layer is not None)
    case = data.draw(bag_inputs(config, allow_bad=True, wide=True))
    assume(_traceable(case, mode))
    event(f"{case.form} {case.flat.dtype} ids, {mode}")
    note(f"{case}, weights {case.weights}")
    # NumPy ids (checked on their true values) or tensors, as `_as_given`.
    held = _held(case.flat)
    numpy = mode == "eager" and case.arrays is not None
    if numpy and (not held or data.draw(st.booleans(), label="numpy ids")):
        x, w = case.arrays
    else:
        assume(held)
        x, w = case.tensors()
    _, valid = reference(layer, reference_params(layer), case.flat)
    if mode == "eager" and not valid.all():
        first = case.flat[np.argmax(~valid)].item()
        with pytest.raises(ValueError, match=re.escape(f"embedding id {first!r} at")):
            layer(x, weights=w)
        return
    call = (
        (lambda x, w: layer(x, weights=w))
        if mode == "eager"
        else compiled(lambda x, w: layer(x, weights=w))
    )
    out = call(x, w)
    expected = bag_reference(layer, reference_params(layer), case)
    assert tuple(out.shape) == expected.shape
    assert keras.backend.standardize_dtype(out.dtype) == layer.compute_dtype
    assert layer.compute_mask(x) is None
    tol = _tolerance(layer) * 4  # sums of up to a dozen rows
    np.testing.assert_allclose(to_numpy(out), expected, rtol=tol, atol=tol)


@given(bag_configurations(), st.data(), st.sampled_from(["eager", "compiled"]))
def test_bag_gradients_match_numpy(config, data, mode):
    config = {**config, "dtype": "float32", "dropout": 0.0}
    layer = make_bag(config)
    assume(layer is not None and layer.trainable_variables)
    case = data.draw(bag_inputs(config, allow_bad=False))
    assume(_traceable(case, mode))
    event(f"{case.form} ids, {mode}")
    note(f"{case}, weights {case.weights}")
    x, w = case.tensors()
    rng = np.random.default_rng(0)
    upstream = rng.normal(size=(*case.outer, config["output_dim"])).astype("float32")
    params = reference_params(layer)

    def pooled(shifted):
        return bag_reference(layer, shifted, case)

    _, grads = forward_and_gradients(
        layer, x, upstream, False, mode == "compiled", weights=w
    )
    expected = _numeric_gradients(pooled, params, upstream, list(grads))
    for name, grad in grads.items():
        # "max" has kinks where two rows tie; the drawn tables have no ties.
        np.testing.assert_allclose(
            to_numpy(grad), expected[name], rtol=1e-4, atol=1e-4, err_msg=name
        )


# ---- failing examples Hypothesis found, kept as regression tests ---------------


def test_lora_lookup_of_no_ids():
    # TensorFlow: Keras's `ops.add` of the LoRA delta became a `BiasAdd`, which
    # failed on an empty batch ("Biases must be 1D: [0,2]").
    config = {
        "input_dim": 1,
        "output_dim": 2,
        "mask_zero": False,
        "sparse": False,
        "device": None,
        "lora_rank": 1,
        "lora_alpha": None,
        "max_norm": None,
        "norm_type": 2.0,
        "dropout": 0.0,
        "quantize": None,
        "dtype": "float32",
        "padding_idx": None,
    }
    layer = make_layer(config)
    ids = np.zeros((0,), "int32")
    out = layer(keras.ops.convert_to_tensor(ids))
    assert tuple(out.shape) == (0, 2)
    np.testing.assert_array_equal(
        to_numpy(out), reference(layer, reference_params(layer), ids)[0]
    )


def test_bags_of_no_ids():
    # Dense ids of length 0: JAX's "max" took the maximum of an empty axis
    # ("zero-size array to reduction operation max"); torch's fused path
    # reshaped them to (-1, 0) ("cannot reshape tensor of 0 elements").
    # torch's fused path then returned zeros cut off from the table's graph
    # (".backward(): element 0 of tensors does not require grad").
    for combiner in COMBINERS:
        layer = EmbeddingBag(3, 2, combiner=combiner)
        layer.build()
        upstream = np.ones((2, 2), "float32")
        ids = keras.ops.convert_to_tensor(np.zeros((2, 0), "int32"))
        out, grads = forward_and_gradients(layer, ids, upstream)
        np.testing.assert_array_equal(to_numpy(out), np.zeros((2, 2)))
        np.testing.assert_array_equal(to_numpy(grads["embeddings"]), np.zeros((3, 2)))


def test_max_norm_inf_of_no_ids():
    # `norm_type=inf` took Keras's `ops.max` of the rows, which TensorFlow and
    # PyTorch refuse for any tensor with a 0 in its shape ("Cannot compute the
    # max of an empty tensor"), though each row's own axis was not empty; and
    # under `torch.compile`, with any ids, Keras's PyTorch `max` made Dynamo
    # warn of a non-leaf tensor's `.grad` (an error in these tests).
    for cls, extra in ((Embedding, {}), (EmbeddingBag, {"combiner": "sum"})):
        for mode in ("eager", "compiled"):
            layer = cls(3, 2, max_norm=0.5, norm_type=math.inf, **extra)
            layer.build()
            call = layer if mode == "eager" else compiled(layer)
            for shape in ((1, 0), (0, 2)):
                ids = np.zeros(shape, "int32")
                out = to_numpy(call(keras.ops.convert_to_tensor(ids)))
                expected = (*shape, 2) if cls is Embedding else (shape[0], 2)
                assert out.shape == expected
                np.testing.assert_array_equal(out, np.zeros(expected))
            ids = np.array([[1, 2]], "int32")
            out = to_numpy(call(keras.ops.convert_to_tensor(ids)))
            rows, _ = reference(layer, reference_params(layer), ids)
            if cls is EmbeddingBag:
                rows = rows.sum(axis=1)
            np.testing.assert_allclose(out, rows, rtol=1e-6, atol=1e-6)


def test_compiled_gradients_of_no_bags():
    # Dense ids of shape (1, 0, 2): no bags at all. Under `tf.function`, the
    # gradient of "mean" / "sqrtn"'s division over that static empty shape
    # made TensorFlow's graph optimizer die with SIGFPE (the whole process).
    for combiner in COMBINERS:
        layer = EmbeddingBag(5, 3, combiner=combiner, mask_zero=True)
        layer.build()
        ids = keras.ops.convert_to_tensor(np.zeros((1, 0, 2), "int32"))
        upstream = np.ones((1, 0, 3), "float32")
        out, grads = forward_and_gradients(layer, ids, upstream, False, True)
        assert tuple(out.shape) == (1, 0, 3)
        np.testing.assert_array_equal(to_numpy(grads["embeddings"]), np.zeros((5, 3)))
