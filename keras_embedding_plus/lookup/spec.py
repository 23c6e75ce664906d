"""`LookupSpec`: what a layer tells the pipeline about itself.

A layer describes its options and its variables in one `LookupSpec` and hands it
to `pipeline.compose`; the pipeline reads nothing else of the layer. A new option
is a new field here and a new stage in `pipeline`, not a branch in `call`.
"""

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class LookupSpec:
    """The options and variables of one layer's lookup.

    Attributes:
        input_dim: Integer, the number of rows.
        output_dim: Integer, the width of a row.
        stored: The variables holding the table, in Keras's save order: the
            float table alone, or (quantized) the int8 table, its scales and,
            with int4 blocks, its zero points (and `g_idx`).
        quantization_mode: `None`, `"int8"` or `"int4"`.
        block: Columns per int4 group (`None`: one scale per row).
        placement: The backend placement of the table (`device=`), or `None`.
        sparse: Whether what trains by id gets a row-sparse gradient.
        lora: `(A, B, scale)` when LoRA is enabled, else `None`.
        max_norm: Optional bound of a row's `norm_type`-norm.
        norm_type: The p of `max_norm`'s norm.
        dropout: Rate of whole-row dropout in training (0: none).
        seed_generator: The `keras.random.SeedGenerator` of the dropout.
        frozen_row: The row that gets no gradient (`padding_idx`), or `None`.
        report: The layer's `invalid_ids.InvalidIdsCount` (invalid ids met in
            compiled calls), or `None`.
    """

    input_dim: int
    output_dim: int
    stored: tuple
    quantization_mode: str | None = None
    block: int | None = None
    placement: Any = None
    sparse: bool = False
    lora: tuple | None = None
    max_norm: float | None = None
    norm_type: float = 2.0
    dropout: float = 0.0
    seed_generator: Any = None
    frozen_row: int | None = None
    report: Any = None

    @property
    def table(self):
        """The variable holding the table's values (int8 when quantized)."""
        return self.stored[0]
