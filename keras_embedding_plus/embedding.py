"""The `Embedding` layer."""

import functools
import numbers
import types

import keras
import numpy as np
from keras import ops

from keras_embedding_plus import (
    _ids,
    _legacy,
    _lookup,
    _lora,
    _max_norm,
    _placement,
    _quantization,
    _saving,
    _sparse,
    _vectors,
)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_dim(name, value, minimum):
    if not _is_int(value) or value < minimum:
        allowed = "a positive integer"
        if minimum == 0:  # Keras 3's text, then what Keras 1 / 2 also allowed.
            allowed += " (or 0, an empty last axis, as in Keras 1 and 2)"
        raise ValueError(
            f"`{name}` must be {allowed}. "
            f"Received: {name}={value!r} (of type {type(value).__name__})."
        )
    return int(value)


def _check_input_length(input_length):
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


def _check_dropout(dropout):
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


def _check_weights(weights, shape):
    if isinstance(weights, (list, tuple)) and len(weights) == 1:
        weights = weights[0]  # Keras 1 form: a one-element list.
    value = np.asarray(ops.convert_to_numpy(weights))
    if value.shape != shape:
        raise ValueError(
            f"`weights` must be an (input_dim, output_dim) = {shape} array or a "
            f"one-element list of it. Received: weights of shape {value.shape}."
        )
    return value


_UNBUILT = (
    "You must build the layer before accessing `embeddings`: call "
    "`layer.build()` or call the layer on some ids first."
)


