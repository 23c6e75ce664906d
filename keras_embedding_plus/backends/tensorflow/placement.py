"""TensorFlow: where the table lives (`device=`): `tf.device`."""

import contextlib
import warnings

import tensorflow as tf

from keras_embedding_plus.backends.tensorflow.core import value_of

DEVICE_TYPES = ("cpu", "gpu", "cuda", "tpu", "host")


def visible_devices():
    return [
        f"{d.device_type.lower()}:{d.name.rsplit(':', 1)[-1]}"
        for d in tf.config.list_logical_devices()
    ]


def resolve_device(device):
    if device == "host":
        return "/device:CPU:0"
    kind, _, index = device.partition(":")
    kind = "gpu" if kind == "cuda" else kind
    devices = tf.config.list_logical_devices(kind.upper())
    if not devices or (index and int(index) >= len(devices)):
        return None
    return devices[int(index) if index else 0].name


def build_placement(placement):
    if placement is not None and tf.distribute.has_strategy():
        warnings.warn(
            "Embedding `device` is ignored under a `tf.distribute` strategy: "
            "the strategy places the table.",
            stacklevel=4,
        )
        return None
    return placement


def build_scope(placement, shape):
    del shape
    return contextlib.nullcontext() if placement is None else tf.device(placement)


def pin(variable, placement):
    del variable
    return placement


def take(table, ids, placement, sparse=False):
    # A variable's `value` is the `tf.Variable`: a ResourceGather, whose gradient
    # is row-sparse (`IndexedSlices`) with or without `sparse`.
    del sparse
    with tf.device(placement):
        rows = tf.gather(value_of(table), ids)
    # Outside the scope: the rows alone move to where the model runs.
    if isinstance(rows, tf.RaggedTensor):
        return rows.with_flat_values(tf.identity(rows.flat_values))
    return tf.identity(rows)


def fetch(table, placement):
    del placement  # TensorFlow copies between devices by itself.
    return value_of(table)
