"""TensorFlow: rows of a variable read, written and filled by blocks (big tables
built, saved and loaded by blocks), and snapshots of a variable's value."""

import tensorflow as tf

from keras_embedding_plus.backends.tensorflow.core import value_of


def snapshot(variable):
    """A copy, where the variable lives (`assign` writes in place)."""
    return tf.identity(variable.value)


def writes_rows_in_place():
    """Eagerly, outside a `tf.distribute` strategy (whose variables have a copy
    per replica)."""
    return tf.executing_eagerly() and not tf.distribute.has_strategy()


def builds_by_blocks():
    return writes_rows_in_place()


def write_rows(variable, start, rows):
    """Rows `start ...` of the variable set to `rows`, in place.

    The raw strided-slice assign: `variable[a:b].assign(...)` first reads the
    variable, and the slice it reads shares the variable's buffer, so the
    assign copies the whole table (copy on write).
    """
    value = value_of(variable)
    rows = tf.cast(rows, value.dtype)
    tf.raw_ops.ResourceStridedSliceAssign(
        ref=value.handle,
        begin=[start],
        end=[start + rows.shape[0]],
        strides=[1],
        value=rows,
    )
    _dense_reads(value)


def read_rows(variable, start, stop):
    """Rows `start:stop` of a variable: a gather, which copies those rows only.

    A dense read of a variable that a sparse op touched (a gather, a
    scatter, `write_rows`) copies the whole table first (TensorFlow's
    copy-on-read mode).
    """
    rows = tf.gather(value_of(variable), tf.range(start, stop))
    _dense_reads(value_of(variable))
    return rows


def _dense_reads(value):
    """Copy-on-read mode off again, after `write_rows` / `read_rows`.

    A sparse access (the strided-slice assign, a gather) switches a variable
    to copy-on-read mode, which it keeps: every dense read (the default
    lookup, the optimizer's update) then copies the whole table. A big table
    built by blocks read at 0.47x Keras's speed. Turning the mode off copies
    nothing (no other tensor shares the buffer in that mode).
    """
    tf.raw_ops.DisableCopyOnRead(resource=value.handle)


def fill_rows(variable, start, rows):
    """`write_rows` into a table being built (`_chunks.initialize`)."""
    write_rows(variable, start, rows)


def gathered(value):
    """`value` itself: every process holds whole tables here."""
    return value
