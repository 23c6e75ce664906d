"""The variables of an `Embedding`: made with the layer's `add_weight` where its
table lives, and returned; the layer assigns them to itself.

Also what the layer saves: its stored variables, LoRA merged in, a big table
by blocks.
"""

from keras_embedding_plus import backends, compat
from keras_embedding_plus.lookup import lora, padding, placement, quantization
from keras_embedding_plus.saving import blocks


def add_table(
    add_weight, table_placement, shape, initializer, regularizer, constraint, pad
):
    """`(table, placement)`: the trainable float table, on `table_placement`.

    `pad`: the `padding_idx` row, built as zeros. A big table is built as zeros,
    then drawn by blocks (`saving.blocks`).
    """
    by_blocks = placement.builds_by_default(table_placement) and blocks.blockwise(
        initializer, shape
    )
    table, table_placement = placement.create(
        table_placement,
        shape,
        lambda: add_weight(
            shape=shape,
            initializer="zeros" if by_blocks else padding.initializer(initializer, pad),
            name="embeddings",
            regularizer=compat.variable_regularizer(regularizer),
            constraint=compat.variable_constraint(constraint),
            trainable=True,
        ),
    )
    if by_blocks:
        blocks.initialize(table, initializer, pad)
    return table, table_placement


def add_lora_factors(
    add_weight, table_placement, shape, rank, initializers, regularizer, pad
):
    """`(A, B, placement)`: LoRA's trainable float32 factors for a `shape` table.

    A is read by id, so it lives where the table lives (its `pad` row zero); B
    joins the rows. `initializers`: `(a_initializer, b_initializer)`.
    """
    input_dim, output_dim = shape
    a_initializer, b_initializer = initializers
    regularizer = compat.variable_regularizer(regularizer)
    a, table_placement = placement.create(
        table_placement,
        shape,
        lambda: lora.add_factor(
            add_weight,
            "lora_embeddings_a",
            (input_dim, rank),
            padding.initializer(a_initializer, pad),
            regularizer=regularizer,
        ),
    )
    b = lora.add_factor(
        add_weight,
        "lora_embeddings_b",
        (rank, output_dim),
        b_initializer,
        regularizer=regularizer,
    )
    return a, b, table_placement


def add_quantized(add_weight, table_placement, shape, mode, block):
    """`(variables, placement)`: the frozen quantized variables of a `shape`
    table, in Keras's order (`quantization.add_weights`)."""
    return placement.create(
        table_placement,
        shape,
        lambda: quantization.add_weights(add_weight, *shape, mode, block),
    )


def saved_values(stored, shape, *, by_blocks, mode, block, lora_merge):
    """What `save_own_variables` writes, in order: the `stored` variables, with
    LoRA merged in when `lora_merge` is `(float_table, merged_rows)` (callables:
    the whole adapted table; rows `start:stop` of it), a big table by blocks
    when `by_blocks` (where the model computes)."""
    if lora_merge is not None:
        float_table, merged_rows = lora_merge
        if by_blocks and blocks.is_big(shape) and not mode:
            stored = [blocks.saved(stored[0], merged_rows), *stored[1:]]
        else:
            stored = quantization.merged(float_table(), stored, mode, block)
    # Rows sharded over several processes are gathered first (JAX).
    stored = [backends.blocks.gathered(value) for value in stored]
    return [blocks.saved(value) if by_blocks else value for value in stored]
