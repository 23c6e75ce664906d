"""A growing key -> row map in `keras.ops`: admission on the `min_count`-th
sighting, eviction of the least recently (`"lru"`) or least often (`"lfu"`)
looked-up key when full. The state of `DynamicEmbedding` (issue 22).

The state is a handful of fixed-size tensors (`KeyState`), updated by pure
functions, so that a layer holds it in non-trainable variables and updates them
in `call`, as `BatchNormalization` updates its statistics: compiled, on every
backend, with no host stage. Sizes: `capacity` rows.

* `row_keys[r]`: the key held by row `r`; `stamps[r]`: when it was last looked
  up in a training call (0: the row is free); `counts[r]`: how often.
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

import numpy as np
from keras import backend, ops

POLICIES = ("lru", "lfu")
# The sort key of free rows: the largest key. It is the one key that cannot be
# held (it is refused where keys are checked).
EMPTY = {"int64": np.iinfo(np.int64).max, "int32": np.iinfo(np.int32).max}


class KeyState(NamedTuple):
    """The map's tensors (see the module docstring)."""

    row_keys: object
    stamps: object
    counts: object
    sorted_keys: object
    sorted_rows: object
    clock: object


def initial(capacity, key_dtype):
    """The empty map, as NumPy arrays (the variables' initial values)."""
    empty = EMPTY[key_dtype]
    return KeyState(
        row_keys=np.full((capacity,), empty, key_dtype),
        stamps=np.zeros((capacity,), key_dtype),
        counts=np.zeros((capacity,), key_dtype),
        sorted_keys=np.full((capacity,), empty, key_dtype),
        sorted_rows=np.arange(capacity, dtype="int32"),
        clock=np.zeros((), key_dtype),
    )


def find(state, keys):
    """The rows of `keys` (1-D), -1 for keys not held."""
    capacity = state.sorted_keys.shape[0]
    position = ops.cast(ops.searchsorted(state.sorted_keys, keys), "int32")
    position = ops.minimum(position, capacity - 1)
    found = ops.equal(ops.take(state.sorted_keys, position), keys)
    # `EMPTY` is never held: a key equal to it meets a free row.
    rows = ops.take(state.sorted_rows, position)
    found = ops.logical_and(found, ops.take(state.stamps, rows) > 0)
    return ops.where(found, rows, -1)


def distinct(keys):
    """`(unique, occurrences, present)`: the distinct keys of `keys` (1-D) in
    ascending order, padded to `keys`'s size; `present` marks the real ones."""
    size = ops.shape(keys)[0]
    ordered = ops.sort(keys)
    first = ops.concatenate(
        [ops.ones((1,), "bool"), ops.not_equal(ordered[1:], ordered[:-1])]
    )
    group = ops.cumsum(ops.cast(first, "int32")) - 1
    occurrences = ops.segment_sum(ops.ones((size,), "int32"), group, size)
    positions = ops.arange(size, dtype="int32")
    # The first position of each group, in order; the others after them.
    firsts = ops.argsort(ops.where(first, positions, size + positions))
    unique = ops.take(ordered, firsts)
    present = positions < ops.sum(ops.cast(first, "int32"))
    return unique, ops.where(present, occurrences, 0), present


def _pad(x, value):
    """`x` with one more entry, `value`: the target of masked-out scatters."""
    return ops.concatenate([x, ops.full((1,), value, dtype=x.dtype)])


def _scatter(x, rows, values):
    """`x[rows] = values` where `rows` may hold `len(x)` (dropped)."""
    padded = _pad(x, 0)
    rows = ops.expand_dims(ops.cast(rows, "int32"), -1)
    return ops.scatter_update(padded, rows, ops.cast(values, x.dtype))[:-1]


def _resorted(row_keys, stamps, key_dtype):
    """`(sorted_keys, sorted_rows)` of the held keys (free rows last)."""
    empty = ops.cast(EMPTY[key_dtype], row_keys.dtype)
    keys = ops.where(stamps > 0, row_keys, empty)
    rows = ops.cast(ops.argsort(keys), "int32")
    return ops.take(keys, rows), rows


