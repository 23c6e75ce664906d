"""`run_layer_test`: one check of a layer configuration, in the spirit of Keras's
`TestCase.run_layer_test`.

Imported by the test modules (`from keras_embedding_plus.testing import
run_layer_test`); no tests here. For one built layer and its ids it checks,
against a NumPy reference of the output:

* the number of trainable and non-trainable weights;
* the eager output (values and compute dtype) and the compiled output
  (`tf.function`, `jax.jit`, `torch.compile`);
* the mask (`ids != 0` with `mask_zero`, else None), eager and symbolic;
* `get_config` / `from_config` with the weights copied, and a `.keras` save and
  load of a model around the layer: both give the reference output.
"""

import contextlib
import os
import warnings

import keras
import numpy as np

from keras_embedding_plus import compat


def expect(condition, message):
    """Fail the calling test with `message` unless `condition` holds.

    An explicit `AssertionError` (not a bare `assert`, which `python -O`
    strips): these checks ship in the package and must always run.
    """
    if not condition:
        raise AssertionError(message)


def compiled(fn):
    """`fn` traced / compiled the way each backend's compiler does it.

    `tf.function`, `jax.jit`, or `torch.compile` with the graph-capturing eager
    backend (no C++ toolchain needed): in all three the ids' values are unknown
    while `fn` is traced, so the layer takes its compiled path.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "torch":
        import torch

        # Forget earlier frames: one test (or Hypothesis example) after another
        # compiles the same code with new ranks and dtypes, up to the limit.
        torch._dynamo.reset()
        return torch.compile(fn, backend="eager", fullgraph=False)
    return fn


def to_tensor(array):
    """A backend tensor of NumPy `array`, of its dtype and values.

    `keras.ops.convert_to_tensor`, except that uint64 arrays on torch (which
    Keras's converter refuses) become `torch.uint64` tensors, and that on JAX
    the array is converted as the current x64 mode holds it (int64 to int32
    without x64: see `full_width_ids`).
    """
    if keras.backend.backend() == "torch" and array.dtype == np.uint64:
        import torch

        return torch.from_numpy(np.ascontiguousarray(array))
    return keras.ops.convert_to_tensor(array)


def full_width_ids():
    """A context in which the backend holds 64-bit ids as they are.

    JAX without x64 holds int64, uint64 and float64 values in 32 bits: here
    `jax.enable_x64(True)`. TensorFlow and PyTorch always do: a null context.
    """
    if keras.backend.backend() == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


def to_numpy(x):
    """A float32 NumPy copy of a tensor or gradient (row-sparse ones densified)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(x, tf.IndexedSlices):
            x = tf.convert_to_tensor(x)
    if keras.backend.backend() == "torch" and x.is_sparse:
        x = x.to_dense()
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")))


def is_row_sparse(grad):
    """Whether a gradient is the backend's row-sparse type (never on JAX)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return isinstance(grad, tf.IndexedSlices)
    if keras.backend.backend() == "torch":
        return grad.is_sparse
    return False


def forward_and_gradients(
    layer, ids, upstream, training=None, compile_=False, **call_kwargs
):
    """`(outputs, {name: gradient})` of `sum(outputs * upstream)`, by each
    backend's own autodiff (eager, or compiled with `compile_`); `call_kwargs`
    go to the layer's call (`weights=` of `EmbeddingBag`).

    Gradients come back as the backend gives them (row-sparse ones too).
    """
    variables = layer.trainable_variables
    upstream = keras.ops.convert_to_tensor(upstream)
    names = [v.name for v in variables]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        def step(ids):
            with tf.GradientTape() as tape:
                out = layer(ids, training=training, **call_kwargs)
                loss = tf.reduce_sum(tf.cast(out, "float32") * upstream)
            return out, tape.gradient(loss, variables)

        out, grads = (compiled(step) if compile_ else step)(ids)
    elif keras.backend.backend() == "jax":
        import jax
        import jax.numpy as jnp

        def loss_fn(trainable, non_trainable, ids):
            out, _ = layer.stateless_call(
                trainable, non_trainable, ids, training=training, **call_kwargs
            )
            return jnp.sum(out.astype("float32") * upstream), out

        step = jax.value_and_grad(loss_fn, has_aux=True)
        if compile_:
            step = compiled(step)
        with warnings.catch_warnings():
            # The table of a `sparse=True` layer is differentiated whole here,
            # on purpose (no `SparseTrainer`): the layer warns about it once.
            warnings.filterwarnings(
                "ignore", message=r"Layer .* but on JAX its table is trained densely"
            )
            (_, out), grads = step(
                [v.value for v in variables],
                [v.value for v in layer.non_trainable_variables],
                ids,
            )
    else:
        for v in variables:
            v.value.grad = None

        def forward(ids):
            return layer(ids, training=training, **call_kwargs)

        out = (compiled(forward) if compile_ else forward)(ids)
        if variables:
            (out.float() * upstream).sum().backward()
        grads = [v.value.grad for v in variables]
    return out, dict(zip(names, grads, strict=True))


def _check_output(what, outputs, expected, dtype, atol):
    expect(
        keras.backend.standardize_dtype(outputs.dtype) == dtype,
        f"{what}: dtype {outputs.dtype}, expected {dtype}",
    )
    np.testing.assert_allclose(
        to_numpy(outputs), expected, rtol=atol, atol=atol, err_msg=what
    )


def run_layer_test(
    layer,
    ids,
    expected_output,
    *,
    num_trainable_weights,
    num_non_trainable_weights,
    mask_zero=False,
    atol=1e-6,
    tmp_path=None,
    call_kwargs=None,
    expected_mask=None,
    saved_reference=None,
    compile=True,
):
    """Check `layer` (built) on `ids` (a NumPy array) against `expected_output`.

    `tmp_path`: where to write the `.keras` file (skipped when None).
    `expected_mask`: the mask's reference, by default `ids != 0` with
    `mask_zero` and None without. `saved_reference(loaded_layer)`: the reference
    output after the `.keras` round trip, where saving changes the weights
    (merging LoRA into a quantized table re-quantizes it, as Keras does).
    `compile=False` skips the compiled call (checked elsewhere for that layer).
    """
    call_kwargs = call_kwargs or {}
    expect(
        len(layer.trainable_weights) == num_trainable_weights,
        [w.path for w in layer.trainable_weights],
    )
    expect(
        len(layer.non_trainable_weights) == num_non_trainable_weights,
        [w.path for w in layer.non_trainable_weights],
    )
    dtype = layer.compute_dtype
    x = keras.ops.convert_to_tensor(ids)

    # Eager and compiled.
    _check_output("eager", layer(x, **call_kwargs), expected_output, dtype, atol)
    if compile:
        outputs = compiled(lambda x: layer(x, **call_kwargs))(x)
        _check_output("compiled", outputs, expected_output, dtype, atol)

    # Masks.
    if expected_mask is None and mask_zero:
        expected_mask = ids != 0
    mask = layer.compute_mask(x)
    if expected_mask is None:
        expect(mask is None, f"a mask where none was expected: {mask}")
    else:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask), expected_mask)
    symbolic = keras.Input(ids.shape[1:], dtype=str(ids.dtype))
    symbolic_out = layer(symbolic, **call_kwargs)
    expect(
        symbolic_out.shape[1:] == expected_output.shape[1:],
        f"symbolic shape {symbolic_out.shape}, expected {expected_output.shape}",
    )
    expect(
        (compat.symbolic_mask(symbolic_out) is None) == (expected_mask is None),
        "the symbolic output's mask does not match `expected_mask`",
    )

    # The config, with the weights copied.
    clone = type(layer).from_config(layer.get_config())
    clone.build(ids.shape)
    clone.set_weights(layer.get_weights())
    _check_output("from_config", clone(x, **call_kwargs), expected_output, dtype, atol)

    # A `.keras` round trip.
    if tmp_path is not None:
        model = keras.Model(symbolic, symbolic_out)
        path = os.path.join(str(tmp_path), "layer_test.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        if saved_reference is not None:
            expected_output = saved_reference(loaded.layers[-1])
        _check_output(".keras", loaded(x, **call_kwargs), expected_output, dtype, atol)


def make_sparse(indices, values, shape):
    """The backend's sparse tensor: `tf.SparseTensor`, `BCOO`, torch COO."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.SparseTensor(indices, values, shape)
    if keras.backend.backend() == "jax":
        from jax.experimental import sparse

        return sparse.BCOO((values, indices.astype("int32")), shape=shape)
    import torch

    return torch.sparse_coo_tensor(
        torch.tensor(indices.T), torch.tensor(values), shape, check_invariants=True
    )
