"""keras_ftprop/deploy/ as a package: its modules import each other at the top, without a cycle, in the order
of the module map of docs/development.md."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "keras_ftprop" / "deploy"
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def imported_modules(tree):
    """The modules that the import statements among ``tree``'s nodes name (``from a import b``: a, and a.b
    where a is a package, as b may be its module)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module in ("keras_ftprop", "keras_ftprop.deploy"):
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def deploy_imports(name):
    """The deploy modules that module ``name`` imports."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    return {found.rsplit(".", 1)[1] for found in imported_modules(tree)
            if found.startswith("keras_ftprop.deploy.") and found.rsplit(".", 1)[1] in MODULES}


def module_map():
    """The deploy modules in the order of the rows of the module map in docs/development.md."""
    text = (ROOT / "docs" / "development.md").read_text()
    section = text.split("## How `keras_ftprop.deploy` is built", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)\.py` \|", section, flags=re.M)


def test_no_import_inside_a_function_or_class():
    for path in [*PACKAGE.glob("*.py"), ROOT / "keras_ftprop" / "quantization.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = [f"line {n.lineno}" for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{path.name}: {node.name} imports at {inner}"


def test_modules_import_only_modules_above_them_in_the_module_map():
    order = module_map()
    assert sorted(order) == MODULES, "docs/development.md maps every module of keras_ftprop/deploy/, once"
    for position, name in enumerate(order):
        below = deploy_imports(name) - set(order[:position])
        assert not below, f"{name} imports {sorted(below)}, which stand below it in the module map (a cycle?)"


def test_no_module_of_the_package_imports_the_package_or_keras_ftprop_quantization():
    """The package's __init__ imports every module, and keras_ftprop.quantization imports the package: a module
    that imported either (``from keras_ftprop.deploy import to_tflite``) would close a cycle."""
    for name in MODULES:
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names
                         if alias.name in ("keras_ftprop", "keras_ftprop.deploy", "keras_ftprop.quantization")]
            elif isinstance(node, ast.ImportFrom) and node.module == "keras_ftprop":
                found = [alias.name for alias in node.names if alias.name in ("deploy", "quantization")]
            elif isinstance(node, ast.ImportFrom) and node.module == "keras_ftprop.deploy":
                found = [alias.name for alias in node.names if alias.name not in MODULES]
            elif isinstance(node, ast.ImportFrom):
                found = [node.module] if node.module == "keras_ftprop.quantization" else []
            else:
                continue
            assert not found, f"{name}.py line {node.lineno} imports {found}"
