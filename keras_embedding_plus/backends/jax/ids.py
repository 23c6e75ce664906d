"""JAX: the index policy's backend ops (concrete ids, flat values of ragged
ids, gathers that zero or fill invalid ids)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from keras import ops

# XLA lowers `searchsorted` to a search: a growing key map compiles.
SEARCH_UNDER_XLA = True

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


class _Counter:
    """A metric variable, and the count of the traced step waiting for it.

    Keras's JAX trainer runs a step's forward in a stateless scope that holds
    the layers' weights only; the metrics' variables are mapped later in the
    same traced step, when the trainer reads every metric's `result()`. The
    forward leaves its count here, tagged with its step's marker, and `read_count`
    adds it to the variable there: in the graph, no host callback, no sync. A
    predict step leaves a count nobody reads, which XLA drops.
    """

    def __init__(self, variable):
        self.variable = variable
        self.marker = None
        self.pending = None


def new_counter(metric):
    """The count of `metric`: an int32 metric variable (JAX's default ints)."""
    variable = metric.add_variable((), initializer="zeros", dtype="int32", name="count")
    return _Counter(variable)


def count_invalid(counter, valid, error, marker):
    """Leave the invalid ids of `valid` for `counter` (see `_Counter`).

    `marker`: the traced value of one of the layer's variables, the same
    object throughout one step's forward (Keras's stateless scope maps it), a
    concrete array in a bare `jax.jit`, where no metric update follows.

    With an `error` text, a host callback in a `cond` (it runs only in steps
    that met an invalid id) raises `ValueError`, which fails the step
    (`JaxRuntimeError` naming it): a callback costs each step, so only
    `invalid_ids="raise"` has one.
    """
    count = jnp.sum(jnp.logical_not(valid), dtype="int32")
    if error is not None:

        def fail(count):
            raise ValueError(f"{error} Invalid ids met: {int(count)}.")

        def call_host(count):
            return io_callback(fail, None, count, ordered=False)

        jax.lax.cond(count > 0, call_host, lambda n: None, count)
    if marker is None or is_concrete(marker):
        return  # A bare traced call: no metric update follows it.
    if counter.marker is marker:  # The layer runs twice in one forward.
        count = counter.pending + count
    counter.marker, counter.pending = marker, count


def discard_pending(counter):
    counter.marker = counter.pending = None


def read_count(counter):
    """The count; in a traced metric update, with the forward's count added."""
    value = counter.variable.value
    pending, counter.marker, counter.pending = counter.pending, None, None
    if pending is not None and not is_concrete(value):
        counter.variable.assign_add(pending)
        value = counter.variable.value
    return value


def reset_count(counter):
    counter.variable.assign(0)
    counter.marker = counter.pending = None
