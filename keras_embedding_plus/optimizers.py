"""Lazy optimizers: row-sparse gradients update only the rows they touch.

`LazySGD`, `LazyAdam` and `LazyAdagrad` are subclasses of Keras's `SGD`, `Adam` and
`Adagrad` with the same arguments, the same variables and the same configs. On a
dense gradient they run Keras's own update. On a row-sparse gradient (what
`Embedding(sparse=True)` produces: a `tf.IndexedSlices` on TensorFlow, a sparse COO
tensor on PyTorch, the rows handed over by `keras_embedding_plus.training.
SparseTrainer` on JAX) they first sum the rows of duplicate ids, then update only
those rows of the variable and of its slots, so a step costs O(rows in the batch),
not O(vocabulary):

* `LazySGD` without momentum, and `LazyAdagrad`, give exactly the dense result:
  a row with zero gradient does not move under SGD or Adagrad.
* `LazyAdam`, and `LazySGD` with momentum, are *lazy* (the semantics of TF Addons'
  `LazyAdam` and PyTorch's `SparseAdam`): the moments of rows absent from a batch
  are not decayed and those rows do not move, whereas dense Adam keeps moving a
  row on its decaying momentum. Bias correction uses the global step. On the rows
  of a batch the update equals dense Adam's whenever those rows' moments are equal
  (for example after the first step).

Clipping (`clipnorm`, `clipvalue`, `global_clipnorm`) is computed on the summed
rows, so it equals clipping the dense gradient. `weight_decay`, `use_ema`,
`gradient_accumulation_steps` and variable constraints keep Keras's semantics and
touch every row (O(vocabulary) per step).

A float16 / bfloat16 variable (a half-precision table) is updated in float32,
with float32 slots, and stored with stochastic rounding: up with probability
its distance from the value below over the spacing, so that updates smaller
than half the spacing are kept on average (`stochastic_rounding=False`: round to
nearest). Every optimizer here takes that argument besides its Keras arguments.

Rows a `DynamicEmbedding` hands to new keys in a step get their slots' initial
values after that step's update (zero moments; Adagrad's initial accumulator),
as their values restart from the initializer (Keras's own optimizers get the
same through the table's constraint, `layers.dynamic_parts.FreshRows`).
"""

from typing import Any

import keras
from keras import ops

from keras_embedding_plus import backends, compat, rounding
from keras_embedding_plus.layers import arguments as _args
from keras_embedding_plus.lookup import dynamic_keys


