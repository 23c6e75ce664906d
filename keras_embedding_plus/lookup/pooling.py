"""Pooling the looked-up rows of each bag: `EmbeddingBag`'s output stage.

```
ids (dense | (values, offsets) | {values, lengths} | ragged | sparse), weights
    -> flat bags: `(values, segments, num_segments)`, or dense `(..., L)` ids
    -> policy (`index_policy.prepare_ids`) and `Lookup.rows` (as `Embedding`)
    -> keep = valid, not padding, in a bag; per-id weights (1 by default) x keep
    -> combine: sum | mean | sqrtn | max over each bag
```

Combiners, as TensorFlow's `safe_embedding_lookup_sparse` defines them (`w` the
per-id weights, 1 where none are given; ids that are padding, masked or invalid,
and values after the last bag of `{"values", "lengths"}`, count nowhere, weights
included):

* `sum`: `sum(w * row)`
* `mean`: `sum(w * row) / sum(w)`
* `sqrtn`: `sum(w * row) / sqrt(sum(w ** 2))`
* `max`: the element-wise maximum of the rows (no weights).

An empty bag (or one whose denominator is 0) pools to zeros.

Dense ids are pooled by a batched matmul over their last axis (the rows are
gathered first: a `(..., L, output_dim)` tensor); flat bags by
a segment sum / max over the `n` looked-up rows (`backends.pooling.segment`). On
PyTorch, in eager calls (every id known valid), a float table without LoRA,
`max_norm`, dropout or `device` is pooled by `torch.nn.functional.embedding_bag`
(`backends.pooling.embedding_bag`), which never forms the rows (dense ids,
`(values, offsets)` and `{"values", "lengths"}`; sparse ids take the generic
path).
"""

from keras import backend, ops

from keras_embedding_plus import backends
from keras_embedding_plus.lookup import index_policy, pipeline
from keras_embedding_plus.lookup import padding as _padding

# ---- the combiners: one registry --------------------------------------------


class Combiner:
    """How one combiner pools a bag.

    `reduction`: `"sum"` (of the weighted rows) or `"max"` (element-wise, of
    the rows; takes no weights). `weight_norm`: the sum is divided per bag by
    the sum of the weights (1), by the L2 norm of the weights (2), or by
    nothing (`None`).
    """

    def __init__(self, reduction, weight_norm=None):
        if reduction not in ("sum", "max") or weight_norm not in _WEIGHT_NORMS:
            raise ValueError(
                f"Received: reduction={reduction!r}, weight_norm={weight_norm!r}."
            )
        if reduction == "max" and weight_norm is not None:
            raise ValueError("A maximum takes no weights and no denominator.")
        self.reduction, self.weight_norm = reduction, weight_norm
        self.takes_weights = reduction == "sum"

    def denominator(self, weights, reduce):
        """Per bag, what the weighted sum is divided by (`None`: nothing)."""
        norm = _WEIGHT_NORMS[self.weight_norm]
        return None if norm is None else norm(weights, reduce)


_WEIGHT_NORMS = {
    None: None,
    1: lambda weights, reduce: reduce(weights),
    2: lambda weights, reduce: ops.sqrt(reduce(ops.square(weights))),
}

# TensorFlow's `safe_embedding_lookup_sparse` combiners, and PyTorch's "max".
COMBINERS = {
    "sum": Combiner("sum"),
    "mean": Combiner("sum", weight_norm=1),
    "sqrtn": Combiner("sum", weight_norm=2),
    "max": Combiner("max"),
}


def check_combiner(combiner):
    if combiner not in COMBINERS:
        raise ValueError(
            f"`combiner` must be one of {', '.join(map(repr, COMBINERS))}. "
            f"Received: combiner={combiner!r}."
        )
    return combiner


def check_combiner_weights(combiner, weights):
    if weights is not None and not COMBINERS[combiner].takes_weights:
        raise ValueError(
            "Per-id `weights` are defined for the combiners 'sum', 'mean' and "
            "'sqrtn' only: a weighted maximum has no agreed meaning. Pass "
            "`weights=None`, or use another combiner. Received: "
            "combiner='max' with weights."
        )


