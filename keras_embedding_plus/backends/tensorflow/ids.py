"""TensorFlow: the index policy's backend ops (concrete ids, flat values of ragged
ids, gathers that zero or fill invalid ids)."""

import numpy as np
import tensorflow as tf
from keras import ops

# TensorFlow's XLA bridge lowers `tf.searchsorted` to an all-pairs compare
# (batch keys x capacity booleans: 126 GiB for 65,536 keys in a 1M map), so a
# growing key map must not be XLA-compiled; without XLA it is a binary search.
SEARCH_UNDER_XLA = False

NARROWING_REMEDY = ""


def is_concrete(x):
    if isinstance(x, tf.RaggedTensor):
        x = x.flat_values
    return tf.executing_eagerly() and not tf.is_symbolic_tensor(x)


def traces_numpy():
    """Whether NumPy ids reaching the layer here are traced values: never
    (TensorFlow converts NumPy arguments of a traced function to its tensors;
    NumPy inside it is a constant, whose values are known)."""
    return False


def device_dtype(dtype):
    """The dtype TensorFlow holds host ids of NumPy `dtype` in: the same."""
    return np.dtype(dtype)


def comparable(values):
    """`values` in a dtype TensorFlow compares: every integer dtype is."""
    return values


def flat_values(ids):
    return ids.flat_values if isinstance(ids, tf.RaggedTensor) else ids


def with_flat_values(ids, values):
    return ids.with_flat_values(values) if isinstance(ids, tf.RaggedTensor) else values


def ids_all_valid(values, input_dim):
    del values, input_dim
    return None  # No faster check than the generic one.


def take(table, ids, valid):
    if isinstance(ids, tf.Tensor):  # `tf.gather`: what `ops.take` ends with.
        return tf.gather(ops.convert_to_tensor(table), ids), valid
    return ops.take(table, ids, axis=0), valid


def zero_invalid(outputs, valid):
    if isinstance(outputs, tf.RaggedTensor):
        return outputs.with_flat_values(zero_invalid(outputs.flat_values, valid))
    mask = ops.expand_dims(valid, -1)
    # A `tf.cond`: the pass over the outputs runs only when some id is invalid.
    return ops.cond(
        ops.all(valid),
        lambda: outputs,
        lambda: ops.where(mask, outputs, ops.zeros((), dtype=outputs.dtype)),
    )


# ---- the count of invalid ids met in compiled calls (`lookup.invalid_ids`) ------


def new_counter(metric):
    """The count of `metric`: an int64 metric variable, updated in the graph."""
    return metric.add_variable((), initializer="zeros", dtype="int64", name="count")


def count_invalid(counter, valid, error, marker):
    """Add the invalid ids of `valid` to `counter`, in the graph (no host sync);
    with an `error` text, a graph assert fails the step on any invalid id.
    `marker` (which JAX needs) is unused."""
    count = tf.reduce_sum(tf.cast(tf.logical_not(valid), tf.int64))
    if error is not None:
        # XLA (`jit_compile=True`) drops asserts: there the count still shows.
        tf.debugging.assert_equal(
            count, tf.zeros((), tf.int64), message=error + " Invalid ids met:"
        )
    counter.assign_add(count)


def discard_pending(counter):
    del counter  # The count is added in the graph: nothing waits.


def read_count(counter):
    # A tensor: under a `tf.distribute` strategy the variable is a distributed
    # one, which NumPy cannot read.
    return tf.convert_to_tensor(counter.value)


def reset_count(counter):
    counter.assign(0)
