"""The saved entries of an `EmbeddingCollection`, and the state of its stacks
trained by their tables' own optimizers (`TableConfig.optimizer`).

A collection saves one entry per table, under the table's name, so that a table
can be read alone; a table with its own optimizer adds its rows of each slot
(`"<table>:<slot>"`) and its step count (`"<table>:iterations"`). Loading checks
every entry before it writes any.
"""

import keras
import numpy as np
from keras import ops

from keras_embedding_plus import backends


class TableState:
    """The state of a stack trained by its tables' own optimizer: its slots,
    its step count, and `anchor`, a trainable zero-size variable (the
    model's optimizer sees it, not the stack: a gradient reaching it is what
    makes the backward pass run the update)."""

    def __init__(self, optimizer, slots, iterations, anchor):
        self.optimizer = optimizer
        self.slots = slots  # {slot name: variable}
        self.iterations = iterations
        self.anchor = anchor

    @classmethod
    def build(cls, add_weight, index, optimizer, shape):
        """The state of stack `index` of `shape`, made by the layer's
        `add_weight`."""
        slots = {
            name: add_weight(
                shape=shape[:1] if per_row else shape,
                initializer=keras.initializers.Constant(initial),
                dtype="float32",
                trainable=False,
                name=f"stack_{index}_{name}",
            )
            for name, per_row, initial in optimizer.slots()
        }
        iterations = add_weight(
            shape=(),
            initializer="zeros",
            dtype="int32",
            trainable=False,
            name=f"stack_{index}_iterations",
        )
        anchor = add_weight(
            shape=(0,), initializer="zeros", name=f"stack_{index}_anchor"
        )
        return cls(optimizer, slots, iterations, anchor)

    def apply(self, stack, pieces):
        """One step: for each `(ids, summed row gradients)` of `pieces` (the
        ids unique across them), gather the rows and slot rows, step them,
        scatter them back. Returns the writes (TensorFlow's gradient waits
        for them)."""
        sparse = backends.sparse
        step = self.iterations.value + 1
        writes = []
        # Eager PyTorch steps the rows by pieces (`row_chunks`), so that the
        # update's temporaries stay small.
        for chunk, chunk_gradient in pieces:
            rows = ops.cast(sparse.gather_rows(stack, chunk), "float32")
            slots = [sparse.gather_rows(v, chunk) for v in self.slots.values()]
            rows, slots = self.optimizer.update(
                step, rows, slots, ops.cast(chunk_gradient, "float32")
            )
            writes.append(sparse.set_rows(stack, chunk, rows))
            for variable, value in zip(self.slots.values(), slots, strict=True):
                writes.append(sparse.set_rows(variable, chunk, value))
        self.iterations.assign(step)
        return [w for w in writes if w is not None]


def state_entries(slots, table_states):
    """`{entry: (variable, rows)}` of the tables' own optimizers' state:
    `"<table>:<slot>"` (the table's rows of the slot) and
    `"<table>:iterations"` (rows None: the whole variable). `slots`: each
    table's place (`stack`, `offset`, `rows`); `table_states`: each stack's
    `TableState` or None."""
    out = {}
    for name, slot in slots.items():
        state = table_states[slot.stack]
        if state is None:
            continue
        for slot_name, variable in state.slots.items():
            out[f"{name}:{slot_name}"] = (
                variable,
                slice(slot.offset, slot.offset + slot.rows),
            )
        out[f"{name}:iterations"] = (state.iterations, None)
    return out


def save(store, tables, slots, table_states):
    """Writes each table's values (`tables`: by name) and its optimizer's
    state."""
    for name, value in tables.items():
        store[name] = ops.convert_to_numpy(value)
    for entry, (variable, rows) in state_entries(slots, table_states).items():
        value = ops.convert_to_numpy(variable.value)
        store[entry] = value if rows is None else value[rows]


def load(store, stacks, stack_tables, slots, table_states):
    """Reads what `save` wrote into the stacks (`stack_tables`: the tables of
    each, in order) and the state: every entry is checked first."""
    values = {}
    for name, slot in slots.items():
        if name not in store:
            raise ValueError(
                f"The saved collection has no table {name!r}. Saved tables: "
                f"{sorted(store.keys())}."
            )
        value = np.asarray(store[name])
        dim = stacks[slot.stack].shape[-1]
        if value.shape != (slot.rows, dim):
            raise ValueError(
                f"Table {name!r} was saved with shape {value.shape}; this layer "
                f"holds it as {(slot.rows, dim)}."
            )
        values[name] = value
    for entry, (variable, rows) in state_entries(slots, table_states).items():
        if entry not in store:
            raise ValueError(
                f"The saved collection has no entry {entry!r} (the state of "
                "its table's own optimizer). Saved entries: "
                f"{sorted(store.keys())}."
            )
        values[entry] = np.asarray(store[entry])
        expected = tuple(variable.shape)
        if rows is not None:
            expected = (rows.stop - rows.start, *expected[1:])
        if values[entry].shape != expected:
            raise ValueError(
                f"Entry {entry!r} was saved with shape {values[entry].shape}; "
                f"this layer holds it as {expected}."
            )
    for index, names in enumerate(stack_tables):
        stacks[index].assign(np.concatenate([values[name] for name in names]))
        state = table_states[index]
        if state is None:
            continue
        for slot_name, variable in state.slots.items():
            variable.assign(np.concatenate([values[f"{n}:{slot_name}"] for n in names]))
        state.iterations.assign(values[f"{names[0]}:iterations"])