# ---- inputs: every form of bags as flat bags or dense ids ---------------------


class FlatBags:
    """`values[i]` belongs to bag `segments[i]` of `num_segments`; output shape
    `(*outer_shape, output_dim)`; `offsets` (bag starts) when known, and then
    the segments are sorted (bags of consecutive values). `end`: where the
    last bag ends in `values`, where the values after it are in no bag (`None`:
    every value is in a bag); those sit in the last bag's segment, and count
    nowhere."""

    def __init__(
        self, values, segments, num_segments, outer_shape, weights, offsets, end=None
    ):
        self.values, self._segments = values, segments
        self.num_segments, self.outer_shape = num_segments, outer_shape
        self.weights, self.offsets, self.end = weights, offsets, end
        self.sorted = offsets is not None

    def in_a_bag(self):
        """Boolean `(n,)`: which values are in a bag (`None`: all of them)."""
        if self.end is None:
            return None
        positions = ops.arange(ops.shape(self.values)[0], dtype="int32")
        return ops.less(positions, self.end)

    @property
    def segments(self):
        """Computed when first read (`embedding_bag` needs only offsets)."""
        if callable(self._segments):
            self._segments = self._segments()
        return self._segments


def _is_offsets(ids):
    return isinstance(ids, (tuple, list))


def _kind(ids):
    """'offsets', 'lengths', 'ragged', 'sparse' or 'dense'."""
    if _is_offsets(ids):
        return "offsets"
    if isinstance(ids, dict):
        return "lengths"
    name = type(ids).__name__
    if name == "RaggedTensor":
        return "ragged"
    if name in ("SparseTensor", "BCOO") or getattr(ids, "is_sparse", False):
        return "sparse"
    return "dense"


def _check_weights_like(weights, ids, kind, what):
    if weights is None:
        return None
    if _kind(weights) != kind:
        raise ValueError(
            f"`weights` must have the form of the ids ({what}). Received: ids of "
            f"type {type(ids).__name__}, weights of type {type(weights).__name__}."
        )
    return weights


def from_offsets(ids, weights):
    if len(ids) != 2:
        raise ValueError(
            "Bags given as a tuple must be `(values, offsets)`, as "
            "`torch.nn.functional.embedding_bag` takes them: 1-D ids and the "
            f"1-D start of each bag in them. Received: a tuple of {len(ids)}."
        )
    values, offsets = _one_dim_pair(ids[0], ids[1], "(values, offsets)", "offsets")
    # Dynamic sizes where the static shape has none (TensorFlow's `None`).
    n = ops.shape(values)[0]
    if backends.ids.is_concrete(offsets):
        _check_offsets(ops.convert_to_numpy(offsets), n)
    weights = _flat_weights(weights, values, "(values, offsets)")
    count = ops.shape(offsets)[0]
    return FlatBags(values, _segments_of(offsets, n), count, (count,), weights, offsets)


def from_lengths(ids, weights):
    """`{"values": v, "lengths": l}`: bag `i` holds the `l[i]` values after
    those of the bags before it; the values after the last bag (after
    `sum(l)`) are in no bag."""
    check_lengths_keys(ids)
    form = '{"values", "lengths"}'
    values, lengths = _one_dim_pair(ids["values"], ids["lengths"], form, "lengths")
    n = ops.shape(values)[0]
    if backends.ids.is_concrete(lengths):
        _check_lengths(ops.convert_to_numpy(lengths), n)
    ends = ops.cumsum(lengths)
    starts = ends - lengths
    # The end of the last bag (0 with no bags).
    end = ops.sum(lengths)
    weights = _flat_weights(weights, values, form)
    count = ops.shape(lengths)[0]
    return FlatBags(
        values, _segments_of(starts, n), count, (count,), weights, starts, end
    )


