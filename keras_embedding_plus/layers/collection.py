"""`EmbeddingCollection`: many tables in one layer, configured as keras-rs's
`DistributedEmbedding` is (`TableConfig` / `FeatureConfig`), looked up table by
stack: the tables of one width are one variable, each call one gather and one
pooling per stack."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import keras
from keras import ops

from keras_embedding_plus import backends, rounding
from keras_embedding_plus.layers import arguments as _args
from keras_embedding_plus.layers import collection_state
from keras_embedding_plus.layers.collection_config import (
    COMBINERS,
    FeatureConfig,
    TableConfig,
    check_table,
    is_feature,
    table_optimizer,
)
from keras_embedding_plus.lookup import (
    gather,
    index_policy,
    invalid_ids,
    pipeline,
    stack_pooling,
)
from keras_embedding_plus.lookup.spec import LookupSpec


class _Frozen:
    """Holds the user's nested feature configs out of Keras's tracking (which
    would turn its lists and dicts into tracked containers)."""

    def __init__(self, value):
        self.value = value


class _StackedInitializer(keras.initializers.Initializer):
    """A stack's initial value: each table's initializer on its own shape,
    the tables one after the other."""

    def __init__(self, parts):
        self.parts = parts  # [(initializer, rows)]

    def __call__(self, shape, dtype=None):
        dim = shape[-1]
        values = [init((rows, dim), dtype=dtype) for init, rows in self.parts]
        return values[0] if len(values) == 1 else ops.concatenate(values, axis=0)


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where a table lies: its stack and first row there."""

    stack: int
    offset: int
    rows: int
    combiner: str


