"""JAX: fill-value gathers, row-sparse training through the looked-up rows,
shardings and host memory."""

import contextlib
import functools
import re
import threading
import warnings

import jax
import jax.numpy as jnp
import keras
import numpy as np
from jax.experimental.compute_on import compute_on
from keras import ops

from keras_embedding_plus import compat

DEVICE_TYPES = ("cpu", "gpu", "cuda", "tpu", "host")
SPARSE_WITH_MIXED_POLICY = True


def _native(variable):
    """The `jax.Array` of a `keras.Variable` (or `variable` itself)."""
    return getattr(variable, "value", variable)


# ---- the index policy ----------------------------------------------------------


def is_concrete(x):
    return not isinstance(x, jax.core.Tracer)


def flat_values(ids):
    return ids


def with_flat_values(ids, values):
    del ids
    return values


def ids_all_valid(values, input_dim):
    del values, input_dim
    return None  # No faster check than the generic one.


def take(table, ids, valid):
    """Traced: one gather that fills invalid ids with zero rows (XLA fuses the
    id select into it), instead of a gather and a `cond` that copies the whole
    output."""
    if valid is None:
        return ops.take(table, ids, axis=0), valid
    ids = jnp.where(valid, ids, table.shape[0])
    table = ops.convert_to_tensor(table)
    return jnp.take(table, ids, axis=0, mode="fill", fill_value=0), None


def zero_invalid(outputs, valid):
    mask = ops.expand_dims(valid, -1)
    return ops.cond(
        ops.all(valid),
        lambda: outputs,
        lambda: ops.where(mask, outputs, ops.zeros((), dtype=outputs.dtype)),
    )


# ---- row-sparse gradients: differentiate with respect to the looked-up rows ------
#
# JAX gradients are dense arrays, one per differentiated input. `RowCapture` (used
# by `keras_embedding_plus.training.SparseTrainer`) differentiates with respect to
# the looked-up rows instead and hands the optimizer an `IndexedRows`.

_local = threading.local()


def _current_capture():
    return getattr(_local, "capture", None)


def sparse_take(table, ids):
    capture = _current_capture()
    if capture is not None:
        return capture.lookup(table, ids)
    return ops.take(table, ids, axis=0)


def capturing(table):
    """Whether a `RowCapture` is reading `table`'s rows now (JAX training)."""
    capture = _current_capture()
    return capture is not None and id(table) in capture._tables


class RowCapture:
    """Context: the sparse lookups of `tables` read their rows through it.

    Two modes, used in this order while one training step is traced:

    * `RowCapture(tables)` records the shape and dtype of every lookup's rows
      (call `jax.eval_shape` on the forward pass inside it): `shapes`, and the
      table of each lookup: `tables`.
    * `RowCapture(tables, deltas)` adds `deltas[i]`, a zero array of the `i`-th
      recorded shape, to the rows of the `i`-th lookup, and records its ids in
      `ids`. The gradient with respect to `deltas[i]` is the gradient with
      respect to those rows, and the table itself need not be differentiated.
    """

    def __init__(self, tables, deltas=None):
        self._tables = {id(t): t for t in tables}
        self.deltas = deltas
        self.shapes = []
        self.ids = []
        self.tables = []

    def __enter__(self):
        self._previous = _current_capture()
        _local.capture = self
        return self

    def __exit__(self, *exc_info):
        _local.capture = self._previous

    def lookup(self, table, ids):
        if id(table) not in self._tables:
            return ops.take(table, ids, axis=0)
        rows = jnp.take(_native(table), ids, axis=0, mode="clip")
        self.tables.append(table)
        if self.deltas is None:
            self.shapes.append((rows.shape, rows.dtype))
            return rows
        self.ids.append(ids)
        return rows + self.deltas[len(self.ids) - 1]


