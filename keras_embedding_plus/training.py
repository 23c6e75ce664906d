"""Row-sparse embedding updates inside Keras's `fit` on JAX.

Keras's JAX trainer differentiates the loss with respect to every trainable
variable, and a JAX gradient is a dense array: for an `(input_dim, output_dim)`
table, a step builds and applies an `(input_dim, output_dim)` gradient although
it looked up only `batch x length` rows. No optimizer can avoid that cost, since it
receives the dense array; the trainer has to change. `SparseTrainer` is that
change, as a model mixin: it differentiates with respect to the rows each
`Embedding(sparse=True)` looked up (not the table), and hands the lazy optimizers
of `keras_embedding_plus.optimizers` the row-sparse gradient.

On TensorFlow and PyTorch the layer alone keeps the gradient sparse and the mixin
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from keras_embedding_plus import compat, optimizers
from keras_embedding_plus.lookup import invalid_ids


class SparseTrainer:
    """Model mixin: row-sparse embedding gradients in `fit` on JAX.

    Put it before the Keras model class; everything else about the model stays
    the same (`compile`, `fit`, `evaluate`, saving). On JAX, the tables of
    `keras_embedding_plus.Embedding(sparse=True)` layers (and the stacks of
    an `EmbeddingCollection(sparse=True)`) are differentiated
    through their looked-up rows; with `LazySGD`, `LazyAdam` or `LazyAdagrad` a
    training step then costs the same at any vocabulary size. With any other
    optimizer, or with `gradient_accumulation_steps`, the row gradient is
    scattered into a dense one: the same result as Keras, at Keras's cost.

    A table stays dense (differentiated as Keras does) when its layer has an
    `embeddings_regularizer` (the penalty touches every row) or is frozen. The
    table must be read only through the layer's lookup: on JAX, a sparse table
    that is also read elsewhere (a tied output projection) gets no gradient from
    that other use.

    Example:

    ```python
    class Model(SparseTrainer, keras.Model):
        pass

    inputs = keras.Input((32,), dtype="int32")
    x = Embedding(1_000_000, 64, sparse=True)(inputs)
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(x))
    model = Model(inputs, outputs)
    model.compile(optimizer=LazyAdam(), loss="mse")
    ```

    The same works with `class Sequential(SparseTrainer, keras.Sequential)`.
    """

    def train_step(self, *args):
        if keras.backend.backend() != "jax":
            return super().train_step(*args)
        return sparse_train_step(self, *args, fallback=super().train_step)


def sparse_tables(model):
    """The variables of `model` that train with row-sparse gradients.

    Those a `sparse=True` layer's lookup reads by id (its table, or LoRA's `A`
    when the table is frozen under LoRA), unless a regularizer reads them whole.
    """
    from keras_embedding_plus.layers.collection import EmbeddingCollection
    from keras_embedding_plus.layers.dynamic import DynamicEmbedding
    from keras_embedding_plus.layers.embedding import Embedding

    tables = []
    for layer in compat.flatten_layers(model):
        if (
            isinstance(layer, Embedding | DynamicEmbedding | EmbeddingCollection)
            and layer.built
            and layer.trainable
            and getattr(layer, "embeddings_regularizer", None) is None
        ):
            tables.extend(layer.sparse_variables)
    return tables


def table_optimized_stacks(model):
    """`(layer, stack)` of the `EmbeddingCollection` stacks trained by their
    tables' own optimizers (`TableConfig.optimizer`)."""
    from keras_embedding_plus.layers.collection import EmbeddingCollection

    return [
        (layer, stack)
        for layer in compat.flatten_layers(model)
        if isinstance(layer, EmbeddingCollection) and layer.trainable
        for stack in layer.optimized_stacks
    ]


