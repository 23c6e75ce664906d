"""The lookup pipeline: every option alone and every pair of options composes, or
is refused.

For each combination of `keras_embedding_plus.testing.pairs`: either `make_layer`
raises the `ValueError` of `pairs.REFUSED`, or the layer's output and the gradients of
`sum(outputs * U)` with respect to each trainable variable equal the NumPy
reference, eager and compiled. Combinations in `pairs.KNOWN_BROKEN` are strict
xfails.

Every combination also checks the index policy: the compiled call looks up
`pairs.MIXED_IDS`, whose invalid ids must give zero rows and no gradient, and the
same ids raise `ValueError` in an eager call (whose checks use the valid
`pairs.IDS`). The invalid ids ride in the one compiled call each combination
already makes: no compiled call is added for them.
"""

import os

import keras
import numpy as np
import pytest

from keras_embedding_plus.testing import forward_and_gradients, is_row_sparse, pairs
from keras_embedding_plus.testing import to_numpy as _numpy

BACKEND = keras.backend.backend()


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _params():
    out = []
    for options in pairs.combinations():
        marks = []
        reason = pairs.broken(options, BACKEND)
        if reason:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        out.append(pytest.param(options, marks=marks, id=pairs.combination_id(options)))
    return out


def _forward_and_grads(layer, ids, training, compile_):
    return forward_and_gradients(layer, ids, pairs.UPSTREAM, training, compile_)


def _trainable_names(options):
    """LoRA freezes the table, and a quantized table never trains."""
    if "lora" in options:
        return ["lora_embeddings_a", "lora_embeddings_b"]
    return [] if pairs.quantization_of(options) else ["embeddings"]


def _sparse_names(options):
    """The variables whose gradient must be row-sparse with `sparse=True`."""
    return [n for n in _trainable_names(options) if n != "lora_embeddings_b"]


def _observed_keep(out, params, options, ids):
    """Dropout's kept rows, read from training outputs for `ids` (checking they
    are rows of the reference, 0 or scaled by 1 / (1 - p), the same for every
    occurrence of an id). Invalid ids' rows are checked by the caller."""
    rtol, atol = pairs.tolerance(options)
    full = pairs.reference(params, options, ids=ids, keep=np.ones(pairs.INPUT_DIM))
    keep = {}
    valid = pairs.valid_ids(ids)
    for position in np.ndindex(*ids.shape):
        if not valid[position]:
            continue
        row, expected = out[position], full[position]
        kept = np.allclose(row, expected, rtol=rtol, atol=atol)
        dropped = np.allclose(row, 0.0, atol=0.0)
        assert kept or dropped, (
            f"dropout: row {row} at {position} is neither 0 nor the reference "
            f"row / (1 - p) = {expected}"
        )
        i = ids[position]
        assert keep.setdefault(i, kept) == kept, (
            f"dropout: id {i} is kept at one position and dropped at another"
        )
    return np.array([float(keep.get(i, 1.0)) for i in range(pairs.INPUT_DIM)])


def _check_placement(layer, options):
    """With `device=`, the table's stored variables live there."""
    for name in ("embeddings", "embeddings_scale", "embeddings_zero"):
        v = pairs.variable(layer, name)
        if v is None:
            continue
        value = v.value
        if BACKEND == "tensorflow":
            assert value.device.endswith("CPU:0"), (name, value.device)
        elif BACKEND == "torch":
            assert value.device.type == "cpu", (name, value.device)
        elif "host" in options:
            assert value.sharding.memory_kind == "pinned_host", (
                f"`{name}` is in {value.sharding.memory_kind} memory, not the "
                "host memory `device='host'` asks for"
            )
        else:
            import jax

            assert value.devices() == {jax.devices("cpu")[0]}, (name, value)


def _check_combination(options):
    layer = pairs.make_layer(options)
    params = pairs.reference_params(layer, options)
    names = _trainable_names(options)
    assert sorted(v.name for v in layer.trainable_variables) == sorted(names)
    rtol, atol = pairs.tolerance(options)
    dtype = pairs.compute_dtype(options)
    ids = keras.ops.convert_to_tensor(pairs.IDS)
    if "cpu" in options or "host" in options:
        _check_placement(layer, options)
    if "mask_zero" in options:
        mask = _numpy(layer.compute_mask(ids, None))
        np.testing.assert_array_equal(mask, pairs.IDS != 0)
    if "dropout" in options:  # Inference: no dropout.
        np.testing.assert_allclose(
            _numpy(layer(ids, training=False)),
            pairs.reference(params, options),
            rtol=rtol,
            atol=atol,
            err_msg="inference",
        )
    _check_eager_refusal(layer)
    for compile_ in (False, True):
        where = "compiled" if compile_ else "eager"
        # Compiled: invalid ids too (zero rows, no gradient); eager: valid ids.
        ids_np = pairs.MIXED_IDS if compile_ else pairs.IDS
        ids = keras.ops.convert_to_tensor(ids_np)
        out, grads = _forward_and_grads(layer, ids, True, compile_)
        assert keras.backend.standardize_dtype(out.dtype) == dtype
        out = _numpy(out)
        keep = None
        if "dropout" in options:
            keep = _observed_keep(out, params, options, ids_np)
        np.testing.assert_allclose(
            out,
            pairs.reference(params, options, ids=ids_np, keep=keep),
            rtol=rtol,
            atol=atol,
            err_msg=f"{where} forward",
        )
        if compile_:  # Exactly zero, whatever the tolerance.
            invalid = ~pairs.valid_ids(ids_np)
            np.testing.assert_array_equal(
                out[invalid], 0.0, err_msg=f"{where}: rows of invalid ids"
            )
        expected_grads = pairs.reference_gradients(
            params, options, names, keep=keep, ids=ids_np
        )
        for name in names:
            np.testing.assert_allclose(
                _numpy(grads[name]),
                expected_grads[name],
                rtol=rtol,
                atol=atol,
                err_msg=f"{where} gradient of {name}",
            )
        if "sparse" in options and BACKEND != "jax":
            for name in _sparse_names(options):
                assert is_row_sparse(grads[name]), (
                    f"{where}: the gradient of `{name}` is dense with sparse=True "
                    f"({type(grads[name]).__name__})"
                )
    if "sparse" in options and BACKEND == "jax":
        _check_jax_sparse_step(layer, options, params)


