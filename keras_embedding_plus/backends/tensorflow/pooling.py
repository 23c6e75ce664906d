"""TensorFlow: pooled lookups of `EmbeddingBag` (sparse ids as bags, segment
reductions)."""

import tensorflow as tf
from keras import ops


def sparse_bags(ids, weights):
    """`(values, segments, num_segments, outer_shape, weights)` of a
    `tf.SparseTensor` `(batch, ..., L)`: each stored id with its bag's flat
    index."""
    if not isinstance(ids, tf.SparseTensor):
        raise ValueError(
            "Sparse ids on TensorFlow must be a `tf.SparseTensor`. Received: "
            f"{type(ids).__name__}."
        )
    if weights is not None:
        weights = weights.values
    dense_shape = ids.dense_shape
    strides = tf.math.cumprod(dense_shape[:-1], exclusive=True, reverse=True)
    segments = tf.reduce_sum(ids.indices[:, :-1] * strides, axis=1)
    count = tf.reduce_prod(dense_shape[:-1])
    return ids.values, segments, count, tuple(ids.shape[:-1]), weights


def segment(data, segments, num_segments, how, sorted=False):
    """Per-segment sums or maxima; sorted segments take TensorFlow's sorted
    kernels (about 2x faster on CPU), padded to `num_segments` rows."""
    if not sorted:
        if how == "sum":
            return ops.segment_sum(data, segments, num_segments=num_segments)
        return ops.segment_max(data, segments, num_segments=num_segments)
    reduce = tf.math.segment_sum if how == "sum" else tf.math.segment_max
    out = reduce(data, segments)
    missing = tf.cast(num_segments, tf.int32) - tf.shape(out)[0]
    return tf.pad(out, [[0, missing]] + [[0, 0]] * (len(data.shape) - 1))


embedding_bag = None  # No fused kernel: rows are gathered, then pooled.
