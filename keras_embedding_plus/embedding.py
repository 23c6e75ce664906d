"""The `Embedding` layer."""

import numbers

import keras
import numpy as np
from keras import ops

from keras_embedding_plus import _ids, _legacy, _saving


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_dim(name, value, minimum):
    if not _is_int(value) or value < minimum:
        allowed = "a positive integer" if minimum == 1 else "a non-negative integer"
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
        f"Received: input_length={input_length!r}."
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
        **kwargs: Base layer keyword arguments (`name`, `dtype`, `trainable`...).
            The Keras 1 names `init`, `W_regularizer` and `W_constraint` are
            accepted with a `DeprecationWarning`.

    Input shape:
        N-D tensor of ids with shape `(batch_size, ...)`, any rank >= 1.

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
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.embeddings_constraint = keras.constraints.get(embeddings_constraint)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero
        self.input_length = input_length
        self.dropout = dropout
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
        self._embeddings = self.add_weight(
            shape=(self.input_dim, self.output_dim),
            initializer=self.embeddings_initializer,
            name="embeddings",
            regularizer=self.embeddings_regularizer,
            constraint=self.embeddings_constraint,
            trainable=True,
        )
        self.built = True

    @property
    def embeddings(self):
        """The `(input_dim, output_dim)` table (a `keras.Variable`)."""
        if not self.built:
            raise AttributeError(
                "You must build the layer before accessing `embeddings`: call "
                "`layer.build()` or call the layer on some ids first."
            )
        return self._embeddings

    def call(self, inputs, training=None):
        self._check_length(inputs.shape)
        ids, valid = _ids.prepare_ids(inputs, self.input_dim)
        outputs, valid = _ids.take(self.embeddings, ids, valid)
        if training and self.dropout:
            keep = ops.greater_equal(
                keras.random.uniform((self.input_dim,), seed=self.seed_generator),
                self.dropout,
            )
            scale = ops.take(ops.cast(keep, outputs.dtype), ids, axis=0)
            outputs = outputs * ops.expand_dims(scale, -1) / (1.0 - self.dropout)
        outputs = _ids.zero_invalid(outputs, valid)
        return ops.cast(outputs, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
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

    def compute_output_spec(self, inputs):
        _ids.ids_dtype(inputs)
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape),
            dtype=self.compute_dtype,
            ragged=getattr(inputs, "ragged", False),
        )

    def set_weights(self, weights):
        _saving.check_weights(self, weights, "set_weights")
        super().set_weights(weights)

    def load_own_variables(self, store):
        _saving.check_weights(self, _saving.store_values(store), "load_weights")
        super().load_own_variables(store)

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
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        """Rebuild a layer from a config written by Keras 1, tf.keras 2 or Keras 3."""
        try:
            config = _legacy.translate_config(config)
        except ValueError as e:
            raise TypeError(
                f"Error when deserializing class '{cls.__name__}' using "
                f"config={config}.\n\nException encountered: {e}"
            ) from e
        return super().from_config(config)
