"""`DynamicEmbedding`'s parts: its argument checks, the constraint that
writes new keys' rows, and its state variables' initializers."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_embedding_plus import compat
from keras_embedding_plus.lookup import dynamic_keys, string_keys

KEY_DTYPES = ("int64", "int32", "string")


def check_choice(name, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"`{name}` must be one of {', '.join(map(repr, allowed))}. "
            f"Received: {name}={value!r} (of type {type(value).__name__})."
        )
    return value


def map_dtype(key_dtype):
    """The integer dtype the map holds: strings are held as their int64 hash."""
    return "int64" if key_dtype == "string" else key_dtype


def check_key_dtype(key_dtype):
    check_choice("key_dtype", key_dtype, KEY_DTYPES)
    probe = ops.convert_to_tensor(np.zeros((), map_dtype(key_dtype)))
    if keras.backend.standardize_dtype(probe.dtype) != map_dtype(key_dtype):
        raise ValueError(
            f"`key_dtype={key_dtype!r}` needs 64-bit integers, which JAX holds "
            "only with x64 enabled (JAX_ENABLE_X64=1, or "
            'jax.config.update("jax_enable_x64", True) at startup). Enable it, '
            'or pass key_dtype="int32" for keys in the int32 range.'
        )
    return key_dtype


# `Embedding` options a growing table does not take, and why (`ValueError`
# where they are passed, as the pair table refuses pairs).
REFUSED = {
    "input_dim": "the table has `capacity` rows, and keys are not row ids",
    "input_length": "keys of any shape are looked up",
    "padding_idx": "pass `mask_zero=True` and `mask_key`",
    "weights": "rows belong to keys admitted in training, not to ids",
    "lora_rank": "LoRA's factors would follow rows that change owner",
    "lora_alpha": "LoRA's factors would follow rows that change owner",
    "dropout": "not implemented for a growing table",
    "device": "the map and the table live where Keras puts variables",
}


def check_mask_key(mask_key, key_dtype):
    """`(mask_key, its key)`: the padding key as given (default 0, or `""` for
    strings) and as the map holds it."""
    if key_dtype == "string":
        mask_key = "" if mask_key is None else mask_key
        if not isinstance(mask_key, str):
            raise ValueError(
                '`mask_key` must be a string with key_dtype="string". Received: '
                f"mask_key={mask_key!r}."
            )
        return mask_key, int(string_keys.hash_strings(mask_key))
    mask_key = 0 if mask_key is None else mask_key
    info = np.iinfo(key_dtype)
    if isinstance(mask_key, bool) or not isinstance(mask_key, int | np.integer):
        raise ValueError(
            f"`mask_key` must be an integer. Received: mask_key={mask_key!r}."
        )
    if not info.min <= mask_key < info.max:
        raise ValueError(
            f"`mask_key` must be a {key_dtype} key below {info.max}. "
            f"Received: mask_key={mask_key}."
        )
    return int(mask_key), int(mask_key)


def hash_host_strings(inputs):
    """`inputs` with host strings (keys, or the values of flat bags) hashed."""
    if string_keys.is_host_strings(inputs):
        return string_keys.hash_strings(inputs)
    if isinstance(inputs, (tuple, list)) and len(inputs) == 2:
        values, bags = inputs
        if string_keys.is_host_strings(values):
            return type(inputs)((string_keys.hash_strings(values), bags))
    if isinstance(inputs, dict) and string_keys.is_host_strings(inputs.get("values")):
        return {**inputs, "values": string_keys.hash_strings(inputs["values"])}
    return inputs


class Pending:
    """What a training call leaves for the table's constraint: `fresh`, the
    rows given to new keys and their initial values, or None."""

    fresh = None


class FreshRows(keras.constraints.Constraint):
    """The table's constraint: the rows given to new keys in this step take
    their initial values, then the user's constraint applies.

    A training call admits keys in the forward pass, which on JAX cannot write
    a trainable variable (Keras's stateless forward returns only the
    non-trainable ones). The optimizer can: Keras applies a variable's
    constraint right after its update, in the same step. The forward leaves
    the fresh rows in `pending`; this writes them (a dense write of the
    table), and gives those rows' slots in the optimizer applying the update
    (Keras's own) their initial values: an evicted key's statistics do not
    carry over to the new one. The lazy optimizers write both first, row by row
    (`take_fresh`), and this then has only the user's constraint to apply.
    """

    def __init__(self, pending, constraint):
        self.pending = pending
        self.constraint = constraint

    def fresh_rows(self):
        """The rows given to new keys in this step (then `capacity` for none),
        or None: the lazy optimizers reset their slots there."""
        return None if self.pending.fresh is None else self.pending.fresh[0]

    def writes_fresh_rows_only(self):
        """Whether this only writes new keys' rows (no user constraint): an
        optimizer that writes them itself may then skip it."""
        return self.constraint is None

    def take_fresh(self):
        """`(rows, initial values)` of this step's fresh rows, or None; the
        caller writes them (this constraint then leaves them)."""
        fresh, self.pending.fresh = self.pending.fresh, None
        return fresh

    def __call__(self, w):
        fresh = self.take_fresh()
        if fresh is not None:
            if isinstance(w, keras.Variable):
                self._reset_slots(fresh[0], w)
            ids, rows = dynamic_keys.fresh_writes(*fresh, w)
            w = ops.scatter_update(w, ops.expand_dims(ids, -1), rows)
        if self.constraint is not None:
            w = self.constraint(w)
        return w

    @staticmethod
    def _reset_slots(fresh, table):
        """The `fresh` rows of `table`'s slots in the optimizer now applying
        its update (Keras's own: a dense write of each slot) take their
        initial values."""
        optimizer = compat.applying_optimizer()
        if optimizer is None:
            return
        for slot, initial in compat.row_slots(optimizer, table):
            values = ops.full((ops.shape(fresh)[0],) + tuple(slot.shape[1:]), initial)
            ids, values = dynamic_keys.fresh_writes(fresh, values, slot)
            slot.assign(
                ops.scatter_update(slot.value, ops.expand_dims(ids, -1), values)
            )


class ArrayInitializer(keras.initializers.Initializer):
    """The initial value of a state variable: a given array."""

    def __init__(self, value):
        self.value = value

    def __call__(self, shape, dtype=None):
        return ops.convert_to_tensor(self.value, dtype=dtype)


def seeded(initializer, seed_generator):
    """`initializer` drawing from `seed_generator` where it takes a seed (so
    that it draws new values each step, in compiled steps too)."""
    config = initializer.get_config()
    if "seed" not in config:
        return initializer
    config = {**config, "seed": seed_generator}
    return initializer.__class__.from_config(config)
