"""PyTorch: where the table lives (`device=`): `torch.device`."""

import contextlib
import os

import keras
import torch

from keras_embedding_plus.backends.torch.core import value_of

DEVICE_TYPES = ("cpu", "gpu", "cuda", "mps", "xpu", "host")


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


def take(table, ids, placement, sparse=False):
    del placement  # The table's own device.
    value = value_of(table)
    rows = torch.nn.functional.embedding(ids.to(value.device), value, sparse=sparse)
    return rows.to(ids.device)


def fetch(table, placement):
    del placement
    return value_of(table).to(_default_device())
