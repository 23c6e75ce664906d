"""Where the embedding table lives: the `device` argument on every backend.

`check_device` validates the string at construction, `resolve` turns it into a
backend placement (or `None`, with one warning, when this machine lacks the
device), `build_scope` + `pin` create the table there, and `take` runs the lookup
where the table lives and moves only the looked-up rows (batch x length x
output_dim) to the device where the rest of the model runs. Gradients flow back
the same way: every move is differentiable.

Per backend:

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

import contextlib
import functools
import re
import warnings

from keras import backend

from keras_embedding_plus import _compat, _sparse

# Device types each backend knows (`"host"`: host memory, compute elsewhere).
# `"cuda"` is `"gpu"` everywhere, so a config saved on torch loads on JAX / TF.
DEVICE_TYPES = {
    "jax": ("cpu", "gpu", "cuda", "tpu", "host"),
    "tensorflow": ("cpu", "gpu", "cuda", "tpu", "host"),
    "torch": ("cpu", "gpu", "cuda", "mps", "xpu", "host"),
}

_DEVICE_STRING = re.compile(r"^([a-z_]+)(?::(\d+))?$")


def _backend():
    return backend.backend()


def visible_devices():
    """The devices this backend sees, as `"type:index"` strings."""
    name = _backend()
    if name == "jax":
        import jax

        devices = {f"{d.platform}:{d.id}" for d in jax.devices()}
        with contextlib.suppress(RuntimeError):
            devices |= {f"cpu:{d.id}" for d in jax.devices("cpu")}
        return sorted(devices)
    if name == "tensorflow":
        import tensorflow as tf

        return [
            f"{d.device_type.lower()}:{d.name.rsplit(':', 1)[-1]}"
            for d in tf.config.list_logical_devices()
        ]
    if name == "torch":
        import torch

        devices = ["cpu"]
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if torch.backends.mps.is_available():
            devices.append("mps")
        return devices
    return []


def check_device(device):
    """Validate `device`; returns it in canonical lower-case form, or None."""
    if device is None:
        return None
    types = DEVICE_TYPES.get(_backend(), ())
    match = isinstance(device, str) and _DEVICE_STRING.match(device.strip().lower())
    if not match or match.group(1) not in types:
        raise ValueError(
            "`device` must be None or a device string 'TYPE' or 'TYPE:INDEX' with "
            f"TYPE one of {types} on the {_backend()} backend; this backend sees "
            f"the devices {visible_devices()}. Received: device={device!r}"
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
    placement = {"jax": _jax_resolve, "tensorflow": _tf_resolve}.get(
        _backend(), _torch_resolve
    )(device)
    if placement is None:
        warnings.warn(
            f"Embedding `device={device!r}` is not available on this machine "
            f"(the {_backend()} backend sees {visible_devices()}): the table is "
            "placed by default instead.",
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
    name = _backend()
    if name == "tensorflow":
        import tensorflow as tf

        if placement is not None and tf.distribute.has_strategy():
            warnings.warn(
                "Embedding `device` is ignored under a `tf.distribute` strategy: "
                "the strategy places the table.",
                stacklevel=3,
            )
            return None
        return placement
    if name != "jax":
        return placement
    import jax
    import keras

    if keras.distribution.distribution() is not None:
        if placement is not None:
            warnings.warn(
                "Embedding `device` is ignored under a Keras distribution: the "
                "distribution's `LayoutMap` places the table.",
                stacklevel=3,
            )
        return None
    if placement is None:
        ambient = jax.config.jax_default_device
        if isinstance(ambient, str):
            ambient = _jax_device(ambient)
        if ambient is not None and ambient != jax_default():
            placement = _jax_resolve(f"{ambient.platform}:{ambient.id}")
    return placement


def build_scope(placement, shape):
    """Context to create the `shape` table in: the placement's device scope.

    On JAX under a Keras distribution, a table the `LayoutMap` cannot split
    evenly raises a `ValueError` saying what to change.
    """
    name = _backend()
    if name == "jax":
        import jax

        if placement is None:
            return _explain_uneven_sharding(shape)
        # Host-memory tables are created on the host, never on the accelerator.
        return jax.default_device(placement.build_device)
    if placement is None:
        return contextlib.nullcontext()
    if name == "tensorflow":
        import tensorflow as tf

        return tf.device(placement)
    import keras

    # Keras's torch backend moves new variables to its own device scope.
    return keras.device(str(placement))


@contextlib.contextmanager
def _explain_uneven_sharding(shape):
    try:
        yield
    except ValueError as e:
        if type(e).__name__ != "IndivisibleError":
            raise
        parts = re.search(r"partitioned (\d+) times", str(e))
        ways = int(parts.group(1)) if parts else None
        fix = (
            f"a multiple of {ways} (e.g. input_dim={-(-shape[0] // ways) * ways}; "
            "the extra rows are never looked up)"
            if ways
            else "a multiple of the mesh axis size"
        )
        raise ValueError(
            f"The distribution's `LayoutMap` shards the embedding table of shape "
            f"{tuple(shape)} unevenly: JAX needs every sharded axis to divide "
            f"evenly over the mesh. Make `input_dim` {fix}, or shard another "
            f"axis in the `LayoutMap`. Received: input_dim={shape[0]}. ({e})"
        ) from e


def pin(variable, placement):
    """Keep `variable` on `placement`; returns the placement its lookups use.

    JAX: the placement becomes the variable's layout, which Keras's JAX backend
    re-applies on every assign (after `fit`, in `load_weights`, `set_weights`).
    PyTorch: a table created under an enclosing `keras.device(...)` scope on
    another device than Keras's default is looked up there.
    """
    name = _backend()
    if name == "jax" and placement is not None:
        variable._layout = placement.sharding
        variable.assign(variable.value)
        if placement.host_memory and variable.regularizer is not None:
            variable.regularizer = _compat.variable_regularizer(
                _jax_host_regularizer(variable.regularizer)
            )
    elif name == "torch" and placement is None:
        device = variable.value.device
        if device != _torch_default_device():
            placement = device
    return placement


def take(table, ids, placement, sparse=False):
    """`ops.take(table, ids, axis=0)` run where the table lives.

    Returns the looked-up rows on the device that runs the rest of the model.
    `table` is a `keras.Variable` (or a tensor on the same device); `sparse`: the
    gradient of a variable stays row-sparse (as `_sparse.lookup`).
    """
    name = _backend()
    if name == "tensorflow":
        return _tf_take(table, ids, placement, sparse)
    if name == "jax":
        return _jax_take(table, ids, placement, sparse)
    return _torch_take(table, ids, sparse)


def fetch(table, placement):
    """The whole of `table` where the model computes (tied logits, merging).

    JAX: a host-memory table is copied to device memory (inside a compiled step
    too); torch: the table moves to the default device. TensorFlow copies
    between devices by itself.
    """
    name = _backend()
    value = getattr(table, "value", table)
    if name == "jax" and getattr(placement, "host_memory", False):
        import jax

        return jax.device_put(value, jax.memory.Space.Device)
    if name == "torch":
        return value.to(_torch_default_device())
    return value


# TensorFlow


def _tf_resolve(device):
    if device == "host":
        return "/device:CPU:0"
    import tensorflow as tf

    kind, _, index = device.partition(":")
    kind = "gpu" if kind == "cuda" else kind
    devices = tf.config.list_logical_devices(kind.upper())
    if not devices or (index and int(index) >= len(devices)):
        return None
    return devices[int(index) if index else 0].name


def _tf_take(table, ids, placement, sparse):
    import tensorflow as tf

    # A variable's `value` is the `tf.Variable`: a ResourceGather, whose gradient
    # is row-sparse (`IndexedSlices`) with or without `sparse`.
    del sparse
    value = getattr(table, "value", table)
    with tf.device(placement):
        rows = tf.gather(value, ids)
    # Outside the scope: the rows alone move to where the model runs.
    if isinstance(rows, tf.RaggedTensor):
        return rows.with_flat_values(tf.identity(rows.flat_values))
    return tf.identity(rows)


# PyTorch


def _torch_resolve(device):
    import torch

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


def _torch_default_device():
    """The device Keras's torch backend computes on outside `keras.device`."""
    import os

    import torch

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


