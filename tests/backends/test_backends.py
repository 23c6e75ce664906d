"""The backend code lives in `keras_embedding_plus/backends`, one folder per
backend with one module per concern, selected once; the package's import rules."""

import ast
import pathlib

import keras

import keras_embedding_plus
from keras_embedding_plus import backends as _backends

PACKAGE = pathlib.Path(keras_embedding_plus.__file__).parent
BACKEND_LIBRARIES = ("tensorflow", "jax", "torch")
# JAX's row-sparse training machinery (`SparseTrainer` reads it on JAX only).
BACKEND_EXTRAS = {
    ("jax", "sparse"): {"RowCapture", "IndexedRows", "capturing"},
    ("jax", "placement"): {"Placement"},
}


def _top_level_names(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _public(names):
    return {name for name in names if not name.startswith("_")}


def test_every_backend_defines_the_same_names_per_concern():
    # Read, not imported: each module imports its own backend library.
    for concern in _backends.CONCERNS:
        names = {}
        for name in _backends.BACKENDS:
            path = PACKAGE / "backends" / name / f"{concern}.py"
            extras = BACKEND_EXTRAS.get((name, concern), set())
            names[name] = _public(_top_level_names(path)) - extras
        first, *others = _backends.BACKENDS
        for other in others:
            assert names[other] == names[first], (
                f"backends/{other}/{concern}.py and backends/{first}/{concern}.py "
                f"differ: {sorted(names[other] ^ names[first])}"
            )


def test_the_running_backend_is_selected():
    assert _backends.NAME == keras.backend.backend()
    for concern in _backends.CONCERNS:
        module = getattr(_backends, concern)
        assert module.__name__ == (
            f"keras_embedding_plus.backends.{keras.backend.backend()}.{concern}"
        )


def _imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_backend_libraries_are_imported_only_in_backend_modules():
    # `training.py`'s `sparse_train_step` is JAX's trainer by contract;
    # `data.py`'s `BagDataset.to_tf_dataset` builds a `tf.data` pipeline, on any
    # backend where TensorFlow is installed (imported inside that method).
    # `lookup/string_keys.py` hashes TensorFlow string tensors (`tf.data`
    # pipelines, on any backend; imported where one is met).
    allowed = {
        PACKAGE / "training.py": {"jax"},
        PACKAGE / "data.py": {"tensorflow"},
        PACKAGE / "lookup" / "string_keys.py": {"tensorflow"},
    }
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "backends") in path.parents:
            continue
        # The tests' helpers (not the library): each backend's compiler and
        # sparse tensors, imported inside the branch for that backend.
        if (PACKAGE / "testing") in path.parents:
            continue
        imported = set(_imported_modules(path)) & set(BACKEND_LIBRARIES)
        extra = imported - allowed.get(path, set())
        assert not extra, f"{path.relative_to(PACKAGE)} imports {sorted(extra)}"


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


def _package_imports(path):
    """Every `keras_embedding_plus...` module `path` imports (lazy ones too), as
    dotted names below the package, with the names imported from each."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("keras_embedding_plus"):
                    yield alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("keras_embedding_plus"):
                yield node.module, tuple(alias.name for alias in node.names)


def _targets(module, names):
    """The package modules an import reaches (`from pkg import module` too)."""
    yield module
    for name in names:
        yield f"{module}.{name}"


# Data flows one way: layers -> lookup -> backends, never back up.
FORBIDDEN = {
    "backends": ("layers", "lookup", "saving", "vectors", "training", "optimizers"),
    "lookup": ("layers", "saving", "vectors", "training", "optimizers"),
    "layers": ("training", "optimizers"),
}


def test_imports_flow_one_way():
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        forbidden = FORBIDDEN.get(part, ())
        for module, names in _package_imports(path):
            for target in _targets(module, names):
                below = target.split(".")[1:2]
                assert not (below and below[0] in forbidden), (
                    f"{path.relative_to(PACKAGE)} imports {target}"
                )


def test_no_private_names_across_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        bound = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "keras_embedding_plus"
            ):
                for alias in node.names:
                    assert not alias.name.startswith("_"), (
                        f"{path.relative_to(PACKAGE)} imports {alias.name}"
                    )
                    bound.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                raise AssertionError(
                    f"{path.relative_to(PACKAGE)} reads {node.value.id}.{node.attr}"
                )


def test_no_keras_src_imports():
    # Keras internals are reached through `compat.py` alone, never `keras.src`.
    # The tests from this checkout (the package may be the installed one).
    repository = pathlib.Path(__file__).resolve().parents[2]
    roots = (PACKAGE, repository / "tests", repository / "integration_tests")
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                assert not any(n.startswith("keras.src") for n in names), path


# `compat.py` touches Keras's internals by design: the attributes it reads, each
# with why in its own docstring.
COMPAT_PRIVATE_READS = {
    "_layout",
    "_input_shape_arg",
    "_orig_output_dim",
    "_is_quantized",
    "_keras_mask",
    "_tracker",
    "_flatten_layers",
    "_torch_params",
    "_update_metrics_variables",
    "_get_variable_index",
    "_layers",
    "_modules",
    "_h5_entry_group",
}


def _is_private(attr):
    return attr.startswith("_") and not attr.startswith("__")


def _private_reads(tree):
    """`(line, name, attr)` for each private attribute of another object read
    as `name._attr` or through `getattr` / `hasattr` / `setattr(name, "_attr")`
    (`self`, `cls` and `super()` are the object's own)."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id not in ("self", "cls")
            and _is_private(node.attr)
        ):
            yield node.lineno, node.value.id, node.attr
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id not in ("self", "cls")
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
        ):
            yield node.lineno, node.args[0].id, node.args[1].value


def test_no_private_attributes_of_other_objects():
    for path in sorted(PACKAGE.rglob("*.py")):
        allowed = COMPAT_PRIVATE_READS if path.name == "compat.py" else set()
        if (PACKAGE / "testing") in path.parents:
            # The tests' `compiled` resets Dynamo between torch.compile calls.
            allowed = {"_dynamo"}
        for line, name, attr in _private_reads(ast.parse(path.read_text())):
            assert attr in allowed, (
                f"{path.relative_to(PACKAGE)}:{line} reads {name}.{attr}"
            )


def test_the_private_attribute_check_sees_reads():
    tree = ast.parse(
        "x = layer._lookup.rows\ny = self._lookup\nz = super()._f\n"
        "t = getattr(layer, '_float_table', None)\nu = getattr(self, '_x', 0)"
    )
    assert sorted((n, a) for _, n, a in _private_reads(tree)) == [
        ("layer", "_float_table"),
        ("layer", "_lookup"),
    ]