def check_lengths_keys(ids):
    """A ValueError unless the dict `ids` is `{"values", "lengths"}`."""
    if set(ids) != {"values", "lengths"}:
        raise ValueError(
            'Bags given as a dict must be `{"values": ..., "lengths": ...}`: 1-D '
            "ids, and the number of ids of each bag. Received: a dict of keys "
            f"{sorted(ids)}."
        )


def _one_dim_pair(values, bags, form, name):
    values, bags = ops.convert_to_tensor(values), ops.convert_to_tensor(bags)
    if len(values.shape) != 1 or len(bags.shape) != 1:
        raise ValueError(
            f"`{form}` must both be 1-D. Received: values of shape "
            f"{tuple(values.shape)}, {name} of shape {tuple(bags.shape)}."
        )
    if backend.standardize_dtype(bags.dtype) != "int32":
        bags = ops.cast(bags, "int32")
    return values, bags


def _segments_of(starts, n):
    """The bag of each of `n` values, given the sorted starts of the bags
    (computed when first read)."""

    def segments():
        positions = ops.arange(n, dtype="int32")
        return ops.searchsorted(starts, positions, side="right") - 1

    return segments


def _flat_weights(weights, values, form):
    if weights is None:
        return None
    weights = ops.convert_to_tensor(weights)
    if tuple(weights.shape) != tuple(values.shape):
        raise ValueError(
            f"With `{form}` ids, `weights` must be 1-D, one weight per value: "
            f"shape {tuple(values.shape)}. Received: weights of shape "
            f"{tuple(weights.shape)}."
        )
    return weights


def _check_offsets(offsets, n):
    if (not offsets.size and n) or (
        offsets.size
        and (offsets[0] != 0 or (offsets[1:] < offsets[:-1]).any() or offsets[-1] > n)
    ):
        raise ValueError(
            "`offsets` must start at 0 (one bag at least if there are values), "
            f"never decrease, and not exceed the number of values ({n}). "
            f"Received: offsets={offsets.tolist()[:10]}"
            f"{'...' if offsets.size > 10 else ''}."
        )


def _check_lengths(lengths, n):
    if (lengths < 0).any() or lengths.sum() > n or (not lengths.size and n):
        raise ValueError(
            "`lengths` must be the number of ids of each bag: not negative, one "
            "bag at least if there are values, and in all at most the number "
            f"of values ({n}; the values after the bags are in none). "
            f"Received: lengths={lengths.tolist()[:10]}"
            f"{'...' if lengths.size > 10 else ''} (sum {int(lengths.sum())})."
        )


def from_ragged(ids, weights):
    if ids.ragged_rank != 1 or len(ids.shape) != 2:
        raise ValueError(
            "Ragged ids must have shape `(batch, None)` (one ragged axis, the "
            f"bags). Received: ragged ids of shape {ids.shape} "
            f"(ragged_rank={ids.ragged_rank})."
        )
    weights = _check_weights_like(weights, ids, "ragged", "a tf.RaggedTensor")
    if weights is not None:
        weights = weights.flat_values
    return FlatBags(
        ids.flat_values,
        ids.value_rowids(),
        ids.nrows(),
        (ids.shape[0],),
        weights,
        ids.row_starts(),
    )


def from_sparse(ids, weights):
    """`tf.SparseTensor`, JAX `BCOO` or a torch sparse COO tensor of shape
    `(batch, ..., L)`: the stored entries are the bags' ids."""
    weights = _check_weights_like(weights, ids, "sparse", "a sparse tensor")
    values, segments, count, outer, weights = backends.pooling.sparse_bags(ids, weights)
    return FlatBags(values, segments, count, outer, weights, None)


def dense_weights(ids, weights):
    if weights is None:
        return None
    weights = ops.convert_to_tensor(weights)
    if _kind(weights) != "dense" or tuple(weights.shape) != tuple(ids.shape):
        raise ValueError(
            "`weights` must have the shape of the ids, one weight per id. "
            f"Received: ids of shape {tuple(ids.shape)}, weights of shape "
            f"{tuple(weights.shape)}."
        )
    return weights


