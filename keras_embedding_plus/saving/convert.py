"""Moving models between Keras's embedding layers and ours: `from_keras`, `to_keras`.

A layer is converted through its config (`get_config()` -> `from_config`), built,
and given the old layer's variables by name (`embeddings`, `embeddings_scale`,
`embeddings_zero`, `g_idx`, `lora_embeddings_a`, `lora_embeddings_b`,
`reverse_embeddings`...). Sequential and Functional models (nested ones too) are
copied with `keras.models.clone_model`, every other layer cloned from its config
with its weights; subclassed models are copied through their config when they
have one, and otherwise changed in place only when asked (`inplace=True`). A
compiled model's optimizer state (its step count, its slots: Adam's moments,
SGD's momentum...) is carried onto the converted model's optimizer.
"""

from __future__ import annotations

import os

import keras
from keras import ops

from keras_embedding_plus import compat
from keras_embedding_plus.saving import optimizer_state

# Our options that `keras.layers.Embedding` lacks, and the value that means "off".
# `input_length` is not here: Keras 3 ignores it, so it is dropped silently.
_OURS_ONLY = {
    "dropout": 0.0,
    "max_norm": None,
    "sparse": False,
    "device": None,
    "padding_idx": None,
    "invalid_ids": "zero",
}
_DROPPED = ("input_length", "norm_type")


def _pairs():
    """`(keras_class, our_class)` for every layer this module converts."""
    import keras_embedding_plus

    pairs = [(keras.layers.Embedding, keras_embedding_plus.Embedding)]
    ours = getattr(keras_embedding_plus, "ReversibleEmbedding", None)
    theirs = getattr(keras.layers, "ReversibleEmbedding", None)
    if ours is not None and theirs is not None:
        pairs.append((theirs, ours))
    return pairs


def from_keras(
    model: keras.Model | str | os.PathLike,
    inplace: bool = False,
    custom_objects: dict | None = None,
) -> keras.Model:
    """Replaces every Keras embedding layer of a model by ours, weights included.

    Every `keras.layers.Embedding` becomes a `keras_embedding_plus.Embedding`
    (and, once this package has one, every `keras.layers.ReversibleEmbedding` a
    `keras_embedding_plus.ReversibleEmbedding`) with the same config, the same
    variables (quantized tables and LoRA factors included) and so the same
    outputs. Only these exact classes are replaced: subclasses of them are kept
    as they are. `model` itself is not modified (but see `inplace`).

    Sequential and Functional models, nested ones included, are copied with
    `keras.models.clone_model`: every other layer is rebuilt from its config and
    given its weights. A compiled model comes back compiled from its compile
    config, with its optimizer's state: the new optimizer is built on the new
    model's trainable variables and given the old one's `iterations`,
    learning rate and slot variables (Adam's moments, SGD's momentum...),
    matched by the variable each belongs to, so that training resumes exactly
    where it stopped. A subclassed model (also one nested in
    a Functional model) is copied through `get_config()` / `from_config` when
    its class supports that, then the embedding layers held in its attributes
    (directly, or in a list, tuple or dict attribute, of the model or of its
    sublayers) are swapped in that copy. Embedding layers a subclassed model
    creates or reaches otherwise (e.g. inside `call`) are not converted.

    Args:
        model: A `keras.Model`, a single `keras.layers.Embedding`, or the path
            of a `.keras` or `.h5` file, loaded as
            `keras_embedding_plus.load_model` loads it, with its optimizer's
            state when the file holds one (from a legacy `.h5`, Keras restores
            `iterations` and the learning rate but no slots: a warning says
            so).
        inplace: Boolean. Subclassed models only: swap the embedding layers of
            `model` itself and return it, for models that cannot be copied
            (no `get_config()`). A compiled model is recompiled from its
            compile config. Defaults to `False`.
        custom_objects: Optional dict, passed to `keras.models.load_model` when
            `model` is a path.

    Returns:
        The converted model (or layer).

    Raises:
        ValueError: if a subclassed model cannot be copied and `inplace` is
            `False`, or if `inplace=True` is passed with a Sequential or
            Functional model; naming the file and what is wrong with it (no
            such file, a directory, not a zip archive, truncated or corrupted)
            when `model` is a path that does not load.

    Example:

    >>> keras_model = keras.Sequential([keras.layers.Embedding(10, 4)])
    >>> model = from_keras(keras_model)
    >>> type(model.layers[0]).__name__
    'Embedding'
    """
    if isinstance(model, (str, os.PathLike)):
        from keras_embedding_plus.saving import loading

        model = loading.load_model(model, custom_objects=custom_objects)
    return _convert(model, _keras_to_ours, inplace)


