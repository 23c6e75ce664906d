"""Where the embedding table lives: the `device` argument on every backend.

`check_device` validates the string at construction, `resolve` turns it into a
backend placement (or `None`, with one warning, when this machine lacks the
device), `create` makes the table there (`backends.placement.build_placement`,
`build_scope`, `pin`), and `backends.placement.take` runs the lookup where the
table lives and moves only the looked-up rows (batch x length x
output_dim) to the device where the rest of the model runs. Gradients flow back
the same way: every move is differentiable.

Per backend (the code is in `backends/<backend>/placement.py`):

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

from keras_embedding_plus import backends

_DEVICE_STRING = re.compile(r"^([a-z_]+)(?::(\d+))?$")


def check_device(device):
    """Validate `device`; returns it in canonical lower-case form, or None."""
    if device is None:
        return None
    # `"host"`: host memory, compute elsewhere; `"cuda"` is `"gpu"` everywhere,
    # so a config saved on torch loads on JAX / TF.
    types = backends.placement.DEVICE_TYPES
    match = isinstance(device, str) and _DEVICE_STRING.match(device.strip().lower())
    if not match or match.group(1) not in types:
        raise ValueError(
            "`device` must be None or a device string 'TYPE' or 'TYPE:INDEX' with "
            f"TYPE one of {types} on the {backend.backend()} backend; this backend "
            f"sees the devices {backends.placement.visible_devices()}. "
            f"Received: device={device!r}"
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
    placement = backends.placement.resolve_device(device)
    if placement is None:
        warnings.warn(
            f"Embedding `device={device!r}` is not available on this machine "
            f"(the {backend.backend()} backend sees "
            f"{backends.placement.visible_devices()}): the table is placed by "
            "default instead.",
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


def builds_by_default(placement):
    """Whether a table of `placement` is created where the model computes (and
    so can be drawn and saved by blocks)."""
    return backends.placement.build_placement(placement) is None


def create(placement, shape, make):
    """`(created, placement)`: the variables `make()` creates, on `placement`
    (the `shape` table's, from `resolve`), and the placement their lookups use.

    At build, `backends.placement.build_placement` gives `placement` if any, else
    on JAX the device of an enclosing `keras.device(...)` scope when it is not
    the default device (so that the Keras docs' pattern keeps the table there on
    JAX too). Under a Keras distribution (JAX) or a `tf.distribute` strategy,
    the engine places the table: `device` is ignored, with a warning. On JAX
    under a Keras distribution, a table the `LayoutMap` cannot split evenly
    raises a `ValueError` saying what to change. `backends.placement.pin` keeps
    each variable there: on JAX the placement becomes the variable's layout,
    which Keras re-applies on every assign (after `fit`, in `load_weights`,
    `set_weights`); on PyTorch a table created under an enclosing
    `keras.device(...)` scope on another device than Keras's default is looked
    up there.
    """
    placement = backends.placement.build_placement(placement)
    with backends.placement.build_scope(placement, shape):
        created = make()
    pinned = placement
    for variable in created if isinstance(created, tuple) else (created,):
        pinned = backends.placement.pin(variable, placement)
    return created, pinned
