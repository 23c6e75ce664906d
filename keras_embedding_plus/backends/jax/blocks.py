"""JAX: rows of a variable read, written and filled by blocks (big tables
built, saved and loaded by blocks), and snapshots of a variable's value."""

import functools

import jax
import jax.numpy as jnp
import keras

from keras_embedding_plus.backends.jax.core import value_of


def snapshot(variable):
    """The value itself: a JAX array never changes, and `assign` replaces it."""
    return variable.value


def writes_rows_in_place():
    return False


def builds_by_blocks():
    """Outside a Keras distribution (whose layouts place the table)."""
    return keras.distribution.distribution() is None


def write_rows(variable, start, rows):
    """Rows `start ...` of the variable set to `rows`: a new array (JAX arrays
    are immutable), so `_chunks` never writes a table by blocks on JAX."""
    value = value_of(variable)
    rows = jnp.asarray(rows, value.dtype)
    variable.assign(jax.lax.dynamic_update_slice_in_dim(value, rows, start, 0))


def read_rows(variable, start, stop):
    """Rows `start:stop` of a variable."""
    return value_of(variable)[start:stop]


@functools.partial(jax.jit, donate_argnums=0)
def _update_rows(value, rows, start):
    return jax.lax.dynamic_update_slice_in_dim(value, rows, start, 0)


def fill_rows(variable, start, rows):
    """Rows `start ...` of a table being built set to `rows`, in place: its
    array (held by nothing else yet) is donated to the update."""
    value = value_of(variable)
    variable.assign(_update_rows(value, jnp.asarray(rows, value.dtype), start))


def gathered(value):
    """`value` (a variable or array), whole on this process: a table whose
    rows are sharded over several processes (`keras.distribution` over
    `jax.distributed`) is gathered from all of them, as NumPy (every process
    must call this: it is a collective); anything else is returned as is."""
    array = value_of(value)
    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return value
    if array.is_fully_replicated:
        return value
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(array, tiled=True)