def to_keras(model: keras.Model, inplace: bool = False) -> keras.Model:
    """Replaces every embedding layer of ours in a model by Keras's, weights included.

    The inverse of `from_keras`: every `keras_embedding_plus.Embedding` becomes a
    `keras.layers.Embedding` (and every `keras_embedding_plus.ReversibleEmbedding`
    a `keras.layers.ReversibleEmbedding`) with the same variables and outputs,
    e.g. to share a model with code that does not install this package. Models
    are copied as in `from_keras` (the same rules for Sequential, Functional,
    nested and subclassed models, and for `inplace`), the optimizer's state
    included.

    Keras's layers lack some of our options; a layer that uses one (`dropout`
    > 0, `max_norm`, `sparse=True`, `device`, `padding_idx`) is refused before
    anything is converted. `input_length` is dropped (Keras 3 ignores it). Note
    that Keras's `Embedding` resets `lora_alpha` to `lora_rank` when it is
    rebuilt from its config (e.g. by `keras.models.load_model`); the converted
    layer keeps the alpha it was given here.

    Args:
        model: A `keras.Model` or a single `keras_embedding_plus.Embedding`.
        inplace: Boolean. Subclassed models only, as in `from_keras`.

    Returns:
        The converted model (or layer).

    Raises:
        ValueError: naming the layer and the option, if a layer uses an option
            that Keras's layer lacks; and as `from_keras`.
    """
    _check_keras_compatible(model)
    return _convert(model, _ours_to_keras, inplace)


def _convert(model, convert, inplace):
    """`model` with each layer `convert(layer)` returns (not `None`) swapped in."""
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            "`model` must be a `keras.Model`, an embedding layer, or the path of "
            "a `.keras` / `.h5` file. "
            f"Received: model={model!r} (of type {type(model).__name__})."
        )
    if not isinstance(model, keras.Model):
        new = convert(model)
        return model if new is None else new
    # Read before anything changes: `inplace` recompiles `model` itself.
    optimizer = model.optimizer if model.compiled else None
    variables = list(model.trainable_variables)
    if _is_graph_model(model):
        if inplace:
            raise ValueError(
                "`inplace=True` applies to subclassed models only; Sequential "
                f"and Functional models are always copied. Received: model "
                f"'{model.name}' of type {type(model).__name__}, inplace=True."
            )
        new = _convert_graph_model(model, convert)
    elif inplace:
        _swap_in_place(model, convert)
        if model.compiled:
            model.compile_from_config(model.get_compile_config())
        new = model
    else:
        new = _convert_subclassed_copy(model, convert)
    optimizer_state.carry(optimizer, variables, new)
    return new


def _is_graph_model(model):
    """Whether `clone_model` can rebuild `model` layer by layer.

    Sequential or Functional (Keras's class, public only through `keras.Model`,
    whose constructor returns one when given inputs and outputs).
    """
    return isinstance(model, keras.Sequential) or any(
        cls.__name__ == "Functional" and cls.__module__.startswith("keras.")
        for cls in type(model).__mro__
    )


