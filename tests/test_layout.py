"""The folders are the architecture: the library's lower layers never reach up to training, jobs,
evaluation protocols or the CLI; data is read without model code and models are built without data or
objective code; importing mimo has no side effects."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mimo

PACKAGE = Path(mimo.__file__).parent
LOWER_LAYERS = ("models", "diffusion", "objectives", "data", "metrics")
UPPER_LAYERS = ("mimo.train", "mimo.apps", "mimo.evaluation", "mimo.cli")


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` but those under `if TYPE_CHECKING:`, which only type checkers import."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            continue
        yield node
        yield from _runtime_nodes(node)


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` names in `path`, anywhere in the file (functions included,
    `if TYPE_CHECKING:` blocks left out), made absolute."""
    package = ".".join(("mimo", *path.relative_to(PACKAGE).parent.parts))
    names = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.update({module} | {f"{module}.{alias.name}" for alias in node.names})
    return names


def imports_under(folder: str) -> dict[str, set[str]]:
    return {str(path.relative_to(PACKAGE)): imported_modules(path) for path in (PACKAGE / folder).rglob("*.py")}


def reaching(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {
        path: sorted(name for name in names if name.startswith(forbidden))
        for path, names in imports_under(folder).items()
    }
    return {path: names for path, names in found.items() if names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of mimo it imports (a package's name stands for its __init__)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: (imported_modules(path) & modules.keys()) - {name} for name, path in modules.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for name in graph[stack.pop()] - seen:
            seen.add(name)
            stack.append(name)
    return seen


def test_the_walker_sees_module_and_function_level_imports():
    module = PACKAGE / "data" / "__init__.py"
    assert "mimo.config" in imported_modules(module) and "mimo.data.video_folder" in imported_modules(module)
    assert "mimo.train.trainer" in imported_modules(PACKAGE / "cli.py")  # imported inside a function


@pytest.mark.parametrize("folder", LOWER_LAYERS)
def test_lower_layers_never_import_training_jobs_evaluation_or_the_cli(folder):
    assert reaching(folder, UPPER_LAYERS) == {}


def test_data_is_read_without_model_code():
    assert reaching("data", ("mimo.models", "mimo.objectives", "mimo.diffusion")) == {}


def test_models_are_built_without_data_objectives_or_sampling_code():
    assert reaching("models", ("mimo.data", "mimo.objectives", "mimo.diffusion")) == {}


def test_the_objective_reads_no_feature_manifest():
    assert reaching("objectives", ("mimo.data.latents", "mimo.data.encoder_features")) == {}


def test_importing_every_module_of_mimo_changes_no_environment_variable():
    code = (
        "import os, pkgutil, importlib, mimo; before = dict(os.environ); "
        "names = [m.name for m in pkgutil.walk_packages(mimo.__path__, 'mimo.')]; "
        "[importlib.import_module(name) for name in names]; "
        "changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}; "
        "assert not changed, changed; print(len(names))"
    )
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(list(PACKAGE.rglob("*.py"))) - 1  # every module but mimo/__init__ itself


def test_config_is_the_ground_floor_importing_only_the_errors():
    assert import_graph()["mimo.config"] == {"mimo.errors"}
    assert import_graph()["mimo.errors"] == set()


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    circles = sorted(
        f"{name} -> {imported}"
        for name, imports in graph.items()
        for imported in imports
        if name in reachable(graph, imported)
    )
    assert circles == []


MAX_FUNCTION_LINES = 60  # signature and docstring included: a function a reader follows in one screen
DECLARATIVE_TABLES = {"cli.py:build_parser"}  # the command line's options, one statement each


def test_every_function_fits_on_a_screen_except_declarative_tables():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name, lines = f"{path.relative_to(PACKAGE)}:{node.name}", node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and name not in DECLARATIVE_TABLES:
                    long.append(f"{name} ({lines} lines)")
    assert long == []


def test_sample_video_reads_top_to_bottom_in_at_most_40_lines():
    from mimo.diffusion import sampler

    tree = ast.parse((PACKAGE / "diffusion" / "sampler.py").read_text())
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "sample_video")
    docstring = function.body[0]
    assert isinstance(docstring, ast.Expr) and sampler.sample_video.__doc__
    assert function.end_lineno - docstring.end_lineno <= 40