class _LazyMixin:
    """Row-sparse gradient handling shared by the lazy optimizers, and
    half-precision variables (float32 state, stochastic rounding)."""

    def __init__(self, *args: Any, stochastic_rounding: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stochastic_rounding = _args.check_bool(
            "stochastic_rounding", stochastic_rounding
        )

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        if any(rounding.is_half(v.dtype) for v in var_list):
            # The rounding's random stream is optimizer state: it moves on
            # each step (in JAX's stateless apply too) and is saved.
            self._rounding_seed = keras.random.SeedGenerator(name="rounding_seed")
            self._track_variable(self._rounding_seed.state)

    def add_variable_from_reference(self, reference_variable, name=None, **kwargs):
        """Keras's slots, but float32 for a float16 / bfloat16 variable."""
        if not rounding.is_half(reference_variable.dtype):
            return super().add_variable_from_reference(
                reference_variable, name, **kwargs
            )
        return self.add_variable(
            shape=reference_variable.shape,
            initializer=kwargs.get("initializer", "zeros"),
            dtype="float32",
            name=f"{reference_variable.path.replace('/', '_')}_{name or 'var'}",
        )

    def update_step(self, gradient, variable, learning_rate):
        half = rounding.is_half(variable.dtype)
        sparse = backends.sparse.is_row_sparse(gradient)
        if not sparse and not half:
            return super().update_step(gradient, variable, learning_rate)
        if self._linear_in_gradient() and not half:
            # `variable -= lr * gradient`: a scatter-add sums duplicate ids
            # itself, with no deduplication pass (a sort) first.
            backends.sparse.subtract_scaled(self, variable, gradient, learning_rate)
            return
        if sparse:
            ids, rows = backends.sparse.unique_rows(gradient)
        else:  # A half-precision variable's dense gradient: every row.
            ids, rows = ops.arange(variable.shape[0], dtype="int32"), gradient
        dtype = _state_dtype(variable)
        self._update_rows(
            ids,
            ops.cast(rows, dtype),
            variable,
            ops.cast(learning_rate, dtype),
        )

    def get_config(self):
        config = super().get_config()
        config["stochastic_rounding"] = self.stochastic_rounding
        return config

    def save_own_variables(self, store):
        """Keras's, but a slot whose rows are sharded over several processes
        (JAX, `keras.distribution`) is gathered first: a collective, so every
        process saves."""
        for i, variable in enumerate(self.variables):
            value = backends.blocks.gathered(variable)
            store[str(i)] = ops.convert_to_numpy(value)

    def _subtract_rows(self, variable, ids, delta):
        """`variable[ids] -= delta` (`ids` unique). A float16 / bfloat16
        variable is updated in float32 and stored with stochastic rounding
        (round-to-nearest with `stochastic_rounding=False`)."""
        if not rounding.is_half(variable.dtype):
            backends.sparse.scatter(self, variable, ids, delta, "sub")
            return
        old = ops.cast(backends.sparse.gather_rows(variable, ids), "float32")
        new = ops.subtract(old, ops.cast(delta, "float32"))
        if self.stochastic_rounding:
            new = rounding.stochastic_round(new, variable.dtype, self._rounding_seed)
        backends.sparse.scatter(
            self, variable, ids, ops.cast(new, variable.dtype), "update"
        )

    def apply(self, grads, trainable_variables=None):
        """Keras's `apply`. A `DynamicEmbedding` table's constraint, which only
        writes new keys' rows, is set aside meanwhile: these optimizers write
        those rows themselves, row by row (`_reset_fresh_rows`), where Keras
        would assign the whole table (on TensorFlow, a copy of it each step)."""
        # Keras's JAX trainer passes no variables (its constraint's write is
        # in place there): nothing set aside.
        variables = trainable_variables or []
        aside = {
            id(v): v.constraint
            for v in variables
            if getattr(v.constraint, "writes_fresh_rows_only", lambda: False)()
        }
        for variable in variables:
            if id(variable) in aside:
                variable.constraint = None
        self._fresh_row_constraints = aside
        try:
            return self._apply_unscaled(grads, trainable_variables)
        finally:
            for variable in variables:
                if id(variable) in aside:
                    variable.constraint = aside[id(variable)]
            self._fresh_row_constraints = {}

    def _apply_unscaled(self, grads, trainable_variables):
        scale = self.loss_scale_factor
        if scale is None or not any(backends.sparse.is_row_sparse(g) for g in grads):
            return super().apply(grads, trainable_variables)
        # Keras divides with `/`, which `tf.IndexedSlices` lacks.
        grads = [
            None if g is None else backends.sparse.scale_gradient(g, 1.0 / scale)
            for g in grads
        ]
        self.loss_scale_factor = None
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self.loss_scale_factor = scale

    # `_backend_apply_gradients` and `_clip_gradients`: Keras hooks (see _compat).
    def _backend_apply_gradients(self, grads, trainable_variables):
        if self.gradient_accumulation_steps:
            # The accumulators are dense: add dense gradients to them.
            grads = [backends.sparse.densify_gradient(g) for g in grads]
        result = super()._backend_apply_gradients(grads, trainable_variables)
        for variable in trainable_variables:
            self._reset_fresh_rows(variable)
        return result

    def _reset_fresh_rows(self, variable):
        """Give the rows a `DynamicEmbedding` just handed to new keys their
        initial values and their slots' initial values, after this step's
        update, row by row (the layer's constraint, applied next, then leaves
        them)."""
        constraint = getattr(self, "_fresh_row_constraints", {}).get(
            id(variable), variable.constraint
        )
        fresh_rows = getattr(constraint, "fresh_rows", None)
        rows = fresh_rows() if fresh_rows is not None else None
        if rows is None:
            return
        for name, initial in self._row_slots():
            slot = self._slot(name, variable)
            values = ops.full((ops.shape(rows)[0], *slot.shape[1:]), initial)
            ids, values = dynamic_keys.fresh_writes(rows, values, slot)
            backends.sparse.scatter(self, slot, ids, values, "update")
        ids, values = dynamic_keys.fresh_writes(*constraint.take_fresh(), variable)
        backends.sparse.scatter(self, variable, ids, values, "update")

    def _row_slots(self):
        """`(slot name, initial value)` of the slots that hold a value per row."""
        return ()

    def _clip_gradients(self, grads):
        clipping = (
            (self.clipnorm and self.clipnorm > 0)
            or (self.global_clipnorm and self.global_clipnorm > 0)
            or (self.clipvalue and self.clipvalue > 0)
        )
        if not clipping or not any(backends.sparse.is_row_sparse(g) for g in grads):
            return super()._clip_gradients(grads)
        # Clip the summed rows (what the dense gradient holds), not the raw ones.
        unique = [
            backends.sparse.unique_rows(g) if backends.sparse.is_row_sparse(g) else None
            for g in grads
        ]
        values = [g if u is None else u[1] for g, u in zip(grads, unique, strict=True)]
        values = super()._clip_gradients(values)
        return [
            v if u is None else backends.sparse.with_rows(g, u[0], v)
            for g, u, v in zip(grads, unique, values, strict=True)
        ]

    def _linear_in_gradient(self):
        """Whether the update is `variable -= lr * gradient` (plain SGD)."""
        return False

    def _slot(self, slots, variable):
        return compat.optimizer_slot(self, slots, variable)


@keras.saving.register_keras_serializable(package="keras_embedding_plus")
class LazySGD(_LazyMixin, keras.optimizers.SGD):
    """Keras's `SGD`, updating only the touched rows of a row-sparse gradient.

    Without momentum the result equals dense `SGD` exactly. With momentum, the
    momentum of a row absent from a batch is not decayed and the row does not
    move (dense `SGD` keeps moving it): lazy momentum.

    Takes the arguments of `keras.optimizers.SGD`, and `stochastic_rounding`
    (default True: how a float16 / bfloat16 variable stores its updates).

    Example:

    >>> model.compile(optimizer=LazySGD(0.1), loss="mse")
    """

    def _linear_in_gradient(self):
        return self.momentum == 0

    def _row_slots(self):
        return (("momentums", 0.0),) if self.momentum != 0 else ()

    def _update_rows(self, ids, gradient, variable, learning_rate):
        step = ops.multiply(gradient, learning_rate)
        if self.momentum == 0:
            self._subtract_rows(variable, ids, step)
            return
        m = self._slot("momentums", variable)
        momentum = ops.cast(self.momentum, _state_dtype(variable))
        m_rows = ops.subtract(
            ops.multiply(backends.sparse.gather_rows(m, ids), momentum), step
        )
        backends.sparse.scatter(self, m, ids, m_rows, "update")
        if self.nesterov:
            delta = ops.subtract(ops.multiply(m_rows, momentum), step)
        else:
            delta = m_rows
        self._subtract_rows(variable, ids, ops.negative(delta))


@keras.saving.register_keras_serializable(package="keras_embedding_plus")
class LazyAdam(_LazyMixin, keras.optimizers.Adam):
    """Keras's `Adam`, updating only the touched rows of a row-sparse gradient.

    The lazy Adam of TF Addons (`tfa.optimizers.LazyAdam`) and PyTorch
    (`torch.optim.SparseAdam`): on a row-sparse gradient, the first and second
    moments (and `amsgrad`'s maximum) of the rows in the batch are updated as
    Adam updates them, with bias correction by the global step, and only those
    rows move. The moments of other rows are not decayed. On a dense gradient,
    exactly `keras.optimizers.Adam`. Lazy updates often train large embeddings
    as well as Adam, at a cost independent of the vocabulary.

    Takes the arguments of `keras.optimizers.Adam`, and `stochastic_rounding`
    (default True: how a float16 / bfloat16 variable stores its updates).

    Example:

    >>> model.compile(optimizer=LazyAdam(1e-3), loss="mse")
    """

    def _row_slots(self):
        slots = [("_momentums", 0.0), ("_velocities", 0.0)]
        return tuple(slots + [("_velocity_hats", 0.0)] if self.amsgrad else slots)

    def _update_rows(self, ids, gradient, variable, learning_rate):
        dtype = _state_dtype(variable)
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        alpha = learning_rate * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)

        m = self._slot("_momentums", variable)
        v = self._slot("_velocities", variable)
        m_rows = backends.sparse.gather_rows(m, ids)
        v_rows = backends.sparse.gather_rows(v, ids)
        m_rows = ops.add(
            m_rows, ops.multiply(ops.subtract(gradient, m_rows), 1 - self.beta_1)
        )
        v_rows = ops.add(
            v_rows,
            ops.multiply(ops.subtract(ops.square(gradient), v_rows), 1 - self.beta_2),
        )
        backends.sparse.scatter(self, m, ids, m_rows, "update")
        backends.sparse.scatter(self, v, ids, v_rows, "update")
        if self.amsgrad:
            v_hat = self._slot("_velocity_hats", variable)
            v_rows = ops.maximum(backends.sparse.gather_rows(v_hat, ids), v_rows)
            backends.sparse.scatter(self, v_hat, ids, v_rows, "update")
        self._subtract_rows(
            variable,
            ids,
            ops.divide(
                ops.multiply(m_rows, alpha),
                ops.add(ops.sqrt(v_rows), self.epsilon),
            ),
        )


