"""PyTorch: pooled lookups of `EmbeddingBag` (sparse ids as bags, segment
reductions, the fused `F.embedding_bag`)."""

import torch

from keras_embedding_plus.backends.torch.core import value_of


def sparse_bags(ids, weights):
    """`(values, segments, num_segments, outer_shape, weights)` of sparse COO
    ids `(batch, ..., L)`: coalesced, so that ids and weights line up."""
    ids = ids.coalesce()
    indices, values, outer = ids.indices(), ids.values(), tuple(ids.shape[:-1])
    if weights is not None:
        weights = weights.coalesce().values()
    strides = torch.ones(len(outer), dtype=torch.int64, device=indices.device)
    for axis in range(len(outer) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * outer[axis + 1]
    segments = (indices[:-1].T * strides).sum(1).to(torch.int32)
    count = int(torch.tensor(outer).prod()) if outer else 1
    return values, segments, count, outer, weights


def segment(data, segments, num_segments, how, sorted=False):
    """One `index_add` / `scatter_reduce` (Keras's `segment_sum` goes through a
    data-dependent `repeat_interleave`, which `torch.compile` cannot trace);
    `sorted` changes nothing here."""
    del sorted
    segments = segments.to(torch.int64)
    shape = (num_segments, *data.shape[1:])
    if how == "sum":
        return data.new_zeros(shape).index_add(0, segments, data)
    index = segments.reshape(-1, *([1] * (data.dim() - 1))).expand_as(data)
    lowest = data.new_full(shape, float("-inf"))
    return lowest.scatter_reduce(0, index, data, "amax", include_self=True)


def embedding_bag(table, ids, offsets, weights, *, mode, weight_norm, pad, sparse):
    """`torch.nn.functional.embedding_bag` of dense ids `(..., L)` (`offsets`
    None) or of 1-D ids and their bags' `offsets`; every id valid.

    `mode` "sum" (the weighted sum, divided per bag by the sum of the weights
    where `weight_norm` is 1, their L2 norm where it is 2) or "max". Fastest in
    mode "sum" without `padding_idx`: the denominators are computed here.
    `padding_idx` is passed where it matters: for "max", when the table is
    differentiated (the padding row gets no gradient), or when the padding row
    is not zero. None where the kernel has
    no such path ("max" with a sparse gradient, dense bags of length 0).
    """
    if mode not in ("sum", "max") or weight_norm not in (None, 1, 2):
        raise ValueError(f"Received: mode={mode!r}, weight_norm={weight_norm!r}.")
    if sparse and mode == "max":
        return None  # `embedding_bag` has no sparse gradient for "max".
    table = value_of(table)
    if offsets is None:
        outer = tuple(ids.shape[:-1])
        if ids.shape[-1] == 0:
            return None  # Bags of no ids: `reshape(-1, 0)` fails.
        flat = ids.reshape(-1, ids.shape[-1])
    else:
        outer, flat = None, ids
        if flat.dtype != offsets.dtype:
            flat, offsets = flat.to(torch.int64), offsets.to(torch.int64)
    kernel_pad = pad
    if (
        pad is not None
        and mode != "max"
        and not (torch.is_grad_enabled() and table.requires_grad)
        and not table[pad].any()
    ):
        kernel_pad = None  # A zero row adds nothing to a sum.
    F = torch.nn.functional
    if mode == "max":
        out = F.embedding_bag(flat, table, offsets, mode="max", padding_idx=pad)
    else:
        w = None
        if weights is not None:
            w = weights.reshape(flat.shape).to(table.dtype)
            if pad is not None:
                w = torch.where(flat == pad, 0.0, w)
        out = F.embedding_bag(
            flat,
            table,
            offsets,
            mode="sum",
            sparse=sparse,
            per_sample_weights=w,
            padding_idx=kernel_pad,
        )
        if weight_norm is not None:
            if w is None:
                den = _counts(flat, offsets, pad).to(table.dtype)
            else:
                den = _bag_sums(w * w if weight_norm == 2 else w, offsets)
            if weight_norm == 2:
                den = den.sqrt()
            den = den.unsqueeze(-1).to(out.dtype)
            # 0 where a bag has nothing that counts.
            out = torch.where(den == 0, 0.0, out / torch.where(den == 0, 1.0, den))
    return out if outer is None else out.reshape(*outer, out.shape[-1])


def _counts(flat, offsets, pad):
    """Ids per bag that are not `pad`: bag lengths, less the few padding ids."""
    if offsets is None:
        if pad is None:
            return flat.new_full(flat.shape[:1], flat.shape[1])
        return (flat != pad).sum(-1)
    ends = torch.cat([offsets[1:], offsets.new_tensor([flat.shape[0]])])
    counts = (ends - offsets).long()
    if pad is not None:
        where = torch.nonzero(flat == pad)[:, 0]
        if where.numel():
            bags = torch.searchsorted(offsets, where.to(offsets.dtype), right=True)
            counts = counts - torch.bincount(bags - 1, minlength=counts.shape[0])
    return counts


def _bag_sums(x, offsets):
    """Per-bag sums of `x` (2-D: over the last axis; 1-D: between `offsets`),
    through a float64 cumulative sum (exact enough, and no scatter)."""
    if offsets is None:
        return x.sum(-1)
    total = torch.cat([x.new_zeros(1, dtype=torch.float64), x.double().cumsum(0)])
    ends = torch.cat([offsets[1:], offsets.new_tensor([x.shape[0]])])
    return total[ends.long()] - total[offsets.long()]