def _torch_take(table, ids, sparse):
    import torch

    value = getattr(table, "value", table)
    rows = torch.nn.functional.embedding(ids.to(value.device), value, sparse=sparse)
    return rows.to(ids.device)


# JAX


class _JaxPlacement:
    """A JAX table placement: its sharding and where to create it."""

    def __init__(self, sharding, build_device, host_memory):
        self.sharding = sharding
        self.build_device = build_device
        self.host_memory = host_memory
        self.device = next(iter(sharding.device_set))
        # The device that runs compiled steps anyway: nothing to move.
        self.is_default = not host_memory and self.device == jax_default()
        self.warned = False


def _jax_resolve(device):
    import jax
    import numpy as np

    kind, _, index = device.partition(":")
    compute = jax_default()
    host = kind == "host" or (kind == "cpu" and compute.platform != "cpu")
    if host:
        # JAX's answer for a table too big for accelerator memory: host memory
        # of the device that runs the step, under a sharding `jit` respects.
        kinds = {m.kind for m in compute.addressable_memories()}
        if "pinned_host" not in kinds:
            return None
        target, memory_kind = compute, "pinned_host"
        try:
            build_device = jax.devices("cpu")[0]
        except RuntimeError:
            build_device = compute
    else:
        try:
            devices = jax.devices("gpu" if kind == "cuda" else kind)
        except RuntimeError:
            return None
        if index and int(index) >= len(devices):
            return None
        target = devices[int(index) if index else 0]
        build_device, memory_kind = target, None
    # A one-device mesh, not a `SingleDeviceSharding`: Keras's optimizers
    # create their slots with the table's layout and expect a mesh.
    mesh = jax.sharding.Mesh(np.array([target]), ("device",))
    sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(), memory_kind=memory_kind
    )
    return _JaxPlacement(sharding, build_device, host)