# ---- combining ----------------------------------------------------------------


def safe_divide(total, denominator):
    """`total / denominator`, 0 where `denominator` is 0 (with finite gradients).

    The small denominator is inverted, then one multiplication scales `total`.
    """
    zero = ops.equal(denominator, 0)
    safe = ops.where(zero, ops.ones_like(denominator), denominator)
    scale = ops.where(zero, ops.zeros_like(denominator), 1.0 / safe)
    return total * scale


def _weights(keep, weights, dtype):
    if weights is None:
        return ops.cast(keep, dtype)
    weights = ops.cast(weights, dtype)
    return ops.where(keep, weights, ops.zeros((), dtype))


def _finish(combiner, total, weights, reduce):
    if combiner.weight_norm is None or 0 in total.shape:
        # No bags (a 0 in the output's static shape): nothing to divide. Under
        # `tf.function`, TensorFlow's graph optimizer (grappler) dies with a
        # floating point exception (SIGFPE) folding the gradient of the
        # division over such a shape.
        return total
    denominator = combiner.denominator(weights, reduce)
    return safe_divide(total, ops.expand_dims(denominator, -1))


def _lowest(dtype):
    """-inf, a 0-d tensor of `dtype` (not `ops.full`: on torch it reads the
    fill value back with `.item()`, which fails on the "meta" tensors of Keras's
    shape inference, as `fit` builds a model)."""
    return ops.convert_to_tensor(float("-inf"), dtype=dtype)


def combine_dense(rows, keep, weights, combiner):
    """Pool `rows` `(..., L, d)` over `L`; `keep` `(..., L)` marks what counts."""
    if combiner.reduction == "max":
        if 0 in rows.shape[-2:]:  # Bags of no ids, or rows of no columns: zeros
            return ops.sum(rows, axis=-2)  # (a maximum over nothing fails).
        lowest = _lowest(rows.dtype)
        masked = ops.where(ops.expand_dims(keep, -1), rows, lowest)
        out = ops.amax(masked, axis=-2)
        some = ops.any(keep, axis=-1, keepdims=True)
        return ops.where(some, out, ops.zeros_like(out))
    w = _weights(keep, weights, rows.dtype)
    total = ops.squeeze(ops.matmul(ops.expand_dims(w, -2), rows), -2)
    return _finish(combiner, total, w, lambda x: ops.sum(x, axis=-1))


def _segment(data, bags, how):
    """Sums (`how="sum"`) or maxima (`"max"`) of `data`'s rows per bag."""
    return backends.pooling.segment(
        data, bags.segments, bags.num_segments, how, bags.sorted
    )


def combine_flat(rows, keep, weights, bags, combiner):
    """Pool the rows `(n, d)` of flat `bags` into `(num_segments, d)`."""

    def reduce(x):
        return _segment(x, bags, "sum")

    if combiner.reduction == "max":
        if rows.shape[-1] == 0:  # Rows of no columns: a maximum over nothing fails.
            return reduce(rows)
        lowest = _lowest(rows.dtype)
        masked = ops.where(ops.expand_dims(keep, -1), rows, lowest)
        out = _segment(masked, bags, "max")
        counts = reduce(ops.cast(keep, rows.dtype))
        return ops.where(ops.expand_dims(counts > 0, -1), out, ops.zeros_like(out))
    w = _weights(keep, weights, rows.dtype)
    total = reduce(rows * ops.expand_dims(w, -1))
    return _finish(combiner, total, w, reduce)


# ---- the stage ----------------------------------------------------------------


def _keep(ids, valid, excluded):
    keep = valid
    for pad in excluded:
        kept = ops.not_equal(ids, pad)
        keep = kept if keep is None else ops.logical_and(keep, kept)
    if keep is None:
        keep = ops.ones(ops.shape(ids), "bool")
    return keep


