"""Pooling one stack of an `EmbeddingCollection`: the features of several
tables, gathered from one stacked variable, each pooled by its own table's
combiner (a denominator per bag: 1, the sum of the weights, or their L2 norm).

Each feature is a dict (`feature_bags`): `values`, `weights`,
`bags` (its number of outputs), `outer` (their leading shape), `norm`
(`COMBINERS[combiner]`), `segments` (a function giving each value's bag) and
`offsets` (the bags' starts where known and every value is in a bag, else None).
"""

from keras import ops

from keras_embedding_plus import backends
from keras_embedding_plus.lookup import pipeline, pooling


def feature_bags(path, ids, weights, combiner):
    """One feature's ids, flat: a dict of `values`, `weights` (or None),
    `bags` (the number of outputs) and, for flat bag forms, `segments`,
    `outer` (the output's leading shape) and `in_a_bag`; for dense ids,
    `grid`: `L` where it is known when tracing."""
    bags = pooling.flat_bags(ids, weights)
    if bags is not None:
        return {
            "values": bags.values,
            "weights": bags.weights,
            "bags": bags.num_segments,
            "segments": lambda: bags.segments,  # Read where needed.
            # Bag starts, where every value is in a bag (a fused kernel's).
            "offsets": bags.offsets if bags.end is None else None,
            "outer": tuple(bags.outer_shape),
            "in_a_bag": bags.in_a_bag(),
            "grid": None,
        }
    ids = ops.convert_to_tensor(ids)
    rank = len(ids.shape)
    if rank not in (1, 2):
        raise ValueError(
            f"Feature {path!r}: dense ids must have shape `(batch,)` or "
            f"`(batch, L)`. Received: shape {tuple(ids.shape)}."
        )
    weights = pooling.dense_weights(ids, weights)
    if rank == 1 and combiner != "sum":
        weights = None  # keras-rs: one id a sample is its own row.
    batch = ops.shape(ids)[0]
    length = 1 if rank == 1 else ops.shape(ids)[1]
    values = ops.reshape(ids, (-1,))
    # Pooled as `(bags, L)` where `L` is known when tracing.
    grid = length if isinstance(length, int) else None
    return {
        "values": values,
        "weights": None if weights is None else ops.reshape(weights, (-1,)),
        "bags": batch,
        "segments": lambda: ops.arange(ops.shape(values)[0], dtype="int32") // length,
        "offsets": None,
        "outer": (batch,),
        "in_a_bag": None,
        "grid": grid,
    }


def pool_dense(rows, w, group, length):
    """Dense features of one `L`: one weighted sum over `L`."""
    rows = ops.reshape(rows, (-1, length, rows.shape[-1]))
    w = ops.reshape(w, (-1, length))
    total = ops.sum(rows * ops.expand_dims(w, -1), axis=-2)
    return _split(_divided(total, w, group), group)


def pool_fused(lookup, ids, w, group, length, sparse, bag=None):
    """Dense features of one `L` by the backend's fused kernel (`fusable`), or
    by `bag(ids, offsets, w)` (a stack with its own optimizer)."""
    offsets = ops.arange(0, ops.shape(ids)[0], length, dtype="int32")
    total = (bag or _kernel(lookup, sparse))(ids, offsets, w)
    return _split(_divided(total, ops.reshape(w, (-1, length)), group), group)


def _kernel(lookup, sparse):
    """The backend's fused weighted sum over bags of the lookup's table."""

    def bag(ids, offsets, w):
        return backends.pooling.embedding_bag(
            lookup.storage.table,
            ids,
            offsets,
            w,
            mode="sum",
            weight_norm=None,
            pad=None,
            sparse=sparse,
        )

    return bag


def pool_flat(rows, w, group):
    """Flat bags (and dense ids of unknown `L`): one segment sum."""
    segments, bags = _segments(group)
    total = backends.pooling.segment(
        rows * ops.expand_dims(w, -1), segments, bags, "sum", False
    )
    return _split(_flat_divided(total, w, group, segments, bags), group)


def pool_flat_fused(lookup, ids, w, group, sparse, bag=None):
    """Flat bags with known starts (`(values, offsets)`), every value in a bag,
    by the backend's fused kernel (`fusable`) or `bag` (as `pool_fused`'s):
    the starts of each feature's bags shifted past the values of the features
    before it."""
    offsets, start = [], 0
    for part in group:
        offsets.append(ops.cast(part["offsets"], "int32") + start)
        start = start + ops.shape(part["values"])[0]
    total = (bag or _kernel(lookup, sparse))(ids, concatenate(offsets), w)
    if all(part["norm"] == 0 for part in group):  # Sums: no denominator.
        return _split(total, group)
    segments, bags = _segments(group)
    return _split(_flat_divided(total, w, group, segments, bags), group)


def _segments(group):
    """The group's bag of each value, and its number of bags."""
    segments, start = [], 0
    for part in group:
        segments.append(ops.cast(part["segments"](), "int32") + start)
        start = start + _count(part["bags"])
    return concatenate(segments), start


def _flat_divided(total, w, group, segments, bags):
    """`total` divided per bag by its combiner's denominator, from the flat
    weights `w` and each value's bag."""
    norms = concatenate(
        [ops.full((_count(p["bags"]),), p["norm"], dtype="int32") for p in group]
    )
    stacked = ops.stack([w, ops.square(w)], axis=-1)
    sums = backends.pooling.segment(stacked, segments, bags, "sum", False)
    denominator = ops.where(
        norms == 1,
        sums[:, 0],
        ops.where(norms == 2, ops.sqrt(sums[:, 1]), ops.ones_like(sums[:, 0])),
    )
    return pooling.safe_divide(total, ops.expand_dims(denominator, -1))


def fusable(lookup):
    """Whether the backend's fused `embedding_bag` computes the dense groups'
    sums (a float table where it lies, no row transforms, rows with columns)."""
    storage = lookup.storage
    return (
        backends.pooling.embedding_bag is not None
        and isinstance(storage, pipeline.FloatStorage)
        and storage.fetch is pipeline.here
        and not lookup.transforms
        and storage.table.shape[-1] > 0
    )


def _divided(total, w, group):
    """`total` `(bags, dim)` divided per bag by its combiner's denominator
    (`w`: `(bags, L)`, the weights of each bag's ids)."""
    norms = concatenate(
        [ops.full((_count(p["bags"]),), p["norm"], dtype="int32") for p in group]
    )
    return pooling.safe_divide(total, ops.expand_dims(_denominator(w, norms, -1), -1))


def _count(bags):
    """A number of bags: a Python int, or an int32 tensor."""
    return bags if isinstance(bags, int) else ops.cast(bags, "int32")


def _split(pooled, group):
    """Each feature's bags of `pooled` (in `group`'s order), shaped."""
    out, start = [], 0
    for part in group:
        bags = _count(part["bags"])
        piece = pooled if len(group) == 1 else pooled[start : start + bags]
        if len(part["outer"]) != 1:
            piece = ops.reshape(piece, (*part["outer"], piece.shape[-1]))
        out.append(piece)
        start = start + bags
    return out


def concatenate(tensors):
    return tensors[0] if len(tensors) == 1 else ops.concatenate(tensors)


def _denominator(w, norm, axis):
    """Per bag, what a combiner divides by: 1 (`"sum"`), the sum of the
    weights (`"mean"`) or their L2 norm (`"sqrtn"`); `norm` broadcasts."""
    total = ops.sum(w, axis=axis)
    root = ops.sqrt(ops.sum(ops.square(w), axis=axis))
    return ops.where(norm == 1, total, ops.where(norm == 2, root, ops.ones_like(total)))
