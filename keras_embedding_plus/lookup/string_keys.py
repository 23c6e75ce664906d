"""Strings as 64-bit keys: the hash of `DynamicEmbedding(key_dtype="string")`.

A string's key is the BLAKE2b digest (RFC 7693, `hashlib.blake2b`) of 8 bytes of
its UTF-8 encoding (bytes are taken as they are), read as a little-endian
signed int64. It is the same in every process (unlike Python's `hash`), on
every platform and every backend: the same code computes it everywhere. The
one key the map reserves, `2**63 - 1`, is mapped to `2**63 - 2`.

Strings cannot be JAX or PyTorch tensors: there, strings are hashed on the host
(eager calls, or the data pipeline, `hash_strings` in a `tf.data` map or a
`PyDataset`), and the model takes their int64 keys. TensorFlow string tensors,
in graphs too, are hashed by the same function (`tf.numpy_function`).
"""

import hashlib

import numpy as np

RESERVED = np.iinfo(np.int64).max


def _key(value):
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, (bytes, np.bytes_)):
        data = bytes(value)
    else:
        raise ValueError(
            "`hash_strings` takes strings (str or bytes). Received: a value of "
            f"type {type(value).__name__}: {value!r}."
        )
    digest = hashlib.blake2b(data, digest_size=8).digest()
    key = int.from_bytes(digest, "little", signed=True)
    return RESERVED - 1 if key == RESERVED else key


def _hash_array(strings):
    array = np.asarray(strings, dtype=object)
    flat = [_key(value) for value in array.reshape(-1)]
    return np.asarray(flat, np.int64).reshape(array.shape)


def is_tf_strings(x):
    """Whether `x` is a TensorFlow tensor of strings (eager or symbolic)."""
    dtype = getattr(x, "dtype", None)
    return type(x).__module__.startswith("tensorflow") and (
        getattr(dtype, "name", None) == "string"
    )


def is_host_strings(x):
    """Whether `x` is strings held by Python or NumPy: a str, bytes, a (nested)
    list of them, or a NumPy array of str, bytes or such objects."""
    if isinstance(x, (str, bytes)):
        return True
    if isinstance(x, (list, tuple)) or (
        isinstance(x, np.ndarray) and x.dtype.kind in "USO"
    ):
        array = np.asarray(x, dtype=object).reshape(-1)
        return array.size > 0 and isinstance(array[0], (str, bytes, np.bytes_))
    return False


def hash_strings(strings):
    """The int64 keys of `strings` (the documented hash above), in their shape.

    Takes a str, bytes, nested lists of them, NumPy arrays of them, or a
    TensorFlow string tensor (in a `tf.data` map or a `tf.function` too, on any
    Keras backend), and returns NumPy int64 (a `tf.int64` tensor for a
    TensorFlow one).
    """
    if is_tf_strings(strings):
        import tensorflow as tf

        keys = tf.numpy_function(_hash_array, [strings], tf.int64, stateful=False)
        keys.set_shape(strings.shape)
        return keys
    if not is_host_strings(strings):
        raise ValueError(
            "`hash_strings` takes strings: str, bytes, lists or NumPy arrays of "
            "them, or a TensorFlow string tensor. Received: a value of type "
            f"{type(strings).__name__}."
        )
    return _hash_array(strings)
