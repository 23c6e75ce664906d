"""The configs of an `EmbeddingCollection`: this package's `TableConfig` and
`FeatureConfig` (keras-rs's fields, no keras-rs needed), and the checks any
table config (keras-rs's too) passes."""

from __future__ import annotations

import dataclasses
from typing import Any

import keras

from keras_embedding_plus.layers import arguments as _args
from keras_embedding_plus.lookup import table_optimizers

# keras-rs's combiners (`keras_rs.layers.EmbedReduce`): the denominator of
# each, as `pooling.Combiner.weight_norm` (1: sum of weights, 2: their L2 norm).
COMBINERS = {"sum": 0, "mean": 1, "sqrtn": 2}
PLACEMENTS = ("auto", "default_device")
TABLE_DTYPES = ("float32", "float16", "bfloat16")


def _default_initializer():
    # keras-rs's `TableConfig` default.
    return keras.initializers.VarianceScaling(mode="fan_out")


@dataclasses.dataclass(eq=False)
class TableConfig:
    """One table of an `EmbeddingCollection`: keras-rs's `TableConfig`, with
    no keras-rs needed.

    Attributes:
        name: The table's name (`get_embedding_tables()` keys, saved entries).
        vocabulary_size: Its number of rows.
        embedding_dim: Its width.
        initializer: Initializer of its rows; default keras-rs's,
            `VarianceScaling(mode="fan_out")`.
        optimizer: `None` (default: the model's optimizer trains the
            table), or the table's own optimizer, applied in the lookup's
            backward pass to the looked-up rows only: a Keras `SGD`,
            `Adagrad`, `Adam` or `Ftrl` (or its name), or
            `LazyRowwiseAdagrad`, with a float learning rate. The options
            keras-rs refuses (`SGD` momentum, `amsgrad`, clipping, ...) are
            refused. On JAX, the model needs `SparseTrainer`.
        combiner: `"mean"` (default), `"sum"` or `"sqrtn"`: how a feature's ids
            in one sample are pooled.
        placement: `"auto"` or `"default_device"` (no SparseCore here).
        dtype: The stored values' dtype: `None` (default: the layer's
            variable dtype), `"float32"`, or half precision, `"float16"` /
            `"bfloat16"` (half the memory; looked up and pooled in float32;
            this package's optimizers keep its state in float32 and store
            updates with stochastic rounding). Not a keras-rs field.
    """

    name: str
    vocabulary_size: int
    embedding_dim: int
    initializer: Any = None
    optimizer: Any = None
    combiner: str = "mean"
    placement: str = "auto"
    dtype: Any = None

    def __post_init__(self):
        table_optimizer(self)  # Refused where it is set.
        if self.initializer is None:
            self.initializer = _default_initializer()

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "vocabulary_size": self.vocabulary_size,
            "embedding_dim": self.embedding_dim,
            "initializer": keras.initializers.serialize(
                keras.initializers.get(self.initializer)
            ),
            "combiner": self.combiner,
            "placement": self.placement,
            "dtype": self.dtype,
            "optimizer": None
            if self.optimizer is None
            else keras.optimizers.serialize(keras.optimizers.get(self.optimizer)),
        }


@dataclasses.dataclass(eq=False)
class FeatureConfig:
    """One feature of an `EmbeddingCollection`: keras-rs's `FeatureConfig`.

    Attributes:
        name: The feature's name.
        table: Its `TableConfig` (features may share one).
        input_shape: Optional, as keras-rs's: the input's shape.
        output_shape: Optional, as keras-rs's: the output's shape.
    """

    name: str
    table: Any
    input_shape: Any = None
    output_shape: Any = None


def is_feature(x):
    return hasattr(x, "table") and hasattr(x, "name") and not isinstance(x, dict)


def check_table(table):
    """The table's fields, checked: `(name, rows, dim, initializer, combiner,
    dtype)` (`dtype` None: the layer's)."""
    name = getattr(table, "name", None)
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(
            f"A table's `name` must be a non-empty string without '/'. "
            f"Received: name={name!r}."
        )
    rows = _args.check_dim("vocabulary_size", table.vocabulary_size, 1)
    dim = _args.check_dim("embedding_dim", table.embedding_dim, 1)
    combiner = table.combiner
    if combiner not in COMBINERS:
        raise ValueError(
            f"Table {name!r}: `combiner` must be one of {sorted(COMBINERS)}. "
            f"Received: combiner={combiner!r}."
        )
    placement = getattr(table, "placement", "auto")
    if placement not in PLACEMENTS:
        raise ValueError(
            f"Table {name!r}: `placement` must be one of {PLACEMENTS} (no "
            f"SparseCore on this device). Received: placement={placement!r}."
        )
    dtype = getattr(table, "dtype", None)
    if dtype is not None:
        dtype = keras.backend.standardize_dtype(dtype)
        if dtype not in TABLE_DTYPES:
            raise ValueError(
                f"Table {name!r}: `dtype` must be None or one of {TABLE_DTYPES}. "
                f"Received: dtype={table.dtype!r}."
            )
    initializer = keras.initializers.get(table.initializer or _default_initializer())
    return name, rows, dim, initializer, combiner, dtype


def table_optimizer(table):
    """The row math of this package's `TableConfig.optimizer`, checked (None
    where the model's optimizer trains the table)."""
    name = getattr(table, "name", None)
    spec = table_optimizers.from_optimizer(table.optimizer, name)
    dtype = getattr(table, "dtype", None)
    if spec is not None and dtype is not None:
        if keras.backend.standardize_dtype(dtype) != "float32":
            raise ValueError(
                f"Table {name!r}: a half-precision table (`dtype={dtype!r}`) "
                "with its own `optimizer` is not supported: train it with the "
                "model's optimizer (optimizer=None), whose lazy optimizers "
                "round stochastically."
            )
    return spec
