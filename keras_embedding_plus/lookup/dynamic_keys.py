"""A growing key -> row map in `keras.ops`: admission on the `min_count`-th
sighting, eviction of the least recently (`"lru"`) or least often (`"lfu"`)
looked-up key when full. The state of `DynamicEmbedding` (issue 22).

The state is a handful of fixed-size tensors (`KeyState`), updated by pure
functions, so that a layer holds it in non-trainable variables and updates them
in `call`, as `BatchNormalization` updates its statistics: compiled, on every
backend, with no host stage. Sizes: `capacity` rows.

* `stamps[r]`: when row `r`'s key was last looked up in a training call (0:
  the row is free); `counts[r]`: how often.
* `sorted_keys` / `sorted_rows`: the held keys in ascending order and their
  rows; free rows last, under the key `EMPTY`. A lookup is one binary search
  (`ops.searchsorted`) and two gathers.
* `clock`: distinct stamps: a training call stamps its distinct keys `clock + 1,
  clock + 2, ...` in ascending key order, so no two rows ever share a stamp and
  every order below is total.

Keys not yet admitted (`min_count > 1`) are counted in a second map of the
same kind, `candidates` (the oldest candidate not in the batch gives way when
it is full), and move to a row on their `min_count`-th sighting.

The policy, exactly (`tests/lookup/test_dynamic_keys.py` checks it against a
plain Python model, key stream by key stream):

1. A training call takes the distinct keys of the batch in ascending order.
2. A held key: its stamp is renewed, its count grows by its occurrences.
3. A new key is admitted when its sightings (earlier ones counted as a
   candidate, plus this batch's occurrences) reach `min_count`; else it is a
   candidate.
4. Admitted keys take, in ascending key order, first the free rows (lowest row
   first), then the rows of the held keys not looked up in this batch, least
   recently stamped first (`"lru"`) or least often looked up first, then least
   recently (`"lfu"`). A key finding no such row is not admitted (it stays a
   candidate: more new keys than rows to give in one batch).
5. An admitted key's row starts with the count of its sightings and a new
   stamp; the evicted key leaves the map.
"""

from typing import NamedTuple

import keras
import numpy as np
from keras import backend, ops

from keras_embedding_plus import backends
from keras_embedding_plus.backends import ids as backend_ids

POLICIES = ("lru", "lfu")
# The sort key of free rows: the largest key. It is the one key that cannot be
# held (it is refused where keys are checked).
EMPTY = {"int64": np.iinfo(np.int64).max, "int32": np.iinfo(np.int32).max}


class KeyState(NamedTuple):
    """The map's tensors (see the module docstring)."""

    stamps: object
    counts: object
    sorted_keys: object
    sorted_rows: object
    clock: object


def initial(capacity, key_dtype):
    """The empty map, as NumPy arrays (the variables' initial values)."""
    empty = EMPTY[key_dtype]
    return KeyState(
        stamps=np.zeros((capacity,), key_dtype),
        counts=np.zeros((capacity,), key_dtype),
        sorted_keys=np.full((capacity,), empty, key_dtype),
        sorted_rows=np.arange(capacity, dtype="int32"),
        clock=np.zeros((), key_dtype),
    )


def find(state, keys):
    """The rows of `keys` (1-D), -1 for keys not held."""
    return _locate(state, keys)[0]


def _locate(state, keys):
    """`(rows, place)`: `find`'s rows, and where each key goes in the sorted
    keys (the held keys below it)."""
    capacity = state.sorted_keys.shape[0]
    place = ops.cast(ops.searchsorted(state.sorted_keys, keys), "int32")
    position = ops.minimum(place, capacity - 1)
    found = ops.equal(ops.take(state.sorted_keys, position), keys)
    # `EMPTY` is never held: it is the sort key of the free entries.
    empty = ops.cast(EMPTY[backend.standardize_dtype(keys.dtype)], keys.dtype)
    found = ops.logical_and(found, ops.not_equal(keys, empty))
    return ops.where(found, ops.take(state.sorted_rows, position), -1), place


