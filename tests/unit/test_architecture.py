"""The shape of the code (docs/architecture.md), checked from the source as setup.cfg installs it:

- every folder of code is a package, and a module's file follows from its import path: the root
  package llmlaunch is the folder llmlaunch/, each llmlaunch.NAME mapped in package_dir is the
  top-level folder NAME/ (llmlaunch.launcher.trainer is launcher/trainer.py);
- no import cycle among llmlaunch's modules (every import statement counts, those inside functions
  too: a lazy import hides a cycle, it does not remove it);
- no module over MAX_LINES lines;
- the planner (llmlaunch.topology) imports nothing of the packages that run or show things;
- the layer rules (LAYER_RULES): the model runs without the launcher, the data pipeline without the
  model, the report without the launcher (what it shows of a run it reads through the root
  package: llmlaunch/run_files.py, llmlaunch/metrics_file.py).
"""
from __future__ import annotations

import ast
import configparser
from pathlib import Path

from paths import REPO

MAX_LINES = 500
# (package, a package it must not import), anywhere in it, imports inside functions included
LAYER_RULES = (("llmlaunch.model", "llmlaunch.launcher"), ("llmlaunch.data", "llmlaunch.model"),
               ("llmlaunch.report", "llmlaunch.launcher"))


def package_folders() -> dict[str, Path]:
    """{package: folder} for every package setup.cfg installs."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    packages = cfg["options"]["packages"].split()
    mapped = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    folders = {}
    for package in packages:
        if package in mapped:
            folders[package] = REPO / mapped[package]
        else:
            parent = next(p for p in sorted(folders, key=len, reverse=True)
                          if package.startswith(p + ".")) if "." in package else None
            folders[package] = (folders[parent] / package[len(parent) + 1:].replace(".", "/")
                                if parent else REPO / package)
    return folders


def modules() -> dict[str, Path]:
    """{module name: file} of every llmlaunch module (packages as their __init__)."""
    out = {}
    for package, folder in package_folders().items():
        for file in folder.glob("*.py"):
            name = package if file.stem == "__init__" else f"{package}.{file.stem}"
            out[name] = file
    return out


def imports_of(name: str, file: Path, known: set[str]) -> set[str]:
    """llmlaunch modules that `file` imports anywhere (module level or inside functions)."""
    is_package = file.stem == "__init__"
    base = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                module = f"{anchor}.{node.module}" if node.module else anchor
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
        else:
            continue
        for target in targets:
            # the longest known module the target names: a submodule, else its package
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("llmlaunch"):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, file, set(mods)) for name, file in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_folder_of_code_is_an_installed_package_named_by_its_path():
    folders = package_folders()
    for package, folder in folders.items():
        assert (folder / "__init__.py").is_file(), f"{package}: {folder} has no __init__.py"
        parts = package.split(".")
        if len(parts) == 1:
            assert folder == REPO / "llmlaunch"
        elif folder.parent == REPO:          # a mapped subpackage: llmlaunch.NAME is NAME/
            assert folder.name == parts[1] and len(parts) == 2, (package, folder)
        else:                                # nested: its path below its parent's folder
            assert folder == folders[".".join(parts[:-1])] / parts[-1], (package, folder)
    code_folders = {f.parent for top in set(folders.values()) for f in top.rglob("*.py")
                    if "__pycache__" not in f.parts}
    unpackaged = code_folders - set(folders.values())
    assert not unpackaged, f"folders of code that are not installed packages: {sorted(unpackaged)}"


def test_the_rule_finds_every_module_from_its_import_path():
    """llmlaunch.A.B... is llmlaunch/A/B.py unless llmlaunch.A is a mapped top-level folder A/."""
    mapped = {p.split(".")[1] for p, f in package_folders().items() if f.parent == REPO and "." in p}
    for name, file in modules().items():
        parts = name.split(".")[1:]
        root = REPO / parts[0] if parts and parts[0] in mapped else REPO / "llmlaunch"
        rest = parts[1:] if parts and parts[0] in mapped else parts
        expected = root.joinpath(*rest)
        assert file in (expected.with_suffix(".py"), expected / "__init__.py"), (name, file)


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 60 and graph["llmlaunch.cli.plan"], "the graph must see the real modules"
    assert "llmlaunch.topology.planner" in graph["llmlaunch.topology.plan_inputs"]
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_lazy_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_over_the_limit():
    long = {name: n for name, file in modules().items()
            if (n := len(file.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_planner_imports_nothing_that_runs_or_shows():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("llmlaunch.topology"):
            outside = {t for t in targets if not t.startswith("llmlaunch.topology")}
            assert not outside, f"{name} imports {sorted(outside)}"


def layer_violations(graph: dict[str, set[str]], rules=LAYER_RULES) -> list[str]:
    """'A imports B' for every import that breaks a (package, forbidden package) rule."""
    def inside(module: str, package: str) -> bool:
        return module == package or module.startswith(package + ".")

    return [f"{name} imports {target}" for name, targets in sorted(graph.items())
            for package, forbidden in rules if inside(name, package)
            for target in sorted(targets) if inside(target, forbidden)]


def test_layer_rules_hold():
    graph = import_graph()
    assert any(n.startswith("llmlaunch.report.") for n in graph), "the graph must see the report"
    assert not layer_violations(graph)


def test_the_layer_check_finds_a_lazy_import_across_a_layer():
    graph = {"llmlaunch.report.run_page": {"llmlaunch.launcher.metrics", "llmlaunch.metrics_file"},
             "llmlaunch.model.pipeline": {"llmlaunch.topology.layout"},
             "llmlaunch.data.loader": {"llmlaunch.model"},
             "llmlaunch.modelling": {"llmlaunch.launcher"}}   # a sibling name, not inside model
    assert layer_violations(graph) == ["llmlaunch.data.loader imports llmlaunch.model",
                                       "llmlaunch.report.run_page imports llmlaunch.launcher.metrics"]


def duplicate_test_basenames(root: Path) -> dict[str, list[str]]:
    """Test files that share a basename across tier folders: pytest (rootdir-relative module names,
    no __init__.py) imports only the first and refuses to collect the suite."""
    seen: dict[str, list[str]] = {}
    for path in sorted(root.rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(root)))
    return {name: paths for name, paths in seen.items() if len(paths) > 1}


def test_test_files_have_unique_basenames():
    assert not duplicate_test_basenames(REPO / "tests")


def test_the_basename_check_finds_a_clash(tmp_path):
    for tier in ("unit", "slurm"):
        (tmp_path / tier).mkdir()
        (tmp_path / tier / "test_elastic.py").write_text("")
    (tmp_path / "unit" / "test_other.py").write_text("")
    assert duplicate_test_basenames(tmp_path) == {
        "test_elastic.py": ["slurm/test_elastic.py", "unit/test_elastic.py"]}
