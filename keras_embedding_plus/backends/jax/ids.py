"""JAX: the index policy's backend ops (concrete ids, flat values of ragged
ids, gathers that zero or fill invalid ids)."""

import jax
import jax.numpy as jnp
import numpy as np
from keras import ops

NARROWING_REMEDY = (
    " JAX without x64 holds 64-bit ids in 32 bits, where this id would read "
    "as another. To use 64-bit ids, enable x64: JAX_ENABLE_X64=1, or "
    'jax.config.update("jax_enable_x64", True) at startup; or feed int32 ids.'
)


def is_concrete(x):
    return not isinstance(x, jax.core.Tracer)


def traces_numpy():
    """Whether NumPy ids reaching the layer here are traced values: never
    (JAX converts NumPy arguments of a traced function to its tensors;
    NumPy inside it is a constant, whose values are known)."""
    return False


def device_dtype(dtype):
    """The dtype JAX holds host ids of NumPy `dtype` in: 32 bits for 64-bit
    dtypes without x64 (`jax.enable_x64` / `JAX_ENABLE_X64`)."""
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def comparable(values):
    """`values` in a dtype JAX compares: every integer dtype is."""
    return values


def flat_values(ids):
    return ids


def with_flat_values(ids, values):
    del ids
    return values


def ids_all_valid(values, input_dim):
    del values, input_dim
    return None  # No faster check than the generic one.


def take(table, ids, valid):
    """Traced: one gather that fills invalid ids with zero rows (XLA fuses the
    id select into it), instead of a gather and a `cond` that copies the whole
    output."""
    if valid is None:
        return ops.take(table, ids, axis=0), valid
    ids = jnp.where(valid, ids, table.shape[0])
    table = ops.convert_to_tensor(table)
    return jnp.take(table, ids, axis=0, mode="fill", fill_value=0), None


def zero_invalid(outputs, valid):
    mask = ops.expand_dims(valid, -1)
    return ops.cond(
        ops.all(valid),
        lambda: outputs,
        lambda: ops.where(mask, outputs, ops.zeros((), dtype=outputs.dtype)),
    )