def _victim_order(state, touched, policy):
    """Rows in the order they are given to new keys: free rows (lowest first),
    then held rows not `touched` in this batch by the policy; `touched` rows
    last, with `giveable` False."""
    capacity = state.stamps.shape[0]
    dtype = backend.standardize_dtype(state.stamps.dtype)
    rows = ops.arange(capacity, dtype=dtype)
    held = state.stamps > 0
    if policy == "lru":
        rank = state.stamps  # Distinct: the order by recency.
    else:
        # By count, then by recency: the recency rank (distinct, < capacity)
        # breaks the ties.
        recency = ops.argsort(ops.argsort(state.stamps))
        rank = state.counts * capacity + ops.cast(recency, dtype)
    top = ops.cast(np.iinfo(dtype).max, dtype)
    score = ops.where(held, rank, rows - capacity)  # free rows: negative
    score = ops.where(touched, top, score)
    order = ops.cast(ops.argsort(score), "int32")
    giveable = ops.logical_not(ops.take(touched, order))
    return order, giveable


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
    unique, occurrences, present = distinct(keys)
    # `EMPTY` (free rows, and the layer's padding key) is never admitted.
    present = ops.logical_and(present, ops.not_equal(unique, EMPTY[key_dtype]))
    occurrences = ops.where(present, occurrences, 0)
    size = ops.shape(unique)[0]
    sequence = ops.arange(1, size + 1, dtype=dtype)
    stamps_now = state.clock + sequence
    clock = state.clock + ops.cast(size, dtype)

    # Held keys: renew.
    rows = find(state, unique)
    hit = ops.logical_and(present, rows >= 0)
    target = ops.where(hit, rows, capacity)
    stamps = _scatter(state.stamps, target, stamps_now)
    counts = _pad(state.counts, 0) + ops.segment_sum(
        ops.cast(ops.where(hit, occurrences, 0), dtype),
        ops.cast(target, "int32"),
        capacity + 1,
    )
    counts = counts[:-1]
    touched = _scatter(ops.zeros((capacity,), "bool"), target, ops.ones_like(hit))
    new = ops.logical_and(present, ops.logical_not(hit))
    sightings = ops.cast(occurrences, dtype)
    if candidates is not None:
        crows = find(candidates, unique)
        chit = ops.logical_and(new, crows >= 0)
        earlier = ops.take(candidates.counts, ops.maximum(crows, 0))
        sightings = sightings + ops.where(chit, earlier, 0)
    ready = ops.logical_and(new, sightings >= min_count)

    # Admission: the j-th ready key takes the j-th row of the victim order.
    renewed = KeyState(state.row_keys, stamps, counts, None, None, clock)
    order, giveable = _victim_order(renewed, touched, policy)
    rank = ops.cumsum(ops.cast(ready, "int32")) - 1
    slot = ops.where(ready, rank, capacity)
    slot_c = ops.minimum(slot, capacity - 1)
    victim = ops.take(order, slot_c)
    admitted_key = ops.logical_and(
        ready, ops.logical_and(slot < capacity, ops.take(giveable, slot_c))
    )
    target = ops.where(admitted_key, victim, capacity)
    was_held = ops.take(state.stamps, victim) > 0
    evicted = ops.sum(ops.cast(ops.logical_and(admitted_key, was_held), dtype))
    row_keys = _scatter(state.row_keys, target, unique)
    stamps = _scatter(stamps, target, stamps_now)
    counts = _scatter(counts, target, sightings)
    fresh = ops.cast(ops.sort(target), "int32")
    sorted_keys, sorted_rows = _resorted(row_keys, stamps, key_dtype)
    state = KeyState(row_keys, stamps, counts, sorted_keys, sorted_rows, clock)

    if candidates is not None:
        candidates = _train_candidates(
            candidates,
            unique,
            new=ops.logical_and(new, ops.logical_not(admitted_key)),
            gone=admitted_key,
            sightings=sightings,
            stamps_now=stamps_now,
            key_dtype=key_dtype,
        )
    return state, candidates, find(state, keys), fresh, evicted


def _train_candidates(
    candidates, unique, *, new, gone, sightings, stamps_now, key_dtype
):
    """Candidates after a batch: admitted keys leave; new keys not admitted
    are counted (held ones renewed, others take free or oldest untouched rows;
    a key finding none is forgotten)."""
    capacity = candidates.stamps.shape[0]
    rows = find(candidates, unique)
    held = rows >= 0
    # Admitted keys leave (their row becomes free).
    leave = ops.where(ops.logical_and(gone, held), rows, capacity)
    stamps = _scatter(candidates.stamps, leave, ops.zeros_like(stamps_now))
    renew = ops.logical_and(new, held)
    target = ops.where(renew, rows, capacity)
    stamps = _scatter(stamps, target, stamps_now)
    counts = _scatter(candidates.counts, target, sightings)
    touched = _scatter(ops.zeros((capacity,), "bool"), target, ops.ones_like(new))
    state = KeyState(candidates.row_keys, stamps, counts, None, None, candidates.clock)
    order, giveable = _victim_order(state, touched, "lru")
    insert = ops.logical_and(new, ops.logical_not(held))
    rank = ops.cumsum(ops.cast(insert, "int32")) - 1
    slot = ops.where(insert, rank, capacity)
    slot_c = ops.minimum(slot, capacity - 1)
    victim = ops.take(order, slot_c)
    placed = ops.logical_and(
        insert, ops.logical_and(slot < capacity, ops.take(giveable, slot_c))
    )
    target = ops.where(placed, victim, capacity)
    row_keys = _scatter(candidates.row_keys, target, unique)
    stamps = _scatter(stamps, target, stamps_now)
    counts = _scatter(counts, target, sightings)
    sorted_keys, sorted_rows = _resorted(row_keys, stamps, key_dtype)
    clock = candidates.clock + ops.cast(
        ops.shape(unique)[0], dtype=candidates.clock.dtype
    )
    return KeyState(row_keys, stamps, counts, sorted_keys, sorted_rows, clock)
