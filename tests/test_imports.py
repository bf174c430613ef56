"""The four packages form a one-way import graph, read from their source (no module is run, so
no TensorFlow): every import counts, at module level or inside a function. No module imports,
directly or through others, a module that imports it, and no package imports a later stage's
(data -> model -> export -> serving). Whether the later stages' modules also import light is
tests/serving/test_stage_imports.py's question."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STAGES = ("data", "model", "export", "serving")


def project_modules() -> dict[str, ast.Module]:
    """{dotted module name: its parsed source} of every module of the four packages."""
    modules = {}
    for package in STAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = ast.parse(path.read_text(), str(path))
    return modules


def imported_names(tree: ast.Module) -> set[str]:
    """Every module an `import` or `from ... import` anywhere in the tree names; `from pkg
    import name` names pkg.name too (it is a module when pkg.name is one)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """{module: the project modules it imports}."""
    modules = project_modules()
    return {name: {other for other in imported_names(tree) if other in modules and other != name}
            for name, tree in modules.items()}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports as [a, b, ..., a], or None (depth-first search, in name order)."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for other in sorted(graph[module]):
            circle = visit(other)
            if circle:
                return circle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        circle = visit(module)
        if circle:
            return circle
    return None


def stage(module: str) -> int:
    return STAGES.index(module.split(".")[0])


def test_no_module_imports_itself_through_others():
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_no_stage_imports_a_later_one():
    backward = sorted(f"{module} -> {other}" for module, imports in import_graph().items()
                      for other in imports if stage(other) > stage(module))
    assert not backward, f"imports against {' -> '.join(STAGES)}: {backward}"


def test_the_checks_find_circles_and_count_imports_in_functions():
    tree = ast.parse("def f():\n    from model import base\n    import model.top as top\n")
    assert imported_names(tree) >= {"model.base", "model.top"}
    graph = {"model.base": {"model.top"}, "model.top": {"model.run_dir"},
             "model.run_dir": {"model.base"}, "data.files": set()}
    assert find_circle(graph) == ["model.base", "model.top", "model.run_dir", "model.base"]
    assert find_circle({"a": {"b"}, "b": set()}) is None
