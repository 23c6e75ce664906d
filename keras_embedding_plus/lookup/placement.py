"""Where the embedding table lives: the `device` argument on every backend.

`check_device` validates the string at construction, `resolve` turns it into a
backend placement (or `None`, with one warning, when this machine lacks the
device), `build_scope` + `pin` create the table there, and `take` runs the lookup
where the table lives and moves only the looked-up rows (batch x length x
output_dim) to the device where the rest of the model runs. Gradients flow back
the same way: every move is differentiable.

Per backend (the code is in `_backends/<backend>.py`):

* TensorFlow: the table is created under `tf.device`; the gather runs there and a
  `tf.identity` outside the scope puts the rows on the model's device.
* PyTorch: the table is created on the `torch.device`; ids go to the table, rows
  come back to the ids' device (`Tensor.to`, which autograd reverses).
* JAX: one compiled step runs on one device (or one mesh), so there are two
  placements. `"host"` (and `"cpu"` when JAX computes on an accelerator) keeps
  the table in host memory (memory kind `pinned_host`) of the compute device:
  the gather runs on the host inside the compiled step and only the rows go to
  device memory. Another device of the compute platform (`"gpu:1"`, or
  `"cpu:2"` with virtual CPU devices) commits the table there: eager calls look
  up there and move the rows to the ids' device; a compiled step (Keras's
  `predict` / `fit`) runs where the table is, with a warning. Either way the
  variable carries the placement as its layout, so Keras's JAX trainer puts the
  table back there after `fit` and `load_weights` / `set_weights` assign there.
"""

import re
import warnings

from keras import backend

from keras_embedding_plus.backends import native

# Device types this backend knows (`"host"`: host memory, compute elsewhere).
# `"cuda"` is `"gpu"` everywhere, so a config saved on torch loads on JAX / TF.
DEVICE_TYPES = native.DEVICE_TYPES

_DEVICE_STRING = re.compile(r"^([a-z_]+)(?::(\d+))?$")


def visible_devices():
    """The devices this backend sees, as `"type:index"` strings."""
    return native.visible_devices()


def check_device(device):
    """Validate `device`; returns it in canonical lower-case form, or None."""
    if device is None:
        return None
    types = DEVICE_TYPES
    match = isinstance(device, str) and _DEVICE_STRING.match(device.strip().lower())
    if not match or match.group(1) not in types:
        raise ValueError(
            "`device` must be None or a device string 'TYPE' or 'TYPE:INDEX' with "
            f"TYPE one of {types} on the {backend.backend()} backend; this backend "
            f"sees the devices {visible_devices()}. Received: device={device!r}"
        )
    kind, index = match.groups()
    if kind == "host" and index is not None:
        raise ValueError(
            "`device='host'` takes no index: it means host memory of the device "
            f"that runs the model. Received: device={device!r}"
        )
    return kind if index is None else f"{kind}:{int(index)}"


def resolve(device):
    """The backend placement for a checked `device`, or None for the default.

    A well-formed device this machine lacks (a model saved on a GPU machine,
    loaded on a laptop) warns once and gives the default placement.
    """
    if device is None:
        return None
    placement = native.resolve_device(device)
    if placement is None:
        warnings.warn(
            f"Embedding `device={device!r}` is not available on this machine "
            f"(the {backend.backend()} backend sees {visible_devices()}): the "
            "table is placed by default instead.",
            stacklevel=3,
        )
    return placement


def check_lookup_options(placement, sparse=False):
    """JAX: a host-memory table cannot train row-sparse.

    `SparseTrainer` differentiates the looked-up rows with a gather that JAX
    rejects for a `pinned_host` array inside a compiled step (LoRA, `max_norm`
    and quantized tables read host memory through the same host gather as the
    plain lookup, and work).
    """
    if sparse and getattr(placement, "host_memory", False):
        raise ValueError(
            "On JAX, a table in host memory (`device='host'`, or `'cpu'` when "
            "JAX computes on an accelerator) cannot be combined with `sparse=True`: "
            "JAX's row-sparse training step cannot gather from host memory. Use "
            "`sparse=False` (the host lookup's gradient is already scattered on "
            "the host), or `device=None` for row-sparse updates. Received: "
            "device='host', sparse=True."
        )


def for_build(placement):
    """The placement to create the table with, at `build` time.

    `placement` (from `device=`) if any, else on JAX the device of an enclosing
    `keras.device(...)` scope when it is not the default device (so that the
    Keras docs' pattern keeps the table there on JAX too). Under a Keras
    distribution (JAX) or a `tf.distribute` strategy, the engine places the
    table: `device` is ignored, with a warning.
    """
    return native.build_placement(placement)


def build_scope(placement, shape):
    """Context to create the `shape` table in: the placement's device scope.

    On JAX under a Keras distribution, a table the `LayoutMap` cannot split
    evenly raises a `ValueError` saying what to change.
    """
    return native.build_scope(placement, shape)


def pin(variable, placement):
    """Keep `variable` on `placement`; returns the placement its lookups use.

    JAX: the placement becomes the variable's layout, which Keras's JAX backend
    re-applies on every assign (after `fit`, in `load_weights`, `set_weights`).
    PyTorch: a table created under an enclosing `keras.device(...)` scope on
    another device than Keras's default is looked up there.
    """
    return native.pin(variable, placement)


def create(layer, make):
    """The variables `make()` creates, where `layer`'s table lives (`device`);
    updates the placement its lookups use."""
    placement = for_build(layer._table_placement)
    with build_scope(placement, (layer.input_dim, layer.output_dim)):
        created = make()
    for variable in created if isinstance(created, tuple) else (created,):
        layer._table_placement = pin(variable, placement)
    return created


def take(table, ids, placement, sparse=False):
    """`ops.take(table, ids, axis=0)` run where the table lives.

    Returns the looked-up rows on the device that runs the rest of the model.
    `table` is a `keras.Variable` (or a tensor on the same device); `sparse`: the
    gradient of a variable stays row-sparse (as `_sparse.lookup`).
    """
    return native.placed_take(table, ids, placement, sparse)


def fetch(table, placement):
    """The whole of `table` where the model computes (tied logits, merging).

    JAX: a host-memory table is copied to device memory (inside a compiled step
    too); torch: the table moves to the default device. TensorFlow copies
    between devices by itself.
    """
    return native.fetch(table, placement)