def flat_bags(ids, weights):
    """`FlatBags` of bags in a flat form (`(values, offsets)`, `{"values",
    "lengths"}`, ragged, sparse), or None for dense ids `(..., L)`."""
    kind = _kind(ids)
    if kind == "dense":
        return None
    return {
        "offsets": from_offsets,
        "lengths": from_lengths,
        "ragged": from_ragged,
        "sparse": from_sparse,
    }[kind](ids, weights)


def pool(lookup, ids, weights, *, input_dim, excluded, combiner, training):
    """Pooled rows of `ids` (any form), float32 or the table's dtype.

    `excluded` are the ids that count nowhere (`padding_idx`, 0 with
    `mask_zero`).
    """
    check_combiner_weights(combiner, weights)
    combiner = COMBINERS[combiner]
    kind = _kind(ids)
    if kind == "dense":
        ids = ops.convert_to_tensor(ids)
        weights = dense_weights(ids, weights)
        if len(ids.shape) < 2:
            raise ValueError(
                "Dense bags must have shape `(batch, ..., L)`: pooled over their "
                f"last axis. Received: ids of shape {tuple(ids.shape)}."
            )
        ids, valid = index_policy.prepare_ids(ids, input_dim, lookup.report)
        fused = _fused(lookup, ids, None, valid, weights, excluded, combiner)
        if fused is not None:
            return fused
        rows, _ = lookup.rows(ids, valid, training)
        return combine_dense(rows, _keep(ids, valid, excluded), weights, combiner)
    bags = flat_bags(ids, weights)
    values, valid = index_policy.prepare_ids(bags.values, input_dim, lookup.report)
    fused = _fused(lookup, values, bags, valid, bags.weights, excluded, combiner)
    if fused is not None:
        return fused
    rows, _ = lookup.rows(values, valid, training)
    keep = _keep(values, valid, excluded)
    # Values after the last bag (`{"values", "lengths"}`) count as padding does.
    in_a_bag = bags.in_a_bag()
    if in_a_bag is not None:
        keep = ops.logical_and(keep, in_a_bag)
    out = combine_flat(rows, keep, bags.weights, bags, combiner)
    if len(bags.outer_shape) != 1:
        out = ops.reshape(out, (*bags.outer_shape, out.shape[-1]))
    return out


# ---- a fused kernel (PyTorch's `embedding_bag`) ---------------------------------


def _fused(lookup, ids, bags, valid, weights, excluded, combiner):
    """The backend's fused `embedding_bag` where it computes the same thing.

    A float table read where it lies, without row transforms (the padding row
    is the kernel's own `padding_idx`), every id valid, at most one excluded id,
    dense ids or bags with known offsets. `None` otherwise, or where the
    backend has no fused kernel (`backends.pooling.embedding_bag` is None).
    """
    if backends.pooling.embedding_bag is None or valid is not None or len(excluded) > 1:
        return None
    storage = lookup.storage
    if not isinstance(storage, pipeline.FloatStorage) or storage.fetch is not (
        pipeline.here
    ):
        return None
    if storage.table.shape[-1] == 0:  # torch's kernel fails on rows of no columns.
        return None
    if any(not isinstance(t, _padding.FrozenRow) for t in lookup.transforms):
        return None
    if bags is not None and bags.offsets is None:
        return None
    if bags is not None and bags.end is not None:
        # Values after the last bag are cut off, where the end is known (eager
        # calls): the kernel's `include_last_offset` leaves them to chance (its
        # sparse gradient fails on them).
        if not backends.ids.is_concrete(bags.end):
            return None
        end = int(ops.convert_to_numpy(bags.end))
        ids = ids[:end]
        weights = None if weights is None else weights[:end]
    return backends.pooling.embedding_bag(
        storage.table,
        ids,
        None if bags is None else bags.offsets,
        weights,
        mode=combiner.reduction,
        weight_norm=combiner.weight_norm,
        pad=excluded[0] if excluded else None,
        sparse=bool(lookup.sparse_variables),
    )
