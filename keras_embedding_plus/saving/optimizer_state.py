"""The optimizer state carried from a model to its converted copy (`from_keras`,
`to_keras`): the step count, the learning rate and every slot, matched by name.

The converted layers hold the same variables, in the same order, as the layers
they replace; a slot's name starts with its variable's path
(`Optimizer.add_variable_from_reference`), translated from the old path to the
new one.
"""

import warnings

from keras import ops


def _slot_prefix(variable):
    """The start of the names of a variable's optimizer slots.

    `Optimizer.add_variable_from_reference` names a slot
    `{reference.path with "/" -> "_"}_{slot}` (e.g. `emb_embeddings_momentum`),
    as its docstring says.
    """
    return variable.path.replace("/", "_") + "_"


def carry(old_optimizer, old_variables, model):
    """Give `model`'s optimizer the state of `old_optimizer`.

    `old_variables` (the old model's trainable variables) and
    `model.trainable_variables` correspond one for one: the converted layers
    hold the same variables, in the same order, as the layers they replace.
    Each optimizer variable of the old optimizer (`iterations`, the learning
    rate, each slot) is assigned to the new optimizer's variable of the same
    name, a slot's name translated from the old variable it belongs to to the
    new one. All are matched before any is assigned: if one is missing, the
    new optimizer keeps its fresh state and a warning says why. A warning also
    names the new optimizer's variables left fresh because the old optimizer
    had none for them.
    """
    if old_optimizer is None or not old_optimizer.built:
        return
    new_optimizer = model.optimizer if model.compiled else None
    if new_optimizer is None or new_optimizer is old_optimizer:
        return
    new_variables = list(model.trainable_variables)
    problem = _pairing_problem(old_variables, new_variables)
    plan = []
    if problem is None:
        if not new_optimizer.built:
            new_optimizer.build(new_variables)
        plan, problem = _match_optimizer_variables(
            old_optimizer, new_optimizer, old_variables, new_variables
        )
    if problem is not None:
        warnings.warn(
            f"The optimizer state of model '{model.name}' was not carried over: "
            f"{problem} The converted model's optimizer starts afresh "
            "(`iterations` 0, empty slots).",
            stacklevel=4,  # `from_keras`'s caller.
        )
        return
    for source, target in plan:
        target.assign(ops.convert_to_numpy(source))
    carried = {id(target) for _, target in plan}
    fresh = [v.name for v in new_optimizer.variables if id(v) not in carried]
    if fresh:
        shown = ", ".join(f"'{name}'" for name in fresh[:4])
        warnings.warn(
            f"The optimizer state of model '{model.name}' was carried over in "
            f"part: {len(fresh)} variable(s) of the new optimizer ({shown}"
            f"{', ...' if len(fresh) > 4 else ''}) have no counterpart in the "
            "old one and start at their initial values. (A model loaded from a "
            "legacy `.h5` file: Keras's loader restores `iterations` and the "
            "learning rate, not the slots.)",
            stacklevel=4,  # `from_keras`'s caller.
        )


def _pairing_problem(old_variables, new_variables):
    """Why the trainable variables do not correspond one for one, or None."""
    if len(old_variables) != len(new_variables):
        return (
            f"the model had {len(old_variables)} trainable variables, the "
            f"converted model has {len(new_variables)}."
        )
    for old, new in zip(old_variables, new_variables, strict=True):
        if old.name != new.name or tuple(old.shape) != tuple(new.shape):
            return (
                f"trainable variable '{old.path}' {tuple(old.shape)} became "
                f"'{new.path}' {tuple(new.shape)}."
            )
    return None


def _match_optimizer_variables(old_optimizer, new_optimizer, old_variables, new_vars):
    """`([(old, new) optimizer variable], None)`, or `([], problem)`."""
    # Longest prefix first: `emb_embeddings_` before `emb_`.
    renames = sorted(
        (
            (_slot_prefix(old), _slot_prefix(new))
            for old, new in zip(old_variables, new_vars, strict=True)
        ),
        key=lambda pair: -len(pair[0]),
    )
    # Names repeat where an optimizer wraps another (`LossScaleOptimizer`: its
    # `iteration` and the inner one's): those are paired in order.
    targets = {}
    for variable in new_optimizer.variables:
        targets.setdefault(variable.name, []).append(variable)
    plan = []
    for source in old_optimizer.variables:
        name = source.name
        for old_prefix, new_prefix in renames:
            if name.startswith(old_prefix):
                name = new_prefix + name[len(old_prefix) :]
                break
        found = targets.get(name)
        if not found:
            return [], (
                f"optimizer variable '{source.name}' has no counterpart (named "
                f"'{name}') in the new {type(new_optimizer).__name__}."
            )
        target = found.pop(0)
        if tuple(source.shape) != tuple(target.shape):
            return [], (
                f"optimizer variable '{source.name}' has shape "
                f"{tuple(source.shape)}, its counterpart {tuple(target.shape)}."
            )
        plan.append((source, target))
    return plan, None
