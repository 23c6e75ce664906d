"""The backend code lives in `keras_embedding_plus/_backends`, one module per
backend, each defining the same functions, selected once."""

import ast
import pathlib

import keras

import keras_embedding_plus
from keras_embedding_plus import backends as _backends

PACKAGE = pathlib.Path(keras_embedding_plus.__file__).parent
BACKEND_LIBRARIES = ("tensorflow", "jax", "torch")


def _top_level_names(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_every_backend_module_defines_every_function():
    # Read, not imported: each module imports its own backend library.
    for name in _backends.BACKENDS:
        defined = _top_level_names(PACKAGE / "backends" / f"{name}.py")
        missing = set(_backends.FUNCTIONS) - defined
        assert not missing, f"backends/{name}.py lacks {sorted(missing)}"


def test_the_running_backend_is_selected():
    assert _backends.NAME == keras.backend.backend()
    assert _backends.native.__name__.endswith("." + keras.backend.backend())
    for function in _backends.FUNCTIONS:
        assert hasattr(_backends.native, function), function


def _imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_backend_libraries_are_imported_only_in_backend_modules():
    # `training.py`'s `sparse_train_step` is JAX's trainer by contract.
    allowed = {PACKAGE / "training.py": {"jax"}}
    for path in sorted(PACKAGE.glob("*.py")):
        imported = set(_imported_modules(path)) & set(BACKEND_LIBRARIES)
        extra = imported - allowed.get(path, set())
        assert not extra, f"{path.name} imports {sorted(extra)}"


def test_keras_internals_only_in_compat():
    # Private attributes of Keras objects are read in `_compat` alone.
    internals = (
        "_tracker",
        "_layout",
        "_update_metrics_variables",
        "_input_shape_arg",
        "_flatten_layers",
        "_get_variable_index",
        "_keras_mask",
        "_is_quantized",
        "_torch_params",
    )
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "compat.py":
            continue
        text = path.read_text()
        found = [name for name in internals if f".{name}" in text]
        assert not found, f"{path.relative_to(PACKAGE)} uses {found}"
