"""Checks of `Embedding`'s constructor arguments, each a Keras-style `ValueError`.

The argument in backticks, what is allowed, then `Received: name=value (of type
T).`; `bool` is refused where a number is expected. `from_config` turns these into
`TypeError`s with the same text, as Keras does.
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_embedding_plus.layers import legacy
from keras_embedding_plus.lookup import quantization

# PyTorch's argument names -> ours: where code is ported from `nn.Embedding` /
# `nn.EmbeddingBag`, the error names our argument. (Hints rather than aliases:
# one name per argument keeps configs single, and `bag(ids, offsets)`, torch's
# call, cannot be an alias: the second positional argument is `weights`, as in
# Keras.)
_TORCH_NAMES = {
    "num_embeddings": "`input_dim`",
    "embedding_dim": "`output_dim`",
    "mode": "`combiner` (one of 'sum', 'mean', 'sqrtn', 'max')",
    "per_sample_weights": "`weights=`, per-id weights of the shape of the ids",
    "_weight": "`weights=[table]`",
}


def first_given(kwargs, names):
    """The first of `names` that `kwargs` holds, or None."""
    return next((name for name in names if name in kwargs), None)


def check_refused(class_name, kwargs, reasons):
    """A `ValueError` for the first argument of `reasons` (name -> why the layer
    does not take it) in `kwargs`."""
    name = first_given(kwargs, reasons)
    if name is not None:
        raise ValueError(
            f"`{class_name}` does not take `{name}`: {reasons[name]}. Received: "
            f"{name}={kwargs[name]!r}."
        )


def check_torch_names(class_name, kwargs):
    """A `ValueError` naming our equivalent for the first PyTorch name in `kwargs`."""
    name = first_given(kwargs, _TORCH_NAMES)
    if name is not None:
        ours = _TORCH_NAMES[name]
        if name == "mode" and class_name != "EmbeddingBag":
            ours = "`EmbeddingBag(..., combiner=...)`: `Embedding` does not pool"
        raise ValueError(
            f"`{name}` is PyTorch's name; {class_name}'s equivalent is {ours}. "
            f"Received: {name}={kwargs[name]!r}."
        )


def check_bag_call(args, kwargs):
    """A hint for torch's `bag(ids, offsets)` / `per_sample_weights=` calls."""
    check_torch_names("EmbeddingBag", kwargs)
    offsets = kwargs.get("offsets")
    if offsets is None and len(args) >= 2 and _looks_like_offsets(args[0], args[1]):
        offsets = args[1]
    if offsets is not None:
        raise ValueError(
            "Bags given as ids and offsets are one argument, a tuple: "
            "`bag((ids, offsets))` (PyTorch's `bag(ids, offsets)` would pass the "
            "offsets as per-id `weights`, the second argument here). Received: "
            f"offsets of shape {tuple(np.shape(offsets))}."
        )


def _looks_like_offsets(ids, weights):
    """1-D integer `weights` next to 1-D ids, of another length: offsets."""
    if isinstance(ids, (tuple, list)) or weights is None:
        return False
    dtype = getattr(weights, "dtype", None)
    if dtype is None:
        return False
    shape, ids_shape = tuple(weights.shape), tuple(getattr(ids, "shape", ()))
    return (
        len(shape) == 1
        and len(ids_shape) == 1
        and shape != ids_shape
        and "int" in keras.backend.standardize_dtype(dtype)
    )


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_dim(name, value, minimum):
    if not _is_int(value) or value < minimum:
        allowed = "a positive integer"
        if minimum == 0:  # Keras 3's text, then what Keras 1 / 2 also allowed.
            allowed += " (or 0, an empty last axis, as in Keras 1 and 2)"
        raise ValueError(
            f"`{name}` must be {allowed}. "
            f"Received: {name}={value!r} (of type {type(value).__name__})."
        )
    return int(value)


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"`{name}` must be a boolean. "
            f"Received: {name}={value!r} (of type {type(value).__name__})."
        )
    return bool(value)


def check_input_length(input_length):
    if input_length is None:
        return None
    if _is_int(input_length) and input_length >= 1:
        return int(input_length)
    if isinstance(input_length, (tuple, list)) and all(
        d is None or (_is_int(d) and d >= 1) for d in input_length
    ):
        return tuple(None if d is None else int(d) for d in input_length)
    raise ValueError(
        "`input_length` must be None, a positive integer, or a tuple/list of "
        "positive integers or None (one per axis after the batch axis). "
        f"Received: input_length={input_length!r} "
        f"(of type {type(input_length).__name__})."
    )