def _check_eager_refusal(layer):
    """Eager calls refuse `pairs.MIXED_IDS`, naming the first invalid id, where it
    sits and the valid range (`keras_embedding_plus/_ids.py`)."""
    with pytest.raises(ValueError) as info:
        layer(keras.ops.convert_to_tensor(pairs.MIXED_IDS), training=True)
    assert pairs.INVALID_MESSAGE in str(info.value), str(info.value)


def _check_jax_sparse_step(layer, options, params):
    """One `fit` step with `SparseTrainer` and `LazySGD` on `pairs.MIXED_IDS`
    (compiled: invalid ids look up zero rows) equals NumPy's SGD step, with the
    sparse variables differentiated through their rows."""
    from keras_embedding_plus.optimizers import LazySGD
    from keras_embedding_plus.training import SparseTrainer, sparse_tables

    class Model(SparseTrainer, keras.Sequential):
        pass

    model = Model([keras.Input((pairs.LENGTH,), dtype="int32"), layer])

    class Dot(keras.losses.Loss):
        def call(self, y_true, y_pred):
            y_pred = keras.ops.cast(y_pred, "float32")
            return keras.ops.sum(y_pred * y_true, axis=-1)

    lr = 0.1
    model.compile(
        optimizer=LazySGD(learning_rate=lr),
        loss=Dot(reduction="sum"),
    )
    names = _trainable_names(options)
    sparse = {id(v) for v in sparse_tables(model)}
    for name in _sparse_names(options):
        assert id(pairs.variable(layer, name)) in sparse, (
            f"SparseTrainer does not differentiate `{name}` through its rows"
        )
    ids = pairs.MIXED_IDS
    upstream = pairs.UPSTREAM
    if "mask_zero" in options:  # Keras masks the loss at padding ids.
        upstream = upstream * (ids != 0)[..., None]
    # `MIXED_IDS` holds invalid ids: counted, with a warning.
    with pytest.warns(UserWarning, match="invalid embedding ids"):
        model.fit(ids, upstream, batch_size=2, epochs=1, shuffle=False, verbose=0)
    rtol, atol = pairs.tolerance(options)
    if "dropout" not in options:
        grads = pairs.reference_gradients(params, options, names, upstream, ids=ids)
        for name in names:
            np.testing.assert_allclose(
                _numpy(pairs.variable(layer, name).value),
                params[name] - lr * grads[name],
                rtol=rtol,
                atol=atol,
                err_msg=f"{name} after one LazySGD step",
            )
        return
    # Dropout: each looked-up row moved by its full step, or (dropped) not at all.
    ones = np.ones(pairs.INPUT_DIM)
    grads = pairs.reference_gradients(
        params, options, names, upstream, keep=ones, ids=ids
    )
    for name in _sparse_names(options):
        after = _numpy(pairs.variable(layer, name).value)
        for i in range(pairs.INPUT_DIM):
            step = params[name][i] - lr * grads[name][i]
            assert np.allclose(after[i], step, rtol=rtol, atol=atol) or np.allclose(
                after[i], params[name][i], rtol=rtol, atol=atol
            ), f"{name} row {i} after one LazySGD step with dropout"


# torch.compile: resuming after a graph break, Dynamo reads `.grad` of non-leaf
# tensors and warns about its own access.
@pytest.mark.filterwarnings(
    "ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning"
)
@pytest.mark.parametrize("options", _params())
def test_pair(options):
    fragment = pairs.refusal(options, BACKEND)
    if fragment is not None:
        with pytest.raises(ValueError, match=None) as info:
            pairs.make_layer(options)
        message = str(info.value)
        assert fragment in message, message
        for option in options:
            assert pairs.NAMES[option] in message, (option, message)
        return
    _check_combination(options)


def test_docs_pair_table():
    with open(os.path.join(ROOT, "docs", "design.md"), encoding="utf-8") as f:
        page = f.read()
    start, end = "<!-- pair-table -->", "<!-- /pair-table -->"
    assert start in page and end in page, "docs/design.md lost its pair-table markers"
    found = page.split(start, 1)[1].split(end, 1)[0]
    assert found.strip() == pairs.markdown_table().strip(), (
        "docs/design.md's pair table is stale: run `python scripts/pair_table.py` "
        "and paste its output between the markers"
    )
