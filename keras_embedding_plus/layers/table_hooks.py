"""`Embedding`'s Keras hooks that change how its table is stored or trained.

LoRA (`enable_lora`, and a `trainable` setter that keeps the table frozen under
LoRA or quantization) and quantization (`quantized_build`, `quantized_call`), as
Keras's own `Embedding` has them. A mixin of `Embedding` alone: it uses the
layer's `_lookup_spec` and `_table_variables`; the variables are made by
`layers.variables` and returned.
"""

import keras

from keras_embedding_plus import compat
from keras_embedding_plus.layers import variables
from keras_embedding_plus.lookup import lora as _lora
from keras_embedding_plus.lookup import pipeline
from keras_embedding_plus.lookup import quantization as _quantization


class TableHooks:
    """LoRA and quantization hooks of `Embedding` (see the module docstring)."""

    def enable_lora(
        self,
        rank: int,
        lora_alpha: float | None = None,
        a_initializer: str | keras.initializers.Initializer = "he_uniform",
        b_initializer: str | keras.initializers.Initializer = "zeros",
    ) -> None:
        """Freeze the table and train a low-rank adapter (see `lora_rank`).

        Args:
            rank: Positive integer, the rank of the adapter.
            lora_alpha: Optional number; the adapter is scaled by
                `lora_alpha / rank` (default 1).
            a_initializer: Initializer of the `(input_dim, rank)` factor.
            b_initializer: Initializer of the `(rank, output_dim)` factor
                (zeros: the adapted layer starts equal to the original).
        """
        rank, lora_alpha = _lora.check_enable(
            rank,
            lora_alpha,
            constraint=self.embeddings_constraint,
            built=self.built,
            enabled_rank=self.lora_rank if self.lora_enabled else None,
            name=self.name,
        )
        with compat.unlocked_tracking(self):
            a, b, self._table_placement = variables.add_lora_factors(
                self.add_weight,
                self._table_placement,
                (self.input_dim, self.output_dim),
                rank,
                (a_initializer, b_initializer),
                self.embeddings_regularizer,
                self.padding_idx,
            )
            self.lora_embeddings_a, self.lora_embeddings_b = a, b
        # Frozen where it stands: the weights keep Keras's order `[embeddings,
        # lora_embeddings_a, lora_embeddings_b]`; the setter below keeps it frozen.
        self._embeddings.trainable = False
        self.lora_enabled, self.lora_rank, self.lora_alpha = True, rank, lora_alpha
        self._lookup = pipeline.compose(self._lookup_spec())

    @property
    def trainable(self):
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        keras.layers.Layer.trainable.fset(self, value)
        # Unlike Keras's layer, `layer.trainable = True` cannot unfreeze a table
        # under LoRA or quantization: only the adapter trains.
        if getattr(self, "lora_enabled", False) or self.quantization_mode:
            for variable in self._table_variables():
                variable.trainable = False

    def quantized_build(self, embeddings_shape, mode, config=None):
        del embeddings_shape  # Always `(input_dim, output_dim)`.
        _quantization.check_mode(mode)
        block = _quantization.resolve_block_size(self.dtype_policy, config, mode)
        created, self._table_placement = variables.add_quantized(
            self.add_weight,
            self._table_placement,
            (self.input_dim, self.output_dim),
            mode,
            block,
        )
        self._embeddings, self.embeddings_scale, *blocks = created
        if blocks:
            self.embeddings_zero, self.g_idx = blocks
        self._int4_block_size = block if mode == "int4" else None
        compat.mark_quantized(self, self.output_dim)

    def quantized_call(self, *args, **kwargs):
        # One `call` for every mode: the index policy, masks and dropout included.
        _quantization.check_mode(self.quantization_mode)
        return self.call(*args, **kwargs)

    def _quantization_mode_error(self, mode):  # Keras's hook, our text.
        return _quantization.mode_error(mode)

    def _merged_rows(self, start, stop):
        """Rows `start:stop` of the LoRA-merged float table, in its dtype."""
        lora = self._lookup.lora()
        return _lora.merged_rows(
            self._embeddings, lora.a, lora.b, lora.scale, start, stop
        )
