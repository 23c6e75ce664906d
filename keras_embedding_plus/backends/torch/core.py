"""PyTorch: helpers every concern uses, and LoRA's fused `add_matmul`."""

import torch


def value_of(variable):
    """The `torch.Tensor` of a `keras.Variable` (or `variable` itself)."""
    return getattr(variable, "value", variable)


def add_matmul(rows, a, b):
    """`rows + a @ b`, fused; in place on freshly gathered frozen rows (`addmm_`:
    `addmm` would first copy them)."""
    if not rows.requires_grad:
        return rows.addmm_(a, b)
    return torch.addmm(rows, a, b)


def smallest(values, k):
    """The indices (int32) of the `k` smallest of `values` (1-D), ascending by
    value."""
    return torch.topk(values, k, largest=False, sorted=True).indices.int()


def leading(x, n):
    """`x[:n]` (`n` a scalar tensor): PyTorch's eager steps take
    data-dependent shapes."""
    return x[: int(n)]