def check_dropout(dropout):
    if (
        not isinstance(dropout, numbers.Real)
        or isinstance(dropout, bool)
        or not 0 <= dropout < 1
    ):
        raise ValueError(
            "`dropout` must be a float in [0, 1). "
            f"Received: dropout={dropout!r} (of type {type(dropout).__name__})."
        )
    return float(dropout)


def check_initial_table(weights, shape):
    if isinstance(weights, (list, tuple)) and len(weights) == 1:
        weights = weights[0]  # Keras 1 form: a one-element list.
    value = np.asarray(ops.convert_to_numpy(weights))
    if value.shape != shape:
        raise ValueError(
            f"`weights` must be an (input_dim, output_dim) = {shape} array or a "
            f"one-element list of it. Received: weights of shape {value.shape}."
        )
    return value


def table_objects(kwargs, initializer, regularizer, constraint):
    """The table's initializer, regularizer and constraint, Keras 1 names resolved.

    `init`, `W_regularizer` and `W_constraint` are taken out of `kwargs` (with a
    `DeprecationWarning`; both spellings at once is a `ValueError`).
    """
    aliases = legacy.keras1_aliases(
        kwargs,
        {
            "embeddings_initializer": None if initializer == "uniform" else initializer,
            "embeddings_regularizer": regularizer,
            "embeddings_constraint": constraint,
        },
    )
    return (
        keras.initializers.get(aliases.get("embeddings_initializer", initializer)),
        keras.regularizers.get(aliases.get("embeddings_regularizer", regularizer)),
        keras.constraints.get(aliases.get("embeddings_constraint", constraint)),
    )


def check_length(name, input_length, shape):
    """Ids of `shape` against `input_length` (None: any)."""
    if input_length is None:
        return
    expected = input_length if isinstance(input_length, tuple) else (input_length,)
    received = tuple(shape)[1:]
    if len(received) != len(expected) or any(
        e is not None and r is not None and e != r
        for e, r in zip(expected, received, strict=False)
    ):
        raise ValueError(
            f"Layer '{name}' expects ids of length {input_length} "
            f"(`input_length`), but it was called with ids of length "
            f"{received[0] if len(received) == 1 else received} "
            f"(shape {tuple(shape)})."
        )


def from_config_arguments(class_name, config):
    """A config written by Keras 1, tf.keras 2 or Keras 3, as constructor arguments.

    Errors are `TypeError`s, with the constructor's text, as Keras's `from_config`
    raises them.
    """
    try:
        config = legacy.translate_config(config)
        config["quantization_config"] = quantization.check_config(
            config.get("quantization_config")
        )
    except ValueError as e:
        raise TypeError(
            f"Error when deserializing class '{class_name}' using "
            f"config={config}.\n\nException encountered: {e}"
        ) from e
    return config


# Config entries stored as they are (the table objects are serialized).
PLAIN_CONFIG = (
    "input_dim",
    "output_dim",
    "mask_zero",
    "dropout",
    "lora_rank",
    "lora_alpha",
    "max_norm",
    "norm_type",
    "sparse",
    "device",
    "padding_idx",
    "invalid_ids",
)
SERIALIZED_CONFIG = {
    "embeddings_initializer": keras.initializers.serialize,
    "embeddings_regularizer": keras.regularizers.serialize,
    "activity_regularizer": keras.regularizers.serialize,
    "embeddings_constraint": keras.constraints.serialize,
    "quantization_config": keras.saving.serialize_keras_object,
}
# Every entry `Embedding.get_config` adds, in the order it writes them.
CONFIG_ENTRIES = (*PLAIN_CONFIG, *SERIALIZED_CONFIG, "input_length")


def config_entries(arguments):
    """The config entries of the layer's `arguments` (by name, `CONFIG_ENTRIES`):
    initializers, regularizers, constraints and the quantization config
    serialized, a tuple `input_length` as a list."""
    config = {name: arguments[name] for name in PLAIN_CONFIG}
    for name, serialize in SERIALIZED_CONFIG.items():
        config[name] = serialize(arguments[name])
    length = arguments["input_length"]
    config["input_length"] = list(length) if isinstance(length, tuple) else length
    return config
