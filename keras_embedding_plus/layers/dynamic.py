"""`DynamicEmbedding`: a row for every key seen, up to `capacity`, with
admission (`min_count`) and eviction (`"lru"` / `"lfu"`)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_embedding_plus import backends
from keras_embedding_plus.layers import arguments as _args
from keras_embedding_plus.layers import dynamic_parts as _parts
from keras_embedding_plus.lookup import (
    dynamic_keys,
    index_policy,
    pipeline,
    string_keys,
)
from keras_embedding_plus.lookup.spec import LookupSpec

_STATE = dynamic_keys.KeyState._fields


@keras.saving.register_keras_serializable(package="keras_embedding_plus")
class DynamicEmbedding(keras.layers.Layer):
    """An embedding whose rows go to the keys it meets, up to `capacity` keys.

    Keys are any integers of `key_dtype` (negative, above 2**31), but the
    largest (`2**63 - 1` for int64), which marks free rows. While fewer than
    `capacity` keys are held, each distinct key has its own row. A key is
    admitted on its `min_count`-th sighting in a training call (`training=True`,
    as `fit` makes); until then, and for keys not held in inference calls, the
    lookup gives a zero row. When the table is full, admitting a key evicts the
    least recently (`"lru"`) or least often (`"lfu"`, ties: least recently)
    looked-up key not in the batch; its row starts again from the
    initializer. The policy, exactly: `lookup/dynamic_keys.py`.

    Admission runs inside the step, compiled, on every backend: the map is
    non-trainable state updated in `call`, as `BatchNormalization` updates its
    statistics, and saved with the weights.

    Args:
        output_dim: Integer. Dimension of the dense embedding.
        capacity: Integer. The number of rows: the most keys held at once.
        key_dtype: `"int64"` (default), `"int32"`, or `"string"`: strings,
            held as their 64-bit hash (`hash_strings`: the same on every
            backend and in every process). JAX holds int64 (and string
            hashes) only with x64 enabled. JAX and PyTorch tensors hold no
            strings: there, eager calls hash NumPy strings, and `fit` /
            `predict` take the keys `hash_strings` gives in the data pipeline.
        eviction: `"lru"` (default) or `"lfu"`.
        min_count: Integer. Sightings (in training calls) before a key is
            admitted.
        candidate_capacity: Integer. How many keys not yet admitted are counted
            at once (`min_count > 1`); default `capacity`. The least recently
            seen candidate not in the batch gives way.
        embeddings_initializer: Initializer of the rows (and of the rows given
            to new keys).
        embeddings_regularizer: Regularizer of the table.
        embeddings_constraint: Constraint of the table.
        mask_zero: Boolean. Whether `mask_key` is padding: it gets a mask of
            False, a zero row, and is never admitted.
        mask_key: The padding key of `mask_zero`: an integer (default 0), or
            a string with `key_dtype="string"` (default `""`).
        sparse: Boolean. Row-sparse gradients, as `Embedding(sparse=True)`.
        max_norm: Optional float: rows renormalized to at most this norm.
        norm_type: Float. The p of `max_norm`'s norm.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, `trainable`).

    Input shape:
        Integer tensor of any shape.

    Output shape:
        The input shape plus `(output_dim,)`.
    """

    def __init__(
        self,
        output_dim: int,
        capacity: int,
        *,
        key_dtype: str = "int64",
        eviction: str = "lru",
        min_count: int = 1,
        candidate_capacity: int | None = None,
        embeddings_initializer: Any = "uniform",
        embeddings_regularizer: Any = None,
        embeddings_constraint: Any = None,
        mask_zero: bool = False,
        mask_key: int | str | None = None,
        sparse: bool = False,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        **kwargs: Any,
    ) -> None:
        _args.check_refused(type(self).__name__, kwargs, _parts.REFUSED)
        self.output_dim = _args.check_dim("output_dim", output_dim, 1)
        self.capacity = _args.check_dim("capacity", capacity, 1)
        self.key_dtype = _parts.check_key_dtype(key_dtype)
        self.eviction = _parts.check_choice("eviction", eviction, dynamic_keys.POLICIES)
        self.min_count = _args.check_dim("min_count", min_count, 1)
        if candidate_capacity is not None:
            candidate_capacity = _args.check_dim(
                "candidate_capacity", candidate_capacity, 1
            )
        self.candidate_capacity = candidate_capacity
        self.mask_zero = _args.check_bool("mask_zero", mask_zero)
        self.mask_key, self._mask_value = _parts.check_mask_key(
            mask_key, self.key_dtype
        )
        self.sparse = _args.check_bool("sparse", sparse)
        if max_norm is not None and not max_norm > 0:
            raise ValueError(
                f"`max_norm` must be a positive number or None. Received: "
                f"max_norm={max_norm!r}."
            )
        self.max_norm, self.norm_type = max_norm, float(norm_type)
        super().__init__(**kwargs)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.embeddings_constraint = keras.constraints.get(embeddings_constraint)
        self.supports_masking = self.mask_zero
        # Keras's jit_compile="auto" then leaves XLA off where XLA cannot
        # search the sorted keys (TensorFlow: see `backends.ids`).
        self.supports_jit = backends.ids.SEARCH_UNDER_XLA
        # New keys' rows are drawn from the initializer in the step: with this
        # layer's seed state where the initializer takes a seed.
        self.seed_generator = keras.random.SeedGenerator(
            getattr(self.embeddings_initializer, "seed", None)
        )
        self._fresh_initializer = _parts.seeded(
            self.embeddings_initializer, self.seed_generator
        )
        self._pending = _parts.Pending()

    def build(self, input_shape: Any = None) -> None:
        if self.built:
            return
        self._embeddings = self.add_weight(
            shape=(self.capacity, self.output_dim),
            initializer=self.embeddings_initializer,
            regularizer=self.embeddings_regularizer,
            constraint=_parts.FreshRows(self._pending, self.embeddings_constraint),
            name="embeddings",
        )
        self._keys = self._state_variables("keys", self.capacity)
        self._candidates = None
        if self.min_count > 1:
            size = self.candidate_capacity or self.capacity
            self._candidates = self._state_variables("candidates", size)
        self._evictions = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype=_parts.map_dtype(self.key_dtype),
            trainable=False,
            name="evictions",
        )
        spec = LookupSpec(
            input_dim=self.capacity,
            output_dim=self.output_dim,
            stored=(self._embeddings,),
            sparse=self.sparse,
            max_norm=self.max_norm,
            norm_type=self.norm_type,
        )
        self._lookup = pipeline.compose(spec)
        self.built = True

    def _state_variables(self, prefix, size):
        values = dynamic_keys.initial(size, _parts.map_dtype(self.key_dtype))
        variables = []
        for name, value in zip(_STATE, values, strict=True):
            variables.append(
                self.add_weight(
                    shape=value.shape,
                    initializer=keras.initializers.Constant(value)
                    if value.ndim == 0
                    else _parts.ArrayInitializer(value),
                    dtype=str(value.dtype),
                    trainable=False,
                    name=f"{prefix}_{name}",
                )
            )
        return dynamic_keys.KeyState(*variables)

    def quantize(self, mode: Any = None, **kwargs: Any) -> None:
        """Refused: a quantized table's rows could not be drawn afresh for new
        keys in the step."""
        raise ValueError(
            f"`{type(self).__name__}` cannot be quantized (rows given to new keys are "
            f"drawn afresh in the training step). Received: mode={mode!r}."
        )

    def save_own_variables(self, store: Any) -> None:
        """Keras's entries, then the state of the seed new keys' rows are drawn
        from: training resumed after loading draws what it would have drawn."""
        entries = {}
        super().save_own_variables(entries)
        for key, value in entries.items():
            # Rows and key arrays sharded over several processes (JAX): whole,
            # gathered from all of them (a collective every process runs).
            store[key] = backends.blocks.gathered(value)
        store[str(len(self.weights))] = ops.convert_to_numpy(
            self.seed_generator.state.value
        )

    def load_own_variables(self, store: Any) -> None:
        """Loads what `save_own_variables` wrote; files without the seed state
        keep the current one."""
        seed_key = str(len(self.weights))
        own = {key: store[key] for key in store.keys() if key != seed_key}
        super().load_own_variables(own)
        if seed_key in store:
            self.seed_generator.state.assign(store[seed_key])

    @property
    def embeddings(self) -> keras.Variable:
        """The table, `(capacity, output_dim)`."""
        if not self.built:
            raise AttributeError(
                "You must build the layer before accessing `embeddings`."
            )
        return self._embeddings

    @property
    def key_map(self) -> dynamic_keys.KeyState:
        """The variables of the key -> row map (`lookup.dynamic_keys.KeyState`)."""
        return self._keys

    @property
    def sparse_variables(self) -> list:
        """The variables trained with row-sparse gradients (`sparse=True`)."""
        if not self.built:
            return []
        return list(self._lookup.sparse_variables)

    @staticmethod
    def _values(state):
        return dynamic_keys.KeyState(*(v.value for v in state))

    @staticmethod
    def _assign(state, values):
        for variable, value in zip(state, values, strict=True):
            variable.assign(value)

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if self.key_dtype == "string":
            # JAX and PyTorch tensors hold no strings: hashed before Keras
            # converts the inputs.
            inputs = _parts.hash_host_strings(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=None):
        looked_up, _ = self._rows(inputs, training)
        return ops.cast(looked_up, self.compute_dtype)

    def _keys_of(self, inputs):
        """The integer keys of `inputs` (strings hashed)."""
        if self.key_dtype == "string" and (
            string_keys.is_tf_strings(inputs) or string_keys.is_host_strings(inputs)
        ):
            inputs = string_keys.hash_strings(inputs)
        return ops.convert_to_tensor(inputs)

    def _rows(self, keys, training):
        """`(rows, held)`: the rows of `keys` (any shape; zero rows for keys
        not held), float, `keys`'s shape plus `(output_dim,)`, and which keys
        are held (padding is not). A training call admits keys first."""
        keys = self._keys_of(keys)
        if "int" not in keras.backend.standardize_dtype(keys.dtype):
            raise ValueError(
                f"`{type(self).__name__}` takes integer keys. Received: inputs "
                f"of dtype {keys.dtype}."
            )
        shape = ops.shape(keys)
        dtype = _parts.map_dtype(self.key_dtype)
        flat = ops.reshape(ops.cast(keys, dtype), (-1,))
        empty = ops.cast(dynamic_keys.EMPTY[dtype], dtype)
        if self.mask_zero:
            mask = ops.cast(self._mask_value, dtype)
            flat = ops.where(ops.equal(flat, mask), empty, flat)
        state = self._values(self._keys)
        fresh = None
        if training and flat.shape[0] != 0:
            candidates = None
            if self._candidates is not None:
                candidates = self._values(self._candidates)
            state, candidates, rows, fresh, evicted = dynamic_keys.train(
                state,
                flat,
                policy=self.eviction,
                min_count=self.min_count,
                candidates=candidates,
            )
            self._assign(self._keys, state)
            if candidates is not None:
                self._assign(self._candidates, candidates)
            self._evictions.assign(self._evictions.value + evicted)
        else:
            rows = dynamic_keys.find(state, flat)
        valid = rows >= 0
        ids = ops.where(valid, rows, 0)
        looked_up, valid = self._lookup.rows(ids, valid, training)
        if fresh is not None:
            looked_up = self._start_fresh(looked_up, rows, fresh)
        looked_up = index_policy.zero_invalid(looked_up, valid)
        return (
            ops.reshape(looked_up, tuple(shape) + (self.output_dim,)),
            ops.reshape(rows >= 0, shape),
        )

    def _start_fresh(self, looked_up, rows, fresh):
        """Rows given to new keys in this call read their initial values, which
        `dynamic_parts.FreshRows` writes to the table after the optimizer's update (the
        update of this first call is not kept). Where the backend takes
        data-dependent shapes, only the real fresh rows (`fresh` holds them
        first) are drawn and written, not one per key of the batch."""
        count = ops.sum(ops.cast(fresh < self.capacity, "int32"))
        fresh = backends.core.leading(fresh, ops.maximum(count, 1))
        size = ops.shape(fresh)[0]
        initial = self._fresh_initializer((size, self.output_dim))
        self._pending.fresh = (fresh, initial)
        position = ops.minimum(
            ops.cast(ops.searchsorted(fresh, rows), "int32"), size - 1
        )
        is_fresh = ops.expand_dims(ops.equal(ops.take(fresh, position), rows), -1)
        start = ops.cast(ops.take(initial, position, axis=0), looked_up.dtype)
        return ops.where(is_fresh, ops.stop_gradient(start), looked_up)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        keys = self._keys_of(inputs)
        return ops.not_equal(keys, ops.cast(self._mask_value, keys.dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    # ---- inspection -------------------------------------------------------------

    def keys(self) -> np.ndarray:
        """The held keys, ascending, as a NumPy array."""
        held = self._held()
        return held["keys"]

    def rows_of(self, keys: Any) -> np.ndarray:
        """The rows of `keys` (any shape), -1 for keys not held, as NumPy."""
        if self.key_dtype == "string" and string_keys.is_host_strings(keys):
            keys = string_keys.hash_strings(keys)
        keys = np.asarray(keys, _parts.map_dtype(self.key_dtype))
        flat = ops.convert_to_tensor(keys.reshape(-1))
        rows = dynamic_keys.find(self._values(self._keys), flat)
        return ops.convert_to_numpy(rows).reshape(keys.shape)

    def counts(self) -> np.ndarray:
        """How often each held key (in `keys()` order) was looked up in
        training calls (its sightings before admission included)."""
        return self._held()["counts"]

    @property
    def evictions(self) -> int:
        """How many keys have been evicted since the layer was built."""
        return int(ops.convert_to_numpy(self._evictions.value))

    def _held(self):
        values = {
            name: ops.convert_to_numpy(v.value)
            for name, v in zip(_STATE, self._keys, strict=True)
        }
        # The held keys come first in the sorted index, ascending.
        empty = dynamic_keys.EMPTY[_parts.map_dtype(self.key_dtype)]
        held = values["sorted_keys"] != empty
        return {
            "keys": values["sorted_keys"][held],
            "counts": values["counts"][values["sorted_rows"][held]],
        }

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            output_dim=self.output_dim,
            capacity=self.capacity,
            key_dtype=self.key_dtype,
            eviction=self.eviction,
            min_count=self.min_count,
            candidate_capacity=self.candidate_capacity,
            embeddings_initializer=keras.initializers.serialize(
                self.embeddings_initializer
            ),
            embeddings_regularizer=keras.regularizers.serialize(
                self.embeddings_regularizer
            ),
            embeddings_constraint=keras.constraints.serialize(
                self.embeddings_constraint
            ),
            mask_zero=self.mask_zero,
            mask_key=self.mask_key,
            sparse=self.sparse,
            max_norm=self.max_norm,
            norm_type=self.norm_type,
        )
        return config
