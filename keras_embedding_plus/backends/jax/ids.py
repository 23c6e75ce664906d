"""JAX: the index policy's backend ops (concrete ids, flat values of ragged
ids, gathers that zero or fill invalid ids)."""

import threading

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


# ---- the count of invalid ids met in compiled calls (`lookup.invalid_ids`) ------


class _HostCount:
    """A count kept on the host, added to by callbacks of compiled steps.

    Keras's JAX trainer runs the forward in a stateless call that holds the
    layers' weights only, not the metrics' variables: a metric variable cannot
    be updated there, so the count lives here, and `read_count` reads it eagerly
    at the end of each epoch.
    """

    def __init__(self):
        self.value = 0
        self.lock = threading.Lock()

    def add(self, count):
        with self.lock:
            self.value += count


def new_counter(metric):
    del metric
    return _HostCount()


def count_invalid(counter, valid, error):
    """Add the invalid ids of `valid` to `counter`, from the compiled step.

    A `jax.debug.callback` (unordered: the step does not wait on the host for
    it) inside a `cond`: it runs only in steps that met an invalid id; the
    others pay one reduction over the ids. With an `error` text, the callback
    raises `ValueError`, which fails the step (`JaxRuntimeError` naming it).
    """

    def report(count):
        count = int(count)
        counter.add(count)
        if error is not None:
            raise ValueError(f"{error} Invalid ids met: {count}.")

    count = jnp.sum(jnp.logical_not(valid), dtype="int32")
    jax.lax.cond(
        count > 0, lambda n: jax.debug.callback(report, n), lambda n: None, count
    )


def read_count(counter):
    return counter.value


def reset_count(counter):
    with counter.lock:
        counter.value = 0