@keras.saving.register_keras_serializable(package="keras_embedding_plus")
class EmbeddingCollection(keras.layers.Layer):
    """Many tables in one layer, configured and called as keras-rs's
    `keras_rs.layers.DistributedEmbedding`.

    `feature_configs` is a nested structure (a dict, a list, or a single one)
    of `FeatureConfig`: keras-rs's `keras_rs.layers.FeatureConfig` /
    `TableConfig` unchanged, or this package's `FeatureConfig` /
    `TableConfig` (same fields; keras-rs need not be installed). Features may
    share a table. A model moves from keras-rs by changing the class name:

    ```python
    embedding = EmbeddingCollection(feature_configs)  # was DistributedEmbedding
    outputs = embedding(inputs)  # the structure of feature_configs
    ```

    Tables of the same `embedding_dim` are stacked into one variable, one
    after the other: a call makes one gather and one pooling per stack, not
    per feature (on PyTorch, dense features are gathered and summed by one
    `torch.nn.functional.embedding_bag`, which never forms their rows).
    `get_embedding_tables()` gives each table by name; saving writes one entry
    per table (its name), so a table can be read alone.

    Per feature, the ids are: dense `(batch,)` (one id a sample, not pooled) or
    `(batch, L)` (pooled over `L` by its table's combiner, every id counting);
    `(values, offsets)`; `{"values": v, "lengths": l}`; a `tf.RaggedTensor`;
    or a sparse tensor (its missing entries count nowhere). Optional `weights`,
    a structure like `inputs` with one weight per id (1-D features: `"sum"`
    tables only, as keras-rs ignores them for `"mean"` and `"sqrtn"`).

    keras-rs's `TableConfig.optimizer`, `max_ids_per_partition` and
    `max_unique_ids_per_partition` are for SparseCore: as keras-rs does off
    SparseCore, the model's optimizer trains every table (a warning says so
    where a keras-rs table names an optimizer).

    Args:
        feature_configs: The nested `FeatureConfig`s.
        sparse: Boolean. Row-sparse gradients of the stacks, as
            `Embedding(sparse=True)`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, `trainable`).
    """

    def __init__(
        self, feature_configs: Any, *, sparse: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.sparse = _args.check_bool("sparse", sparse)
        paths = keras.tree.flatten_with_path(feature_configs)
        if not paths:
            raise ValueError("`feature_configs` holds no `FeatureConfig`.")
        features, tables, foreign_optimizer = [], {}, False
        for path, feature in paths:
            if not is_feature(feature):
                raise ValueError(
                    "`feature_configs` must be a nested structure of "
                    "`FeatureConfig` (keras-rs's or keras_embedding_plus's). "
                    f"Received at {'.'.join(map(str, path)) or 'the top'}: "
                    f"{feature!r}."
                )
            name = check_table(feature.table)[0]
            if name in tables and tables[name] is not feature.table:
                raise ValueError(
                    f"Two `TableConfig`s are named {name!r}: table names must be "
                    "unique (features share a table through one `TableConfig`)."
                )
            tables[name] = feature.table
            if not isinstance(feature.table, TableConfig):
                foreign_optimizer |= (
                    getattr(feature.table, "optimizer", None) is not None
                )
            features.append((".".join(map(str, path)), feature.name, name))
        if foreign_optimizer:
            warnings.warn(
                "`TableConfig.optimizer` is not applied by `EmbeddingCollection`: "
                "the model's optimizer trains every table (as keras-rs's "
                "`DistributedEmbedding` does off SparseCore).",
                UserWarning,
                stacklevel=2,
            )
        self._warned_dense_training = False
        self._structure = _Frozen(feature_configs)
        self._features = tuple(features)  # (path, feature name, table name)
        self._tables = {name: check_table(table) for name, table in tables.items()}
        # This package's `TableConfig.optimizer` (keras-rs's is not applied:
        # see the warning above). The user's objects, for `get_config`.
        self._table_optimizers = {
            name: table.optimizer
            for name, table in tables.items()
            if isinstance(table, TableConfig) and table.optimizer is not None
        }
        optimizers = {
            name: table_optimizer(tables[name]) for name in self._table_optimizers
        }
        # Stacks: the tables of one width, dtype and optimizer, in the order
        # first met.
        by_kind: dict[tuple, list[str]] = {}
        for name, (_, _, dim, _, _, dtype) in self._tables.items():
            key = (dim, dtype, optimizers.get(name))
            by_kind.setdefault(key, []).append(name)
        self._stack_tables = tuple(tuple(names) for names in by_kind.values())
        self._stack_optimizers = tuple(key[2] for key in by_kind)
        self._slots = {}
        for index, names in enumerate(self._stack_tables):
            offset = 0
            for name in names:
                _, rows, _, _, combiner, _ = self._tables[name]
                self._slots[name] = _Slot(index, offset, rows, combiner)
                offset += rows
        # Per table, the invalid ids met in compiled calls (`fit` / `evaluate`
        # logs: "<layer>_<table>_invalid_ids"), as `Embedding`'s.
        self.invalid_ids_counts = {
            name: invalid_ids.InvalidIdsCount(
                f"{self.name}_{name}", self._tables[name][1]
            )
            for name in self._tables
        }

    # ---- variables ----------------------------------------------------------

    def build(self, input_shape: Any = None) -> None:
        if self.built:
            return
        self._stacks, self._lookups, self._table_states = [], [], []
        for index, names in enumerate(self._stack_tables):
            dim, dtype = self._tables[names[0]][2], self._tables[names[0]][5]
            rows = sum(self._tables[name][1] for name in names)
            parts = [(self._tables[name][3], self._tables[name][1]) for name in names]
            optimizer = self._stack_optimizers[index]
            variable = self.add_weight(
                shape=(rows, dim),
                initializer=_StackedInitializer(parts),
                dtype=dtype or self.variable_dtype,
                # A stack with its own optimizer is updated in its lookup's
                # backward pass, not by the model's optimizer.
                trainable=optimizer is None,
                name=f"stack_{index}",
            )
            self._stacks.append(variable)
            self._table_states.append(
                None
                if optimizer is None
                else collection_state.TableState.build(
                    self.add_weight, index, optimizer, (rows, dim)
                )
            )
            for name in names:
                self.invalid_ids_counts[name].mark_steps_by(variable)
            spec = LookupSpec(
                input_dim=rows, output_dim=dim, stored=(variable,), sparse=self.sparse
            )
            self._lookups.append(pipeline.compose(spec))
        self.built = True

    @property
    def optimized_stacks(self) -> list:
        """The stacks trained by their tables' own optimizers
        (`TableConfig.optimizer`), in their lookups' backward pass."""
        if not self.built:
            return []
        states = zip(self._stacks, self._table_states, strict=True)
        return [v for v, s in states if s is not None]

    def apply_table_gradient(self, stack: Any, ids: Any, gradient: Any) -> list:
        """One step of a stack's table optimizer: `ids` (unique; on JAX,
        out-of-range ids are padding and dropped) and their summed row
        gradients. The lookup's backward pass calls it (on JAX,
        `SparseTrainer`). Returns the writes (TensorFlow: its ops)."""
        index = next(i for i, v in enumerate(self._stacks) if v is stack)
        pieces = backends.sparse.row_chunks(ids, gradient)
        return self._table_states[index].apply(stack, pieces)

    @property
    def stacks(self) -> list:
        """The stacked variables, one per table width."""
        return list(self._stacks) if self.built else []

    @property
    def sparse_variables(self) -> list:
        """The variables trained with row-sparse gradients (`sparse=True`)."""
        if not self.built:
            return []
        optimized = {id(v) for v in self.optimized_stacks}
        return [
            v
            for lookup in self._lookups
            for v in lookup.sparse_variables
            if id(v) not in optimized
        ]

    def table_placement(self) -> dict:
        """`{table name: (stack index, first row, rows)}`."""
        return {
            name: (slot.stack, slot.offset, slot.rows)
            for name, slot in self._slots.items()
        }

    def get_embedding_tables(self) -> dict:
        """Each table's values by name, as keras-rs's `get_embedding_tables()`
        (tensors, not the variables)."""
        if not self.built:
            self.build()
        return {
            name: self._stacks[slot.stack].value[slot.offset : slot.offset + slot.rows]
            for name, slot in self._slots.items()
        }

    def save_own_variables(self, store: Any) -> None:
        """One entry per table, under its name; a table with its own
        optimizer also writes its rows of each slot (`"<table>:<slot>"`) and
        its step count (`"<table>:iterations"`)."""
        collection_state.save(
            store, self.get_embedding_tables(), self._slots, self._table_states
        )

    def load_own_variables(self, store: Any) -> None:
        """Reads what `save_own_variables` wrote: every entry is checked before
        any is written."""
        collection_state.load(
            store, self._stacks, self._stack_tables, self._slots, self._table_states
        )

    # ---- the call -------------------------------------------------------------

    def _by_path(self, structure, what):
        """`{path: leaf}` of a structure like `feature_configs` (its leaves may
        themselves be tuples or dicts: `(values, offsets)`)."""
        out = {}
        paths = keras.tree.pack_sequence_as(
            self._structure.value, [path for path, _, _ in self._features]
        )

        def take(path, value):
            out[path] = value

        try:
            keras.tree.map_structure_up_to(
                self._structure.value, take, paths, structure
            )
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`{what}` must have the structure of `feature_configs`: {error}"
            ) from None
        return out

    def call(self, inputs, weights=None, training=None):
        if (
            self.sparse
            and training is True
            and self.trainable
            and not self._warned_dense_training
            and any(backends.sparse.trains_densely(v) for v in self.sparse_variables)
        ):
            # JAX without `SparseTrainer`: as `Embedding`, warn once.
            self._warned_dense_training = True
            gather.warn_dense_training(self.name)
        inputs = self._by_path(inputs, "inputs")
        weights = None if weights is None else self._by_path(weights, "weights")
        outputs = {}
        for index in range(len(self._lookups)):
            members = [f for f in self._features if self._slots[f[2]].stack == index]
            pooled = self._stack_call(index, members, inputs, weights or {}, training)
            outputs.update(pooled)
        flat = [outputs[path] for path, _, _ in self._features]
        return keras.tree.pack_sequence_as(self._structure.value, flat)

    def _stack_call(self, index, members, inputs, weights, training):
        """One gather for the features on one stack, then one pooling for all
        its dense features of one `L` (a weighted sum) and one for all its
        flat bags (a segment sum)."""
        lookup = self._lookups[index]
        parts = []
        for path, _, table in members:
            slot = self._slots[table]
            part = stack_pooling.feature_bags(
                path, inputs[path], weights.get(path), slot.combiner
            )
            values, valid = index_policy.prepare_ids(
                part["values"], slot.rows, report=self.invalid_ids_counts[table]
            )
            # Which ids count; None: every one (known without a pass).
            keep, in_a_bag = valid, part["in_a_bag"]
            if in_a_bag is not None:
                keep = in_a_bag if keep is None else ops.logical_and(keep, in_a_bag)
            w = part["weights"]
            w = ops.ones(ops.shape(values), "float32") if w is None else w
            part.update(
                path=path,
                values=ops.cast(values, "int32") + slot.offset,
                keep=keep,
                weights=ops.cast(w, "float32"),
                norm=COMBINERS[slot.combiner],
            )
            parts.append(part)
        # Dense features grouped by L, then the flat ones: each group is a
        # contiguous run of the gathered rows.
        groups: dict = {}
        for part in parts:
            groups.setdefault(part["grid"], []).append(part)
        flat = groups.pop(None, None)
        if flat is not None:
            groups[None] = flat  # Last: it takes the rest of the rows.
        ordered = [part for group in groups.values() for part in group]
        values = stack_pooling.concatenate([p["values"] for p in ordered])
        dtype = backends.core.value_of(lookup.storage.table).dtype
        half = rounding.is_half(dtype)
        if half:  # Half-precision rows are pooled in float32.
            dtype = "float32"
        w = ops.cast(stack_pooling.concatenate([p["weights"] for p in ordered]), dtype)
        if any(p["keep"] is not None for p in ordered):
            keep = stack_pooling.concatenate(
                [
                    ops.ones(ops.shape(p["values"]), "bool")
                    if p["keep"] is None
                    else p["keep"]
                    for p in ordered
                ]
            )
            w = ops.where(keep, w, ops.zeros((), dtype))
        # Where the backend has a fused gather-and-sum (PyTorch's
        # `embedding_bag`), dense groups never form their rows.
        state = self._table_states[index]
        # A stack with its own optimizer: where the backend has a fused bag
        # kernel whose backward pass runs the update, that; else its rows.
        bag = self._optimized_bag(index) if state is not None else None
        if state is None:
            fused = stack_pooling.fusable(lookup) and not half
        else:
            fused = bag is not None
        # Invalid ids are 0 now, and ids that do not count have weight 0: the
        # rows need no zeroing pass of their own.
        if state is not None and not fused:
            rows = self._optimized_rows(index, values, training)
        else:
            rows = None if fused else self._rows(lookup, values, training, half)
        out, start = {}, 0
        whole = len(groups) == 1  # One group: no slice (a copy on TensorFlow).
        for key, group in groups.items():
            stop = start + sum(ops.shape(p["values"])[0] for p in group)
            ids, weights_ = (
                (values, w) if whole else (values[start:stop], w[start:stop])
            )
            if key is not None and fused:
                pooled = stack_pooling.pool_fused(
                    lookup, ids, weights_, group, key, self.sparse, bag
                )
            elif fused and all(p["offsets"] is not None for p in group):
                pooled = stack_pooling.pool_flat_fused(
                    lookup, ids, weights_, group, self.sparse, bag
                )
            else:
                if rows is None and state is not None:
                    piece = self._optimized_rows(index, ids, training)
                elif rows is None:
                    piece = self._rows(lookup, ids, training, half)
                else:
                    piece = rows if whole else rows[start:stop]
                if key is None:
                    pooled = stack_pooling.pool_flat(piece, weights_, group)
                else:
                    pooled = stack_pooling.pool_dense(piece, weights_, group, key)
            start = stop
            for part, value in zip(group, pooled, strict=True):
                out[part["path"]] = ops.cast(value, self.compute_dtype)
        return out

    def _optimized_bag(self, index):
        """`bag(ids, offsets, w)`: the weighted sums over bags of a stack with
        its own optimizer, by the backend's fused kernel whose backward pass
        runs the update (`backends.sparse.fused_bag`); None where the backend
        has none, or where the layer is frozen."""
        if backends.sparse.fused_bag is None or not self.trainable:
            return None
        stack, state = self._stacks[index], self._table_states[index]

        def update(pieces):
            return state.apply(stack, pieces)

        def bag(ids, offsets, w):
            return backends.sparse.fused_bag(
                stack, ids, offsets, w, state.anchor, update
            )

        return bag

    def _optimized_rows(self, index, ids, training):
        """The rows of a stack with its own optimizer: the backward pass
        updates the stack (`apply_table_gradient`)."""
        stack = self._stacks[index]
        if not self.trainable:
            return backends.sparse.gather_rows(stack, ids)
        if training is True and backends.sparse.trains_densely(stack):
            raise ValueError(
                f"EmbeddingCollection {self.name!r}: tables with their own "
                "`optimizer` train on JAX only in a model with `SparseTrainer` "
                "(`class Model(SparseTrainer, keras.Model)`): JAX's gradients "
                "cannot update a variable themselves."
            )

        state = self._table_states[index]

        def update(pieces):
            return state.apply(stack, pieces)

        return backends.sparse.fused_take(stack, ids, state.anchor, update)

    @staticmethod
    def _rows(lookup, ids, training, half):
        rows = lookup.rows(ids, None, training)[0]
        return ops.cast(rows, "float32") if half else rows

    def compute_output_spec(self, inputs, weights=None, training=None):
        inputs = self._by_path(inputs, "inputs")
        specs = []
        for path, _, table in self._features:
            dim = self._tables[table][2]
            ids = inputs[path]
            if isinstance(ids, (tuple, list)):
                batch = ids[1].shape[0]
            elif isinstance(ids, dict):
                batch = ids["lengths"].shape[0]
            else:
                batch = ids.shape[0]
            specs.append(keras.KerasTensor((batch, dim), dtype=self.compute_dtype))
        return keras.tree.pack_sequence_as(self._structure.value, specs)

    def get_config(self) -> dict:
        config = super().get_config()
        tables = {}
        for _, _, name in self._features:
            _, rows, dim, initializer, combiner, dtype = self._tables[name]
            tables[name] = TableConfig(
                name,
                rows,
                dim,
                initializer=initializer,
                combiner=combiner,
                dtype=dtype,
                optimizer=self._table_optimizers.get(name),
            ).get_config()

        def feature(f):
            return {
                "name": f.name,
                "table": f.table.name,
                "input_shape": _listed(getattr(f, "input_shape", None)),
                "output_shape": _listed(getattr(f, "output_shape", None)),
            }

        config.update(
            tables=tables,
            feature_configs=keras.tree.map_structure(feature, self._structure.value),
            sparse=self.sparse,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> EmbeddingCollection:
        config = dict(config)
        tables = {
            name: TableConfig(
                name=t["name"],
                vocabulary_size=t["vocabulary_size"],
                embedding_dim=t["embedding_dim"],
                initializer=keras.initializers.deserialize(t["initializer"]),
                combiner=t["combiner"],
                placement=t["placement"],
                dtype=t.get("dtype"),
                optimizer=_optimizer(t.get("optimizer")),
            )
            for name, t in config.pop("tables").items()
        }

        def is_feature(x):
            return isinstance(x, dict) and set(x) == {
                "name",
                "table",
                "input_shape",
                "output_shape",
            }

        def rebuild(x):
            if is_feature(x):
                return FeatureConfig(
                    x["name"], tables[x["table"]], x["input_shape"], x["output_shape"]
                )
            if isinstance(x, dict):
                return {k: rebuild(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return type(x)(rebuild(v) for v in x)
            return x

        return cls(rebuild(config.pop("feature_configs")), **config)


def _listed(shape):
    return None if shape is None else [None if d is None else int(d) for d in shape]


def _optimizer(config):
    if config is None or isinstance(config, str):
        return config
    return keras.optimizers.deserialize(config)