def distinct(keys):
    """`(unique, occurrences, present, inverse)`: the distinct keys of `keys`
    (1-D) in ascending order, padded to `keys`'s size; `present` marks the
    real ones; `keys == take(unique, inverse)`."""
    size = ops.shape(keys)[0]
    order = ops.cast(ops.argsort(keys), "int32")
    ordered = ops.take(keys, order)
    first = ops.concatenate(
        [ops.ones((1,), "bool"), ops.not_equal(ordered[1:], ordered[:-1])]
    )
    group = ops.cumsum(ops.cast(first, "int32")) - 1
    occurrences = ops.segment_sum(ops.ones((size,), "int32"), group, size)
    positions = ops.arange(size, dtype="int32")
    # The first key of each group, in order (a compaction, not a sort).
    unique = _compact(ordered, first, size, 0)
    present = positions < ops.sum(ops.cast(first, "int32"))
    inverse = ops.scatter_update(
        ops.zeros((size,), "int32"), ops.expand_dims(order, -1), group
    )
    return unique, ops.where(present, occurrences, 0), present, inverse


def fresh_writes(fresh, values, current):
    """`(ids, rows)` that write `values` at the `fresh` rows of `current` (a
    table or an optimizer slot): `fresh` as `train` returns it (ascending,
    then `capacity` for none). The entries of no row repeat the first entry,
    id and value, so that a scatter with duplicate ids writes the same thing
    on every backend (and the current row where there is no fresh row)."""
    capacity = current.shape[0]
    valid = fresh < capacity
    first_id = ops.where(valid[0], fresh[0], capacity - 1)
    ids = ops.where(valid, fresh, first_id)
    values = ops.cast(values, current.dtype)
    if isinstance(current, keras.Variable):
        # Its row alone (TensorFlow would copy the whole variable to `take`).
        row = backends.sparse.gather_rows(current, ops.reshape(first_id, (1,)))[0]
    else:
        row = ops.take(current, first_id, axis=0)
    first = ops.where(valid[0], values[0], row)
    # (Rows of a table or a per-element slot; a row-wise slot holds scalars.)
    column = ops.reshape(valid, (-1,) + (1,) * (len(values.shape) - 1))
    rows = ops.where(column, values, ops.expand_dims(first, 0))
    return ids, rows


def _scatter(x, rows, values):
    """`x[rows] = values` (1-D) where `rows` may hold `len(x)` (dropped) and
    the other rows are distinct.

    The dropped entries write the first kept one again, row and value (or
    `x[0]` to row 0 where none is kept): a scatter whose duplicates agree, on
    every backend, with no padded copy of `x`.
    """
    rows = ops.cast(rows, "int32")
    values = ops.cast(values, x.dtype)
    keep = rows < ops.shape(x)[0]
    first = ops.argmax(ops.cast(keep, "int32"))
    any_kept = ops.take(keep, first)
    first_row = ops.where(any_kept, ops.take(rows, first), 0)
    first_value = ops.where(any_kept, ops.take(values, first), ops.take(x, 0))
    rows = ops.where(keep, rows, first_row)
    values = ops.where(keep, values, first_value)
    return ops.scatter_update(x, ops.expand_dims(rows, -1), values)


def _cond(predicate, true_fn, false_fn):
    """`ops.cond`, or a plain `if` where the predicate is known (eager calls:
    JAX's `cond` would compile both branches at every call)."""
    if backend_ids.is_concrete(predicate):
        return true_fn() if bool(ops.convert_to_numpy(predicate)) else false_fn()
    return ops.cond(predicate, true_fn, false_fn)


def _compact(values, keep, size, fill):
    """The `values` where `keep`, in order, then `fill`: `size` entries."""
    position = ops.cumsum(ops.cast(keep, "int32")) - 1
    position = ops.where(ops.logical_and(keep, position < size), position, size)
    filled = ops.full((size,), fill, dtype=values.dtype)
    return _scatter(filled, position, values)