def jax_default():
    """The device JAX runs uncommitted computations on (outside scopes)."""
    import jax

    return jax.devices()[0]


def _jax_device(name):
    import jax

    kind, _, index = name.partition(":")
    return jax.devices(kind)[int(index or 0)]


@functools.cache
def _jax_host_take():
    """A jitted, differentiable gather from a `pinned_host` table."""
    import jax
    import jax.numpy as jnp
    from jax.experimental.compute_on import compute_on

    host, device = jax.memory.Space.Host, jax.memory.Space.Device

    @jax.custom_vjp
    def host_take(table, ids):
        with compute_on("device_host"):
            rows = jnp.take(table, jax.device_put(ids, host), axis=0, mode="clip")
        return jax.device_put(rows, device)

    def forward(table, ids):
        return host_take(table, ids), (ids, table.shape)

    def backward(residuals, grad):
        # The gradient is row-sparse: scatter it into a zero table on the host.
        ids, shape = residuals
        zeros = jax.device_put(jnp.zeros(shape, grad.dtype), host)
        with compute_on("device_host"):
            table_grad = zeros.at[jax.device_put(ids, host)].add(
                jax.device_put(grad, host), mode="drop"
            )
        return table_grad, None

    host_take.defvjp(forward, backward)
    return jax.jit(host_take)


def _jax_host_regularizer(regularizer):
    """`regularizer` for a `pinned_host` table, on a device-memory copy of it.

    JAX differentiates no whole-table reduction over host memory here; the
    penalty reads every row anyway.
    """
    import jax
    from keras import ops

    def on_device(table):
        table = ops.convert_to_tensor(table)
        return regularizer(jax.device_put(table, jax.memory.Space.Device))

    return on_device


def _jax_take(table, ids, placement, sparse):
    import jax
    import jax.numpy as jnp

    if sparse and _sparse.capturing(table):  # `SparseTrainer`: see `_sparse`.
        return _sparse.lookup(table, ids)
    value = getattr(table, "value", table)
    if placement.is_default:
        return jnp.take(value, ids, axis=0)
    if placement.host_memory:
        return _jax_host_take()(value, ids)
    if isinstance(ids, jax.core.Tracer):
        if not placement.warned:
            placement.warned = True
            warnings.warn(
                f"JAX compiles a step for one device: this compiled call runs "
                "where the embedding table lives "
                f"({placement.device.platform}:{placement.device.id}), and "
                "the table stays there. To keep the table off the device that "
                "runs the model, use `device='host'` (host memory).",
                stacklevel=4,
            )
        return jnp.take(value, ids, axis=0)
    # Eager: look up on the table's device, move only the rows back.
    if getattr(ids, "committed", False):
        compute = ids.sharding
    else:
        compute = jax.config.jax_default_device or jax.devices()[0]
        if isinstance(compute, str):
            compute = _jax_device(compute)
    rows = jnp.take(value, jax.device_put(ids, placement.device), axis=0)
    return jax.device_put(rows, compute)
