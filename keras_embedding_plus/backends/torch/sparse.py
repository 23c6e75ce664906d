"""PyTorch: row-sparse gradients (sparse COO tensors) and the optimizers' row ops
(deduplicate, gather, scatter)."""

import torch

from keras_embedding_plus.backends.torch.core import value_of

# torch cannot carry a sparse gradient back through Keras's cast of a mixed
# policy's table (see `_sparse.check_sparse`).
SPARSE_WITH_MIXED_POLICY = False


def sparse_take(table, ids):
    return torch.nn.functional.embedding(ids, value_of(table), sparse=True)


def trains_densely(table):
    """Never: `sparse_take`'s gradient is a sparse COO tensor in any model."""
    del table
    return False


def is_row_sparse(gradient):
    return bool(getattr(gradient, "is_sparse", False))


def densify_gradient(gradient):
    return gradient.to_dense() if is_row_sparse(gradient) else gradient


def unique_rows(gradient):
    # A sparse COO tensor with one sparse dimension (the rows). Eager even under
    # `torch.compile`, which cannot trace sparse tensors.
    return torch.compiler.disable(_coalesced_rows)(gradient)


def _coalesced_rows(gradient):
    # Copies, so that the compiled code after it receives plain tensors.
    gradient = gradient.coalesce()
    return gradient.indices()[0].clone(), gradient.values().clone()


def gather_rows(variable, ids):
    return value_of(variable).index_select(0, ids)


def scatter(optimizer, variable, ids, rows, how):
    del optimizer
    with torch.no_grad():
        value = value_of(variable)
        rows = rows.to(value.dtype)
        ids = ids.long()  # `index_copy_` / `index_add_` take int64 ids only.
        if how == "update":
            value.index_copy_(0, ids, rows)
        else:
            value.index_add_(0, ids, rows, alpha=-1)


def subtract_scaled(optimizer, variable, gradient, factor):
    del optimizer
    torch.compiler.disable(_subtract_scaled)(value_of(variable), gradient, factor)


def _subtract_scaled(value, gradient, factor):
    # Dense += uncoalesced sparse sums the duplicates (as `torch.optim.SGD`).
    with torch.no_grad():
        value.add_(gradient.to(value.dtype), alpha=-float(factor))


def scale_gradient(gradient, factor):
    return gradient * factor


def with_rows(gradient, ids, values):
    return torch.sparse_coo_tensor(
        ids.unsqueeze(0),
        values,
        gradient.shape,
        is_coalesced=True,
        check_invariants=False,
    )


def set_rows(variable, ids, rows):
    """`variable[ids] = rows` in place (`ids` unique)."""
    with torch.no_grad():
        value = value_of(variable)
        value.index_copy_(0, ids.long(), rows.to(value.dtype))


def fused_take(table, ids, anchor, update):
    """`table[ids]`, whose backward pass calls `update(pieces)`, `pieces`
    the `(unique ids, summed row gradients)` by `row_chunks` (`update` writes
    the table in place) and gives `anchor` (a
    trainable zero-size variable: what makes autograd run the backward) a
    zero gradient. No gradient of the table's size exists."""
    return torch.compiler.disable(_FusedTake.apply)(
        value_of(anchor), value_of(table), ids, update
    )


class _FusedTake(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, table, ids, update):
        ctx.save_for_backward(ids)
        ctx.update = update
        ctx.anchor_shape = anchor.shape
        flat = ids.reshape(-1).long()
        return table.index_select(0, flat).reshape(*ids.shape, table.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        flat = ids.reshape(-1).long()
        grad = grad.reshape(flat.shape[0], -1)
        unique, inverse = torch.unique(flat, return_inverse=True)
        summed = grad.new_zeros((unique.shape[0], grad.shape[1]))
        summed.index_add_(0, inverse, grad)
        ctx.update(row_chunks(unique, summed))
        return grad.new_zeros(ctx.anchor_shape), None, None, None


def fused_bag(table, ids, offsets, weights, anchor, update):
    """The weighted sums of `table`'s rows over bags (1-D `ids`, the bags'
    starts `offsets`, one weight an id): one `embedding_bag`, never forming
    the rows. Its backward pass sums each id's gradient (its bag's gradient
    times its weight) with one more `embedding_bag` over the ids sorted, so
    that no row gradient of each id is formed either, a piece of
    `_ROW_CHUNK` unique ids at a time, and calls `update(pieces)` with those
    `(unique ids, summed row gradients)`; `anchor` as `fused_take`'s."""
    return torch.compiler.disable(_FusedBag.apply)(
        value_of(anchor), value_of(table), ids, offsets, weights, update
    )


class _FusedBag(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, table, ids, offsets, weights, update):
        ids, offsets = ids.long(), offsets.long()
        weights = weights.to(table.dtype)
        ctx.save_for_backward(ids, offsets, weights)
        ctx.update = update
        ctx.anchor_shape = anchor.shape
        return torch.nn.functional.embedding_bag(
            ids, table, offsets, mode="sum", per_sample_weights=weights
        )

    @staticmethod
    def backward(ctx, grad):
        ids, offsets, weights = ctx.saved_tensors
        positions = torch.arange(ids.shape[0], device=ids.device)
        bag = torch.bucketize(positions, offsets, right=True) - 1
        sorted_ids, order = torch.sort(ids)
        unique, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
        ends = torch.cumsum(counts, 0)
        bag, weights = bag[order], weights[order].to(grad.dtype)
        grad = grad.contiguous()

        def pieces():
            # `_ROW_CHUNK` unique ids at a time: their ids' positions in the
            # sorted order are one run, summed by one `embedding_bag`.
            for first in range(0, unique.shape[0], _ROW_CHUNK):
                last = min(first + _ROW_CHUNK, unique.shape[0])
                begin = int(ends[first - 1]) if first else 0
                end = int(ends[last - 1])
                starts = torch.cat([ends.new_full((1,), begin), ends[first : last - 1]])
                summed = torch.nn.functional.embedding_bag(
                    bag[begin:end],
                    grad,
                    starts - begin,
                    mode="sum",
                    per_sample_weights=weights[begin:end],
                )
                yield unique[first:last], summed

        ctx.update(pieces())
        return grad.new_zeros(ctx.anchor_shape), None, None, None, None, None


# Rows a table's own optimizer steps at once: its temporaries (the rows, the
# slot rows, the update's intermediates) stay this small whatever the batch.
_ROW_CHUNK = 1 << 16


def row_chunks(ids, rows):
    """`(ids, rows)` in pieces of `_ROW_CHUNK` rows (eager PyTorch)."""
    for start in range(0, ids.shape[0], _ROW_CHUNK):
        yield ids[start : start + _ROW_CHUNK], rows[start : start + _ROW_CHUNK]
