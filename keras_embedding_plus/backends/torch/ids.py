"""PyTorch: the index policy's backend ops (concrete ids, flat values of ragged
ids, gathers that zero or fill invalid ids)."""

import numpy as np
import torch
from keras import ops

# Unsigned dtypes with few ops in torch ("lt_cpu" not implemented for them):
# their ids are compared as a signed dtype that keeps every valid id.
_WIDENED = {torch.uint16: torch.int32, torch.uint32: torch.int64}

# `torch.searchsorted` is a search under `torch.compile` too.
SEARCH_UNDER_XLA = True

NARROWING_REMEDY = ""


def is_concrete(x):
    """Whether the values of `x` are known at this call, per call.

    `torch.compiler.is_dynamo_compiling()` is True only inside Dynamo's trace
    of the calling frame. `torch.compiler.is_compiling()` is one flag for the
    whole process (True while any thread compiles): it counts only with a
    tensor that is not a plain `torch.Tensor` (the fake and functional tensors
    that `torch.export` and AOT tracing run this code on), never for another
    thread's eager calls.
    """
    if torch.compiler.is_dynamo_compiling():
        return False
    if not isinstance(x, torch.Tensor):
        return True
    if x.device.type == "meta":
        return False
    return type(x) is torch.Tensor or not torch.compiler.is_compiling()


def traces_numpy():
    """Whether NumPy ids reaching the layer here are traced values: inside
    Dynamo's trace (`torch.compile` traces NumPy arrays as tensors)."""
    return torch.compiler.is_dynamo_compiling()


def device_dtype(dtype):
    """The dtype torch holds host ids of NumPy `dtype` in: the same."""
    return np.dtype(dtype)


def comparable(values):
    """`values` in a dtype torch compares: uint16 / uint32 widened, uint64
    read as int64 (ids of 2**63 and more turn negative: invalid either way)."""
    if not isinstance(values, torch.Tensor):
        return values
    if values.dtype == torch.uint64:
        return values.view(torch.int64)
    if values.dtype in _WIDENED:
        return values.to(_WIDENED[values.dtype])
    return values


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


# ---- the count of invalid ids met in compiled calls (`lookup.invalid_ids`) ------


def new_counter(metric):
    """The count of `metric`: an int64 metric variable, updated in the graph."""
    return metric.add_variable((), initializer="zeros", dtype="int64", name="count")


def _exporting():
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def count_invalid(counter, valid, error, marker):
    """Add the invalid ids of `valid` to `counter` in the graph (no host sync);
    `marker` (which JAX needs) is unused.

    With an `error` text, any invalid id raises `ValueError`: a data-dependent
    check, which `torch.compile` runs eagerly between two graphs (public torch
    has no in-graph assert), so `"raise"` syncs once per call. Keras's shape
    inference (tensors on the "meta" device) counts nothing, nor does an
    export (`torch.export`, ONNX): a served graph updates no metric, and the
    variable's in-place update under `no_grad` fails export's verifier.
    """
    if valid.device.type == "meta" or _exporting():
        return
    count = torch.sum(torch.logical_not(valid), dtype=torch.int64)
    if error is not None and bool(count > 0):
        raise ValueError(f"{error} Invalid ids met: {int(count)}.")
    counter.assign_add(count)


def discard_pending(counter):
    del counter  # The count is added in the graph: nothing waits.


def read_count(counter):
    return counter.value


def reset_count(counter):
    counter.assign(0)
