"""The house stays built: packages import only the layers below them.

Layers, bottom to top (a package may import its own modules and any
package of a lower layer, never one of its own layer or above):

    0  config                 dataclasses, validation, flag generation
    1  models, data           the Keras model core; the input pipeline
    2  rundir                 every file a run writes and reads
    3  training               the trainer, the step, distribution
    4  serving, evaluation    the SavedModel; probes, heads, features
    5  protocols              pretrain, linear, finetune, supervised
    6  reporting, benchmarking
    7  entry points           `python -m cpc_tf.<name>`: one-screen mains

Every import counts, at the top of a module or inside a function.
"""

import ast
import os

import pytest
from helpers import ROOT

PACKAGE = os.path.join(ROOT, "cpc_tf")
LAYERS = {
    "config": 0,
    "models": 1,
    "data": 1,
    "rundir": 2,
    "training": 3,
    "serving": 4,
    "evaluation": 4,
    "protocols": 5,
    "reporting": 6,
    "benchmarking": 6,
}
ENTRY_POINT_LAYER = 7
ENTRY_POINT_LINES = 100


def unit_of(module):
    """The package of `cpc_tf.<package>...`, or the entry point's name."""
    parts = module.split(".")
    if parts[0] != "cpc_tf":
        return None
    return parts[1] if len(parts) > 1 else "cpc_tf"


def layer_of(unit):
    return LAYERS.get(unit, ENTRY_POINT_LAYER)


def imported_modules(source, module):
    """Absolute names of the `cpc_tf` modules `source` imports."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level]
                base = ".".join(package + ([base] if base else []))
            names.extend(
                f"{base}.{alias.name}" if base == "cpc_tf" else base
                for alias in node.names
            )
    return [name for name in names if name.split(".")[0] == "cpc_tf"]


def upward_imports(modules):
    """`(importer, imported)` pairs that break the layers, for
    `{module name: source}`."""
    broken = []
    for module, source in sorted(modules.items()):
        importer = unit_of(module)
        for name in imported_modules(source, module):
            imported = unit_of(name)
            if imported in (None, importer) or importer == "cpc_tf":
                continue
            if layer_of(imported) >= layer_of(importer):
                broken.append((module, name))
    return broken


def package_sources():
    modules = {}
    for directory, _, files in os.walk(PACKAGE):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(directory, file)
            relative = os.path.relpath(path, ROOT)[: -len(".py")]
            name = relative.replace(os.sep, ".").removesuffix(".__init__")
            with open(path) as f:
                modules[name] = f.read()
    return modules


def test_no_package_imports_a_layer_at_or_above_its_own():
    assert upward_imports(package_sources()) == []


@pytest.mark.parametrize(
    "module,source",
    [
        # The layer below asking the one above: config from the models.
        ("cpc_tf.config.model", "from cpc_tf.models import encoders\n"),
        # A model module reaching into the trainer, inside a function.
        (
            "cpc_tf.models.cpc",
            "def fit():\n    from cpc_tf.training import steps\n",
        ),
        # Two packages of one layer.
        ("cpc_tf.data.pipeline", "import cpc_tf.models.encoders\n"),
        # A library package importing an entry point.
        ("cpc_tf.reporting.runner", "from cpc_tf import pretrain\n"),
        ("cpc_tf.training.trainer", "from ..protocols import registry\n"),
    ],
)
def test_the_layout_check_fails_on_an_upward_import(module, source):
    assert upward_imports({module: source}) != []


def test_library_and_entry_points_are_where_the_layers_say():
    top_level = sorted(
        name[: -len(".py")]
        for name in os.listdir(PACKAGE)
        if name.endswith(".py") and name != "__init__.py"
    )
    packages = sorted(
        name
        for name in os.listdir(PACKAGE)
        if os.path.isfile(os.path.join(PACKAGE, name, "__init__.py"))
    )
    assert packages == sorted(LAYERS)
    for name in top_level:
        with open(os.path.join(PACKAGE, f"{name}.py")) as f:
            lines = f.read().splitlines()
        assert 'if __name__ == "__main__":' in lines, f"{name} is no main"
        assert len(lines) <= ENTRY_POINT_LINES, f"{name}: {len(lines)} lines"
