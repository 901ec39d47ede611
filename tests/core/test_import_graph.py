"""The package's import graph, read from the source (ast, nothing is imported): no cycles among modules at
import time, and ``kernels`` (``sketchtune_kernels``) stands on its own."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# import name -> source directory (kernels/sketchtune_kernels/ is installed as sketchtune_kernels)
PACKAGES = {"sketchtune_cli": REPO / "sketchtune_cli", "sketchtune_kernels": REPO / "kernels" / "sketchtune_kernels"}


def _modules() -> dict[str, Path]:
    found = {}
    for name, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = [name, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(importer: str, path: Path, node: ast.stmt, modules: dict[str, Path]) -> list[str]:
    """Our modules an import statement loads: ``from pkg import sub`` counts as ``pkg.sub`` when that is a
    module, else as ``pkg`` itself."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = _resolve(importer, path.name == "__init__.py", node)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    else:
        return []
    out = []
    for name in names:
        while name and name not in modules:  # `import a.b.c` of a non-module attribute: its module
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def _module_level(tree: ast.Module):
    """Statements that run when the module is imported: the top level, and the bodies of module-level
    if/try/with and class statements (not function bodies)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            stack.extend(getattr(node, field, []) or [])


def import_graph(function_level: bool = False) -> dict[str, set[str]]:
    """module -> the modules of ours it imports at import time (``function_level``: anywhere in the file)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = ast.walk(tree) if function_level else _module_level(tree)
        graph[name] = {t for node in nodes for t in _targets(name, path, node, modules) if t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_known_edges():
    """The walker itself: relative, absolute and package imports all become edges."""
    graph = import_graph()
    assert "sketchtune_kernels.packing" in graph["sketchtune_kernels.reference"]  # from .packing import ...
    assert "sketchtune_kernels" in graph["sketchtune_cli.sketch.linear"]  # from sketchtune_kernels import ...
    assert "sketchtune_cli.sketch" in graph["sketchtune_cli.compress.pipeline"]  # from ..sketch import ...
    assert "sketchtune_cli.training.checkpoint" in graph["sketchtune_cli.finetune.stage"]  # from ..training import checkpoint
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_at_import_time():
    assert find_cycle(import_graph()) is None


def test_the_graph_sees_function_level_imports():
    graph = import_graph(function_level=True)
    assert "sketchtune_cli.compress.stage" in graph["sketchtune_cli.compress.interface"]  # inside run()
    assert "sketchtune_cli.compress.stage" not in import_graph()["sketchtune_cli.compress.interface"]


def test_no_import_cycles_anywhere():
    """Function-level imports too: one that only defers a cycle still ties the modules into a knot."""
    assert find_cycle(import_graph(function_level=True)) is None


def test_the_loader_stands_below_the_stages():
    """``loading`` turns any artifact into a model for every stage, so it imports none of them (``export/``
    writes formats; reading them back is the loader's)."""
    deps = import_graph(function_level=True)["sketchtune_cli.loading"]
    assert not sorted(d for d in deps if _stage_of(d) or d in CLI_LAYER)


def test_kernels_import_nothing_from_sketchtune_cli():
    graph = import_graph(function_level=True)
    offending = {m: sorted(t for t in deps if t.startswith("sketchtune_cli"))
                 for m, deps in graph.items() if m.startswith("sketchtune_kernels")}
    assert not {m: deps for m, deps in offending.items() if deps}


STAGE_PACKAGES = ("compress", "finetune", "evaluate", "export")
CLI_LAYER = {"sketchtune_cli.cli", "sketchtune_cli.__main__", "sketchtune_cli.run_cmd", "sketchtune_cli.config_cmd",
             "sketchtune_cli.inspect_cmd"}


def _stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "sketchtune_cli" and parts[1] in STAGE_PACKAGES else None


def test_no_stage_package_imports_another_stage_or_the_cli_layer():
    """Anywhere in the file (function-level imports too): stages meet only through artifacts and the shared
    core (artifacts, loading, models, sketch, config); a stage's own ``command`` module is its CLI face."""
    bad = []
    for module, deps in import_graph(function_level=True).items():
        stage = _stage_of(module)
        if stage is None:
            continue
        for dep in deps:
            other_stage = _stage_of(dep) not in (None, stage)
            cli = dep in CLI_LAYER or (dep.endswith(".command") and not module.endswith(".command"))
            if other_stage or cli:
                bad.append(f"{module} -> {dep}")
    assert not bad


def test_stages_do_not_import_the_run_config():
    """``config`` imports every stage's settings, so a stage (beyond its ``command``, which loads a config
    from the command line) works on the StageConfig view it is handed, never on ``config.RunConfig``."""
    bad = [f"{m} -> sketchtune_cli.config" for m, deps in import_graph(function_level=True).items()
           if _stage_of(m) and not m.endswith(".command") and "sketchtune_cli.config" in deps]
    assert not bad


def test_sketch_package_stands_on_kernels_only():
    """The format (sketch/) is shared by every stage, so it may use nothing of ours but the kernels."""
    bad = {m: sorted(d for d in deps if not d.startswith(("sketchtune_cli.sketch", "sketchtune_kernels")))
           for m, deps in import_graph(function_level=True).items() if m.startswith("sketchtune_cli.sketch")}
    assert not {m: deps for m, deps in bad.items() if deps}
