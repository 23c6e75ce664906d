"""PyTorch: the index policy's backend ops (concrete ids, flat values of ragged
ids, gathers that zero or fill invalid ids)."""

import torch
from keras import ops


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
