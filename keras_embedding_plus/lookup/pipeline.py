"""The lookup pipeline: one composition of small stages behind every lookup.

```
ids -> policy (index_policy.prepare_ids; compiled calls count invalid ids in
       the layer's `invalid_ids.InvalidIdsCount`)
    -> storage.rows: the stored variables' rows (float | int8 | int4, dequantized)
         each variable read by one `gather` (dense, row-sparse gradient, on its
         device), chosen once for the layer
    -> row transforms, in order: LoRA delta, max_norm, dropout, padding row
       (no gradient into `padding_idx`'s row)
    -> output: zero the rows of invalid ids, cast to the compute dtype;
       or, in `EmbeddingBag`, pool the rows of each bag (`pooling`)
```

`compose(spec)` builds the `Lookup` of a layer from its `LookupSpec` (`spec`) when
it is built, quantized or given LoRA; `call`, `attend`, saving (`float_table`) and
the JAX sparse trainer (`sparse_variables`) all read it. A new option is a new
stage here, not a branch in `Embedding.call`.
"""

import functools

import keras
from keras import ops

from keras_embedding_plus import backends
from keras_embedding_plus.lookup import index_policy, padding, quantization
from keras_embedding_plus.lookup import lora as lora_math
from keras_embedding_plus.lookup import max_norm as max_norm_rule
from keras_embedding_plus.lookup.gather import gather_column, make_gather

# ---- storage: what is stored, and its float rows -------------------------------


def here(variable):
    """The variable itself: a table that lives where the model computes."""
    return variable


class FloatStorage:
    """A float table: its rows are the looked-up rows."""

    def __init__(self, table, fetch=here):
        self.table = table
        self.fetch = fetch  # the whole variable, where the model computes

    def rows(self, gather, ids, valid):
        return gather(self.table, ids, valid)

    def dense(self):
        return self.fetch(self.table)


class QuantizedStorage:
    """An int8 / int4 table (Keras's formats): rows gathered, then dequantized."""

    def __init__(self, parts, mode, output_dim, block, fetch=here):
        self.parts = parts  # stored table, scales [, zero points]
        self.mode = mode
        self.output_dim = output_dim
        self.block = block
        self.fetch = fetch

    def rows(self, gather, ids, valid):
        parts, rows_valid = [], valid
        for variable in self.parts:
            if len(variable.shape) == 1:
                rows, rows_valid = gather_column(gather, variable, ids, valid)
            else:
                rows, rows_valid = gather(variable, ids, valid)
            parts.append(rows)
        filled = valid is not None and rows_valid is None
        rows = quantization.dequantize(
            parts, self.mode, self.output_dim, self.block, filled
        )
        return rows, rows_valid

    def dense(self):
        parts = [self.fetch(part) for part in self.parts]
        return quantization.dequantize(parts, self.mode, self.output_dim, self.block)


# ---- row transforms ------------------------------------------------------------


class LoraDelta:
    """Adds `scale * A[ids] @ B`: the rows of A are gathered, never `A @ B`."""

    def __init__(self, a, b, scale, fetch=here):
        self.a, self.b, self.scale = a, b, scale
        self.fetch = fetch

    def rows(self, rows, ids, valid, gather, training):
        # The table's rows of invalid ids are zero, and so must their deltas
        # be: zero the rows of `A` where this gather did not (row-sparse and
        # placed gathers leave them to the caller).
        a_rows, a_valid = gather(self.a, ids, valid)
        a_rows = index_policy.zero_invalid(a_rows, a_valid)
        return lora_math.add_delta(rows, a_rows, self.b, self.scale)

    def table(self, table):
        delta = lora_math.delta_table(self.fetch(self.a), self.b, self.scale)
        return ops.add(ops.cast(table, "float32"), delta)


class MaxNorm:
    """Renormalises rows whose p-norm exceeds `max_norm` (outputs only)."""

    def __init__(self, max_norm, norm_type):
        self.max_norm, self.norm_type = max_norm, norm_type

    def rows(self, rows, ids, valid, gather, training):
        return max_norm_rule.renormalize(rows, self.max_norm, self.norm_type)

    def table(self, table):
        return max_norm_rule.renormalize(table, self.max_norm, self.norm_type)


