"""The growing key -> row map (`lookup/dynamic_keys.py`) against a plain Python
model of the same policy (dicts and sorted lists), key stream by key stream:
after every training batch the held keys, their rows, stamps and counts, the
candidates, the batch's rows, the admitted rows and the evictions match."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from keras_embedding_plus.lookup import dynamic_keys
from keras_embedding_plus.testing import compiled
from keras_embedding_plus.testing.dynamic import Oracle, key_dtype

BACKEND = keras.backend.backend()


KEY_DTYPE = key_dtype()
INFO = np.iinfo(KEY_DTYPE)
PADDED = 9  # the longest batch drawn


def _state(capacity):
    return dynamic_keys.KeyState(
        *(ops.convert_to_tensor(x) for x in dynamic_keys.initial(capacity, KEY_DTYPE))
    )


def _held(state):
    """`{key: row}` from the sorted index; its rows are the stamped ones."""
    keys, rows, stamps = (
        ops.convert_to_numpy(x)
        for x in (state.sorted_keys, state.sorted_rows, state.stamps)
    )
    held = keys != INFO.max
    assert sorted(rows[held]) == list(np.flatnonzero(stamps > 0))
    return {int(k): int(r) for k, r in zip(keys[held], rows[held], strict=True)}


def _run(stream, capacity, policy, min_count, candidate_capacity, step=None):
    oracle = Oracle(capacity, policy, min_count, candidate_capacity)
    state = _state(capacity)
    candidates = _state(candidate_capacity) if min_count > 1 else None
    evictions = 0

    def train(state, candidates, keys):
        return dynamic_keys.train(
            state, keys, policy=policy, min_count=min_count, candidates=candidates
        )

    step = step or train
    for batch in stream:
        # Padded with the reserved key (never admitted) to one length: the
        # same shapes for every batch, so each op is compiled once.
        batch = list(batch) + [int(INFO.max)] * (PADDED - len(batch))
        keys = ops.convert_to_tensor(np.asarray(batch, KEY_DTYPE))
        state, candidates, rows, admitted, evicted = step(state, candidates, keys)
        expected_rows, expected_admitted = oracle.train(batch)
        evictions += int(ops.convert_to_numpy(evicted))
        assert _held(state) == oracle.held()
        np.testing.assert_array_equal(ops.convert_to_numpy(rows), expected_rows)
        fresh = ops.convert_to_numpy(admitted)
        assert list(fresh[fresh < capacity]) == expected_admitted
        assert evictions == oracle.evictions
        np.testing.assert_array_equal(ops.convert_to_numpy(state.stamps), oracle.stamp)
        counts = ops.convert_to_numpy(state.counts)
        counts = np.where(ops.convert_to_numpy(state.stamps) > 0, counts, 0)
        np.testing.assert_array_equal(counts, oracle.count)
        if candidates is not None:
            ccounts = ops.convert_to_numpy(candidates.counts)
            got = {key: int(ccounts[row]) for key, row in _held(candidates).items()}
            assert got == oracle.candidates()
    return state


# Keys: a few repeated ones, negative, huge (beyond 2**31 where 64-bit), and
# batches with duplicates. The largest key is reserved (free rows).
POOL = sorted(
    {0, 1, 2, 3, 5, 8, -1, -7, INFO.min, INFO.max - 1, 2**31 - 1, -(2**31)}
    | ({2**31, 2**40 + 3, -(2**50)} if KEY_DTYPE == "int64" else set())
)
KEYS = st.one_of(
    st.sampled_from(POOL), st.integers(INFO.min, INFO.max - 1), st.integers(0, 12)
)
STREAMS = st.lists(st.lists(KEYS, min_size=1, max_size=9), min_size=1, max_size=5)


@settings(max_examples=8, deadline=None)
@given(
    stream=STREAMS,
    capacity=st.integers(1, 6),
    policy=st.sampled_from(dynamic_keys.POLICIES),
    min_count=st.integers(1, 3),
    candidate_capacity=st.integers(1, 4),
)
def test_the_map_equals_the_oracle(
    stream, capacity, policy, min_count, candidate_capacity
):
    _run(stream, capacity, policy, min_count, candidate_capacity)


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="torch.compile recompiles the update at each data-dependent branch "
    "(ops.cond) past Dynamo's recompile limit; Keras's torch steps run eagerly",
)
@pytest.mark.parametrize("policy", dynamic_keys.POLICIES)
def test_compiled_update_equals_the_oracle(policy):
    """The same, compiled (each backend's compiler, one trace per batch size)."""
    rng = np.random.default_rng(0)
    stream = [list(rng.integers(-20, 20, size=8)) for _ in range(6)]

    @compiled
    def step(state, candidates, keys):
        return dynamic_keys.train(
            state, keys, policy=policy, min_count=2, candidates=candidates
        )

    _run(
        stream, capacity=6, policy=policy, min_count=2, candidate_capacity=4, step=step
    )


def test_lookup_of_keys_not_held_is_minus_one():
    state = _state(4)
    keys = ops.convert_to_tensor(np.asarray([INFO.max, 3, -3], KEY_DTYPE))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(dynamic_keys.find(state, keys)), [-1, -1, -1]
    )