def sparse_train_step(
    model: keras.Model,
    state: tuple,
    data: tuple,
    fallback: Callable | None = None,
) -> tuple[dict, tuple]:
    """One JAX training step of `model` with row-sparse table gradients.

    The stateless `train_step(state, data)` of Keras's JAX trainer, except that
    the sparse tables (`sparse_tables(model)`) are differentiated through their
    looked-up rows. Call it from a custom `train_step` to keep that behaviour.

    Args:
        model: A compiled Keras model.
        state: The trainer's state tuple `(trainable_variables,
            non_trainable_variables, optimizer_variables, metrics_variables)`.
        data: The batch, `(x, y, sample_weight)` or any form `fit` accepts.
        fallback: The train step to run when the model has no sparse table
            (defaults to Keras's).

    Returns:
        `(logs, state)`, as Keras's JAX `train_step`.
    """
    import jax
    import jax.numpy as jnp

    from keras_embedding_plus import backends

    IndexedRows, RowCapture = backends.sparse.IndexedRows, backends.sparse.RowCapture

    tables = sparse_tables(model)
    fused = table_optimized_stacks(model)
    if not tables and not fused:
        fallback = fallback or (lambda s, d: keras.Model.train_step(model, s, d))
        return fallback(state, data)
    trainable, non_trainable, optimizer_values, metrics_values = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    table_index = [position[id(t)] for t in tables]
    dense_index = [i for i in range(len(trainable)) if i not in table_index]

    def forward(dense_values, capture, data=(x, y, sample_weight)):
        values = list(trainable)
        for i, value in zip(dense_index, dense_values, strict=True):
            values[i] = value
        with capture:
            return model.compute_loss_and_updates(
                values,
                non_trainable,
                metrics_values,
                *data,
                training=True,
                optimizer_variables=optimizer_values,
            )

    dense_values = [trainable[i] for i in dense_index]
    # The shapes of the looked-up rows, without computing anything.
    captured = tables + [stack for _, stack in fused]
    record = RowCapture(captured)
    # The batch is an argument, so that it is traced even when the step runs
    # eagerly (`run_eagerly=True`).
    jax.eval_shape(
        lambda v, data: forward(v, record, data)[0],
        dense_values,
        (x, y, sample_weight),
    )
    # That forward runs no metric update: its invalid-id counts must not wait
    # for the real forward's (`lookup.invalid_ids`).
    for metric in model.metrics:
        if isinstance(metric, invalid_ids.InvalidIdsCount):
            metric.discard_pending()

    def loss_fn(dense_values, deltas):
        capture = RowCapture(captured, deltas)
        loss, aux = forward(dense_values, capture)
        return loss, (aux, capture.ids)

    deltas = [jnp.zeros(shape, dtype) for shape, dtype in record.shapes]
    (_, (aux, ids)), (dense_grads, row_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True
    )(dense_values, deltas)
    unscaled_loss, y_pred, non_trainable, metrics_values = aux

    grads = [None] * len(trainable)
    for i, gradient in zip(dense_index, dense_grads, strict=True):
        grads[i] = gradient
    keep_sparse = optimizers.accepts_row_sparse(model.optimizer)
    for table, i in zip(tables, table_index, strict=True):
        calls = [k for k, t in enumerate(record.tables) if t is table]
        if not calls:
            grads[i] = jnp.zeros(table.shape, trainable[i].dtype)
            continue
        width = table.shape[-1]
        gradient = IndexedRows(
            jnp.concatenate([ids[k].reshape(-1) for k in calls]),
            jnp.concatenate([row_grads[k].reshape(-1, width) for k in calls]),
            table.shape,
        )
        grads[i] = gradient if keep_sparse else gradient.to_dense()

    if fused:
        # The tables' own optimizers: their stacks and state are the layer's
        # non-trainable variables, updated at the captured rows.
        held = model.non_trainable_variables
        mapping = list(zip(held, non_trainable, strict=True))
        with keras.StatelessScope(state_mapping=mapping) as s:
            for layer, stack in fused:
                calls = [k for k, t in enumerate(record.tables) if t is stack]
                if not calls:
                    continue
                gradient = IndexedRows(
                    jnp.concatenate([ids[k].reshape(-1) for k in calls]),
                    jnp.concatenate(
                        [row_grads[k].reshape(-1, stack.shape[-1]) for k in calls]
                    ),
                    stack.shape,
                )
                layer.apply_table_gradient(
                    stack, *backends.sparse.unique_rows(gradient)
                )
        non_trainable = [
            value if s.get_current_value(v) is None else s.get_current_value(v)
            for v, value in zip(held, non_trainable, strict=True)
        ]

    trainable, optimizer_values = model.optimizer.stateless_apply(
        optimizer_values, grads, trainable
    )
    logs, metrics_values = compat.update_metrics(
        model, metrics_values, unscaled_loss, x, y, y_pred, sample_weight
    )
    return logs, (trainable, non_trainable, optimizer_values, metrics_values)


__all__ = ["SparseTrainer", "sparse_train_step", "sparse_tables"]
