"""The `ReversibleEmbedding` layer: an `Embedding` that also projects back."""

from __future__ import annotations

import functools
import numbers
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_embedding_plus import compat
from keras_embedding_plus.layers.arguments import check_initial_table
from keras_embedding_plus.layers.embedding import Embedding
from keras_embedding_plus.layers.masking import padding_mask
from keras_embedding_plus.lookup import max_norm as _max_norm
from keras_embedding_plus.lookup import quantization as _quantization


class _KeepMask(keras.layers.Layer):
    """Returns its input with the `mask` it is given attached.

    Keras attaches a mask to a layer's outputs through its own `__call__`
    (`supports_masking` and a `mask` argument); passing the outputs through this
    layer is how `ReversibleEmbedding.call` attaches the padding mask while its
    `compute_mask` returns None, as Keras's `ReversibleEmbedding` does.
    """

    def __init__(self):
        super().__init__(name="keep_mask", autocast=False)
        self.supports_masking = True
        self.built = True

    def call(self, inputs, mask=None):
        del mask  # Attached by `Layer.__call__`.
        return inputs


_KEEP_MASK = _KeepMask()


def _with_mask(outputs, mask):
    if isinstance(outputs, keras.KerasTensor):
        return compat.set_symbolic_mask(outputs, mask)
    return _KEEP_MASK(outputs, mask=mask)


def _check_soft_cap(logit_soft_cap):
    if logit_soft_cap is None:
        return None
    if (
        isinstance(logit_soft_cap, numbers.Real)
        and not isinstance(logit_soft_cap, bool)
        and logit_soft_cap > 0
    ):
        return logit_soft_cap
    raise ValueError(
        "`logit_soft_cap` must be None or a positive number. "
        f"Received: logit_soft_cap={logit_soft_cap!r} "
        f"(of type {type(logit_soft_cap).__name__})."
    )


