"""PyTorch: sparse COO gradients, `torch.device` placement, fused kernels."""

import contextlib
import os

import keras
import torch
from keras import ops

DEVICE_TYPES = ("cpu", "gpu", "cuda", "mps", "xpu", "host")
# torch cannot carry a sparse gradient back through Keras's cast of a mixed
# policy's table (see `_sparse.check_sparse`).
SPARSE_WITH_MIXED_POLICY = False


def _native(variable):
    """The `torch.Tensor` of a `keras.Variable` (or `variable` itself)."""
    return getattr(variable, "value", variable)


# ---- the index policy ----------------------------------------------------------


def is_concrete(x):
    if torch.compiler.is_compiling():
        return False
    return not (isinstance(x, torch.Tensor) and x.device.type == "meta")


def flat_values(ids):
    return ids


def with_flat_values(ids, values):
    del ids
    return values


def ids_all_valid(values, input_dim):
    """Integer ids in a CPU tensor, checked in NumPy without a copy.

    One single-threaded min/max pass instead of several small multi-threaded
    torch kernels, which on a busy machine each cost far more than the check.
    """
    if not (isinstance(values, torch.Tensor) and values.device.type == "cpu"):
        return None
    array = values.numpy()
    return array.size == 0 or bool(array.min() >= 0 and array.max() < input_dim)


def take(table, ids, valid):
    if isinstance(ids, torch.Tensor):  # What `ops.take` ends with.
        return torch.nn.functional.embedding(ids, ops.convert_to_tensor(table)), valid
    return ops.take(table, ids, axis=0), valid


def zero_invalid(outputs, valid):
    # torch.compile fuses the select into the gather; a data-dependent branch
    # would only break its graph.
    mask = ops.expand_dims(valid, -1)
    return ops.where(mask, outputs, ops.zeros((), dtype=outputs.dtype))


# ---- row-sparse gradients: sparse COO tensors ----------------------------------


def sparse_take(table, ids):
    return torch.nn.functional.embedding(ids, _native(table), sparse=True)


def capturing(table):
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
    return _native(variable).index_select(0, ids)


def scatter(optimizer, variable, ids, rows, how):
    del optimizer
    with torch.no_grad():
        value = _native(variable)
        rows = rows.to(value.dtype)
        if how == "update":
            value.index_copy_(0, ids, rows)
        else:
            value.index_add_(0, ids, rows, alpha=-1)


def subtract_scaled(optimizer, variable, gradient, factor):
    del optimizer
    torch.compiler.disable(_subtract_scaled)(_native(variable), gradient, factor)


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


# ---- placement: `torch.device` ---------------------------------------------------


def visible_devices():
    devices = ["cpu"]
    devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device):
    kind, _, index = device.partition(":")
    if kind == "host":
        return torch.device("cpu")
    kind = "cuda" if kind == "gpu" else kind
    available = {
        "cpu": 1,
        "cuda": torch.cuda.device_count(),
        "mps": int(torch.backends.mps.is_available()),
        "xpu": torch.xpu.device_count() if hasattr(torch, "xpu") else 0,
    }[kind]
    if not available or (index and int(index) >= available):
        return None
    return torch.device(kind, int(index)) if index else torch.device(kind)


def _default_device():
    """The device Keras's torch backend computes on outside `keras.device`."""
    if "KERAS_TORCH_DEVICE" in os.environ:
        name = os.environ["KERAS_TORCH_DEVICE"]
    elif torch.backends.mps.is_available():
        name = "mps"
    elif torch.cuda.is_available():
        name = "cuda"
    elif hasattr(torch, "xpu") and torch.xpu.is_available():
        name = "xpu"
    else:
        name = "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def build_placement(placement):
    return placement


def build_scope(placement, shape):
    del shape
    if placement is None:
        return contextlib.nullcontext()
    # Keras's torch backend moves new variables to its own device scope.
    return keras.device(str(placement))


def pin(variable, placement):
    """A table created under an enclosing `keras.device(...)` scope on another
    device than Keras's default is looked up there."""
    if placement is None:
        device = variable.value.device
        if device != _default_device():
            placement = device
    return placement


def placed_take(table, ids, placement, sparse):
    del placement  # The table's own device.
    value = _native(table)
    rows = torch.nn.functional.embedding(ids.to(value.device), value, sparse=sparse)
    return rows.to(ids.device)


def fetch(table, placement):
    del placement
    return _native(table).to(_default_device())


def add_matmul(rows, a, b):
    """`rows + a @ b`, fused; in place on freshly gathered frozen rows (`addmm_`:
    `addmm` would first copy them)."""
    if not rows.requires_grad:
        return rows.addmm_(a, b)
    return torch.addmm(rows, a, b)


def snapshot(variable):
    """A copy, where the variable lives (`assign` writes in place)."""
    return variable.value.detach().clone()


def writes_rows_in_place():
    return True


def builds_by_blocks():
    return True


def write_rows(variable, start, rows):
    """Rows `start ...` of the variable set to `rows`, in place (`copy_`, as
    Keras's own assign)."""
    value = _native(variable)
    rows = ops.convert_to_tensor(rows)
    with torch.no_grad():
        value[start : start + rows.shape[0]].copy_(rows)


def read_rows(variable, start, stop):
    """Rows `start:stop` of a variable (a view)."""
    return _native(variable).detach()[start:stop]


def fill_rows(variable, start, rows):
    """`write_rows` into a table being built (`_chunks.initialize`)."""
    write_rows(variable, start, rows)


# ---- pooled lookups (EmbeddingBag) ----------------------------------------------


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


def embedding_bag(table, ids, offsets, weights, *, combiner, pad, sparse):
    """`torch.nn.functional.embedding_bag` of dense ids `(..., L)` (`offsets`
    None) or of 1-D ids and their bags' `offsets`; every id valid.

    Fastest in mode "sum" without `padding_idx`: "mean" and "sqrtn" divide its
    sum by counts computed here. `padding_idx` is passed where it matters: for
    "max", when the table is differentiated (the padding row gets no
    gradient), or when the padding row is not zero. None where the kernel has
    no such path ("max" with a sparse gradient, dense bags of length 0).
    """
    if sparse and combiner == "max":
        return None  # `embedding_bag` has no sparse gradient for "max".
    table = _native(table)
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
        and combiner != "max"
        and not (torch.is_grad_enabled() and table.requires_grad)
        and not table[pad].any()
    ):
        kernel_pad = None  # A zero row adds nothing to a sum.
    F = torch.nn.functional
    if combiner == "max":
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
        if combiner != "sum":
            if w is None:
                den = _counts(flat, offsets, pad).to(table.dtype)
            else:
                den = _bag_sums(w * w if combiner == "sqrtn" else w, offsets)
            if combiner == "sqrtn":
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
