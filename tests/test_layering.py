"""The package layering holds on every module: data flows ffenv <- baselines <- agents <- command line.

* ``ffenv`` (the environment) imports only ``ffenv``;
* ``baselines`` (installed as ``ffprune.baselines``) imports ``ffenv`` and ``baselines``;
* ``agents`` (installed as ``ffprune.agents``) imports ``ffenv``, ``baselines`` and ``agents``;
* the command line (``agents/cli.py``, ``ffprune.agents.cli``) imports anything; nothing else imports it.

The un-namespaced names ``agents`` / ``baselines`` are never imported: installed, they would be the PyPI
distributions of those names. Every import is checked (module level, in functions, classes, ``try`` and
``if`` blocks); strings (entry points, ``importlib.import_module`` arguments) are not imports. Module-level
imports between ``ffenv`` modules form no cycle, and project imports inside function bodies are kept to the
command line, where they keep ``ffprune --help`` fast.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("ffenv", "baselines", "agents")
# the importable name of each source folder (pyproject's package-dir mapping)
INSTALLED_AS = {"ffenv": "ffenv", "baselines": "ffprune.baselines", "agents": "ffprune.agents"}
ALLOWED = {
    "ffenv": {"ffenv"},
    "baselines": {"ffenv", "baselines"},
    "agents": {"ffenv", "baselines", "agents"},
    "cli": {"ffenv", "baselines", "agents", "cli"},
}
LAYERS = "data flows ffenv <- baselines <- agents <- cli (agents/cli.py)"
LAZY_IMPORTS_ALLOWED_IN = {"cli"}  # function-level project imports: only the command line


@dataclass(frozen=True)
class Import:
    """One import statement's reference to one module."""

    file: str  # relative to the repository root, POSIX
    line: int
    target: str  # absolute dotted name (relative imports resolved); for ``from m import n``: ``m.n``
    base: str  # the module named by the statement (``m`` for ``from m import n``)
    in_function: bool  # inside a function body (runs at call time, not import time)
    type_checking: bool  # inside ``if TYPE_CHECKING:`` (never runs)
    code: str  # the statement, as one line of source

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.code}"


def module_name(rel: Path) -> str:
    """Dotted name a source file is imported as (``agents/search.py`` -> ``ffprune.agents.experiments.search``)."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([INSTALLED_AS[parts[0]], *parts[1:]])


def package_of_file(rel: Path) -> str:
    """``ffenv`` / ``baselines`` / ``agents`` / ``cli`` for a file under the repository root."""
    if rel.parts[0] == "agents" and (rel.parts[1] == "cli.py" or rel.parts[1] == "cli" and len(rel.parts) > 2):
        return "cli"
    return rel.parts[0]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def package_of_module(name: str) -> str | None:
    """The layer an imported module belongs to; ``"bare"`` for the un-namespaced folder names; else ``None``."""
    if _under(name, "ffenv"):
        return "ffenv"
    if _under(name, "ffprune.baselines"):
        return "baselines"
    if _under(name, "ffprune.agents.cli"):
        return "cli"
    if _under(name, "ffprune.agents"):
        return "agents"
    if _under(name, "agents") or _under(name, "baselines"):
        return "bare"
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
    return ".".join([*parts, *([node.module] if node.module else [])])


def collect_imports(source: str, rel: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import in ``source`` (the whole tree), with relative imports resolved against ``module``."""
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            code = ast.unparse(node)
            if isinstance(node, ast.Import):
                refs = [(alias.name, alias.name) for alias in node.names]
            else:
                base = _resolve_from(node, module, is_package)
                refs = [(f"{base}.{alias.name}" if alias.name != "*" else base, base) for alias in node.names]
            for target, base in refs:
                found.append(Import(rel, node.lineno, target, base, in_function, type_checking, code))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, in_function, True)
            for child in node.orelse:
                visit(child, in_function, type_checking)
            return
        nested = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, nested, type_checking)

    visit(ast.parse(source, filename=rel), False, False)
    return found