def _merged(state, removed, keys, rows, place, key_dtype, any_lost):
    """`(sorted_keys, sorted_rows)` after the rows `removed()` (a function
    giving a boolean per row) lost their keys and `keys` (ascending, `EMPTY`
    where none) took `rows`. `place`: where each new key goes among the old
    sorted keys (`_locate`'s; none equals it). `any_lost`: whether any removed
    row held a key.

    A merge, O(capacity), instead of a sort. While no held key is removed (the
    map is not full yet) the held entries are the first ones and stay in
    order: every output entry is one gather; else the kept entries move up by
    the new keys below them and the new keys by the kept entries below them
    (scatters).
    """
    capacity = state.sorted_keys.shape[0]
    size = ops.shape(keys)[0]
    empty = ops.cast(EMPTY[key_dtype], state.sorted_keys.dtype)
    old_keys, old_rows = state.sorted_keys, state.sorted_rows
    present = ops.not_equal(keys, empty)
    sequence = ops.arange(size, dtype="int32")

    def gathered():
        # Nothing lost: the j-th new key goes after the `place` old entries
        # below it and the j new keys before it.
        new_position = ops.where(present, place + sequence, capacity)
        is_new = _scatter(
            ops.zeros((capacity,), "bool"), new_position, ops.ones_like(present)
        )
        new_before = ops.cumsum(ops.cast(is_new, "int32"))
        old_index = ops.arange(capacity, dtype="int32") - new_before
        new_index = ops.maximum(new_before - 1, 0)
        sorted_keys = ops.where(
            is_new, ops.take(keys, new_index), ops.take(old_keys, old_index)
        )
        sorted_rows = ops.where(
            is_new,
            ops.cast(ops.take(rows, new_index), "int32"),
            ops.take(old_rows, old_index),
        )
        return sorted_keys, sorted_rows

    def scattered():
        held = ops.not_equal(old_keys, empty)
        lost = ops.logical_and(held, ops.take(removed(), old_rows))
        keep = ops.logical_and(held, ops.logical_not(lost))
        kept_below = ops.cumsum(ops.cast(keep, "int32"))
        prefix = ops.concatenate([ops.zeros((1,), "int32"), kept_below])
        new_position = ops.where(present, ops.take(prefix, place) + sequence, capacity)
        # The new keys below old entry `i`: those placed at `i` or before.
        placed = ops.segment_sum(
            ops.cast(present, "int32"), ops.minimum(place, capacity), capacity + 1
        )
        new_below = ops.cumsum(placed)[:-1]
        old_position = ops.where(keep, kept_below - 1 + new_below, capacity)
        sorted_keys = ops.full((capacity,), empty, dtype=old_keys.dtype)
        sorted_keys = _scatter(sorted_keys, old_position, old_keys)
        sorted_keys = _scatter(sorted_keys, new_position, keys)
        sorted_rows = ops.zeros((capacity,), "int32")
        sorted_rows = _scatter(sorted_rows, old_position, old_rows)
        sorted_rows = _scatter(sorted_rows, new_position, rows)
        return sorted_keys, sorted_rows

    return _cond(any_lost, scattered, gathered)


# Bits of the LFU score (int64): a count (saturated) above a stamp (saturated).
_LFU_STAMP_BITS = 43
_LFU_COUNT_MAX = 2**19 - 1


def _constant(value, dtype):
    """`value` as a tensor of `dtype` (a Python int would pass through int32)."""
    return ops.convert_to_tensor(np.asarray(value, dtype))


def _at_most(x, value, dtype):
    bound = _constant(value, dtype)
    return ops.where(x > bound, bound, x)


def _score(state, touched, policy):
    """Per row, the order in which rows are given to new keys (ascending, all
    distinct but the `touched` rows, which share the largest): free rows
    (lowest first), then held rows by the policy."""
    capacity = state.stamps.shape[0]
    dtype = backend.standardize_dtype(state.stamps.dtype)
    rows = ops.arange(capacity, dtype=dtype)
    if policy == "lru":
        rank = state.stamps  # Distinct: the order by recency.
    elif dtype == "int64":
        # By count, then by recency, in one integer: exact while counts stay
        # below 2**19 and stamps below 2**43 (8.8e12 keys looked up).
        # (`ops.where`, not `ops.minimum`: Keras's torch backend computes the
        # minimum of two int64 tensors in int32.)
        count = _at_most(state.counts, _LFU_COUNT_MAX, dtype)
        stamp = _at_most(state.stamps, 2**_LFU_STAMP_BITS - 1, dtype)
        rank = count * _constant(2**_LFU_STAMP_BITS, dtype) + stamp
    else:
        # 32 bits: the recency rank (distinct, below capacity) breaks the
        # count's ties (two sorts of the whole map).
        recency = ops.cast(ops.argsort(ops.argsort(state.stamps)), dtype)
        rank = state.counts * capacity + recency
    top = _constant(2**62 if dtype == "int64" else 2**30, dtype)
    score = ops.where(state.stamps > 0, rank, rows - capacity)
    return ops.where(touched, top, score)


