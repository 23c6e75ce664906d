"""A plain Python model of `DynamicEmbedding`'s key map (`lookup/dynamic_keys.py`):
the oracle its tests compare with, key stream by key stream."""

import collections

import numpy as np
from keras import backend, ops


def key_dtype():
    """int64 where the backend holds it; JAX without x64 holds 32-bit ints."""
    probe = ops.convert_to_tensor(np.zeros((), "int64"))
    return backend.standardize_dtype(probe.dtype)


class Oracle:
    """The policy of `dynamic_keys`' docstring, in plain Python."""

    def __init__(self, capacity, policy, min_count, candidate_capacity):
        self.capacity, self.policy, self.min_count = capacity, policy, min_count
        self.key = [None] * capacity
        self.stamp = [0] * capacity
        self.count = [0] * capacity
        self.ckey = [None] * candidate_capacity
        self.cstamp = [0] * candidate_capacity
        self.ccount = [0] * candidate_capacity
        self.clock = 0
        self.evictions = 0

    def row(self, key):
        return self.key.index(key) if key in self.key else -1

    def train(self, batch):
        occurrences = collections.Counter(batch)
        unique = sorted(occurrences)
        # The largest key marks free rows: never admitted, but stamped.
        empty = np.iinfo(key_dtype()).max
        admissible = [k for k in unique if k != empty]
        stamp = {k: self.clock + i + 1 for i, k in enumerate(unique)}
        self.clock += len(batch)
        touched = set()
        for k in admissible:
            r = self.row(k)
            if r >= 0:
                self.stamp[r], touched = stamp[k], touched | {r}
                self.count[r] += occurrences[k]
        new = [k for k in admissible if self.row(k) < 0]
        sightings = {}
        for k in new:
            c = self.ckey.index(k) if k in self.ckey else -1
            sightings[k] = occurrences[k] + (self.ccount[c] if c >= 0 else 0)
        ready = [k for k in new if sightings[k] >= self.min_count]
        free = [r for r in range(self.capacity) if self.key[r] is None]
        held = [r for r in range(self.capacity) if self.key[r] is not None]
        held = [r for r in held if r not in touched]
        if self.policy == "lru":
            held.sort(key=lambda r: self.stamp[r])
        else:
            held.sort(key=lambda r: (self.count[r], self.stamp[r]))
        order = free + held
        admitted_rows, admitted = [], []
        for j, k in enumerate(ready[: len(order)]):
            r = order[j]
            self.evictions += self.key[r] is not None
            self.key[r], self.stamp[r], self.count[r] = k, stamp[k], sightings[k]
            admitted_rows.append(r)
            admitted.append(k)
        if self.min_count > 1:
            self._candidates(new, admitted, sightings, stamp)
        return [self.row(k) for k in batch], sorted(admitted_rows)

    def _candidates(self, new, admitted, sightings, stamp):
        for k in admitted:
            if k in self.ckey:
                c = self.ckey.index(k)
                self.ckey[c], self.cstamp[c], self.ccount[c] = None, 0, 0
        waiting = [k for k in new if k not in admitted]
        touched = set()
        for k in waiting:
            if k in self.ckey:
                c = self.ckey.index(k)
                self.cstamp[c], self.ccount[c] = stamp[k], sightings[k]
                touched.add(c)
        size = len(self.ckey)
        free = [c for c in range(size) if self.ckey[c] is None]
        held = [c for c in range(size) if self.ckey[c] is not None and c not in touched]
        order = free + sorted(held, key=lambda c: self.cstamp[c])
        inserted = [k for k in waiting if k not in self.ckey]
        for j, k in enumerate(inserted[: len(order)]):
            c = order[j]
            self.ckey[c], self.cstamp[c], self.ccount[c] = k, stamp[k], sightings[k]

    def held(self):
        return {k: r for r, k in enumerate(self.key) if k is not None}

    def candidates(self):
        return {k: self.ccount[c] for c, k in enumerate(self.ckey) if k is not None}