class RowDropout:
    """Keras 1's embedding dropout: whole vocabulary rows, in training only."""

    def __init__(self, rate, input_dim, seed_generator):
        self.rate, self.input_dim, self.seed = rate, input_dim, seed_generator

    def rows(self, rows, ids, valid, gather, training):
        if not training:
            return rows
        draw = keras.random.uniform((self.input_dim,), seed=self.seed)
        keep = ops.cast(ops.greater_equal(draw, self.rate), rows.dtype)
        scale = ops.take(keep, ids, axis=0) / (1.0 - self.rate)
        return rows * ops.expand_dims(scale, -1)

    def table(self, table):
        return table  # Logits (`attend`) are an inference read: no dropout.


# ---- the composition -----------------------------------------------------------


class Lookup:
    """`ids -> rows` for one layer: storage, gather and row transforms."""

    def __init__(
        self, storage, storage_gather, gather, transforms, sparse_variables, report
    ):
        self.storage = storage
        self.report = report  # counts invalid ids (`index_policy.prepare_ids`)
        self.storage_gather = storage_gather
        self.gather = gather
        self.transforms = transforms
        self.sparse_variables = sparse_variables

    def rows(self, ids, valid, training=None):
        """`(rows, valid)` of valid integer `ids` (flat values), as
        `backends.ids.take`."""
        rows, rows_valid = self.storage.rows(self.storage_gather, ids, valid)
        # Invalid ids' rows already are zero where `rows_valid` comes back
        # `None`; every transform keeps zero rows zero.
        for transform in self.transforms:
            rows = transform.rows(rows, ids, valid, self.gather, training)
        return rows, rows_valid

    def adapted_table(self):
        """The stored table, dequantized, with LoRA's delta: what saving merges."""
        lora = self.lora()
        table = self.storage.dense()
        return table if lora is None else lora.table(table)

    def lora(self):
        return next((t for t in self.transforms if isinstance(t, LoraDelta)), None)

    def float_table(self):
        """The whole float table after the transforms (tied logits, merging)."""
        table = self.storage.dense()
        for transform in self.transforms:
            table = transform.table(table)
        return table

    def logits(self, inputs, dtype):
        """`inputs @ float_table().T` in `dtype` (tied output logits).

        With LoRA alone, `(x @ B.T) @ A.T` is added to `x @ table.T`, never
        forming the vocab x dim `A @ B`.
        """
        x = ops.cast(inputs, dtype)
        lora, *others = self.transforms or [None]
        if isinstance(lora, LoraDelta) and not any(
            isinstance(t, MaxNorm) for t in others
        ):
            table = ops.cast(self.storage.dense(), dtype)
            delta = lora_math.delta_logits(x, lora.fetch(lora.a), lora.b, lora.scale)
            return ops.add(ops.matmul(x, ops.transpose(table)), ops.cast(delta, dtype))
        table = ops.cast(self.float_table(), dtype)
        return ops.matmul(x, ops.transpose(table))


def compose(spec):
    """The `Lookup` of a layer, from its `LookupSpec` (`lookup.spec`)."""
    placement = spec.placement
    fetch = here
    if placement is not None:
        fetch = functools.partial(backends.placement.fetch, placement=placement)
    mode = spec.quantization_mode
    if mode:
        parts = spec.stored[:3]
        storage = QuantizedStorage(parts, mode, spec.output_dim, spec.block, fetch)
    else:
        storage = FloatStorage(spec.table, fetch)
    transforms = []
    if spec.lora is not None:
        a, b, scale = spec.lora
        transforms.append(LoraDelta(a, b, scale, fetch))
    if spec.max_norm:
        transforms.append(MaxNorm(spec.max_norm, spec.norm_type))
    if spec.dropout:
        transforms.append(RowDropout(spec.dropout, spec.input_dim, spec.seed_generator))
    if spec.frozen_row is not None:
        transforms.append(padding.FrozenRow(spec.frozen_row))
    # What trains by id, and so gets a row-sparse gradient with `sparse=True`.
    sparse_variables = []
    if spec.sparse:
        if spec.lora is not None:
            sparse_variables.append(spec.lora[0])
        elif not mode:
            sparse_variables.append(spec.table)
    gather = make_gather(spec.sparse, placement)
    # A quantized or frozen (LoRA) table is never trained: a dense read.
    table_trains = any(v is spec.table for v in sparse_variables)
    storage_gather = gather if table_trains else make_gather(False, placement)
    if spec.report is not None:
        spec.report.mark_steps_by(spec.stored[0])
    return Lookup(
        storage, storage_gather, gather, transforms, sparse_variables, spec.report
    )