class IndexedRows:
    """A row-sparse gradient on JAX: `dense[indices[i]] += values[i]`.

    `indices` may repeat; duplicates are summed. Arithmetic with a dense array
    densifies (gradient accumulation, for instance, keeps a dense sum).
    """

    def __init__(self, indices, values, dense_shape):
        self.indices = indices
        self.values = values
        self.shape = tuple(dense_shape)
        self.dtype = values.dtype

    def to_dense(self):
        zeros = jnp.zeros(self.shape, self.dtype)
        return zeros.at[self.indices].add(self.values, mode="drop")

    def _with_values(self, values):
        return IndexedRows(self.indices, values, self.shape)

    def __mul__(self, other):
        return self._with_values(self.values * other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self._with_values(self.values / other)

    def __neg__(self):
        return self._with_values(-self.values)

    def __add__(self, other):
        if isinstance(other, IndexedRows):
            return self.to_dense() + other.to_dense()
        return self.to_dense() + _native(other)

    __radd__ = __add__


def is_row_sparse(gradient):
    return isinstance(gradient, IndexedRows)


def densify_gradient(gradient):
    return gradient.to_dense() if isinstance(gradient, IndexedRows) else gradient


def unique_rows(gradient):
    """`ids` keeps the static length of the gradient: the unused tail holds the
    out-of-range id `dense_shape[0]` with zero values, which `gather_rows`
    reads as zeros and `scatter` drops."""
    indices = gradient.indices.reshape(-1)
    values = gradient.values.reshape((indices.shape[0], -1))
    size = indices.shape[0]
    ids, inverse = jnp.unique(
        indices, size=size, fill_value=gradient.shape[0], return_inverse=True
    )
    summed = jax.ops.segment_sum(values, inverse.reshape(-1), num_segments=size)
    return ids, summed


def gather_rows(variable, ids):
    return jnp.take(_native(variable), ids, axis=0, mode="fill", fill_value=0)


def scatter(optimizer, variable, ids, rows, how):
    del optimizer
    value = _native(variable)
    at = value.at[ids]
    rows = rows.astype(value.dtype)
    if how == "update":
        variable.assign(at.set(rows, mode="drop"))
    else:
        variable.assign(at.add(-rows, mode="drop"))


def subtract_scaled(optimizer, variable, gradient, factor):
    del optimizer
    value = _native(variable)
    rows = gradient.values.reshape((gradient.indices.size, -1))
    rows = (rows * factor).astype(value.dtype)
    variable.assign(value.at[gradient.indices.reshape(-1)].add(-rows, mode="drop"))


def scale_gradient(gradient, factor):
    return gradient * factor


def with_rows(gradient, ids, values):
    return IndexedRows(ids, values, gradient.shape)


# ---- placement: shardings and host memory ----------------------------------------
#
# One compiled step runs on one device (or one mesh), so there are two
# placements. `"host"` (and `"cpu"` when JAX computes on an accelerator) keeps the
# table in host memory (memory kind `pinned_host`) of the compute device: the
# gather runs on the host inside the compiled step and only the rows go to device
# memory. Another device of the compute platform commits the table there: eager
# calls look up there and move the rows to the ids' device; a compiled step runs
# where the table is, with a warning. Either way the variable carries the
# placement as its layout, so Keras's JAX trainer puts the table back there after
# `fit`, and `load_weights` / `set_weights` assign there.


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


def placed_take(table, ids, placement, sparse):
    if sparse and capturing(table):  # `SparseTrainer`: see `RowCapture`.
        return sparse_take(table, ids)
    value = _native(table)
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
    value = _native(table)
    if getattr(placement, "host_memory", False):
        return jax.device_put(value, jax.memory.Space.Device)
    return value


def add_matmul(rows, a, b):
    return ops.add(rows, ops.matmul(a, b))


def snapshot(variable):
    """The value itself: a JAX array never changes, and `assign` replaces it."""
    return variable.value


def writes_rows_in_place():
    return False


def builds_by_blocks():
    """Outside a Keras distribution (whose layouts place the table)."""
    return keras.distribution.distribution() is None


def write_rows(variable, start, rows):
    """Rows `start ...` of the variable set to `rows`: a new array (JAX arrays
    are immutable), so `_chunks` never writes a table by blocks on JAX."""
    value = _native(variable)
    rows = jnp.asarray(rows, value.dtype)
    variable.assign(jax.lax.dynamic_update_slice_in_dim(value, rows, start, 0))


def read_rows(variable, start, stop):
    """Rows `start:stop` of a variable."""
    return _native(variable)[start:stop]


@functools.partial(jax.jit, donate_argnums=0)
def _update_rows(value, rows, start):
    return jax.lax.dynamic_update_slice_in_dim(value, rows, start, 0)


def fill_rows(variable, start, rows):
    """Rows `start ...` of a table being built set to `rows`, in place: its
    array (held by nothing else yet) is donated to the update."""
    value = _native(variable)
    variable.assign(_update_rows(value, jnp.asarray(rows, value.dtype), start))


# ---- pooled lookups (EmbeddingBag) ----------------------------------------------


def sparse_bags(ids, weights):
    """`(values, segments, num_segments, outer_shape, weights)` of a `BCOO`
    `(batch, ..., L)`: each stored id with its bag's flat index."""
    if type(ids).__name__ != "BCOO":
        raise ValueError(
            "Sparse ids on JAX must be a `jax.experimental.sparse.BCOO`. "
            f"Received: {type(ids).__name__}."
        )
    if ids.n_batch or ids.n_dense:
        raise ValueError(
            "`BCOO` ids must have no batch or dense dimensions "
            f"(n_batch=0, n_dense=0). Received: n_batch={ids.n_batch}, "
            f"n_dense={ids.n_dense}."
        )
    outer = tuple(ids.shape[:-1])
    if weights is not None:
        weights = weights.data
    columns = tuple(ids.indices[:, axis] for axis in range(len(outer)))
    segments = jnp.ravel_multi_index(columns, outer, mode="clip").astype("int32")
    return ids.data, segments, int(np.prod(outer)), outer, weights


def segment(data, segments, num_segments, how, sorted=False):
    if how == "sum":
        return ops.segment_sum(data, segments, num_segments=num_segments, sorted=sorted)
    return ops.segment_max(data, segments, num_segments=num_segments, sorted=sorted)


embedding_bag = None  # No fused kernel: rows are gathered, then pooled.
