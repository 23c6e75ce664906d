"""int8 / int4 quantization of the embedding table, in Keras 3.15's formats.

The variables, their names, order, shapes and meaning are those of Keras's quantized
`keras.layers.Embedding`, so that its weights load into ours and back:

* ``int8``: ``embeddings`` int8 ``(input_dim, output_dim)`` and ``embeddings_scale``
  ``(input_dim,)``; a row is ``embeddings[i] / embeddings_scale[i]`` (symmetric
  abs-max, values in [-127, 127]).
* ``int4``, one scale per row (``block_size`` None or -1): ``embeddings`` int8
  ``(input_dim, ceil(output_dim / 2))``, two signed 4-bit values a byte
  (``keras.quantizers.pack_int4``), and ``embeddings_scale`` ``(input_dim,)``;
  symmetric abs-max into [-8, 7].
* ``int4`` with ``block_size`` b (groups of b columns): the same packed table,
  ``embeddings_scale`` and ``embeddings_zero`` (int8) of shape
  ``(input_dim, ceil(output_dim / b))``, and ``g_idx`` float32 ``(output_dim,)``,
  the group of each column. A value is ``(q - zero) * scale`` (asymmetric,
  ``keras.quantizers.abs_max_quantize_grouped_with_zero_point``).

The block size is resolved as Keras 3.15 resolves it: an `Int4QuantizationConfig`'s
``block_size`` (default 128, so a bare ``quantize("int4")`` is grouped; a block
wider than the row is one group), else the dtype policy's (``"int4/64_from_..."``),
else one scale per row (the legacy ``"int4_from_..."`` policy name).

Lookups (`_lookup.QuantizedStorage`) gather the stored rows of the ids first and
dequantize only those rows.
"""

import math

import keras
import numpy as np
from keras import ops

MODES = ("int8", "int4")
_RANGE = {"int8": (-127, 127), "int4": (-8, 7)}


class UnsupportedModeError(ValueError, NotImplementedError):
    """A quantization mode the embedding table cannot take.

    Its text starts as Keras's ("Invalid quantization mode."). A `ValueError`, and
    also a `NotImplementedError`, which `Model.quantize` turns into a warning and
    skips the layer, as it does for Keras's `Embedding` in modes it lacks.
    """


def mode_error(mode, where=""):
    return UnsupportedModeError(
        f"Invalid quantization mode. Expected one of {MODES}. "
        f"Received: quantization_mode={mode}{where}"
    )


def check_policy(policy):
    """A dtype policy's quantization mode must be one the table can take."""
    if policy.quantization_mode not in (None, *MODES):
        raise mode_error(policy.quantization_mode, f" (dtype={policy.name!r})")


def check_mode(mode):
    if mode not in MODES:
        raise mode_error(mode)
    return mode


def resolve_block_size(policy, config, mode):
    """Columns per int4 group as Keras resolves it (`None` or -1: one per row).

    Kept as given (Keras's `_int4_block_size` keeps a config's -1);
    `normalize_block` normalises it.
    """
    if mode != "int4":
        return None
    if isinstance(config, keras.quantizers.Int4QuantizationConfig):
        return config.block_size
    size = getattr(policy, "block_size", None)
    return None if size is None or size == -1 else int(size)


def normalize_block(size):
    """Columns per int4 group, or `None` for one scale per row (`None` or -1)."""
    return None if size is None or size == -1 else int(size)


def policy_name(mode, block, base_name):
    """The dtype policy name Keras gives a layer it quantizes."""
    if mode == "int4":
        return f"int4/{-1 if block is None else block}_from_{base_name}"
    return f"{mode}_from_{base_name}"


def _groups(output_dim, block):
    return math.ceil(output_dim / block)


def add_frozen(add_weight, name, shape, initializer, dtype=None):
    """One frozen quantization variable, made by a layer's `add_weight` (never
    autocast: a mixed policy's float16 would overflow the scales of rows of
    small values)."""
    return add_weight(
        name=name,
        shape=shape,
        initializer=initializer,
        dtype=dtype,
        trainable=False,
        autocast=False,
    )


def variable_shapes(input_dim, output_dim, mode, block_size):
    """`(table_shape, scale_shape)` of a quantized `(input_dim, output_dim)`
    table (the zero points, with int4 blocks, have the scales' shape)."""
    block = normalize_block(block_size)
    width = output_dim if mode == "int8" else (output_dim + 1) // 2
    scale_shape = (input_dim,)
    if block is not None:
        scale_shape = (input_dim, _groups(output_dim, block))
    return (input_dim, width), scale_shape


