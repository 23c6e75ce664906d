"""Keras 1 and Keras 2 (tf.keras) argument and config translation, in one place."""

import warnings

# Keras 1 argument name -> Keras 2/3 argument name.
KERAS1_ARGUMENTS = {
    "init": "embeddings_initializer",
    "W_regularizer": "embeddings_regularizer",
    "W_constraint": "embeddings_constraint",
}

# Keras 1 serialized {"name": ...} regularizers / constraints -> Keras 3 class names
# and how their arguments were called then.
_KERAS1_OBJECTS = {
    "WeightRegularizer": ("L1L2", {}),
    "ActivityRegularizer": ("L1L2", {}),
    "L1L2Regularizer": ("L1L2", {}),
    "MaxNorm": ("MaxNorm", {"m": "max_value"}),
    "NonNeg": ("NonNeg", {}),
    "UnitNorm": ("UnitNorm", {}),
}

# Keras 1 initializer names that Keras 3 spells differently.
_KERAS1_INITIALIZERS = {"zero": "zeros", "one": "ones"}

# Keys of old configs that carry no meaning for this layer.
_DROPPED_KEYS = ("input_dtype",)


def _translate_object(value):
    """A Keras 1 serialized initializer / regularizer / constraint, in Keras 3 form."""
    if isinstance(value, str):
        return _KERAS1_INITIALIZERS.get(value, value)
    if isinstance(value, dict) and "name" in value and "class_name" not in value:
        config = dict(value)
        name = config.pop("name")
        class_name, renames = _KERAS1_OBJECTS.get(name, (name, {}))
        config = {renames.get(k, k): v for k, v in config.items()}
        return {"class_name": class_name, "config": config}
    return value


def keras1_aliases(kwargs, given):
    """Pop Keras 1 argument names out of `kwargs`, warning for each.

    `given` maps each new argument name to the value the caller passed (or its
    default, then `None` for "not given"). Returns the translated values.
    """
    translated = {}
    for old, new in KERAS1_ARGUMENTS.items():
        if old not in kwargs:
            continue
        value = kwargs.pop(old)
        if given[new] is not None:
            raise ValueError(
                f"Pass either `{old}` (Keras 1 name) or `{new}`, not both. "
                f"Received: {old}={value!r}, {new}={given[new]!r}."
            )
        warnings.warn(
            f"Argument `{old}` is the Keras 1 name of `{new}`; use `{new}`.",
            DeprecationWarning,
            stacklevel=3,
        )
        translated[new] = _translate_object(value)
    return translated


def _translate_dtype(dtype):
    """tf.keras 2's mixed-precision `{"class_name": "Policy", ...}` as a name."""
    if isinstance(dtype, dict) and dtype.get("class_name") == "Policy":
        return dtype.get("config", {}).get("name", dtype)
    return dtype


def _length_from_shape(shape):
    """`input_length` from a Keras 1/2 (batch_)input_shape without its batch axis."""
    shape = tuple(shape)
    if len(shape) == 1:
        return shape[0]
    return shape


def translate_config(config):
    """A config written by Keras 1, tf.keras 2 or Keras 3, in this layer's form."""
    config = dict(config)
    for old, new in KERAS1_ARGUMENTS.items():
        if old in config:
            value = config.pop(old)
            if config.get(new) is not None:
                raise ValueError(
                    f"The config holds both `{old}` (Keras 1 name) and `{new}`. "
                    f"Received: {old}={value!r}, {new}={config[new]!r}."
                )
            config[new] = _translate_object(value)
    for key in _DROPPED_KEYS:
        config.pop(key, None)
    if "dtype" in config:
        config["dtype"] = _translate_dtype(config["dtype"])
    batch_input_shape = config.pop("batch_input_shape", None)
    input_shape = config.pop("input_shape", None)
    if config.get("input_length") is None:
        if batch_input_shape is not None and len(batch_input_shape) > 1:
            config["input_length"] = _length_from_shape(batch_input_shape[1:])
        elif input_shape is not None and len(input_shape) > 0:
            config["input_length"] = _length_from_shape(input_shape)
    if isinstance(config.get("input_length"), list):
        config["input_length"] = tuple(config["input_length"])
    for key in ("activity_regularizer",):
        if key in config:
            config[key] = _translate_object(config[key])
    return config
