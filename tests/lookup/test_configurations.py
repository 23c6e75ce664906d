"""Every configuration of `keras_embedding_plus.testing.pairs` (each option alone
and each pair) through the shared layer test
(`keras_embedding_plus.testing.run_layer_test`), against the NumPy reference of
`pairs.reference`: weight counts, eager and compiled outputs, masks, config and
`.keras` round trips."""

import keras
import pytest

from keras_embedding_plus.testing import pairs, run_layer_test

BACKEND = keras.backend.backend()


_STORED = {"int8": 2, "int4": 4, "int4_row": 2}  # table + scale (+ zero, g_idx)


def _weight_counts(options):
    """(trainable, non-trainable): Keras's own layer holds the same variables for
    LoRA and quantization (`test_weight_counts_match_keras`)."""
    quantization = pairs.quantization_of(options)
    trainable = 2 if "lora" in options else (0 if quantization else 1)
    non_trainable = _STORED[quantization] if quantization else int("lora" in options)
    return trainable, non_trainable


def _configurations():
    out = []
    for options in pairs.combinations():
        if pairs.refusal(options, BACKEND):
            continue  # `test_pairs` checks the refusal.
        out.append(pytest.param(options, id=pairs.combination_id(options)))
    return out


# torch.compile: resuming after a graph break, Dynamo reads `.grad` of non-leaf
# tensors and warns about its own access.
@pytest.mark.filterwarnings(
    "ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning"
)
@pytest.mark.parametrize("options", _configurations())
def test_configuration(options, tmp_path):
    layer = pairs.make_layer(options)
    expected = pairs.reference(pairs.reference_params(layer, options), options)
    trainable, non_trainable = _weight_counts(options)
    saved_reference = None
    if "lora" in options and pairs.quantization_of(options):
        # Saving merges the adapter into the table and quantizes it again (as
        # Keras does); the loaded layer has no adapter.
        without_lora = tuple(o for o in options if o != "lora")

        def saved_reference(loaded):
            params = pairs.reference_params(loaded, without_lora)
            return pairs.reference(params, without_lora).astype("float32")

    run_layer_test(
        layer,
        pairs.IDS,
        expected.astype("float32"),
        num_trainable_weights=trainable,
        num_non_trainable_weights=non_trainable,
        mask_zero="mask_zero" in options,
        atol=pairs.tolerance(options)[1],
        tmp_path=tmp_path,
        saved_reference=saved_reference,
        # Pairs are compiled by `test_pairs` (forward and gradients); compiling
        # each again here would double the torch.compile time of the suite.
        compile=len(options) == 1,
    )


def test_weight_counts_match_keras():
    # The counts above, for what Keras's own layer also has.
    for mode in (None, "int8", "int4"):
        for lora in (False, True):
            ours = pairs.make_layer(
                tuple(o for o in (mode, "lora" if lora else None) if o)
            )
            theirs = keras.layers.Embedding(pairs.INPUT_DIM, pairs.OUTPUT_DIM)
            theirs.build()
            if mode:
                theirs.quantize(mode)
            if lora:
                theirs.enable_lora(pairs.RANK)
            assert len(ours.trainable_weights) == len(theirs.trainable_weights)
            assert len(ours.non_trainable_weights) == len(theirs.non_trainable_weights)
            options = tuple(o for o in (mode, "lora" if lora else None) if o)
            assert _weight_counts(options) == (
                len(theirs.trainable_weights),
                len(theirs.non_trainable_weights),
            )
