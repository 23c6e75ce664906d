"""Differences between the Keras versions we support (`keras>=3.14`, pyproject.toml).

Each entry says why it is here and what would replace it.
"""

import inspect

import keras

KERAS_VERSION = tuple(int(part) for part in keras.__version__.split(".")[:2])


class _FunctionRegularizer(keras.regularizers.Regularizer):
    """A plain function as a `Regularizer` (for Keras < 3.15's variables)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        return self.fn(x)


class _FunctionConstraint(keras.constraints.Constraint):
    """A plain function as a `Constraint` (for Keras < 3.15's variables)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, w):
        return self.fn(w)


def variable_regularizer(fn):
    """`fn` as a `keras.Variable` takes it.

    Keras 3.15 takes any callable; 3.14's `Variable.regularizer` only
    `keras.regularizers.Regularizer` instances. Drop with `keras>=3.15`.
    """
    if fn is None or KERAS_VERSION >= (3, 15):
        return fn
    if isinstance(fn, keras.regularizers.Regularizer):
        return fn
    return _FunctionRegularizer(fn)


def variable_constraint(fn):
    """`fn` as a `keras.Variable` takes it (as `variable_regularizer`)."""
    if fn is None or KERAS_VERSION >= (3, 15):
        return fn
    if isinstance(fn, keras.constraints.Constraint):
        return fn
    return _FunctionConstraint(fn)


# ---- Keras internals --------------------------------------------------------
#
# Every use of a private Keras attribute in the package goes through this
# module, each with why no public API does it and what would replace it. The
# tests of each caller (and Keras's own conformance tests) catch a Keras release
# that changes one. Method overrides of private Keras hooks cannot live here;
# they are listed instead:
#
# * `Embedding.quantized_build` / `quantized_call` / `_quantization_mode_error`
#   and `self._not_implemented_error`: Keras's quantization protocol (what
#   `Layer.quantize` and quantized dtype policies call). Public replacement:
#   none; Keras's own layers implement the same hooks.
# * `LazySGD` / `LazyAdam` / `LazyAdagrad`: `_backend_apply_gradients` (densify
#   row-sparse gradients before gradient accumulation) and `_clip_gradients`
#   (clip the deduplicated rows). Public replacement: none; `apply` is too early
#   (before loss scaling) and `update_step` too late (after clipping).


def set_variable_layout(variable, sharding):
    """Place a JAX `variable` by `sharding`, kept there on every later assign.

    `variable._layout`: Keras's JAX variable re-applies it in `assign` (after
    `fit`, in `load_weights` / `set_weights`). Public replacement:
    `keras.Variable(..., layout=sharding)` at creation, but `add_weight` (which
    makes the table, the quantized variables and LoRA's `A` with their
    tracking, name scope, regularizer and constraint) takes no layout.
    """
    variable._layout = sharding
    variable.assign(variable.value)


class unlocked_tracking:
    """Context: a built layer may add variables (`enable_lora` after build).

    `layer._tracker.unlock()` / `lock()`, as Keras's own `Embedding.enable_lora`
    does. Public replacement: none (a built layer refuses new variables).
    """

    def __init__(self, layer):
        self.tracker = layer._tracker

    def __enter__(self):
        self.tracker.unlock()

    def __exit__(self, *exc_info):
        self.tracker.lock()


def set_build_input_shape(layer, shape):
    """`Sequential.add(layer)` builds the model at once with input `shape`.

    `layer._input_shape_arg`: what `Sequential` reads. Public replacement: the
    base layer's `input_shape=` argument sets it too, but warns "Do not pass an
    `input_shape`" on every construction, whereas Keras 1 / 2's `input_length`
    is a documented argument of this layer.
    """
    layer._input_shape_arg = shape


def mark_quantized(layer, output_dim):
    """The attributes Keras's `Layer` reads on a quantized layer.

    `_is_quantized` (the dtype policy setter and `quantize` refuse to quantize
    twice) and `_orig_output_dim`, set as Keras's own `quantized_build` does.
    Public replacement: none.
    """
    layer._orig_output_dim = output_dim
    layer._is_quantized = True


def set_symbolic_mask(tensor, mask):
    """Attach `mask` to a symbolic `KerasTensor` output of a layer's `call`.

    `_keras_mask`, what `Layer.__call__` sets on its outputs. Public
    replacement: `compute_mask`, but Keras's `ReversibleEmbedding` returns the
    padding mask from `call` while `compute_mask` returns None, and our layer
    must give both answers.
    """
    tensor._keras_mask = mask
    return tensor


def symbolic_mask(tensor):
    """The mask `Layer.__call__` attached to a symbolic output, or None.

    `_keras_mask` again (see `set_symbolic_mask`); Keras has no public reader
    of a `KerasTensor`'s mask. Used by `testing.run_layer_test`.
    """
    return getattr(tensor, "_keras_mask", None)


def flatten_layers(model):
    """Every layer inside `model`, nested ones included, `model` excluded.

    `_flatten_layers`. Public replacement: `model.layers` recursively, which
    misses layers held by subclassed layers' attributes.
    """
    return model._flatten_layers(include_self=False)


def child_layers(layer):
    """The layers `layer` tracks directly (`_layers`; public: none, as above)."""
    return getattr(layer, "_layers", ())


def replace_tracked_layer(owner, old, new):
    """Make `owner` track `new` in place of `old` (swapping layers in place).

    `_tracker.replace_tracked_value`, and on torch forgetting the cached
    `_torch_params`. Public replacement: none; `clone_model` rebuilds Functional
    and Sequential models, not subclassed ones.
    """
    owner._tracker.replace_tracked_value("layers", old, new)


def forget_torch_params(layer):
    """torch: drop the parameters a layer collected before its layers changed."""
    if "_torch_params" in getattr(layer, "_modules", {}):
        del layer._torch_params


def update_metrics(model, metrics_values, loss, x, y, y_pred, sample_weight):
    """The stateless metric update of Keras's JAX `train_step`.

    `model._update_metrics_variables`. Public replacement: each metric's
    `stateless_update_state`, as Keras's custom-`train_step` guide for JAX does,
    which would reimplement how compiled metrics take `sample_weight`.
    """
    return model._update_metrics_variables(
        metrics_values, loss, x, y, y_pred, sample_weight
    )


def optimizer_slot(optimizer, slots, variable):
    """`optimizer.<slots>[index of variable]`: a Keras optimizer's own slot.

    The slot lists (`_momentums`, `_velocities`, `_velocity_hats`,
    `_accumulators`; SGD's public `momentums`) and `_get_variable_index`. Public
    replacement: slots of our own from `add_variable_from_reference`, but they
    would double the optimizer state and change its saved variables, so a lazy
    optimizer would no longer save and load as the Keras optimizer it extends.
    """
    return getattr(optimizer, slots)[optimizer._get_variable_index(variable)]


def stored_dataset(store, key):
    """The h5py `Dataset` behind `store[key]`, unread, or None.

    Keras's `.weights.h5` / `.keras` store answers `store[key]` with the whole
    array in memory (`np.array(dataset)`), whatever shape the file declares.
    `store._h5_entry_group` is the h5py group of the layer being loaded: its
    datasets' shapes and dtypes can be checked before anything is read. Only
    what Keras's `safe_get_h5_dataset` accepts is returned (a hard link to a
    plain dataset: no external or virtual storage); None otherwise, and for
    any other store, whose `store[key]` then decides. Public replacement:
    none (a store hands out whole arrays).
    """
    import h5py

    group = getattr(store, "_h5_entry_group", None)
    if not isinstance(group, h5py.Group) or key not in group:
        return None
    if not isinstance(group.get(key, getlink=True), h5py.HardLink):
        return None
    dataset = group[key]
    if not isinstance(dataset, h5py.Dataset) or dataset.external:
        return None
    if dataset.is_virtual:
        return None
    return dataset


def _keras_bfloat16(dataset):
    """Whether Keras's store marks `dataset` as bfloat16 values (an `attrs`
    entry: `store[key]` converts them)."""
    return "dtype" in dataset.attrs and dataset.attrs["dtype"] == "bfloat16"


def stored_kind(dataset):
    """The NumPy kind of the values `store[key]` makes of `dataset` ("f" for
    Keras's bfloat16 marker)."""
    return "f" if _keras_bfloat16(dataset) else dataset.dtype.kind


def stored_rows(store, key):
    """The h5py `Dataset` behind `store[key]`, read by row blocks, or None.

    For a big table, `store[key]` would be a table-sized copy on top of the
    table (see `stored_dataset`). bfloat16 values (an `attrs` marker Keras's
    store converts) and any non-numeric dtype are left to `store[key]`: None
    then, as for any other store.
    """
    dataset = stored_dataset(store, key)
    if dataset is None:
        return None
    if "dtype" in dataset.attrs or dataset.dtype.kind not in "fiub":
        return None
    return dataset


def applying_optimizer():
    """The Keras optimizer whose `apply` is running, or None.

    Keras calls a variable's constraint with the variable alone, inside
    `BaseOptimizer.apply`: the optimizer is the `self` of a calling frame (the
    nearest: a `LossScaleOptimizer`'s inner one). `DynamicEmbedding`'s
    constraint needs it to reset the slots of the rows it hands to new keys.
    Public replacement: none (a constraint receives only the variable, and an
    optimizer has no hook per variable).
    """
    frame = inspect.currentframe().f_back
    while frame is not None:
        caller = frame.f_locals.get("self")
        if isinstance(caller, keras.optimizers.Optimizer):
            return caller
        frame = frame.f_back
    return None


# What Keras's optimizers keep per element of a variable (the names they give
# `add_optimizer_variables`), with its initial value: the optimizer's
# `initial_accumulator_value` (Adagrad, Ftrl) or zero. EMA averages and
# gradient accumulators are not statistics of the rows' past gradients.
_ROW_STATISTICS = (
    "momentum",
    "velocity",
    "velocity_hat",
    "accumulator",
    "linear",
    "average_gradient",
    "accumulated_grad",
    "accumulated_delta_var",
    "norm",
)


def row_slots(optimizer, variable):
    """`[(slot, initial value)]`: the slots `optimizer` keeps for `variable`,
    element by element (its shape), among Keras's statistics above.

    Keras names a slot `f"{variable.path.replace('/', '_')}_{statistic}"`
    (`BaseOptimizer.add_variable_from_reference`); `optimizer.variables` and
    `.name` are public, the naming is not. Public replacement: none (no map
    from a variable to its slots).
    """
    prefix = variable.path.replace("/", "_") + "_"
    slots = []
    for slot in optimizer.variables:
        statistic = slot.name[len(prefix) :] if slot.name.startswith(prefix) else ""
        if statistic in _ROW_STATISTICS and tuple(slot.shape) == tuple(variable.shape):
            initial = 0.0
            if statistic == "accumulator":
                initial = getattr(optimizer, "initial_accumulator_value", 0.0)
            slots.append((slot, initial))
    return slots
