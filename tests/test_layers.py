"""The package's layer order, read from the imports: a module imports from its own package or from those below it.

From the bottom: the top-level modules (errors, config, script_logging, runtime) -> data -> model -> nnunet ->
evaluation -> inference -> training -> benchmarks -> report; workflow/scripts sit on top. An import that must go up
carries a comment starting with ``# up:`` on the line above it, saying why. nnunet/ (the adapter) and inference/ (the
serving code) never import from above, not even with a comment.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pancreas_mtl"
LAYERS = ["", "data", "model", "nnunet", "evaluation", "inference", "training", "benchmarks", "report"]
NEVER_UP = {"nnunet", "inference"}
UP_COMMENT = "# up:"


def package_of(module: str) -> str:
    """The layer of a module ``pancreas_mtl.X...``: ``X`` for a subpackage, "" for the top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else ""


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``pancreas_mtl`` import in a file, also those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pancreas_mtl":  # from pancreas_mtl import errors
                modules = [f"pancreas_mtl.{a.name}" for a in node.names]
            else:
                modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, m) for m in modules if m.startswith("pancreas_mtl.")]
    return found


def upward_imports() -> list[tuple[str, int, str, str, bool]]:
    """(file, line, from layer, to layer, commented) of every import from a higher layer."""
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0] if len(relative.parts) > 1 else ""
        lines = path.read_text().splitlines()
        for line, module in imports_of(path):
            target = package_of(module)
            if LAYERS.index(target) > LAYERS.index(own):
                commented = line >= 2 and lines[line - 2].strip().startswith(UP_COMMENT)
                upward.append((str(relative), line, own or "top level", target, commented))
    return upward


def test_the_layers_name_every_package():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == set(LAYERS) - {""}


def test_no_upward_import_without_a_comment_saying_why():
    bare = [
        f"{file}:{line} imports {target} from {own}"
        for file, line, own, target, commented in upward_imports()
        if not commented
    ]
    assert not bare, "upward imports without a '# up:' comment on the line above:\n" + "\n".join(bare)


@pytest.mark.parametrize("package", sorted(NEVER_UP))
def test_the_adapter_and_the_serving_code_import_nothing_from_above(package):
    up = [f"{file}:{line} imports {target}" for file, line, own, target, _ in upward_imports() if own == package]
    assert not up, "\n".join(up)


def test_the_test_reads_imports_inside_functions_too(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pancreas_mtl.report import plots\n")
    assert imports_of(module) == [(2, "pancreas_mtl.report")]