def _source_files() -> list[Path]:
    files = sorted(p.relative_to(ROOT) for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py"))
    return [p for p in files if not any(part.startswith(".") or part == "__pycache__" for part in p.parts)]


@pytest.fixture(scope="module")
def imports() -> dict[Path, list[Import]]:
    out = {}
    for rel in _source_files():
        source = (ROOT / rel).read_text(encoding="utf-8")
        out[rel] = collect_imports(source, rel.as_posix(), module_name(rel), is_package=rel.name == "__init__.py")
    return out


def _layer_of(imp: Import) -> str | None:
    """The layer an import reaches: ``from ffprune.agents import cli`` reaches ``cli``, not ``agents``."""
    return package_of_module(imp.target) or package_of_module(imp.base)


# ----------------------------------------------------------------------------- the collector itself
def test_collector_sees_every_kind_of_import():
    source = (
        "import os\n"
        "from . import sibling\n"
        "from ..baselines import heuristics\n"
        "try:\n    import ffenv.lm.data\nexcept ImportError:\n    pass\n"
        "class C:\n    from ffenv.io import atomic_write\n"
        "def f():\n    from ffprune.agents import cli\n    return cli\n"
        "if TYPE_CHECKING:\n    from ffenv.envs.prune_env import FFPruneEnv\n"
        "ENTRY = 'ffenv.envs.prune_env:FFPruneEnv'\n"
    )
    got = {(i.line, i.target, i.in_function, i.type_checking) for i in collect_imports(source, "x.py", "ffprune.agents.x")}
    assert got == {
        (1, "os", False, False),
        (2, "ffprune.agents.sibling", False, False),
        (3, "ffprune.baselines.heuristics", False, False),
        (5, "ffenv.lm.data", False, False),
        (9, "ffenv.io.atomic_write", False, False),
        (11, "ffprune.agents.cli", True, False),
        (14, "ffenv.envs.prune_env.FFPruneEnv", False, True),
    }
    assert package_of_file(Path("agents/cli.py")) == "cli" and package_of_file(Path("agents/bench.py")) == "agents"
    assert [package_of_module(n) for n in ("ffenv.envs.prune_env", "ffprune.baselines", "ffprune.agents.cli.x", "ffprune.agents",
                                           "agents.search", "baselines", "numpy", "ffenvx")] == [
        "ffenv", "baselines", "cli", "agents", "bare", "bare", None, None]


def test_every_source_folder_is_scanned(imports):
    packages = {package_of_file(rel) for rel in imports}
    assert packages == {"ffenv", "baselines", "agents", "cli"}, f"scanned files: {sorted(map(str, imports))}"


# ----------------------------------------------------------------------------- the rules
def test_imports_follow_the_layering(imports):
    problems = []
    for rel, found in imports.items():
        layer = package_of_file(rel)
        for imp in found:
            reached = _layer_of(imp)
            if reached == "bare":
                problems.append(f"{imp.where}  -- bare '{imp.base.split('.')[0]}' is the PyPI distribution of that "
                                f"name once installed; import ffprune.{imp.base} instead")
            elif reached == "cli" and layer != "cli":
                problems.append(f"{imp.where}  -- nothing imports the command line (ffprune.agents.cli); "
                                "move what is shared out of agents/cli.py")
            elif reached is not None and reached not in ALLOWED[layer]:
                problems.append(f"{imp.where}  -- {layer} may import only {sorted(ALLOWED[layer])}, "
                                f"not {reached} ({LAYERS})")
    problems = list(dict.fromkeys(problems))  # one line per statement, not per imported name
    assert not problems, "imports against the package layering:\n" + "\n".join(problems)


def test_no_module_level_import_cycle_in_ffenv(imports):
    modules = {module_name(rel): rel for rel in imports if package_of_file(rel) == "ffenv"}

    def known(name: str) -> str | None:  # the ffenv module an import executes (longest known prefix)
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in modules:
                return ".".join(parts[:n])
        return None

    graph: dict[str, dict[str, Import]] = {m: {} for m in modules}
    for mod, rel in modules.items():
        for imp in imports[rel]:
            if imp.in_function or imp.type_checking:
                continue
            dep = known(imp.target) or known(imp.base)
            if dep is not None and dep != mod:
                graph[mod].setdefault(dep, imp)

    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(mod: str) -> None:
        state[mod] = 1
        path.append(mod)
        for dep in sorted(graph[mod]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                dfs(dep)
        path.pop()
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            dfs(mod)
    report = []
    for cycle in cycles:
        report.append(" -> ".join(cycle))
        report += [f"    {graph[a][b].where}" for a, b in zip(cycle, cycle[1:])]
    assert not cycles, ("module-level import cycle(s) between ffenv modules (move the shared code into a lower "
                        "module that both can import):\n" + "\n".join(report))


def test_project_imports_in_functions_only_in_the_cli(imports):
    problems = [
        f"{imp.where}  -- project import inside a function: move it to the top of the module "
        "(lazy imports belong only in agents/cli.py)"
        for rel, found in imports.items() if package_of_file(rel) not in LAZY_IMPORTS_ALLOWED_IN
        for imp in found if imp.in_function and _layer_of(imp) is not None
    ]
    problems = list(dict.fromkeys(problems))  # one line per statement, not per imported name
    assert not problems, "function-level project imports outside the command line:\n" + "\n".join(problems)
