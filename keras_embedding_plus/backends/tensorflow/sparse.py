"""TensorFlow: row-sparse gradients (`tf.IndexedSlices`) and the optimizers' row ops
(deduplicate, gather, scatter)."""

import tensorflow as tf
from keras import ops

from keras_embedding_plus.backends.tensorflow.core import value_of

SPARSE_WITH_MIXED_POLICY = True


def sparse_take(table, ids):
    if isinstance(ids, tf.RaggedTensor):
        return ops.take(table, ids, axis=0)
    # On the variable itself: a ResourceGather, which never reads the whole
    # table, and whose gradient is an `IndexedSlices`.
    return tf.gather(value_of(table), ids)


def trains_densely(table):
    """Never: `sparse_take`'s gradient is a `tf.IndexedSlices` in any model."""
    del table
    return False


def is_row_sparse(gradient):
    return isinstance(gradient, tf.IndexedSlices)


def densify_gradient(gradient):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def _rows_of(gradient):
    """The rows of a row-sparse gradient, one an id. Their width can be
    unknown when tracing: `MultiWorkerMirroredStrategy` all-gathers the
    workers' `IndexedSlices` into rows of shape `(None, None)`."""
    values = gradient.values
    if values.shape[1:].is_fully_defined():
        return tf.reshape(values, [-1, *values.shape[1:]])
    return tf.reshape(values, tf.concat([[-1], tf.shape(values)[1:]], 0))


def unique_rows(gradient):
    ids, position = tf.unique(tf.reshape(gradient.indices, [-1]))
    values = _rows_of(gradient)
    summed = tf.math.unsorted_segment_sum(values, position, tf.shape(ids)[0])
    return ids, summed


def gather_rows(variable, ids):
    return tf.gather(value_of(variable), ids)


def scatter(optimizer, variable, ids, rows, how):
    slices = tf.IndexedSlices(rows, ids)
    if how == "update":
        optimizer.assign(variable, slices)
    else:
        optimizer.assign_sub(variable, slices)


def subtract_scaled(optimizer, variable, gradient, factor):
    # A resource scatter-sub adds the rows of duplicate ids.
    values = _rows_of(gradient)
    values = tf.cast(values, variable.dtype) * tf.cast(factor, variable.dtype)
    indices = tf.reshape(gradient.indices, [-1])
    optimizer.assign_sub(variable, tf.IndexedSlices(values, indices))


def scale_gradient(gradient, factor):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(
            gradient.values * factor, gradient.indices, gradient.dense_shape
        )
    return gradient * factor


def with_rows(gradient, ids, values):
    return tf.IndexedSlices(values, ids, gradient.dense_shape)


def set_rows(variable, ids, rows):
    """`variable[ids] = rows` (`ids` unique): a resource scatter."""
    target = value_of(variable)
    return target.scatter_update(tf.IndexedSlices(tf.cast(rows, target.dtype), ids))


def fused_take(table, ids, anchor, update):
    """`table[ids]`, whose gradient calls `update([(unique ids, summed row
    gradients)])` (which scatters into the table) and gives `anchor` (a
    trainable zero-size variable: what makes the tape run the gradient) a
    zero gradient. No gradient of the table's size exists."""
    target = value_of(table)

    @tf.custom_gradient
    def take(anchor_value):
        rows = tf.gather(target, ids)

        def gradient(dy, variables=None):
            flat = tf.reshape(ids, [-1])
            dy = tf.reshape(tf.convert_to_tensor(dy), [tf.shape(flat)[0], -1])
            unique, position = tf.unique(flat)
            summed = tf.math.unsorted_segment_sum(dy, position, tf.shape(unique)[0])
            writes = update([(unique, summed)])
            with tf.control_dependencies(writes):
                zero = tf.zeros_like(anchor_value)
            if variables is None:
                return zero
            return zero, [None] * len(variables)

        return rows, gradient

    return take(tf.convert_to_tensor(value_of(anchor)))


# No fused kernel of bags (`pooling.embedding_bag` is None): a stack with its
# own optimizer gathers its rows with `fused_take`, then pools them.
fused_bag = None


def row_chunks(ids, rows):
    """`(ids, rows)` whole: a compiled step's shapes are fixed."""
    yield ids, rows