@keras.saving.register_keras_serializable(package="keras_embedding_plus")
class LazyAdagrad(_LazyMixin, keras.optimizers.Adagrad):
    """Keras's `Adagrad`, updating only the touched rows of a row-sparse gradient.

    Adagrad leaves a row with zero gradient unchanged, so the result equals
    dense `keras.optimizers.Adagrad` exactly (up to float rounding), at a cost
    independent of the vocabulary.

    Takes the arguments of `keras.optimizers.Adagrad`, and `stochastic_rounding`
    (default True: how a float16 / bfloat16 variable stores its updates).

    Example:

    >>> model.compile(optimizer=LazyAdagrad(0.1), loss="mse")
    """

    def _row_slots(self):
        return (("_accumulators", self.initial_accumulator_value),)

    def _update_rows(self, ids, gradient, variable, learning_rate):
        accumulator = self._slot("_accumulators", variable)
        rows = ops.add(
            backends.sparse.gather_rows(accumulator, ids), ops.square(gradient)
        )
        backends.sparse.scatter(self, accumulator, ids, rows, "update")
        self._subtract_rows(
            variable,
            ids,
            ops.divide(
                ops.multiply(learning_rate, gradient),
                ops.sqrt(ops.add(rows, self.epsilon)),
            ),
        )


