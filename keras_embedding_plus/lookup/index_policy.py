"""The one index policy, the same on every backend.

Valid ids are the integers ``0 .. input_dim - 1``. Integer tensors of any dtype are
accepted; float tensors are accepted when they hold whole numbers.

* Where the ids' values are known at the call (eager execution), any other id raises
  ``ValueError`` naming the first offending id, where it sits and the valid range.
* Inside traced / compiled functions (``tf.function``, ``jax.jit``, ``torch.compile``),
  where values are unknown, invalid ids look up all-zero vectors.

Invalid ids never wrap around (``ops.take`` maps ``-1`` to the last row), never give
NaN (``jnp.take``'s default) and never crash a compiled step.
"""

import numpy as np
from keras import backend, ops

from keras_embedding_plus.backends import ids as backend_ids

# Integer dtypes that need no cast before `ops.take`.
_TAKE_DTYPES = ("int32", "int64")


def densify(ids):
    """Sparse ids (`tf.SparseTensor`, JAX `BCOO`) as dense ids, as Keras's layer
    takes them: entries not stored are id 0."""
    if type(ids).__name__ in ("SparseTensor", "BCOO"):
        return ops.convert_to_tensor(ids, sparse=False)
    return ids


def ids_dtype(ids):
    """The standardized dtype name of `ids`, or a ValueError for non-numeric ids."""
    dtype = backend.standardize_dtype(backend_ids.flat_values(ids).dtype)
    if dtype == "bool" or not (
        "int" in dtype or "float" in dtype or dtype.startswith("bfloat")
    ):
        raise ValueError(
            "Embedding ids must be integers (any integer dtype) or floats holding "
            f"whole numbers. Received ids of dtype {dtype}."
        )
    return dtype


def _validity(values, input_dim, dtype):
    """Boolean tensor: which of `values` are valid ids (`None`: all, by dtype).

    Bounds are compared in a dtype that holds them: a Python int next to narrow
    ids takes the ids' dtype on JAX and torch, where `uint8(1000)` wraps to 232.
    """
    if "float" in dtype:
        if dtype in ("float16", "bfloat16"):
            values = ops.cast(values, "float32")  # exact, and holds `input_dim`
        valid = ops.logical_and(
            ops.greater_equal(values, 0), ops.less(values, input_dim)
        )
        # NaN fails `round(x) == x`, so it is invalid too. (`ops.round`, not
        # `ops.floor`: on torch, `floor` of float16 / float64 breaks torch.compile.)
        return ops.logical_and(valid, ops.equal(ops.round(values), values))
    info = np.iinfo(dtype)
    checks = []
    if info.min < 0:
        checks.append(ops.greater_equal(values, 0))
    if info.max >= input_dim:
        checks.append(ops.less(values, input_dim))
    if not checks:
        return None  # e.g. uint8 ids into 256 rows or more: every id is valid.
    return checks[0] if len(checks) == 1 else ops.logical_and(*checks)


def _all_valid(values, input_dim, dtype):
    """Whether every id of the concrete `values` is valid."""
    if "float" not in dtype:
        fast = backend_ids.ids_all_valid(values, input_dim)
        if fast is not None:
            return fast
    valid = _validity(values, input_dim, dtype)
    return valid is None or bool(ops.all(valid))


def _raise_invalid(values, valid, input_dim):
    values = ops.convert_to_numpy(values)
    valid = ops.convert_to_numpy(valid)
    position = tuple(int(i) for i in np.argwhere(~valid)[0])
    bad = values[position].item()
    count = int((~valid).sum())
    raise ValueError(
        f"Invalid embedding id {bad!r} at position {position} of the ids: "
        f"valid ids are the integers 0 to {input_dim - 1} "
        f"(input_dim={input_dim}). {count} of {valid.size} ids are invalid."
    )


def prepare_ids(ids, input_dim):
    """Apply the index policy to `ids`.

    Returns `(ids, valid)`: integer ids safe to pass to `ops.take`, and either
    `None` (every id is known to be valid) or a boolean tensor marking the valid
    ids, whose lookups must be zeroed by `zero_invalid`.
    """
    dtype = ids_dtype(ids)
    int_dtype = "int32" if input_dim <= np.iinfo(np.int32).max else "int64"
    values = backend_ids.flat_values(ids)
    if backend_ids.is_concrete(values):
        if not _all_valid(values, input_dim, dtype):
            _raise_invalid(values, _validity(values, input_dim, dtype), input_dim)
        if dtype not in _TAKE_DTYPES:
            values = ops.cast(values, int_dtype)
        return backend_ids.with_flat_values(ids, values), None
    valid = _validity(values, input_dim, dtype)
    if valid is not None:
        values = ops.where(valid, values, ops.zeros((), dtype=values.dtype))
    if dtype not in _TAKE_DTYPES:
        values = ops.cast(values, int_dtype)
    return backend_ids.with_flat_values(ids, values), valid


def zero_invalid(outputs, valid):
    """Zero the looked-up rows of invalid ids (traced calls only).

    The common case, every id valid, costs one reduction over the ids: the pass
    over the (much larger) outputs runs only when some id is invalid (torch:
    one fused select, since a data-dependent branch breaks its graph).
    """
    if valid is None:
        return outputs
    return backend_ids.zero_invalid(outputs, valid)