@keras.saving.register_keras_serializable(package="keras_embedding_plus")
class Embedding(keras.layers.Layer):
    """Turns non-negative integers (indexes) into dense vectors of fixed size.

    A drop-in replacement for `keras.layers.Embedding` that also accepts what Keras 1
    and Keras 2 accepted (`input_length`, `weights`, `dropout`, the Keras 1 argument
    names) and gives the same answer for bad ids on every backend.

    e.g. `[[4], [20]] -> [[0.25, 0.1], [0.6, -0.2]]`

    Index policy (the same on TensorFlow, JAX and PyTorch): valid ids are the
    integers `0 .. input_dim - 1`, in any integer dtype, or floats holding whole
    numbers. Wherever the ids' values are known at the call (eager execution,
    including Keras's default `predict` / `fit` on PyTorch), any other id (too
    large, negative, or a float with a fraction) raises `ValueError` naming the id,
    its position and the valid range. Inside traced or compiled functions
    (`tf.function`, `jax.jit`, Keras's compiled `predict` / `fit` on TensorFlow and
    JAX), invalid ids look up all-zero vectors: never NaN, never another row.

    Args:
        input_dim: Integer. Size of the vocabulary, i.e. maximum integer index + 1.
        output_dim: Integer. Dimension of the dense embedding (0 gives an empty
            last axis).
        embeddings_initializer: Initializer for the `embeddings` matrix (see
            `keras.initializers`).
        embeddings_regularizer: Regularizer function applied to the `embeddings`
            matrix (see `keras.regularizers`).
        activity_regularizer: Regularizer function applied to the output of the
            layer (see `keras.regularizers`).
        embeddings_constraint: Constraint function applied to the `embeddings`
            matrix after every optimizer step (see `keras.constraints`; note that
            `MaxNorm` bounds rows only with `axis=1`).
        mask_zero: Boolean. Whether the input value 0 is a special "padding" value
            to be masked out. If `True`, index 0 cannot be used in the vocabulary
            (`input_dim` should equal the size of the vocabulary + 1).
        input_length: None, integer, or tuple of integers / None. The length of the
            input sequences (one entry per axis after the batch axis for N-D
            inputs). When set, a `Sequential` model is built as soon as the layer
            is added, so that `Flatten` and `Dense` can follow without data.
            Calling the layer with another length raises `ValueError`. Keras
            turns the expected shape into a float32 `Input`; use
            `keras.Input(shape, dtype="int32")` instead for vocabularies over
            2**24 ids, which float32 cannot hold exactly.
        weights: Optional. The initial table: a `(input_dim, output_dim)` array or
            a one-element list of it (Keras 1 form).
        dropout: Float in [0, 1). Keras 1's embedding dropout: during training
            whole rows of the table are dropped (every occurrence of a dropped id
            gets a zero vector, the other rows are scaled by `1 / (1 - dropout)`).
            No effect at inference. Draws one random number per vocabulary row
            each training step.
        lora_rank: Optional integer. If set, LoRA (low-rank adaptation) is
            enabled when the layer is built: the table is frozen and two
            trainable float32 factors `A` `(input_dim, lora_rank)` and `B`
            `(lora_rank, output_dim)` adapt it to
            `table + lora_alpha / lora_rank * A @ B`. Lookups gather the rows of
            `A` first, so the cost does not grow with the vocabulary. Saving
            merges the adapter into the table (as Keras does), so the saved
            weights load into any `Embedding`. Also `layer.enable_lora(rank)`.
            LoRA works on quantized layers (the quantized table stays frozen;
            saving re-quantizes the merged table) and raises `ValueError` with
            `embeddings_constraint` (a table constraint cannot bound the factors).
        lora_alpha: Optional number scaling the adapter by
            `lora_alpha / lora_rank`; defaults to `lora_rank`.
        max_norm: Optional positive number. Every looked-up row whose
            `norm_type`-norm exceeds `max_norm` is used renormalised to
            `max_norm` (scaled by `max_norm / (norm + 1e-7)`, as in PyTorch). Only
            the outputs are renormalised, as in TensorFlow's `embedding_lookup`:
            the stored table never changes; gradients flow through the
            renormalisation and stay finite for all-zero rows. Applied before
            `dropout`, and also to `attend`'s table.
        norm_type: Number >= 1, or `float("inf")`. The p of the p-norm for
            `max_norm`. Defaults to 2.
        sparse: Boolean. If `True`, training computes a row-sparse gradient for
            the table and, with `LazySGD`, `LazyAdagrad` or `LazyAdam` from
            `keras_embedding_plus.optimizers`, updates only the rows looked up,
            so a step costs the same at any vocabulary size (see "Big
            vocabularies" in the README). TensorFlow: the rows are gathered from
            the variable itself (a `tf.IndexedSlices` gradient, and no read of
            the whole table); PyTorch: `F.embedding(sparse=True)` (a sparse COO
            gradient); JAX: in models with the
            `keras_embedding_plus.training.SparseTrainer` mixin (elsewhere the
            JAX gradient stays dense). Trade-offs: Keras's own optimizers other
            than `SGD` without momentum still touch every row; on PyTorch,
            Keras's `Adagrad`, `RMSprop`, `Adadelta`, `Adamax`, `Ftrl`, `Lamb`
            and `Adafactor` reject sparse gradients, and so does the
            `LossScaleOptimizer` of `mixed_float16` (`mixed_bfloat16` works); on
            JAX, a table also read outside the layer (weight tying) gets no
            gradient from that use.
            `jit_compile=True` works on every backend. Regularizers,
            constraints, clipping, loss scaling, EMA, gradient accumulation and
            `weight_decay` work as with `sparse=False` (tested; regularizers,
            constraints, EMA, accumulation and `weight_decay` touch every row).
            Ignored with `max_norm`, LoRA or quantization. Defaults to `False`.
        device: Optional string. Where the table lives: `"cpu"`, `"cpu:0"`,
            `"gpu:1"`, ... or `"host"` (host memory, the model computes
            elsewhere). The lookup runs there and only the looked-up rows move
            to the model's device; gradients flow back. A device this machine
            lacks warns once and places the table by default. JAX: `"host"`
            (and `"cpu"` when JAX computes on an accelerator) is memory kind
            `pinned_host` of the compute device, not combinable with LoRA,
            `max_norm` or `sparse`; a compiled step runs on one device, so a
            table on another device of the same platform pulls the compiled
            step there (with a warning). See "Big tables" in the README.
            Defaults to `None` (where Keras puts variables).
        quantization_config: Optional `keras.quantizers.QuantizationConfig`
            (e.g. `Int8QuantizationConfig`, `Int4QuantizationConfig(block_size=
            64)`), as in Keras: how a quantized dtype policy builds the table,
            and what `quantize` used; serialized in `get_config`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, `trainable`...).
            The Keras 1 names `init`, `W_regularizer` and `W_constraint` are
            accepted with a `DeprecationWarning`.

    Quantization, as in Keras 3.15: `layer.quantize("int8")` stores an int8 table
    with one scale per row; `layer.quantize("int4")` packs two 4-bit values per
    byte and resolves as Keras does, to `Int4QuantizationConfig()` whose
    `block_size` is 128: groups of 128 columns (one group when `output_dim <=
    128`), each with a scale and a zero point (policy `int4/128_from_...`);
    `Int4QuantizationConfig(block_size=None)` gives one scale per row.
    `model.quantize` reaches the layer as it reaches Keras's `Embedding`.
    Lookups gather rows, then dequantize only those. Each element is within
    `max |row| / 254` (int8) or `max |row| / 14` (int4) of the float table. A
    quantized layer saves and loads quantized, cannot be quantized again, and
    its table is not trainable (`fit` trains the rest of the model; enable LoRA
    to adapt it). `layer.embeddings` is then the stored int8 variable (int4: the
    unpacked values), as in Keras.

    Tied output logits: `layer.attend(x)` (or `layer(x, reverse=True)`) returns
    `x @ embeddings.T` in the compute dtype, logits over the vocabulary from
    vectors of size `output_dim`, for language-model heads sharing the table.

    Input shape:
        N-D tensor of ids with shape `(batch_size, ...)`, any rank >= 1.
        With `reverse=True`: `(batch_size, ..., output_dim)` vectors.

    Output shape:
        (N+1)-D tensor with shape `(batch_size, ..., output_dim)`.

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

    def __init__(
        self,
        input_dim,
        output_dim,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        activity_regularizer=None,
        embeddings_constraint=None,
        mask_zero=False,
        input_length=None,
        weights=None,
        dropout=0.0,
        lora_rank=None,
        lora_alpha=None,
        max_norm=None,
        norm_type=2.0,
        sparse=False,
        device=None,
        quantization_config=None,
        **kwargs,
    ):
        input_dim = _check_dim("input_dim", input_dim, 1)
        output_dim = _check_dim("output_dim", output_dim, 0)
        aliases = _legacy.keras1_aliases(
            kwargs,
            {
                "embeddings_initializer": (
                    None
                    if embeddings_initializer == "uniform"
                    else embeddings_initializer
                ),
                "embeddings_regularizer": embeddings_regularizer,
                "embeddings_constraint": embeddings_constraint,
            },
        )
        embeddings_initializer = aliases.get(
            "embeddings_initializer", embeddings_initializer
        )
        embeddings_regularizer = aliases.get(
            "embeddings_regularizer", embeddings_regularizer
        )
        embeddings_constraint = aliases.get(
            "embeddings_constraint", embeddings_constraint
        )
        if not isinstance(mask_zero, (bool, np.bool_)):
            raise ValueError(
                "`mask_zero` must be a boolean. "
                f"Received: mask_zero={mask_zero!r} "
                f"(of type {type(mask_zero).__name__})."
            )
        input_length = _check_input_length(input_length)
        dropout = _check_dropout(dropout)
        lora_rank = _lora.check_rank(lora_rank)
        lora_alpha = _lora.check_alpha(lora_alpha)
        if lora_rank is not None:
            _lora.check_constraint(keras.constraints.get(embeddings_constraint))
        max_norm, norm_type = _max_norm.check(max_norm, norm_type)
        device = _placement.check_device(device)
        quantization_config = _quantization.check_config(quantization_config)
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if self.quantization_mode not in (None, *_quantization.MODES):
            raise _quantization.mode_error(
                self.quantization_mode, f" (dtype={self.dtype_policy.name!r})"
            )
        self.quantization_config = quantization_config
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.embeddings_constraint = keras.constraints.get(embeddings_constraint)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero
        self.input_length = input_length
        self.dropout = dropout
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_enabled = False
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.sparse = _sparse.check_sparse(sparse)
        self.device = device
        self._table_placement = _placement.resolve(device)
        _placement.check_lookup_options(self._table_placement, sparse=self.sparse)
        # The table is read in its variable dtype; the looked-up rows are cast.
        self.autocast = False
        if input_length is not None:
            # What `Sequential.add` reads to build an `InputLayer` up front, as
            # Keras 2 did from `input_length`.
            self._input_shape_arg = (
                input_length if isinstance(input_length, tuple) else (input_length,)
            )
        if dropout:
            self.seed_generator = keras.random.SeedGenerator()
        if weights is not None:
            value = _check_weights(weights, (input_dim, output_dim))
            self.build()
            self._embeddings.assign(value)

    def build(self, input_shape=None):
        if self.built:
            return
        if self.quantization_mode:  # Loading a quantized layer.
            self.quantized_build(
                (self.input_dim, self.output_dim),
                self.quantization_mode,
                self.quantization_config,
            )
        else:
            self._embeddings = self._placed(
                lambda: self.add_weight(
                    shape=(self.input_dim, self.output_dim),
                    initializer=self.embeddings_initializer,
                    name="embeddings",
                    regularizer=self.embeddings_regularizer,
                    constraint=self.embeddings_constraint,
                    trainable=True,
                )
            )
        self.built = True
        self._lookup = _lookup.compose(self)
        if self.lora_rank and not self.lora_enabled:
            self.enable_lora(self.lora_rank, self.lora_alpha)

    def _placed(self, create):
        """Variables made by `create()` where the table lives (`device`)."""
        placement = _placement.for_build(self._table_placement)
        with _placement.build_scope(placement, (self.input_dim, self.output_dim)):
            created = create()
        for variable in created if isinstance(created, tuple) else (created,):
            pinned = _placement.pin(variable, placement)
        self._table_placement = pinned
        return created

    @property
    def embeddings(self):
        """The `(input_dim, output_dim)` table (a `keras.Variable`), as in Keras.

        When quantized: the stored int8 variable (int4: the unpacked int8 values),
        not the dequantized table. With LoRA: the table plus the adapter's delta,
        in the compute dtype (a tensor, not a variable).
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

    def __getattr__(self, name):
        # On torch a property's AttributeError falls through to
        # `nn.Module.__getattr__`, whose message would hide ours.
        if name == "embeddings":
            raise AttributeError(_UNBUILT)
        parent = getattr(super(), "__getattr__", None)
        if parent is None:
            raise AttributeError(
                f"'{type(self).__name__}' object has no attribute '{name}'"
            )
        return parent(name)

    def __call__(self, *args, reverse=False, **kwargs):
        if not reverse:
            return super().__call__(*args, **kwargs)
        # Logits carry no mask (as Keras's ReversibleEmbedding): `compute_mask`
        # answers for ids, so it is told so for this one call; no state
        # survives it.
        self._computing_logits = True
        try:
            return super().__call__(*args, reverse=True, **kwargs)
        finally:
            self._computing_logits = False

    def call(self, inputs, training=None, reverse=False):
        if reverse:
            return self.attend(inputs)
        inputs = _ids.densify(inputs)
        self._check_length(inputs.shape)
        ids, valid = _ids.prepare_ids(inputs, self.input_dim)
        rows, valid = self._lookup.rows(_ids._values(ids), valid, training)
        rows = ops.cast(_ids.zero_invalid(rows, valid), self.compute_dtype)
        return _ids._with_values(ids, rows)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero or getattr(self, "_computing_logits", False):
            return None
        # `ids != 0`, through an op every loader (legacy `.h5` too) can rebuild.
        return _saving.padding_mask(inputs)

    def _check_length(self, shape):
        if self.input_length is None:
            return
        expected = (
            self.input_length
            if isinstance(self.input_length, tuple)
            else (self.input_length,)
        )
        received = tuple(shape)[1:]
        if len(received) != len(expected) or any(
            e is not None and r is not None and e != r
            for e, r in zip(expected, received, strict=False)
        ):
            raise ValueError(
                f"Layer '{self.name}' expects ids of length {self.input_length} "
                f"(`input_length`), but it was called with ids of length "
                f"{received[0] if len(received) == 1 else received} "
                f"(shape {tuple(shape)})."
            )

    def compute_output_shape(self, input_shape):
        self._check_length(input_shape)
        return (*input_shape, self.output_dim)

    def compute_output_spec(self, inputs, training=None, reverse=False):
        if reverse:
            return keras.KerasTensor(
                (*inputs.shape[:-1], self.input_dim), dtype=self.compute_dtype
            )
        _ids.ids_dtype(inputs)
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape),
            dtype=self.compute_dtype,
            ragged=getattr(inputs, "ragged", False),
        )

    def set_weights(self, weights):
        _saving.check_weights(self, weights, "set_weights")
        super().set_weights(weights)

    def save_own_variables(self, store):
        # Keras's layout: the stored table's variables only; LoRA merged in.
        if not self.built:
            return
        values = (
            self._merged_values()
            if self.lora_enabled
            else _quantization.stored_variables(self)
        )
        for i, value in enumerate(values):
            store[str(i)] = value

    def load_own_variables(self, store):
        """Load the (merged) table; a LoRA adapter restarts at 0 (B = 0)."""
        values = _saving.store_values(store)
        stored = _quantization.stored_variables(self)
        _saving.check_weights(
            types.SimpleNamespace(name=self.name, weights=stored),
            values,
            "load_weights",
        )
        for variable, value in zip(stored, values, strict=True):
            variable.assign(value)
        if self.lora_enabled:
            self.lora_embeddings_b.assign(ops.zeros(self.lora_embeddings_b.shape))

    def attend(self, inputs):
        """Logits over the vocabulary: `inputs @ embeddings.T`.

        For language-model heads that share the input table ("tied" embeddings).
        Computed in the layer's compute dtype, from the quantized or LoRA-adapted
        table when there is one (`max_norm` applies to the table's rows too).
        Inside a Functional model, call `layer(x, reverse=True)` instead, which
        records the call in the model.

        Args:
            inputs: Float tensor of shape `(..., output_dim)`.

        Returns:
            Tensor of shape `(..., input_dim)`.
        """
        if not self.built:
            self.build()
        return self._lookup.logits(inputs, self.compute_dtype)

    def enable_lora(
        self, rank, lora_alpha=None, a_initializer="he_uniform", b_initializer="zeros"
    ):
        """Freeze the table and train a low-rank adapter (see `lora_rank`).

        Args:
            rank: Positive integer, the rank of the adapter.
            lora_alpha: Optional number; the adapter is scaled by
                `lora_alpha / rank` (default 1).
            a_initializer: Initializer of the `(input_dim, rank)` factor.
            b_initializer: Initializer of the `(rank, output_dim)` factor
                (zeros: the adapted layer starts equal to the original).
        """
        rank = _lora.check_rank(rank, "rank", allow_none=False)
        lora_alpha = _lora.check_alpha(lora_alpha)
        _lora.check_constraint(self.embeddings_constraint)
        if not self.built:
            raise ValueError(
                "Cannot enable lora on a layer that isn't yet built. "
                f"Layer '{self.name}': call `layer.build()` first, or pass "
                "`lora_rank` to the constructor."
            )
        if self.lora_enabled:
            raise ValueError(
                "lora is already enabled. This can only be done once per layer. "
                f"Layer '{self.name}' has lora_rank={self.lora_rank}. "
                f"Received: rank={rank}"
            )
        self._tracker.unlock()
        try:
            add = functools.partial(
                _lora.add_factor,
                self.add_weight,
                regularizer=self.embeddings_regularizer,
            )
            # A is read by id, where the table lives; B joins the rows.
            self.lora_embeddings_a = self._placed(
                lambda: add("lora_embeddings_a", (self.input_dim, rank), a_initializer)
            )
            self.lora_embeddings_b = add(
                "lora_embeddings_b", (rank, self.output_dim), b_initializer
            )
        finally:
            self._tracker.lock()
        # Frozen where it stands, so that the weights keep Keras's order
        # `[embeddings, lora_embeddings_a, lora_embeddings_b]`; the `trainable`
        # setter below keeps it frozen.
        self._embeddings.trainable = False
        self.lora_enabled = True
        self.lora_rank = rank
        self.lora_alpha = lora_alpha
        self._lookup = _lookup.compose(self)

    @property
    def trainable(self):
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        keras.layers.Layer.trainable.fset(self, value)
        # Unlike Keras's layer, `layer.trainable = True` cannot unfreeze a table
        # under LoRA or quantization: only the adapter trains.
        if getattr(self, "lora_enabled", False) or self.quantization_mode:
            for variable in _quantization.stored_variables(self):
                variable.trainable = False

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
        for variable, value in zip(
            _quantization.stored_variables(self), values, strict=False
        ):
            variable.assign(value)
        if not self.dtype_policy.quantization_mode:
            self.dtype_policy = _quantization.policy_name(
                mode, block, self.dtype_policy.name
            )
        self._lookup = _lookup.compose(self)

    def quantized_build(self, embeddings_shape, mode, config=None):
        del embeddings_shape  # Always `(input_dim, output_dim)`.
        _quantization.check_mode(mode)
        block = _quantization.resolve_block_size(self.dtype_policy, config, mode)
        self._placed(lambda: _quantization.add_weights(self, mode, block))

    def quantized_call(self, *args, **kwargs):
        # One `call` for every mode: the index policy, masks and dropout included.
        _quantization.check_mode(self.quantization_mode)
        return self.call(*args, **kwargs)

    def _quantization_mode_error(self, mode):
        return _quantization.mode_error(mode)

    def _float_table(self):
        """The dequantized and / or LoRA-adapted table, in float32."""
        return self._lookup.adapted_table()

    def _merged_values(self):
        """What a LoRA layer saves: the adapter merged into the stored table."""
        table = self._float_table()
        mode = self.quantization_mode
        if mode:
            values = _quantization.quantize_table(table, mode, self._int4_block_size)
            return [*values, *_quantization.stored_variables(self)[len(values) :]]
        return [ops.cast(table, self._embeddings.dtype)]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
                "embeddings_regularizer": keras.regularizers.serialize(
                    self.embeddings_regularizer
                ),
                "activity_regularizer": keras.regularizers.serialize(
                    self.activity_regularizer
                ),
                "embeddings_constraint": keras.constraints.serialize(
                    self.embeddings_constraint
                ),
                "mask_zero": self.mask_zero,
                "input_length": (
                    list(self.input_length)
                    if isinstance(self.input_length, tuple)
                    else self.input_length
                ),
                "dropout": self.dropout,
                "lora_rank": self.lora_rank,
                "lora_alpha": self.lora_alpha,
                "max_norm": self.max_norm,
                "norm_type": self.norm_type,
                "sparse": self.sparse,
                "device": self.device,
                "quantization_config": keras.saving.serialize_keras_object(
                    self.quantization_config
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        """Rebuild a layer from a config written by Keras 1, tf.keras 2 or Keras 3."""
        try:
            config = _legacy.translate_config(config)
            config["quantization_config"] = _quantization.check_config(
                config.get("quantization_config")
            )
        except ValueError as e:
            raise TypeError(
                f"Error when deserializing class '{cls.__name__}' using "
                f"config={config}.\n\nException encountered: {e}"
            ) from e
        return super().from_config(config)

    @classmethod
    def from_pretrained(
        cls,
        vectors_or_path,
        vocabulary=None,
        trainable=True,
        mask_zero=False,
        oov_initializer="uniform",
        **kwargs,
    ):
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