@keras.saving.register_keras_serializable(package="keras_embedding_plus")
class ReversibleEmbedding(Embedding):
    """An embedding layer which can also project back to the vocabulary.

    A drop-in replacement for `keras.layers.ReversibleEmbedding` built on this
    package's `Embedding`: every option of `Embedding` (the index policy, the Keras
    1 / 2 arguments, quantization, LoRA, `max_norm`, `dropout`, `sparse`,
    `device`...) is accepted through `**kwargs` and applies to the forward lookup.

    Called with `reverse=True`, the layer projects vectors of size `output_dim`
    linearly to logits over the `input_dim` ids. By default the projection is the
    transpose of the embedding table ("tied" weights: quantized, LoRA-adapted and
    `max_norm`-renormalised tables included, as `Embedding.attend`); with
    `tie_weights=False` it is a separate trainable `reverse_embeddings` matrix of
    shape `(output_dim, input_dim)`. The projection has no bias.

    Args:
        input_dim: Integer. Size of the vocabulary, i.e. maximum integer index + 1.
        output_dim: Integer. Dimension of the dense embedding.
        tie_weights: Boolean. Whether the reverse projection uses the transposed
            embedding table (`True`) or its own `reverse_embeddings` matrix,
            initialized with `embeddings_initializer` (`False`).
        embeddings_initializer: Initializer for the `embeddings` matrix (see
            `keras.initializers`).
        embeddings_regularizer: Regularizer function applied to the `embeddings`
            matrix (see `keras.regularizers`).
        embeddings_constraint: Constraint function applied to the `embeddings`
            matrix (see `keras.constraints`).
        mask_zero: Boolean. Whether the input value 0 is a special "padding" value
            to be masked out. The mask is attached to the forward outputs (also
            in Functional models); reverse outputs carry none, and
            `compute_mask` returns None, as in Keras.
        reverse_dtype: Optional dtype name. Both operands of the reverse
            projection are cast to it, and so are the logits. Defaults to the
            layer's compute dtype.
        logit_soft_cap: Optional positive number c. If set, reverse logits are
            `tanh(logits / c) * c`, which bounds them to (-c, c).
        **kwargs: Further `Embedding` arguments (`input_length`, `lora_rank`,
            `max_norm`, `dropout`, `sparse`, `device`, ...) and base layer keyword
            arguments (`name`, `dtype`, `trainable`...).

    Call arguments:
        inputs: Ids, or with `reverse=True` vectors of size `output_dim`.
        reverse: Boolean. If `True`, project from `output_dim` to `input_dim`
            instead of looking ids up. Defaults to `False`.

    Quantization and sparse training of this layer: see the "Quantization and
    LoRA" guide of the documentation.

    Input shape:
        N-D tensor of ids with shape `(batch_size, ...)`. With `reverse=True`: a
        tensor of shape `(batch_size, ..., output_dim)`.

    Output shape:
        `(batch_size, ..., output_dim)`. With `reverse=True`:
        `(batch_size, ..., input_dim)`.

    Example:

    >>> layer = ReversibleEmbedding(100, 32)
    >>> token_ids = np.random.randint(100, size=(16, 50))
    >>> hidden_states = layer(token_ids)
    >>> tuple(hidden_states.shape)
    (16, 50, 32)
    >>> logits = layer(hidden_states, reverse=True)
    >>> tuple(logits.shape)
    (16, 50, 100)
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        tie_weights: bool = True,
        embeddings_initializer: str | keras.initializers.Initializer = "uniform",
        embeddings_regularizer: str | keras.regularizers.Regularizer | None = None,
        embeddings_constraint: str | keras.constraints.Constraint | None = None,
        mask_zero: bool = False,
        reverse_dtype: str | None = None,
        logit_soft_cap: float | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(tie_weights, (bool, np.bool_)):
            raise ValueError(
                "`tie_weights` must be a boolean. "
                f"Received: tie_weights={tie_weights!r} "
                f"(of type {type(tie_weights).__name__})."
            )
        if reverse_dtype is not None:
            reverse_dtype = keras.backend.standardize_dtype(reverse_dtype)
        logit_soft_cap = _check_soft_cap(logit_soft_cap)
        # `weights` builds the layer, which needs `tie_weights`: set it after.
        weights = kwargs.pop("weights", None)
        super().__init__(
            input_dim,
            output_dim,
            embeddings_initializer=embeddings_initializer,
            embeddings_regularizer=embeddings_regularizer,
            embeddings_constraint=embeddings_constraint,
            mask_zero=mask_zero,
            **kwargs,
        )
        self.tie_weights = bool(tie_weights)
        self.reverse_dtype = reverse_dtype
        self.logit_soft_cap = logit_soft_cap
        if weights is not None:
            value = check_initial_table(weights, (self.input_dim, self.output_dim))
            self.build()
            self._embeddings.assign(value)

    def _build_extra_weights(self):
        # After the table, before LoRA's factors: Keras's weight order. A
        # quantized layer makes its reverse variables in `quantized_build`.
        if not self.tie_weights and not self.quantization_mode:
            self.reverse_embeddings = self.add_weight(
                shape=(self.output_dim, self.input_dim),
                initializer=self.embeddings_initializer,
                name="reverse_embeddings",
                trainable=True,
                # Cast by `_reverse_kernel`, so that `reverse_dtype="float32"`
                # reads the float32 variable under a mixed policy.
                autocast=False,
            )

    def call(self, inputs, training=None, reverse=False):
        if reverse:
            return self._reverse(inputs)
        outputs = super().call(inputs, training=training)
        if self.mask_zero:
            outputs = _with_mask(outputs, super().compute_mask(inputs))
        return outputs

    def _reverse(self, inputs):
        dtype = self.reverse_dtype or self.compute_dtype
        if self.tie_weights and self.reverse_dtype is None:
            logits = self.attend(inputs)
        else:
            logits = ops.matmul(ops.cast(inputs, dtype), self._reverse_kernel(dtype))
        if self.logit_soft_cap is not None:
            cap = self.logit_soft_cap
            logits = ops.multiply(ops.tanh(ops.divide(logits, cap)), cap)
        return logits

    def _reverse_kernel(self, dtype):
        """The `(output_dim, input_dim)` projection, in `dtype`."""
        if self.tie_weights:
            table = self.float_table()
            if self.max_norm:
                table = _max_norm.renormalize(table, self.max_norm, self.norm_type)
            return ops.transpose(ops.cast(table, dtype))
        if not self.quantization_mode:
            return ops.cast(self.reverse_embeddings, dtype)
        # Keras's layout is the transpose of a table quantized per row (id):
        # dequantize that table with the forward machinery.
        block = _quantization.normalize_block(self._int4_block_size)
        parts = [ops.transpose(self.reverse_embeddings), self.reverse_embeddings_scale]
        if block is not None:
            parts = [
                parts[0],
                ops.transpose(parts[1]),
                ops.transpose(self.reverse_embeddings_zero),
            ]
        table = _quantization.dequantize(
            parts, self.quantization_mode, self.output_dim, block
        )
        return ops.transpose(ops.cast(table, dtype))

    def compute_mask(self, inputs, mask=None):
        # The forward call attaches its mask itself (as Keras's layer does).
        return None

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return (*input_shape[:-1], self.input_dim)
        return super().compute_output_shape(input_shape)

    def compute_output_spec(self, inputs, training=None, reverse=False):
        if reverse:
            return keras.KerasTensor(
                (*inputs.shape[:-1], self.input_dim),
                dtype=self.reverse_dtype or self.compute_dtype,
            )
        outputs = super().compute_output_spec(inputs, training=training)
        if self.mask_zero:
            outputs = _with_mask(outputs, padding_mask(inputs))
        return outputs

    def _reverse_variables(self):
        """The reverse projection's variables in Keras's save order (untied only)."""
        names = (
            "reverse_embeddings",
            "reverse_embeddings_scale",
            "reverse_embeddings_zero",
        )
        return [getattr(self, n) for n in names if hasattr(self, n)]

    def _stored_variables(self):
        # Keras's order: the table's variables (`Embedding`), then the reverse ones.
        return [*super()._stored_variables(), *self._reverse_variables()]

    def quantize(self, mode=None, type_check=True, config=None):
        """Quantize the table and, untied, `reverse_embeddings` (see above)."""
        if type_check and type(self) is not ReversibleEmbedding:
            raise self._not_implemented_error(self.quantize)
        _quantization.check_mode(mode)
        reverse_values = None
        if not self.tie_weights:
            block = _quantization.resolve_block_size(self.dtype_policy, config, mode)
            table = ops.transpose(self.reverse_embeddings)
            values = _quantization.quantize_table(table, mode, block, config)
            reverse_values = [values[0].T, *(v.T for v in values[1:])]
            del self.reverse_embeddings
        super().quantize(mode, type_check=False, config=config)
        if reverse_values is not None:
            for variable, value in zip(
                self._reverse_variables(), reverse_values, strict=True
            ):
                variable.assign(value)

    def quantized_build(self, embeddings_shape, mode, config=None):
        super().quantized_build(embeddings_shape, mode, config)
        self.inputs_quantizer = (
            keras.quantizers.QuantizationConfig.activation_quantizer_or_default(
                config, keras.quantizers.AbsMaxQuantizer(axis=-1)
            )
        )
        if self.tie_weights:
            return
        # Keras's layout: the transpose of a table quantized per row (id).
        block = _quantization.normalize_block(self._int4_block_size)
        shape, scale_shape = _quantization.variable_shapes(
            self.input_dim, self.output_dim, mode, self._int4_block_size
        )
        add = functools.partial(_quantization.add_frozen, self.add_weight)
        self.reverse_embeddings = add(
            "reverse_embeddings", shape[::-1], "zeros", "int8"
        )
        self.reverse_embeddings_scale = add(
            "reverse_embeddings_scale", scale_shape[::-1], "ones"
        )
        if block is not None:
            self.reverse_embeddings_zero = add(
                "reverse_embeddings_zero", scale_shape[::-1], "zeros"
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "tie_weights": self.tie_weights,
                "reverse_dtype": self.reverse_dtype,
                "logit_soft_cap": self.logit_soft_cap,
            }
        )
        return config
