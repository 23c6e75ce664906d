"""The one index policy, the same on every backend.

Valid ids are the integers ``0 .. input_dim - 1``. Integer tensors of any dtype are
accepted; float tensors are accepted when they hold whole numbers.

* Where the ids' values are known at the call (eager execution, NumPy ids), any
  other id raises ``ValueError`` naming the first offending id, where it sits and
  the valid range. NumPy ids given to a layer are checked on their true values
  by `check_host_ids`, in the layer's `__call__`, before Keras converts them to
  the backend's tensors (JAX without x64 would hold int64 / uint64 / float64 in
  32 bits, where `2**32 + 3` reads as `3`).
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


def index_dtype(input_dim):
    """The integer dtype ids of a table of `input_dim` rows are gathered with."""
    return "int32" if input_dim <= np.iinfo(np.int32).max else "int64"


def _host_validity(array, input_dim):
    """Which ids of the NumPy `array` are valid, on their true values."""
    if array.dtype.kind == "f":
        values = array.astype(np.float64, copy=False)  # exact, holds `input_dim`
        with np.errstate(invalid="ignore"):
            valid = (values >= 0) & (values < input_dim)
            return valid & (np.round(values) == values)
    # Compared in a dtype that holds the bound and every id of `array`.
    if array.dtype.kind == "u":
        return array.astype(np.uint64, copy=False) < np.uint64(input_dim)
    values = array.astype(np.int64, copy=False)
    return (values >= 0) & (values < input_dim)


def _host_all_valid(array, input_dim):
    """Whether every id of the NumPy `array` is valid (one min / max pass for
    integer ids)."""
    if array.size == 0:
        return True
    if array.dtype.kind == "f":
        return bool(_host_validity(array, input_dim).all())
    return int(array.min()) >= 0 and int(array.max()) < input_dim


def _narrowing_remedy(value, dtype):
    """How to keep `value` (of NumPy `dtype`) whole, where the backend holds
    `dtype` in a narrower dtype that changes it (JAX without x64); else ""."""
    device = backend_ids.device_dtype(dtype)
    if device == dtype:
        return ""
    value = np.asarray(value, dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        held = value.astype(device).astype(dtype)
    if np.array_equal(held, value, equal_nan=True):
        return ""
    return backend_ids.NARROWING_REMEDY


def _invalid_error(array, valid, input_dim, remedy=False):
    """The `ValueError` naming the first invalid id of NumPy `array` (`valid`
    marks the valid ids); `remedy`: say how to keep it whole when the backend
    would change it."""
    position = tuple(int(i) for i in np.argwhere(~valid)[0])
    bad = array[position].item()
    count = int((~valid).sum())
    hint = _narrowing_remedy(bad, array.dtype) if remedy else ""
    return ValueError(
        f"Invalid embedding id {bad!r} at position {position} of the ids: "
        f"valid ids are the integers 0 to {input_dim - 1} "
        f"(input_dim={input_dim}). {count} of {valid.size} ids are invalid.{hint}"
    )


def check_host_ids(ids, input_dim):
    """Apply the index policy to NumPy ids, on their true values.

    Called by the layers' `__call__` before Keras converts their arguments to
    backend tensors: NumPy arrays and scalars of any integer or float dtype are
    checked here, where no id has been cast yet. Anything else (backend
    tensors, sparse and ragged ids) is returned as it is, for `prepare_ids`.

    Args:
        ids: The ids as the layer was given them.
        input_dim: The number of rows.

    Returns:
        `ids`, or NumPy ids every backend receives whole: float and uint64 ids
        (checked, so each a valid id) as the table's integer index dtype.

    Raises:
        ValueError: An invalid id (named, with its position), or a valid id the
            backend cannot hold (JAX without x64, a table past 2**31 rows).
    """
    if not isinstance(ids, (np.ndarray, np.generic)):
        return ids
    array = np.asarray(ids)
    if array.dtype.kind not in "iuf":
        return ids  # bool, bfloat16 and the rest: `ids_dtype` decides.
    if backend_ids.traces_numpy():
        # Values unknown (`torch.compile`): the traced path zeroes invalid ids.
        # uint64 as int64 (which Keras converts on every backend): valid ids
        # keep their value, ids of 2**63 and more turn negative, so invalid.
        return array.astype(np.int64) if array.dtype == np.uint64 else ids
    if not _host_all_valid(array, input_dim):
        valid = _host_validity(array, input_dim)
        raise _invalid_error(array, valid, input_dim, remedy=True)
    if array.dtype.kind == "f" or array.dtype == np.uint64:
        ids = array = array.astype(index_dtype(input_dim))
    device = backend_ids.device_dtype(array.dtype)
    if array.size and device != array.dtype and array.max() > np.iinfo(device).max:
        position = tuple(int(i) for i in np.argwhere(array > np.iinfo(device).max)[0])
        raise ValueError(
            f"Embedding id {array[position].item()} at position {position} of "
            f"the ids is valid (input_dim={input_dim}), but the backend holds "
            f"{array.dtype} ids as {device}.{backend_ids.NARROWING_REMEDY}"
        )
    return ids


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
    values = backend_ids.comparable(values)
    valid = _validity(values, input_dim, backend.standardize_dtype(values.dtype))
    return valid is None or bool(ops.all(valid))


def _raise_invalid(values, input_dim):
    """Raise the `ValueError` naming the first invalid id of the concrete
    `values`, read on the host (as the backend holds them)."""
    array = np.asarray(ops.convert_to_numpy(values))
    if array.dtype.kind not in "iuf":
        array = array.astype(np.float32)  # bfloat16: exact
    raise _invalid_error(array, _host_validity(array, input_dim), input_dim)


def prepare_ids(ids, input_dim, report=None):
    """Apply the index policy to `ids`.

    Returns `(ids, valid)`: integer ids safe to pass to `ops.take`, and either
    `None` (every id is known to be valid) or a boolean tensor marking the valid
    ids, whose lookups must be zeroed by `zero_invalid`. `report`: the layer's
    `invalid_ids.InvalidIdsCount`, which counts the invalid ids of traced calls
    (or fails them, with `invalid_ids="raise"`).
    """
    dtype = ids_dtype(ids)
    int_dtype = index_dtype(input_dim)
    values = backend_ids.flat_values(ids)
    if backend_ids.is_concrete(values):
        if not _all_valid(values, input_dim, dtype):
            _raise_invalid(values, input_dim)
        if dtype not in _TAKE_DTYPES:
            values = ops.cast(values, int_dtype)
        return backend_ids.with_flat_values(ids, values), None
    values = backend_ids.comparable(values)
    dtype = backend.standardize_dtype(values.dtype)
    valid = _validity(values, input_dim, dtype)
    if valid is not None and report is not None:
        report.update_state(valid)
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
