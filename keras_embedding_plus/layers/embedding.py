"""The `Embedding` layer: arguments, weights and the Keras hooks.

The lookup itself is the pipeline of `_lookup` (storage -> gather -> row transforms
-> output), composed when the layer is built, quantized or given LoRA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from keras_embedding_plus import backends, compat
from keras_embedding_plus.layers import arguments as _args
from keras_embedding_plus.layers import masking, variables
from keras_embedding_plus.layers.table_hooks import TableHooks
from keras_embedding_plus.lookup import gather, index_policy, pipeline
from keras_embedding_plus.lookup import invalid_ids as _invalid_ids
from keras_embedding_plus.lookup import lora as _lora
from keras_embedding_plus.lookup import max_norm as _max_norm
from keras_embedding_plus.lookup import padding as _padding
from keras_embedding_plus.lookup import placement as _placement
from keras_embedding_plus.lookup import quantization as _quantization
from keras_embedding_plus.lookup.spec import LookupSpec
from keras_embedding_plus.saving import limits, loading
from keras_embedding_plus.vectors import pretrained as _vectors

_UNBUILT = (
    "You must build the layer before accessing `embeddings`: call "
    "`layer.build()` or call the layer on some ids first."
)


@keras.saving.register_keras_serializable(package="keras_embedding_plus")
class Embedding(TableHooks, keras.layers.Layer):
    """Turns non-negative integers (indexes) into dense vectors of fixed size.

    A drop-in replacement for `keras.layers.Embedding` (Keras 3.15's arguments,
    quantization and LoRA, and its own tests pass) that also takes what Keras 1
    and 2 took (`input_length`, `weights`, `dropout`, the Keras 1 names), gives
    the same answer for bad ids on every backend, and composes every option with
    every other (placement, row-sparse training, `max_norm`).

    e.g. `[[4], [20]] -> [[0.25, 0.1], [0.6, -0.2]]`

    Valid ids are the integers `0 .. input_dim - 1` (any integer dtype, or floats
    holding whole numbers). Where the ids' values are known (eager calls,
    Keras's default `predict` / `fit` on PyTorch), any other id raises
    `ValueError` naming it; inside compiled functions invalid ids look up
    all-zero rows (never NaN, never another row) and are counted and warned
    about (see `invalid_ids`), or fail the step with `invalid_ids="raise"`.

    Args:
        input_dim: Integer. Size of the vocabulary, i.e. maximum integer index + 1.
        output_dim: Integer. Dimension of the dense embedding (0: an empty last
            axis, as Keras 1 / 2 allowed).
        embeddings_initializer: Initializer for the `embeddings` matrix (see
            `keras.initializers`).
        embeddings_regularizer: Regularizer applied to the `embeddings` matrix
            (see `keras.regularizers`).
        activity_regularizer: Regularizer applied to the output of the layer.
        embeddings_constraint: Constraint applied to the `embeddings` matrix
            after every optimizer step (`MaxNorm` bounds rows with `axis=1`).
        mask_zero: Boolean. Whether the input value 0 is a special "padding"
            value to be masked out (`input_dim` should then be the size of the
            vocabulary + 1).
        input_length: None, integer, or tuple of integers / None. The length of
            the input sequences: a `Sequential` model is built as soon as the
            layer is added, and other lengths raise `ValueError`.
        weights: Optional. The initial `(input_dim, output_dim)` table, or a
            one-element list of it (Keras 1 form).
        dropout: Float in [0, 1). Keras 1's embedding dropout: in training,
            whole vocabulary rows are dropped and the others scaled by
            `1 / (1 - dropout)`.
        lora_rank: Optional integer. Enables LoRA at build: the table is frozen
            and trainable float32 factors `A` `(input_dim, lora_rank)` and `B`
            `(lora_rank, output_dim)` adapt it to
            `table + lora_alpha / lora_rank * A @ B` (rows of `A` are gathered,
            never `A @ B`). Saving merges the adapter, as Keras does.
        lora_alpha: Optional number scaling the adapter; defaults to `lora_rank`.
        max_norm: Optional positive number. Looked-up rows whose `norm_type`-norm
            exceeds it are used renormalised to it (outputs only, as in
            TensorFlow's `embedding_lookup`; the stored table never changes).
        norm_type: Number >= 1, or `float("inf")`: the p of `max_norm`'s norm.
        sparse: Boolean. Training computes row-sparse gradients for what trains
            by id (the table, or LoRA's `A`), which the lazy optimizers of
            `keras_embedding_plus.optimizers` apply to the looked-up rows only
            (JAX: in models with `keras_embedding_plus.training.SparseTrainer`).
        device: Optional string: where the table lives (`"cpu"`, `"gpu:1"`, ...,
            or `"host"` for host memory). Every lookup runs there and only the
            rows move.
        quantization_config: Optional `keras.quantizers.QuantizationConfig`, as
            in Keras: how a quantized dtype policy builds the table, and what
            `quantize` used.
        padding_idx: Optional integer in `[-input_dim, input_dim)` (negative
            values count from the end), as in PyTorch: that row of the table
            (and of LoRA's `A`) is built as zeros and gets no gradient, so no
            optimizer moves it. A table given explicitly (`weights`,
            `set_weights`, a loaded file) keeps the values it is given there, as
            PyTorch's `_weight`. Unlike `mask_zero`, it makes no mask.
        invalid_ids: `"zero"` (default) or `"raise"`: what an invalid id does
            inside a compiled call (eager calls always raise `ValueError`).
            `"zero"`: it looks up a zero row and is counted by the layer's
            `invalid_ids_count` metric, shown in `fit` / `evaluate` logs as
            `"<layer name>_invalid_ids"`, with a warning once per epoch.
            `"raise"`: the compiled step fails with an error naming the layer
            (TensorFlow graph assert, JAX host callback, PyTorch under
            `torch.compile`).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, `trainable`...);
            the Keras 1 names `init`, `W_regularizer` and `W_constraint` too.

    Quantization (`quantize`), LoRA, tied output logits (`attend`), placement and
    sparse training are described in the guides of the documentation.

    Input shape:
        N-D tensor of ids with shape `(batch_size, ...)`, any rank >= 1 (dense,
        ragged or sparse on TensorFlow, sparse `BCOO` on JAX). With
        `reverse=True`: `(batch_size, ..., output_dim)` vectors.

    Output shape:
        (N+1)-D tensor with shape `(batch_size, ..., output_dim)` (with
        `reverse=True`: `(batch_size, ..., input_dim)` logits).

    Example:

    >>> model = keras.Sequential()
    >>> model.add(Embedding(1000, 64, input_length=10))
    >>> model.output_shape
    (None, 10, 64)
    >>> input_array = np.random.randint(1000, size=(32, 10))
    >>> model.compile("rmsprop", "mse")
    >>> model.predict(input_array, verbose=0).shape
    (32, 10, 64)
    """

    # `padding_idx`'s rows pass through `stop_gradient` (`_padding.FrozenRow`).
    _freezes_padding_rows = True

    def __new__(cls, *args, **kwargs):
        # Before `__init__`'s own "missing 2 required positional arguments".
        _args.check_torch_names(cls.__name__, kwargs)
        return super().__new__(cls, *args, **kwargs)

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        embeddings_initializer: str | keras.initializers.Initializer = "uniform",
        embeddings_regularizer: str | keras.regularizers.Regularizer | None = None,
        activity_regularizer: str | keras.regularizers.Regularizer | None = None,
        embeddings_constraint: str | keras.constraints.Constraint | None = None,
        mask_zero: bool = False,
        input_length: int | tuple[int | None, ...] | None = None,
        weights: ArrayLike | list[ArrayLike] | None = None,
        dropout: float = 0.0,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        sparse: bool = False,
        device: str | None = None,
        quantization_config: keras.quantizers.QuantizationConfig | None = None,
        padding_idx: int | None = None,
        invalid_ids: str = "zero",
        **kwargs: Any,
    ) -> None:
        invalid_ids = _invalid_ids.check_policy(invalid_ids)
        input_dim = _args.check_dim("input_dim", input_dim, 1)
        padding_idx = _padding.check_padding_idx(padding_idx, input_dim)
        output_dim = _args.check_dim("output_dim", output_dim, 0)
        initializer, regularizer, constraint = _args.table_objects(
            kwargs,
            embeddings_initializer,
            embeddings_regularizer,
            embeddings_constraint,
        )
        mask_zero = _args.check_bool("mask_zero", mask_zero)
        input_length = _args.check_input_length(input_length)
        dropout = _args.check_dropout(dropout)
        lora_rank = _lora.check_rank(lora_rank)
        lora_alpha = _lora.check_alpha(lora_alpha)
        if lora_rank is not None:
            _lora.check_constraint(constraint)
        max_norm, norm_type = _max_norm.check_max_norm(max_norm, norm_type)
        device = _placement.check_device(device)
        quantization_config = _quantization.check_config(quantization_config)
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        _quantization.check_policy(self.dtype_policy)
        self.input_dim, self.output_dim = input_dim, output_dim
        self.embeddings_initializer = initializer
        self.embeddings_regularizer = regularizer
        self.embeddings_constraint = constraint
        self.mask_zero = self.supports_masking = mask_zero
        self.input_length, self.dropout = input_length, dropout
        self.lora_rank, self.lora_alpha = lora_rank, lora_alpha
        self.lora_enabled = False
        self.max_norm, self.norm_type = max_norm, norm_type
        self.sparse = gather.check_sparse(sparse, self.dtype_policy)
        self.device, self.quantization_config = device, quantization_config
        self.padding_idx = padding_idx
        self.invalid_ids = invalid_ids
        # Invalid ids met in compiled calls, in `fit` / `evaluate` logs.
        self.invalid_ids_count = _invalid_ids.InvalidIdsCount(
            self.name, input_dim, invalid_ids
        )
        self._table_placement = _placement.resolve(device)
        _placement.check_lookup_options(self._table_placement, sparse=self.sparse)
        # The table is read in its variable dtype; the looked-up rows are cast.
        self.autocast, self._computing_logits = False, False
        self._warned_dense_training = False
        if input_length is not None:
            # What `Sequential.add` reads to build an `InputLayer` up front.
            compat.set_build_input_shape(
                self,
                input_length if isinstance(input_length, tuple) else (input_length,),
            )
        if dropout:
            self.seed_generator = keras.random.SeedGenerator()
        if weights is not None:
            value = _args.check_initial_table(weights, (input_dim, output_dim))
            self.build()
            self._embeddings.assign(value)

    def build(self, input_shape=None):
        if self.built:
            return
        # A table larger than the machine: a ValueError, not the allocator's.
        limits.check_table(
            self.input_dim, self.output_dim, self.dtype_policy, f"Layer '{self.name}'"
        )
        if self.quantization_mode:  # Loading a quantized layer.
            mode, config = self.quantization_mode, self.quantization_config
            self.quantized_build((self.input_dim, self.output_dim), mode, config)
        else:
            self._embeddings, self._table_placement = variables.add_table(
                self.add_weight,
                self._table_placement,
                (self.input_dim, self.output_dim),
                self.embeddings_initializer,
                self.embeddings_regularizer,
                self.embeddings_constraint,
                self.padding_idx,
            )
        self._build_extra_weights()
        self.built = True
        self._lookup = pipeline.compose(self._lookup_spec())
        if self.lora_rank and not self.lora_enabled:
            self.enable_lora(self.lora_rank, self.lora_alpha)

    def _build_extra_weights(self):
        """Hook: a subclass's own weights, made after the table and before LoRA's
        factors (`ReversibleEmbedding`'s `reverse_embeddings`)."""

    @property
    def embeddings(self):
        """The `(input_dim, output_dim)` table (a `keras.Variable`), as in Keras.

        When quantized: the stored int8 variable (int4: the unpacked int8 values).
        With LoRA: the table plus the adapter's delta, in the compute dtype.
        """
        if not self.built:
            raise AttributeError(_UNBUILT)
        table = self._embeddings
        if self.quantization_mode:
            table = _quantization.unpacked(
                table, self.quantization_mode, self.output_dim
            )
        if self.lora_enabled:
            table = ops.cast(self._lookup.lora().table(table), self.compute_dtype)
        return table

    @property
    def sparse_variables(self):
        """The variables trained with row-sparse gradients, read by id: the
        table, or LoRA's `A` under LoRA (a list; empty unless `sparse=True`,
        or before the layer is built)."""
        if not self.built:
            return []
        return list(self._lookup.sparse_variables)

    def __dir__(self):
        # Keras's saving reads every attribute `dir` lists, looking for nested
        # saveables: `embeddings` of a LoRA or quantized table computes a whole
        # table (with LoRA, through three table-sized temporaries) on every
        # save and load. It is still there, just not listed then.
        names = super().__dir__()
        if getattr(self, "lora_enabled", False) or self.quantization_mode:
            names = [name for name in names if name != "embeddings"]
        return names

    def __getattr__(self, name):
        # On torch a property's AttributeError falls through to
        # `nn.Module.__getattr__`, whose message would hide ours.
        parent = getattr(super(), "__getattr__", None)
        if name == "embeddings" or parent is None:
            message = f"'{type(self).__name__}' object has no attribute '{name}'"
            raise AttributeError(_UNBUILT if name == "embeddings" else message)
        return parent(name)

    def __call__(self, *args, reverse=False, **kwargs):
        if not reverse:
            # NumPy ids are checked here, on their true values: Keras's
            # `Layer.__call__` converts them to backend tensors, which on JAX
            # without x64 holds int64 / uint64 / float64 in 32 bits.
            if args:
                args = (self._checked_host_ids(args[0]), *args[1:])
            elif "inputs" in kwargs:
                kwargs["inputs"] = self._checked_host_ids(kwargs["inputs"])
            return super().__call__(*args, **kwargs)
        # Logits carry no mask (as Keras's ReversibleEmbedding): `compute_mask`
        # answers for ids, so it is told so for this one call only.
        self._computing_logits = True
        try:
            return super().__call__(*args, reverse=True, **kwargs)
        finally:
            self._computing_logits = False

    def _checked_host_ids(self, inputs):
        """`inputs` with NumPy ids checked by `index_policy.check_host_ids`
        (`EmbeddingBag` finds the ids in its other forms)."""
        return index_policy.check_host_ids(inputs, self.input_dim)

    def call(self, inputs, training=None, reverse=False):
        if reverse:
            return self.attend(inputs)
        self._check_sparse_training(training)
        inputs = index_policy.densify(inputs)
        _args.check_length(self.name, self.input_length, inputs.shape)
        ids, valid = index_policy.prepare_ids(
            inputs, self.input_dim, self._lookup.report
        )
        rows, valid = self._lookup.rows(backends.ids.flat_values(ids), valid, training)
        rows = ops.cast(index_policy.zero_invalid(rows, valid), self.compute_dtype)
        return backends.ids.with_flat_values(ids, rows)

    def _check_sparse_training(self, training):
        """Warn once if this `sparse=True` layer's table is trained densely.

        On JAX, by a model without `SparseTrainer` (on TensorFlow and PyTorch
        the lookup alone keeps the gradient sparse). Not for a frozen or
        regularized table, which `SparseTrainer` trains densely too.
        """
        if self._warned_dense_training or training is not True or not self.sparse:
            return
        if not self.trainable or self.embeddings_regularizer is not None:
            return
        if any(backends.sparse.trains_densely(v) for v in self.sparse_variables):
            self._warned_dense_training = True
            gather.warn_dense_training(self.name)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero or self._computing_logits:
            return None
        # `ids != 0`, through an op every loader (legacy `.h5` too) can rebuild.
        return masking.padding_mask(inputs)

    def compute_output_shape(self, input_shape):
        _args.check_length(self.name, self.input_length, input_shape)
        return (*input_shape, self.output_dim)

    def compute_output_spec(self, inputs, training=None, reverse=False):
        if reverse:
            shape = (*inputs.shape[:-1], self.input_dim)
            return keras.KerasTensor(shape, dtype=self.compute_dtype)
        index_policy.ids_dtype(inputs)
        shape = self.compute_output_shape(inputs.shape)
        ragged = getattr(inputs, "ragged", False)
        return keras.KerasTensor(shape, dtype=self.compute_dtype, ragged=ragged)

    def attend(self, inputs: ArrayLike) -> ArrayLike:
        """Logits over the vocabulary: `inputs @ embeddings.T`.

        For language-model heads that share the input table ("tied" embeddings),
        in the compute dtype, from the quantized or LoRA-adapted table (with
        `max_norm` applied to its rows). Inside a Functional model, call
        `layer(x, reverse=True)`, which records the call.

        Args:
            inputs: Float tensor of shape `(..., output_dim)`.

        Returns:
            Tensor of shape `(..., input_dim)`.
        """
        if not self.built:
            self.build()
        return self._lookup.logits(inputs, self.compute_dtype)

    def quantize(self, mode=None, type_check=True, config=None):
        """Quantize the table: `"int8"` or `"int4"` (see the class docstring)."""
        if type_check and type(self) is not Embedding:
            # As Keras: a subclass quantizes only when it says it can.
            raise self._not_implemented_error(self.quantize)
        _quantization.check_mode(mode)
        block = _quantization.resolve_block_size(self.dtype_policy, config, mode)
        values = _quantization.quantize_table(self._embeddings, mode, block, config)
        self.quantization_config = config
        del self._embeddings
        self.quantized_build((self.input_dim, self.output_dim), mode, config)
        for variable, value in zip(self._stored_variables(), values, strict=False):
            variable.assign(value)
        if not self.dtype_policy.quantization_mode:
            base = self.dtype_policy.name
            self.dtype_policy = _quantization.policy_name(mode, block, base)
        self._lookup = pipeline.compose(self._lookup_spec())

    def _table_variables(self):
        """The variables that hold the table, in the order Keras saves them."""
        names = ("_embeddings", "embeddings_scale", "embeddings_zero", "g_idx")
        return [getattr(self, n) for n in names if hasattr(self, n)]

    def _stored_variables(self):
        """The variables saved, in Keras's order (subclasses may add theirs)."""
        return self._table_variables()

    def _lookup_spec(self):
        """The `LookupSpec` the pipeline composes this layer's lookup from."""
        lora = None
        if self.lora_enabled:
            scale = (self.lora_alpha or self.lora_rank) / self.lora_rank
            lora = (self.lora_embeddings_a, self.lora_embeddings_b, scale)
        frozen_row = self.padding_idx if self._freezes_padding_rows else None
        return LookupSpec(
            input_dim=self.input_dim,
            output_dim=self.output_dim,
            stored=tuple(self._table_variables()),
            quantization_mode=self.quantization_mode,
            block=_quantization.normalize_block(
                getattr(self, "_int4_block_size", None)
            ),
            placement=self._table_placement,
            sparse=self.sparse,
            lora=lora,
            max_norm=self.max_norm,
            norm_type=self.norm_type,
            dropout=self.dropout,
            seed_generator=getattr(self, "seed_generator", None),
            frozen_row=frozen_row,
            report=self.invalid_ids_count,
        )

    def float_table(self) -> ArrayLike:
        """The table the lookups read, in float32: dequantized, LoRA adapted.

        `embeddings` is the stored table, as in Keras (int8 / packed int4 values
        when quantized); this is the float table those values stand for, with
        LoRA's delta added. `max_norm` and dropout act on looked-up rows and are
        not applied.

        Returns:
            A `(input_dim, output_dim)` float32 tensor.
        """
        return self._lookup.adapted_table()

    def set_weights(self, weights):
        loading.check_weight_values(self, weights, "set_weights")
        super().set_weights(weights)

    def save_own_variables(self, store):
        # Keras's layout: the stored table's variables only, LoRA merged in.
        if not self.built:
            return
        lora_merge = (self.float_table, self._merged_rows)
        saved = variables.saved_values(
            self._stored_variables(),
            (self.input_dim, self.output_dim),
            by_blocks=self._table_placement is None,
            mode=self.quantization_mode,
            block=getattr(self, "_int4_block_size", None),
            lora_merge=lora_merge if self.lora_enabled else None,
        )
        for i, value in enumerate(saved):
            store[str(i)] = value

    def load_own_variables(self, store):
        """Load the (merged) table; a LoRA adapter restarts at 0 (B = 0)."""
        loading.assign_checked(self.name, self._stored_variables(), store)
        if self.lora_enabled:
            self.lora_embeddings_b.assign(ops.zeros(self.lora_embeddings_b.shape))

    def get_config(self):
        arguments = {name: getattr(self, name) for name in _args.CONFIG_ENTRIES}
        return {**super().get_config(), **_args.config_entries(arguments)}

    @classmethod
    def from_config(cls, config):
        """Rebuild a layer from a config written by Keras 1, tf.keras 2 or Keras 3."""
        config = _args.from_config_arguments(cls.__name__, config)
        return super().from_config(config)

    @classmethod
    def from_pretrained(
        cls,
        vectors_or_path: ArrayLike | str | os.PathLike,
        vocabulary: Sequence[str] | keras.layers.Layer | None = None,
        trainable: bool = True,
        mask_zero: bool = False,
        oov_initializer: str | keras.initializers.Initializer = "uniform",
        **kwargs: Any,
    ) -> Embedding:
        """Builds a layer holding pretrained vectors (see `load_vectors`).

        Args:
            vectors_or_path: A `(input_dim, output_dim)` array, or the path of a
                GloVe / fastText / word2vec file (text or binary, maybe gzipped).
            vocabulary: Optional, with a path only. A list of tokens or a
                `StringLookup` / `TextVectorization` layer: row i of the table is
                token i's vector. `None` takes every vector in the file.
            trainable: Boolean. `False` freezes the table.
            mask_zero: Boolean. As in the constructor; with a path, row 0 (the
                padding row) is set to zeros.
            oov_initializer: Initializer for the rows of tokens not in the file.
            **kwargs: Further constructor arguments (`input_dim` / `output_dim`,
                if given, must match the vectors).

        The layer's `coverage` attribute holds tokens found / tokens looked up
        (`None` for an array).
        """
        return _vectors.from_pretrained(
            cls,
            vectors_or_path,
            vocabulary,
            trainable,
            mask_zero,
            oov_initializer,
            kwargs,
        )