def _convert_graph_model(model, convert):
    copied = []  # (old, new) layers whose weights are copied after cloning

    def clone_function(layer):
        new = convert(layer)
        if new is not None:
            return new
        mask_op = _mask_op(layer, convert)
        if mask_op is not None:
            return mask_op
        if isinstance(layer, keras.Model) and not _is_graph_model(layer):
            # `clone_model(recursive=True)` hands subclassed models here.
            return _convert_subclassed_copy(layer, convert)
        # Keras's default clone; graph ops (e.g. a mask's `NotEqual`) included.
        new = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.Layer):
            copied.append((layer, new))
        return new

    new_model = keras.models.clone_model(
        model, clone_function=clone_function, recursive=True
    )
    for old, new in copied:
        if old.weights:
            if not new.built:
                new.build_from_config(old.get_build_config())
            new.set_weights(old.get_weights())
    return new_model


def _mask_op(op, convert):
    """What replaces the op that computed an embedding's mask, or `None`.

    A Functional model records the op that made a mask as a node of its graph:
    `NotEqual` (`keras.ops.not_equal(ids, 0)`) for Keras's layer, our
    `PaddingMask` for ours. Swapped with the layers, so that a converted model
    needs only Keras (`to_keras`), or loads from legacy `.h5` files, which
    cannot find `NotEqual` (`from_keras`).
    """
    from keras_embedding_plus.layers import masking

    if convert is _ours_to_keras and type(op) is masking.PaddingMask:
        return lambda ids: ops.not_equal(ids, 0)
    if convert is _keras_to_ours and _is_keras_op(op, "NotEqual"):

        def not_equal(x1, x2):
            if (
                isinstance(x1, keras.KerasTensor)
                and "int" in keras.backend.standardize_dtype(x1.dtype)
                and isinstance(x2, int)
                and not isinstance(x2, bool)
                and x2 == 0
            ):
                return masking.padding_mask(x1)
            return ops.not_equal(x1, x2)

        return not_equal
    return None


def _is_keras_op(op, name):
    cls = type(op)
    return cls.__name__ == name and cls.__module__.startswith("keras.")


def _convert_subclassed_copy(model, convert):
    try:
        copy = model.__class__.from_config(model.get_config())
    except (NotImplementedError, TypeError) as e:
        raise ValueError(
            f"Cannot copy the subclassed model '{model.name}' (of type "
            f"{type(model).__name__}) to convert it: rebuilding it from its "
            f"config failed ({type(e).__name__}: {e}). Give the class a "
            "`get_config()` returning its constructor arguments, or pass "
            "`inplace=True` to swap the embedding layers of the model itself."
        ) from e
    if model.built:
        build_config = model.get_build_config()
        if build_config:
            copy.build_from_config(build_config)
        copy.set_weights(model.get_weights())
    _swap_in_place(copy, convert)
    if model.compiled:
        copy.compile_from_config(model.get_compile_config())
    return copy


def _swap_in_place(root, convert):
    """Swap, in `root` and its sublayers, the layers `convert` converts.

    Looks for the layers in each owner's attributes (and in list, tuple and
    dict attributes, which include PyTorch's `_modules`); all conversions are
    made before any swap.
    """
    plan = []  # (owner, old, new)
    seen = set()

    def visit(owner):
        if id(owner) in seen:
            return
        seen.add(id(owner))
        for child in compat.child_layers(owner):
            new = convert(child)
            if new is None:
                visit(child)
            else:
                plan.append((owner, child, new))

    visit(root)
    swaps = []
    for owner, old, new in plan:
        setters = _references(owner, old)
        if not setters:
            raise ValueError(
                f"Cannot swap layer '{old.name}' of '{owner.name}' in place: it "
                "is not held in an attribute (or a list, tuple or dict "
                "attribute) of its owner."
            )
        swaps.append((owner, old, new, setters))
    for owner, old, new, setters in swaps:
        compat.replace_tracked_layer(owner, old, new)
        for setter in setters:
            setter(new)
    for layer in _all_layers(root):
        # PyTorch: forget the parameters collected before the swap.
        compat.forget_torch_params(layer)


