"""Row-wise int8 / int4 quantization of the embedding table.

Storage (the names and layout of Keras's quantized `Embedding`, so that its int8 and
per-row int4 weights load into ours):

* ``int8``: ``embeddings`` int8 ``(input_dim, output_dim)`` and ``embeddings_scale``
  float32 ``(input_dim,)``; a row is ``embeddings[i] / embeddings_scale[i]``.
* ``int4``: ``embeddings`` int8 ``(input_dim, ceil(output_dim / 2))``, two signed
  4-bit values a byte (``keras.quantizers.pack_int4`` along the last axis: the low
  nibble holds the even column), and ``embeddings_scale`` float32 ``(input_dim,)``,
  or ``(input_dim, groups)`` when a `block_size` smaller than ``output_dim`` splits
  each row into groups of columns with a scale each.

Scales are symmetric abs-max: ``scale = qmax / (max |row| + 1e-7)`` with ``qmax``
127 (int8) or 7 (int4), so the rounding error of an element is at most
``max |row| / (2 * qmax)``: 1/254 of the row's largest magnitude for int8, 1/14 for
int4 (of the group's, with groups).

Lookups gather the stored rows of the ids first and dequantize only those rows: the
cost grows with the number of ids, not with the vocabulary.
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from keras_embedding_plus import _ids

MODES = ("int8", "int4")
_QMAX = {"int8": 127, "int4": 7}
_EPSILON = 1e-7
# Error bound of one element, as a fraction of its row's (group's) max magnitude.
ERROR_BOUND = {mode: 1.0 / (2 * qmax) for mode, qmax in _QMAX.items()}


class UnsupportedModeError(ValueError, NotImplementedError):
    """An unsupported quantization mode.

    A `ValueError` for whoever calls `layer.quantize(mode)`; also a
    `NotImplementedError`, which `Model.quantize` turns into a warning and skips the
    layer, as it does for Keras's `Embedding` in modes it lacks (e.g. "float8").
    """


def check_mode(mode):
    if mode not in MODES:
        raise UnsupportedModeError(
            f"`mode` must be one of {MODES} for an Embedding layer. "
            f"Received: mode={mode!r}"
        )
    return mode


def guard_modes(keras_quantize):
    """Wrap Keras's `quantize` wrapper so that unknown modes list *our* modes.

    Keras checks the mode against every mode it knows ("float8", "gptq", ...) before
    the layer sees it.
    """

    @functools.wraps(keras_quantize)
    def quantize(mode=None, config=None, **kwargs):
        requested = config if isinstance(config, str) else mode
        if config is not None and not isinstance(config, str):
            requested = getattr(config, "mode", mode)
        if requested is not None:
            check_mode(requested)
        return keras_quantize(mode=mode, config=config, **kwargs)

    return quantize


def block_size(source, output_dim):
    """Columns per scale: `None` (one scale per row) or an int < output_dim.

    `source` is a quantization config or a dtype policy (`block_size` attribute,
    absent, `None` or -1 meaning one scale per row).
    """
    size = getattr(source, "block_size", None)
    if size is None or size == -1 or size >= output_dim:
        return None
    return int(size)


def policy_name(mode, block, base_name):
    """The dtype policy name Keras uses for a quantized layer."""
    if mode == "int4":
        return f"int4/{-1 if block is None else block}_from_{base_name}"
    return f"{mode}_from_{base_name}"


def _scale_shape(input_dim, output_dim, block):
    if block is None:
        return (input_dim,)
    return (input_dim, math.ceil(output_dim / block))


def add_weights(add_weight, input_dim, output_dim, mode, block):
    """Create the frozen stored table and its scales with `add_weight`."""
    width = output_dim if mode == "int8" else (output_dim + 1) // 2
    table = add_weight(
        name="embeddings",
        shape=(input_dim, width),
        initializer="zeros",
        dtype="int8",
        trainable=False,
    )
    scale = add_weight(
        name="embeddings_scale",
        shape=_scale_shape(input_dim, output_dim, block),
        initializer="ones",
        dtype="float32",
        trainable=False,
        # Not cast to a mixed policy's float16 compute dtype, where large
        # scales (rows of small values) would overflow.
        autocast=False,
    )
    return table, scale


def quantize_table(table, mode, block):
    """Quantize a float `(input_dim, output_dim)` table (on the host, in NumPy).

    Returns `(stored, scale)` NumPy arrays, laid out as `add_weights` creates them.
    """
    values = np.asarray(ops.convert_to_numpy(table), dtype="float32")
    input_dim, output_dim = values.shape
    qmax = _QMAX[mode]
    if block is not None:
        groups = math.ceil(output_dim / block)
        padded = np.zeros((input_dim, groups * block), "float32")
        padded[:, :output_dim] = values
        values = padded.reshape(input_dim, groups, block)
    quantized, scale = keras.quantizers.abs_max_quantize(
        values, axis=-1, value_range=(-qmax, qmax), epsilon=_EPSILON, to_numpy=True
    )
    quantized = ops.convert_to_numpy(quantized).reshape(input_dim, -1)[:, :output_dim]
    scale = ops.convert_to_numpy(scale).astype("float32").squeeze(-1)
    if mode == "int4":
        packed, _, _ = keras.quantizers.pack_int4(quantized, axis=-1)
        quantized = ops.convert_to_numpy(packed)
    return quantized.astype("int8"), scale


def _unpack_int4(packed, output_dim):
    """Signed 4-bit values from int8 bytes along the last axis (any rank).

    Byte k holds column 2k in its low nibble and column 2k + 1 in its high nibble
    (`keras.quantizers.pack_int4`); arithmetic shifts of the int8 bytes
    sign-extend each nibble.
    """
    low = ops.right_shift(ops.left_shift(packed, 4), 4)
    high = ops.right_shift(packed, 4)
    pairs = ops.stack([low, high], axis=-1)
    shape = ops.shape(packed)
    values = ops.reshape(pairs, (*shape[:-1], 2 * shape[-1]))
    if 2 * shape[-1] != output_dim:
        values = values[..., :output_dim]
    return values


def _with_group_axis(scale):
    """Scales as `(input_dim, groups)`: one group is a trailing axis of 1."""
    return ops.expand_dims(scale, -1) if len(scale.shape) == 1 else scale


def dequantize(stored, scale, mode, output_dim, block, filled=False):
    """Float32 rows from stored rows and their scales (any leading shape).

    `scale` is the `embeddings_scale` variable or the rows of it gathered with
    `gather`. `filled`: some rows were gathered as zeros with zero scales (invalid
    ids): they dequantize to zeros.
    """
    if mode == "int4":
        stored = _unpack_int4(stored, output_dim)
    values = ops.cast(stored, "float32")
    scale = _with_group_axis(scale)
    if block is not None:
        scale = ops.take(scale, np.arange(output_dim) // block, axis=-1)
    return ops.divide_no_nan(values, scale) if filled else values / scale


def gather(stored, scale, ids, valid, mode, output_dim, block):
    """Dequantized float32 rows of `ids`: gather first, dequantize those rows.

    `(ids, valid)` come from `_ids.prepare_ids`; returns `(rows, valid)` as
    `_ids.take` does (`valid` is `None` where invalid ids' rows already are zero).
    """
    rows, rows_valid = _ids.take(stored, ids, valid)
    scales, _ = _ids.take(_with_group_axis(scale), ids, valid)
    filled = valid is not None and rows_valid is None
    return dequantize(rows, scales, mode, output_dim, block, filled), rows_valid