@keras.saving.register_keras_serializable(package="keras_embedding_plus")
class LazyRowwiseAdagrad(_LazyMixin, keras.optimizers.Optimizer):
    """Row-wise Adagrad, the optimizer FBGEMM and torchrec use for big tables:
    one accumulator per row, not per element.

    For a variable of rank 2 or more (a table: one row per id), with `g` the
    gradient of row `r`:

        accumulator[r] += mean(g ** 2)
        row[r] -= learning_rate * g / (sqrt(accumulator[r]) + epsilon)

    (FBGEMM's `EXACT_ROWWISE_ADAGRAD` without weight decay). A variable of rank
    0 or 1 (a bias) keeps one accumulator per element, as `Adagrad`. The state
    is `1 / output_dim` of Adagrad's for a table. On a row-sparse gradient
    (`Embedding(sparse=True)`) only the looked-up rows and their accumulators
    move; a row with no gradient does not move in the dense update either, so
    both give the same result.

    Args:
        learning_rate: A float, a schedule, or a callable (as Keras's).
        initial_accumulator_value: Float >= 0: the accumulators' start.
        epsilon: Float > 0, added to the accumulator's square root.
        stochastic_rounding: Boolean, default True: a float16 / bfloat16
            table stores its updates with stochastic rounding (False: round
            to nearest).
        **kwargs: The base optimizer's (`clipnorm`, `global_clipnorm`, ...).

    Example:

    >>> model.compile(optimizer=LazyRowwiseAdagrad(0.05), loss="mse")
    """

    # One accumulator per row: `TableConfig(optimizer=LazyRowwiseAdagrad(...))`
    # is trained row-wise (`lookup.table_optimizers`).
    ROW_WISE = True

    def __init__(
        self,
        learning_rate: Any = 0.001,
        initial_accumulator_value: float = 0.0,
        epsilon: float = 1e-8,
        stochastic_rounding: bool = True,
        name: str = "lazy_rowwise_adagrad",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            stochastic_rounding=stochastic_rounding,
            name=name,
            **kwargs,
        )
        if not initial_accumulator_value >= 0:
            raise ValueError(
                "`initial_accumulator_value` must be >= 0. Received: "
                f"initial_accumulator_value={initial_accumulator_value!r}."
            )
        if not epsilon > 0:
            raise ValueError(f"`epsilon` must be > 0. Received: epsilon={epsilon!r}.")
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.epsilon = float(epsilon)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        initial = keras.initializers.Constant(self.initial_accumulator_value)
        self._accumulators = [
            self.add_variable(
                shape=_rowwise_shape(variable),
                initializer=initial,
                dtype=_state_dtype(variable),
                name=f"{variable.path.replace('/', '_')}_rowwise_accumulator",
            )
            for variable in var_list
        ]

    def _row_slots(self):
        return (("_accumulators", self.initial_accumulator_value),)

    def update_step(self, gradient, variable, learning_rate):
        if backends.sparse.is_row_sparse(gradient) or rounding.is_half(variable.dtype):
            return super().update_step(gradient, variable, learning_rate)
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        accumulator = self._slot("_accumulators", variable)
        self.assign_add(accumulator, _row_mean_square(gradient))
        scale = _per_row(ops.sqrt(accumulator) + self.epsilon, gradient)
        self.assign_sub(variable, ops.divide(ops.multiply(lr, gradient), scale))

    def _update_rows(self, ids, gradient, variable, learning_rate):
        accumulator = self._slot("_accumulators", variable)
        rows = ops.add(
            backends.sparse.gather_rows(accumulator, ids), _row_mean_square(gradient)
        )
        backends.sparse.scatter(self, accumulator, ids, rows, "update")
        scale = _per_row(ops.sqrt(rows) + self.epsilon, gradient)
        self._subtract_rows(
            variable,
            ids,
            ops.divide(ops.multiply(learning_rate, gradient), scale),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            initial_accumulator_value=self.initial_accumulator_value,
            epsilon=self.epsilon,
        )
        return config


def _state_dtype(variable):
    """The dtype of the update and the slots: float32 for a float16 /
    bfloat16 variable, else the variable's."""
    return "float32" if rounding.is_half(variable.dtype) else variable.dtype


def _rowwise_shape(variable):
    """One accumulator per row of a table (rank >= 2), else per element."""
    shape = tuple(variable.shape)
    return shape[:1] if len(shape) >= 2 else shape


def _row_mean_square(gradient):
    if len(gradient.shape) < 2:
        return ops.square(gradient)
    return ops.mean(ops.square(gradient), axis=tuple(range(1, len(gradient.shape))))


def _per_row(values, like):
    """`values` (one per row) broadcast over the rest of `like`'s axes."""
    for _ in range(len(like.shape) - 1):
        values = ops.expand_dims(values, -1)
    return values


def accepts_row_sparse(optimizer):
    """Whether `optimizer` applies row-sparse gradients as they are (a lazy
    optimizer without gradient accumulation)."""
    return isinstance(optimizer, _LazyMixin) and not (
        optimizer.gradient_accumulation_steps
    )


__all__ = ["LazyAdagrad", "LazyAdam", "LazyRowwiseAdagrad", "LazySGD"]