def _victims(state, touched, policy, size, free_rows_last):
    """`(victims, giveable)`: the first `size` rows in the order they are given
    to new keys (`_score`), and which of them may be (not `touched()`: the
    rows of the batch's held keys, a function giving a boolean per row).

    `free_rows_last`: the held rows are the first ones, the free rows all
    after them (the main map, which never frees a row): while `size` rows
    are free, they are the victims (none touched), with no pass over the map.
    """
    capacity = state.stamps.shape[0]
    # `size` is a tensor in TensorFlow graphs of unknown batch size.
    size = min(size, capacity) if isinstance(size, int) else ops.minimum(size, capacity)

    def by_score():
        rows_touched = touched()
        victims = ops.cast(
            backends.core.smallest(_score(state, rows_touched, policy), size),
            "int32",
        )
        return victims, ops.logical_not(ops.take(rows_touched, victims))

    if not free_rows_last:
        return by_score()
    # The held keys precede the free entries (`EMPTY`) in the sorted index.
    key_dtype = backend.standardize_dtype(state.sorted_keys.dtype)
    empty = ops.full((1,), EMPTY[key_dtype], dtype=key_dtype)
    held = ops.cast(ops.searchsorted(state.sorted_keys, empty)[0], "int32")
    return _cond(
        capacity - held >= size,
        lambda: (
            held + ops.arange(size, dtype="int32"),
            ops.greater_equal(ops.arange(size, dtype="int32"), 0),
        ),
        by_score,
    )


def _assign(ready, victims, giveable, capacity):
    """The j-th `ready` key takes the j-th victim where it is giveable:
    `(taken, target)`, target `capacity` where none."""
    size = ops.shape(victims)[0]
    rank = ops.cumsum(ops.cast(ready, "int32")) - 1
    slot = ops.minimum(rank, size - 1)
    taken = ops.logical_and(
        ready, ops.logical_and(rank < size, ops.take(giveable, slot))
    )
    return taken, ops.where(taken, ops.take(victims, slot), capacity)


