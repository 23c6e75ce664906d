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


def unique_rows(gradient):
    ids, position = tf.unique(tf.reshape(gradient.indices, [-1]))
    values = tf.reshape(gradient.values, [-1, *gradient.values.shape[1:]])
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
    values = tf.reshape(gradient.values, [-1, *gradient.values.shape[1:]])
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
