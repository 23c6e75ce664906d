"""JAX: where the table lives (`device=`): shardings and host memory."""

import contextlib
import functools
import re
import warnings

import jax
import jax.numpy as jnp
import keras
import numpy as np
from jax.experimental.compute_on import compute_on
from keras import ops

from keras_embedding_plus import compat
from keras_embedding_plus.backends.jax.core import value_of
from keras_embedding_plus.backends.jax.sparse import capturing, sparse_take

DEVICE_TYPES = ("cpu", "gpu", "cuda", "tpu", "host")


class Placement:
    """A JAX table placement: its sharding and where to create it."""

    def __init__(self, sharding, build_device, host_memory):
        self.sharding = sharding
        self.build_device = build_device
        self.host_memory = host_memory
        self.device = next(iter(sharding.device_set))
        # The device that runs compiled steps anyway: nothing to move.
        self.is_default = not host_memory and self.device == _default_device()
        self.warned = False


def visible_devices():
    devices = {f"{d.platform}:{d.id}" for d in jax.devices()}
    with contextlib.suppress(RuntimeError):
        devices |= {f"cpu:{d.id}" for d in jax.devices("cpu")}
    return sorted(devices)


def _default_device():
    """The device JAX runs uncommitted computations on (outside scopes)."""
    return jax.devices()[0]


def _device(name):
    kind, _, index = name.partition(":")
    return jax.devices(kind)[int(index or 0)]


def resolve_device(device):
    kind, _, index = device.partition(":")
    compute = _default_device()
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
    return Placement(sharding, build_device, host)


def build_placement(placement):
    """Under a Keras distribution its `LayoutMap` places the table; otherwise the
    device of an enclosing `keras.device(...)` scope that is not the default."""
    if keras.distribution.distribution() is not None:
        if placement is not None:
            warnings.warn(
                "Embedding `device` is ignored under a Keras distribution: the "
                "distribution's `LayoutMap` places the table.",
                stacklevel=4,
            )
        return None
    if placement is None:
        ambient = jax.config.jax_default_device
        if isinstance(ambient, str):
            ambient = _device(ambient)
        if ambient is not None and ambient != _default_device():
            placement = resolve_device(f"{ambient.platform}:{ambient.id}")
    return placement


def build_scope(placement, shape):
    if placement is None:
        return _explain_uneven_sharding(shape)
    # Host-memory tables are created on the host, never on the accelerator.
    return jax.default_device(placement.build_device)


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
    """The placement becomes the variable's layout, which Keras's JAX backend
    re-applies on every assign."""
    if placement is None:
        return None
    compat.set_variable_layout(variable, placement.sharding)
    if placement.host_memory and variable.regularizer is not None:
        variable.regularizer = compat.variable_regularizer(
            _host_regularizer(variable.regularizer)
        )
    return placement


def _host_regularizer(regularizer):
    """`regularizer` for a `pinned_host` table, on a device-memory copy of it.

    JAX differentiates no whole-table reduction over host memory here; the
    penalty reads every row anyway.
    """

    def on_device(table):
        table = ops.convert_to_tensor(table)
        return regularizer(jax.device_put(table, jax.memory.Space.Device))

    return on_device


@functools.cache
def _host_take():
    """A jitted, differentiable gather from a `pinned_host` table."""
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


def take(table, ids, placement, sparse=False):
    if sparse and capturing(table):  # `SparseTrainer`: see `RowCapture`.
        return sparse_take(table, ids)
    value = value_of(table)
    if placement.is_default:
        return jnp.take(value, ids, axis=0)
    if placement.host_memory:
        return _host_take()(value, ids)
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
            compute = _device(compute)
    rows = jnp.take(value, jax.device_put(ids, placement.device), axis=0)
    return jax.device_put(rows, compute)


def fetch(table, placement):
    """A host-memory table copied to device memory (inside a compiled step too)."""
    value = value_of(table)
    if getattr(placement, "host_memory", False):
        return jax.device_put(value, jax.memory.Space.Device)
    return value