def train(state, keys, *, policy, min_count, candidates=None):
    """One training call's update. Returns `(state, candidates, rows, fresh,
    evicted)`.

    `keys`: the batch's keys, 1-D. `rows`: their rows after the update (-1:
    not admitted). `fresh`: as long as `keys`, the rows given to a new key in
    this call (whose values start afresh), then `capacity` for none.
    `evicted`: the number of held keys that gave their rows up.
    """
    capacity = state.stamps.shape[0]
    dtype = backend.standardize_dtype(state.stamps.dtype)
    key_dtype = backend.standardize_dtype(keys.dtype)
    unique, occurrences, present, inverse = distinct(keys)
    # `EMPTY` (free rows, and the layer's padding key) is never admitted.
    present = ops.logical_and(present, ops.not_equal(unique, EMPTY[key_dtype]))
    occurrences = ops.where(present, occurrences, 0)
    size = ops.shape(unique)[0]
    sequence = ops.arange(1, size + 1, dtype=dtype)
    stamps_now = state.clock + sequence
    clock = state.clock + ops.cast(size, dtype)

    # Held keys: renewed (below, with the admitted ones: one scatter a tensor).
    rows, place = _locate(state, unique)
    hit = ops.logical_and(present, rows >= 0)
    hit_row = ops.where(hit, rows, capacity)

    def touched():
        return _scatter(ops.zeros((capacity,), "bool"), hit_row, ops.ones_like(hit))

    new = ops.logical_and(present, ops.logical_not(hit))
    sightings = ops.cast(occurrences, dtype)
    if candidates is not None:
        located = _locate(candidates, unique)
        crows = located[0]
        chit = ops.logical_and(new, crows >= 0)
        earlier = ops.take(candidates.counts, ops.maximum(crows, 0))
        sightings = sightings + ops.where(chit, earlier, 0)
    ready = ops.logical_and(new, sightings >= min_count)

    # Admission: the j-th ready key takes the j-th row of the victim order
    # (the order does not read the touched rows' stamps and counts).
    victims, giveable = _victims(state, touched, policy, size, True)
    admitted_key, target = _assign(ready, victims, giveable, capacity)
    was_held = ops.take(state.stamps, ops.minimum(target, capacity - 1)) > 0
    evicted = ops.sum(ops.cast(ops.logical_and(admitted_key, was_held), dtype))
    # A key is held or admitted, not both: one scatter writes both.
    held_count = ops.take(state.counts, ops.minimum(hit_row, capacity - 1))
    written = ops.where(hit, hit_row, target)
    stamps = _scatter(state.stamps, written, stamps_now)
    counts = _scatter(
        state.counts,
        written,
        ops.where(hit, held_count + ops.cast(occurrences, dtype), sightings),
    )
    fresh = ops.cast(ops.sort(target), "int32")

    def removed():
        no_row = ops.zeros((capacity,), "bool")
        return _scatter(no_row, target, ops.ones_like(ready))

    sorted_keys, sorted_rows = _merged(
        state,
        removed,
        _compact(unique, admitted_key, size, EMPTY[key_dtype]),
        _compact(target, admitted_key, size, capacity),
        _compact(place, admitted_key, size, 0),
        key_dtype,
        any_lost=evicted > 0,
    )
    state = KeyState(stamps, counts, sorted_keys, sorted_rows, clock)

    if candidates is not None:
        candidates = _train_candidates(
            candidates,
            unique,
            located,
            new=ops.logical_and(new, ops.logical_not(admitted_key)),
            gone=admitted_key,
            sightings=sightings,
            stamps_now=stamps_now,
            key_dtype=key_dtype,
        )
    # Each key's row: a held key keeps its row, an admitted one took `target`.
    rows = ops.where(hit, rows, ops.where(admitted_key, target, -1))
    return state, candidates, ops.take(rows, inverse), fresh, evicted


def _train_candidates(
    candidates, unique, located, *, new, gone, sightings, stamps_now, key_dtype
):
    """Candidates after a batch: admitted keys leave; new keys not admitted
    are counted (held ones renewed, others take free or oldest untouched rows;
    a key finding none is forgotten). `located`: `_locate(candidates, unique)`."""
    capacity = candidates.stamps.shape[0]
    size = ops.shape(unique)[0]
    rows, place = located
    held = rows >= 0
    # Admitted keys leave (their row becomes free).
    leave = ops.where(ops.logical_and(gone, held), rows, capacity)
    stamps = _scatter(candidates.stamps, leave, ops.zeros_like(stamps_now))
    renew = ops.logical_and(new, held)
    target = ops.where(renew, rows, capacity)
    stamps = _scatter(stamps, target, stamps_now)
    counts = _scatter(candidates.counts, target, sightings)
    renewed_row = target

    def touched():
        no_row = ops.zeros((capacity,), "bool")
        return _scatter(no_row, renewed_row, ops.ones_like(new))

    state = KeyState(
        stamps,
        counts,
        candidates.sorted_keys,
        candidates.sorted_rows,
        candidates.clock,
    )
    insert = ops.logical_and(new, ops.logical_not(held))
    victims, giveable = _victims(state, touched, "lru", size, False)
    placed, target = _assign(insert, victims, giveable, capacity)
    stamps = _scatter(stamps, target, stamps_now)
    counts = _scatter(counts, target, sightings)
    lost = _scatter(ops.zeros((capacity,), "bool"), leave, ops.ones_like(new))
    lost = _scatter(lost, target, ops.ones_like(new))
    any_lost = ops.any(ops.logical_and(lost, candidates.stamps > 0))
    sorted_keys, sorted_rows = _merged(
        state,
        lambda: lost,
        _compact(unique, placed, size, EMPTY[key_dtype]),
        _compact(target, placed, size, capacity),
        _compact(place, placed, size, 0),
        key_dtype,
        any_lost=any_lost,
    )
    clock = candidates.clock + ops.cast(size, dtype=candidates.clock.dtype)
    return KeyState(stamps, counts, sorted_keys, sorted_rows, clock)