def add_weights(add_weight, input_dim, output_dim, mode, block_size):
    """Create the frozen quantized variables with `add_weight`, in Keras's order.

    Returns the tuple `(embeddings, embeddings_scale)`, with
    `(embeddings_zero, g_idx)` after them for int4 blocks: the layer keeps them.
    """
    block = normalize_block(block_size)
    shape, scale_shape = variable_shapes(input_dim, output_dim, mode, block_size)
    table = add_frozen(add_weight, "embeddings", shape, "zeros", "int8")
    scale = add_frozen(add_weight, "embeddings_scale", scale_shape, "ones", "float32")
    if block is None:
        return table, scale
    zero = add_frozen(add_weight, "embeddings_zero", scale_shape, "zeros", "int8")
    g_idx = add_frozen(add_weight, "g_idx", (output_dim,), "zeros", "float32")
    g_idx.assign(np.arange(output_dim, dtype="float32") // block)
    return table, scale, zero, g_idx


def quantize_table(table, mode, block, config=None):
    """Quantize a float `(input_dim, output_dim)` table (on the host, in NumPy).

    Returns the values of the stored variables (`add_weights`), minus `g_idx`
    (fixed by the block).
    `config`'s `weight_quantizer`, when set, replaces the default abs-max one of
    the per-row modes, as in Keras.
    """
    values = np.asarray(ops.convert_to_numpy(table), dtype="float32")
    block = normalize_block(block)
    if mode == "int4" and block is not None:
        quantized_t, scale_t, zero_t = (
            keras.quantizers.abs_max_quantize_grouped_with_zero_point(
                values.T, block_size=block, value_range=_RANGE["int4"], to_numpy=True
            )
        )
        quantized = np.asarray(ops.convert_to_numpy(quantized_t)).T
        extra = [
            np.asarray(ops.convert_to_numpy(scale_t)).T.astype("float32"),
            np.asarray(ops.convert_to_numpy(zero_t)).T.astype("int8"),
        ]
    else:
        default = keras.quantizers.AbsMaxQuantizer(
            axis=-1, value_range=_RANGE[mode], output_dtype="int8"
        )
        quantizer = default
        if config is not None:
            quantizer = keras.quantizers.QuantizationConfig.weight_quantizer_or_default(
                config, default
            )
        quantized, scale = quantizer(values, to_numpy=True)
        quantized = np.asarray(ops.convert_to_numpy(quantized))
        extra = [np.asarray(ops.convert_to_numpy(scale)).astype("float32")[..., 0]]
    if mode == "int4":
        packed, _, _ = keras.quantizers.pack_int4(quantized.astype("int8"), axis=-1)
        quantized = ops.convert_to_numpy(packed)
    return [np.asarray(quantized).astype("int8"), *extra]


def _unpack_int4(packed, output_dim):
    """Signed 4-bit values from int8 bytes along the last axis (any rank).

    Byte k holds column 2k in its low nibble and column 2k + 1 in its high nibble
    (`keras.quantizers.pack_int4`); arithmetic shifts sign-extend each nibble.
    """
    low = ops.right_shift(ops.left_shift(packed, 4), 4)
    high = ops.right_shift(packed, 4)
    pairs = ops.stack([low, high], axis=-1)
    shape = ops.shape(packed)
    values = ops.reshape(pairs, (*shape[:-1], 2 * shape[-1]))
    if 2 * shape[-1] != output_dim:
        values = values[..., :output_dim]
    return values


def unpacked(stored, mode, output_dim):
    """The stored integer values, int4 unpacked (what Keras's `embeddings` is)."""
    return _unpack_int4(stored, output_dim) if mode == "int4" else stored


def dequantize(parts, mode, output_dim, block, filled=False):
    """Float32 rows from gathered stored rows (`parts`: as `add_weights`).

    `filled`: some rows were gathered as zeros with zero scales (invalid ids):
    they dequantize to zeros.
    """
    values = ops.cast(unpacked(parts[0], mode, output_dim), "float32")
    scale = ops.cast(parts[1], "float32")
    if block is None:
        scale = ops.expand_dims(scale, -1)
        return ops.divide_no_nan(values, scale) if filled else values / scale
    # Each group's scale and zero point repeated over its `block` columns (no
    # NumPy index array: under `torch.compile` one broke the graph 8 times).
    scale = ops.repeat(scale, block, axis=-1)[..., :output_dim]
    zero = ops.repeat(ops.cast(parts[2], "float32"), block, axis=-1)
    return (values - zero[..., :output_dim]) * scale


def check_config(config):
    """`None` or a `keras.quantizers.QuantizationConfig` (a serialized one too)."""
    if isinstance(config, dict):
        config = keras.saving.deserialize_keras_object(config)
    if config is None or isinstance(config, keras.quantizers.QuantizationConfig):
        return config
    raise ValueError(
        "`quantization_config` must be None or a `keras.quantizers."
        "QuantizationConfig` (e.g. `Int8QuantizationConfig()`, "
        "`Int4QuantizationConfig(block_size=64)`). "
        f"Received: quantization_config={config!r} (of type {type(config).__name__})."
    )


def merged(table, stored, mode, block_size):
    """What a LoRA layer saves: `stored` with the merged float `table` in place
    of the table's variables (re-quantized when `mode` is set)."""
    if not mode:
        return [ops.cast(table, stored[0].dtype), *stored[1:]]
    values = quantize_table(table, mode, block_size)
    return [*values, *stored[len(values) :]]