def _references(owner, old):
    """One `setter(new)` for each place among `owner`'s attributes holding `old`."""
    setters = []
    for name, value in vars(owner).items():
        if value is compat.child_layers(owner):
            continue
        if value is old:
            setters.append(lambda new, name=name: object.__setattr__(owner, name, new))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if item is old:
                    setters.append(
                        lambda new, v=value, i=i: list.__setitem__(v, i, new)
                    )
        elif isinstance(value, tuple) and any(item is old for item in value):
            setters.append(
                lambda new, name=name, value=value: object.__setattr__(
                    owner,
                    name,
                    type(value)([new if item is old else item for item in value]),
                )
            )
        elif isinstance(value, dict):
            for key, item in value.items():
                if item is old:
                    setters.append(
                        lambda new, v=value, k=key: dict.__setitem__(v, k, new)
                    )
    return setters


def _keras_to_ours(layer):
    for theirs, ours in _pairs():
        if type(layer) is theirs:
            config = layer.get_config()
            if config.get("quantization_config", "absent") is None:
                del config["quantization_config"]
            return _rebuild(layer, ours, config)
    return None


def _ours_to_keras(layer):
    for theirs, ours in _pairs():
        if type(layer) is ours:
            config = layer.get_config()
            for key in (*_OURS_ONLY, *_DROPPED):
                config.pop(key, None)
            return _rebuild(layer, theirs, config)
    return None


def _rebuild(layer, cls, config):
    """A `cls` layer from `config`, built and holding `layer`'s variables."""
    new = cls.from_config(config)
    if not layer.built:
        return new
    new.build()
    if layer.lora_enabled:
        if not new.lora_enabled:
            new.enable_lora(layer.lora_rank, lora_alpha=layer.lora_alpha)
        # Keras's `build` enables LoRA with `lora_alpha=lora_rank`.
        new.lora_alpha = layer.lora_alpha
    _copy_variables(layer, new)
    return new


def _copy_variables(old, new):
    """Assign `old`'s variables to `new`'s, matched by name."""
    old_weights = {w.name: w for w in old.weights}
    new_weights = {w.name: w for w in new.weights}
    if sorted(old_weights) != sorted(new_weights):
        raise ValueError(
            f"Cannot copy the variables of layer '{old.name}' "
            f"({_qualified(old)}) into a {_qualified(new)}: it holds "
            f"{sorted(old_weights)}, the new layer {sorted(new_weights)}."
        )
    for name, target in new_weights.items():
        source = old_weights[name]
        if tuple(source.shape) != tuple(target.shape):
            raise ValueError(
                f"Cannot copy variable `{name}` of layer '{old.name}': shape "
                f"{tuple(source.shape)} where {type(new).__name__} has "
                f"{tuple(target.shape)}."
            )
        target.assign(ops.convert_to_numpy(source))


def _qualified(layer):
    """`keras.Embedding` or `keras_embedding_plus.Embedding`, for messages."""
    return f"{type(layer).__module__.split('.')[0]}.{type(layer).__name__}"


def _check_keras_compatible(model):
    """Raise `ValueError` for the first layer of ours Keras's layers cannot hold."""
    ours = tuple(pair[1] for pair in _pairs())
    for layer in _all_layers(model):
        if type(layer) not in ours:
            continue
        for option, off in _OURS_ONLY.items():
            value = getattr(layer, option, off)
            if value is not None and value != off:
                raise ValueError(
                    f"Layer '{layer.name}' cannot become a "
                    f"`keras.layers.{type(layer).__name__}`: Keras's layer has "
                    f"no `{option}` option. Received: {option}={value!r}. Remove "
                    "the option (e.g. build the model again without it and load "
                    "the weights) before calling `to_keras`."
                )


def _all_layers(layer, seen=None):
    seen = set() if seen is None else seen
    if id(layer) in seen:
        return
    seen.add(id(layer))
    yield layer
    for child in compat.child_layers(layer):
        yield from _all_layers(child, seen)
