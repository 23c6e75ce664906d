"""Per-table optimizers of an `EmbeddingCollection` (`TableConfig.optimizer`):
SGD, Adagrad, row-wise Adagrad, Adam and FTRL, as the row math of one update.

As FBGEMM's table-batched embeddings and keras-rs's SparseCore tables do, a
table with its own optimizer is updated where its gradient is: the collection's
lookup hands the rows' summed gradients to `TableOptimizer.update`, which returns
the new rows and the new rows of each slot. Nothing here reads or writes a
variable: the layer gathers and scatters.

Which Keras optimizers are taken, and which of their options, follows keras-rs's
`keras_to_jte_optimizer`; an option the row math cannot honour is refused (a
`ValueError` naming it), never ignored. The math is Keras's `update_step` of
each optimizer, applied to the looked-up rows only (lazy: a row absent from a
batch, and its slots, do not move).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
from keras import ops

KINDS = ("sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl")


@dataclasses.dataclass(frozen=True)
class TableOptimizer:
    """One table's optimizer, as row math.

    Attributes:
        kind: One of `KINDS`.
        learning_rate: A float.
        params: `(name, value)` pairs of the kind's hyperparameters.
    """

    kind: str
    learning_rate: float
    params: tuple = ()

    def __getattr__(self, name):
        for key, value in self.params:
            if key == name:
                return value
        raise AttributeError(name)

    def slots(self) -> tuple:
        """`(name, per_row, initial value)` of each slot: `per_row` True for
        one value per row (row-wise Adagrad), else one per element."""
        if self.kind == "adagrad":
            return (("accumulator", False, self.initial_accumulator_value),)
        if self.kind == "rowwise_adagrad":
            return (("accumulator", True, self.initial_accumulator_value),)
        if self.kind == "adam":
            return (("momentum", False, 0.0), ("velocity", False, 0.0))
        if self.kind == "ftrl":
            return (
                ("accumulator", False, self.initial_accumulator_value),
                ("linear", False, 0.0),
            )
        return ()

    def update(self, step, rows, slots, gradient):
        """The rows and slot rows after one step (`step`: 1 for the first).
        All float32."""
        lr = self.learning_rate
        if self.kind == "sgd":
            return rows - lr * gradient, []
        if self.kind == "adagrad":
            accumulator = slots[0] + ops.square(gradient)
            delta = lr * gradient / ops.sqrt(accumulator + self.epsilon)
            return rows - delta, [accumulator]
        if self.kind == "rowwise_adagrad":
            accumulator = slots[0] + ops.mean(ops.square(gradient), axis=-1)
            scale = ops.expand_dims(ops.sqrt(accumulator) + self.epsilon, -1)
            return rows - lr * gradient / scale, [accumulator]
        if self.kind == "adam":
            step = ops.cast(step, "float32")
            m = slots[0] + (gradient - slots[0]) * (1 - self.beta_1)
            v = slots[1] + (ops.square(gradient) - slots[1]) * (1 - self.beta_2)
            alpha = (
                lr
                * ops.sqrt(1 - ops.power(self.beta_2, step))
                / (1 - ops.power(self.beta_1, step))
            )
            return rows - alpha * m / (ops.sqrt(v) + self.epsilon), [m, v]
        # FTRL, as Keras's `Ftrl.update_step`.
        power = -self.learning_rate_power
        l2 = self.l2_regularization_strength + self.beta / (2.0 * lr)
        shrunk = gradient + 2 * self.l2_shrinkage_regularization_strength * rows
        accumulator = slots[0] + ops.square(gradient)
        linear = slots[1] + (
            shrunk
            - (ops.power(accumulator, power) - ops.power(slots[0], power)) / lr * rows
        )
        quadratic = ops.power(accumulator, power) / lr + 2 * l2
        l1 = self.l1_regularization_strength
        rows = (ops.clip(linear, -l1, l1) - linear) / quadratic
        return rows, [accumulator, linear]


def from_optimizer(optimizer: Any, table: str) -> TableOptimizer | None:
    """The row math of a table's `optimizer` (`None`: the model's optimizer
    trains the table), checked: a Keras `SGD`, `Adagrad`, `Adam` or `Ftrl`
    (or a name Keras knows them by), this package's lazy ones, or
    `LazyRowwiseAdagrad`, with a float learning rate."""
    if optimizer is None:
        return None
    where = f"Table {table!r}: `optimizer`"
    received = optimizer
    if isinstance(optimizer, str):
        try:
            optimizer = keras.optimizers.get(optimizer)
        except ValueError:
            optimizer = None
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            f"{where} must be None, a Keras optimizer, or the name of one "
            f"('sgd', 'adagrad', 'adam', 'ftrl'). Received: optimizer={received!r}."
        )
    config = optimizer.get_config()
    for option in ("clipnorm", "global_clipnorm", "clipvalue", "weight_decay"):
        if config.get(option) is not None:
            raise ValueError(
                f"{where}: `{option}` is not supported by a table's optimizer "
                f"(it is applied row by row). Received: {option}="
                f"{config[option]!r}."
            )
    for option in ("use_ema", "gradient_accumulation_steps", "loss_scale_factor"):
        if config.get(option):
            raise ValueError(
                f"{where}: `{option}` is not supported by a table's optimizer. "
                f"Received: {option}={config[option]!r}."
            )
    learning_rate = config["learning_rate"]
    if not isinstance(learning_rate, int | float):
        raise ValueError(
            f"{where}: the learning rate must be a float (a schedule is not "
            f"supported for a table's optimizer). Received: "
            f"learning_rate={learning_rate!r}."
        )

    def made(kind, *names):
        return TableOptimizer(
            kind, float(learning_rate), tuple((n, float(config[n])) for n in names)
        )

    # `optimizers.LazyRowwiseAdagrad` (which imports from here, not the
    # other way) says so.
    if getattr(type(optimizer), "ROW_WISE", False):
        return made("rowwise_adagrad", "initial_accumulator_value", "epsilon")
    if isinstance(optimizer, keras.optimizers.SGD):
        if config["momentum"] or config["nesterov"]:
            raise ValueError(
                f"{where}: `SGD` with `momentum` or `nesterov` is not supported "
                f"for a table (as keras-rs). Received: momentum="
                f"{config['momentum']!r}, nesterov={config['nesterov']!r}."
            )
        return made("sgd")
    if isinstance(optimizer, keras.optimizers.Adagrad):
        return made("adagrad", "initial_accumulator_value", "epsilon")
    if isinstance(optimizer, keras.optimizers.Adam):
        if config["amsgrad"]:
            raise ValueError(
                f"{where}: `Adam(amsgrad=True)` is not supported for a table "
                "(as keras-rs). Received: amsgrad=True."
            )
        return made("adam", "beta_1", "beta_2", "epsilon")
    if isinstance(optimizer, keras.optimizers.Ftrl):
        return made(
            "ftrl",
            "learning_rate_power",
            "initial_accumulator_value",
            "l1_regularization_strength",
            "l2_regularization_strength",
            "l2_shrinkage_regularization_strength",
            "beta",
        )
    raise ValueError(
        f"{where} must be SGD, Adagrad, LazyRowwiseAdagrad, Adam or Ftrl. "
        f"Received: {type(optimizer).__name__}."
    )
