"""The package layering holds on every module, and no module reaches around it, not even by a string.

Layers, bottom to top (a module may import its own layer and the layers below, never above)::

    ffenv.errors, ffenv.io        shared checks, exceptions, atomic files
    ffenv.lm                      language model and corpus (windows, loading, perplexity)
    ffenv.pruning                 importance → projector → engines (the Pruner protocol) → Calib
    ffenv.config                  EnvConfig
    ffenv.surrogate               evaluation sets and the surrogate models of surrogate mode
    ffenv.envs                    backend + features → FFPruneEnv (reset/step/score, population steps)
    ffenv.wrappers                curriculum, search accounting, the search logger
    ffenv.vector                  batching: the env factory with Ray's evaluator, the vector env
    ffenv.registration, ffenv     gymnasium ids, the public API
    ffprune.baselines             heuristic allocators and search baselines
    ffprune.agents.results        reading result files (tools and experiments share it)
    ffprune.agents.methods        FastForward, SB3 runners, the registry
    ffprune.agents.tools          consumers of an env (export, zero-shot, speed, zoo): ffenv + results only
    ffprune.agents.defaults       the experiments' default settings as plain values (the command line reads them)
    ffprune.agents.experiments    search, bench, suite, statistics, reports
    ffprune.agents.cli            the command line; nothing imports it

Every reference counts: ``import`` statements anywhere (module level, functions, classes, ``try``/``if``),
``importlib.import_module("...")`` / ``__import__("...")`` calls, and any string constant that names a project
module (``"ffenv.vector.factory:make_env"`` entry points, ``"pkg.mod"`` lookups). The references between
modules form no cycle at all. The un-namespaced names ``agents`` / ``baselines`` are never imported:
installed, they would be the PyPI distributions of those names. Project imports inside function bodies are
kept to the command line, where they keep ``ffprune --help`` fast.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("ffenv", "baselines", "agents")
# the importable name of each source folder (pyproject's package-dir mapping)
INSTALLED_AS = {"ffenv": "ffenv", "baselines": "ffprune.baselines", "agents": "ffprune.agents"}
LAYERS: tuple[tuple[str, ...], ...] = (
    ("ffenv.errors", "ffenv.io"),
    ("ffenv.lm",),
    ("ffenv.pruning",),
    ("ffenv.config",),
    ("ffenv.surrogate",),
    ("ffenv.envs",),
    ("ffenv.wrappers",),
    ("ffenv.vector",),
    ("ffenv.registration", "ffenv.zoo", "ffenv"),
    ("ffprune.baselines",),
    ("ffprune.agents.results",),
    ("ffprune.agents.methods",),
    ("ffprune.agents.tools",),
    ("ffprune.agents.defaults",),
    ("ffprune.agents.experiments",),
    ("ffprune.agents", "ffprune.agents.cli"),
)
"""Layer prefixes, bottom to top; a module belongs to the layer of its longest matching prefix."""
EXTRA_RULES = {
    # the tools consume an environment: they never learn about methods, baselines or experiments
    "ffprune.agents.tools": ("ffenv", "ffprune.agents.results", "ffprune.agents.tools"),
}
LAZY_IMPORTS_ALLOWED_IN = ("ffprune.agents.cli",)  # function-level project imports: only the command line
MODULE_STRING = re.compile(r"^(ffenv|ffprune)(\.\w+)+(:[\w.]+)?$")


@dataclass(frozen=True)
class Import:
    """One reference of a source file to one module."""

    file: str  # relative to the repository root, POSIX
    line: int
    target: str  # absolute dotted name (relative imports resolved); for ``from m import n``: ``m.n``
    base: str  # the module named by the statement (``m`` for ``from m import n``)
    in_function: bool  # inside a function body (runs at call time, not import time)
    type_checking: bool  # inside ``if TYPE_CHECKING:`` (never runs)
    code: str  # the statement, as one line of source
    kind: str = "import"  # "import", "importlib" (import_module / __import__ argument) or "string"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.code}"


def module_name(rel: Path) -> str:
    """Dotted name a source file is imported as (``agents/experiments/search.py`` -> ``ffprune.agents.experiments.search``)."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([INSTALLED_AS[parts[0]], *parts[1:]])


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(name: str) -> int | None:
    """Index in :data:`LAYERS` of a module name (longest matching prefix); ``None`` outside the project."""
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if _under(name, prefix) and len(prefix) > best:
                best, rank = len(prefix), i
    return rank


def layer_name(rank: int) -> str:
    return "/".join(LAYERS[rank])


def is_bare(name: str) -> bool:
    """The un-namespaced folder names, which are other distributions once installed."""
    return _under(name, "agents") or _under(name, "baselines")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
    return ".".join([*parts, *([node.module] if node.module else [])])


def _dynamic_import(node: ast.Call) -> str | None:
    """The module name of ``importlib.import_module("m")`` / ``import_module("m")`` / ``__import__("m")``."""
    fn = node.func
    name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def collect_imports(source: str, rel: str, module: str, is_package: bool = False) -> list[Import]:
    """Every reference in ``source`` (the whole tree), with relative imports resolved against ``module``."""
    found: list[Import] = []
    dynamic_args: set[int] = set()

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
        if isinstance(node, ast.Call) and (name := _dynamic_import(node)) is not None:
            dynamic_args.add(id(node.args[0]))
            found.append(Import(rel, node.lineno, name, name, in_function, type_checking, ast.unparse(node), "importlib"))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in dynamic_args \
                and MODULE_STRING.match(node.value):
            name = node.value.split(":")[0]
            found.append(Import(rel, node.lineno, name, name, in_function, type_checking, repr(node.value), "string"))
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


def _reached(imp: Import) -> str:
    """The module name an import reaches (``from ffprune.agents import cli`` reaches ``ffprune.agents.cli``)."""
    return imp.target if layer_of(imp.target) is not None else imp.base


# ----------------------------------------------------------------------------- the collector itself
def test_collector_sees_every_kind_of_reference():
    source = (
        "import os\n"
        "from . import sibling\n"
        "from ..baselines import heuristics\n"
        "try:\n    import ffenv.lm.data\nexcept ImportError:\n    pass\n"
        "class C:\n    from ffenv.io import atomic_write\n"
        "def f():\n    from ffprune.agents import cli\n    return cli\n"
        "if TYPE_CHECKING:\n    from ffenv.envs.prune_env import FFPruneEnv\n"
        "ENTRY = 'ffenv.vector.factory:make_env'\n"
        "env_cls = importlib.import_module('ffenv.envs.prune_env').FFPruneEnv\n"
        "mod = __import__('ffprune.agents.cli')\n"
        "DOC = 'see ffenv.lm for the model'\n"
    )
    got = {(i.line, i.target, i.in_function, i.type_checking, i.kind)
           for i in collect_imports(source, "x.py", "ffprune.agents.x")}
    assert got == {
        (1, "os", False, False, "import"),
        (2, "ffprune.agents.sibling", False, False, "import"),
        (3, "ffprune.baselines.heuristics", False, False, "import"),
        (5, "ffenv.lm.data", False, False, "import"),
        (9, "ffenv.io.atomic_write", False, False, "import"),
        (11, "ffprune.agents.cli", True, False, "import"),
        (14, "ffenv.envs.prune_env.FFPruneEnv", False, True, "import"),
        (15, "ffenv.vector.factory", False, False, "string"),
        (16, "ffenv.envs.prune_env", False, False, "importlib"),
        (17, "ffprune.agents.cli", False, False, "importlib"),
    }


def test_layers_are_assigned_by_longest_prefix():
    assert [layer_of(n) for n in ("ffenv.errors", "ffenv.lm.data", "ffenv.envs.backend", "ffenv", "ffenv.registration",
                                  "ffprune.agents.tools.export", "ffprune.agents.cli.search", "numpy")] == [
        0, 1, 5, 8, 8, 12, 15, None]
    assert layer_of("ffenv.vector.factory") > layer_of("ffenv.envs.prune_env") > layer_of("ffenv.pruning.calib")
    assert is_bare("agents.search") and is_bare("baselines") and not is_bare("ffprune.agents")


def test_every_source_module_has_a_layer(imports):
    missing = [str(rel) for rel in imports if layer_of(module_name(rel)) is None]
    assert not missing, f"modules outside every layer of LAYERS: {missing}"
    scanned = {layer_of(module_name(rel)) for rel in imports}
    assert scanned == set(range(len(LAYERS))), f"layers with no module: {set(range(len(LAYERS))) - scanned}"


# ----------------------------------------------------------------------------- the rules
def layer_problems(imports: dict[Path, list[Import]]) -> list[str]:
    """One line per reference against the layers (empty: the layering holds)."""
    problems = []
    for rel, found in imports.items():
        mod = module_name(rel)
        rank = layer_of(mod)
        for imp in found:
            if is_bare(imp.base):
                problems.append(f"{imp.where}  -- bare '{imp.base.split('.')[0]}' is the PyPI distribution of that "
                                f"name once installed; import ffprune.{imp.base} instead")
                continue
            reached = _reached(imp)
            target_rank = layer_of(reached)
            if target_rank is None or imp.type_checking:
                continue
            if _under(reached, "ffprune.agents.cli") and not _under(mod, "ffprune.agents.cli"):
                problems.append(f"{imp.where}  -- nothing imports the command line; move what is shared out of it")
            elif target_rank > rank:
                problems.append(f"{imp.where}  -- {mod} ({layer_name(rank)}) reaches up to {reached} "
                                f"({layer_name(target_rank)}); data flows up the layers, never down them")
            for layer, allowed in EXTRA_RULES.items():
                if _under(mod, layer) and not any(_under(reached, a) for a in allowed):
                    problems.append(f"{imp.where}  -- {layer} may import only {list(allowed)}")
    return list(dict.fromkeys(problems))  # one line per statement, not per imported name


def import_cycles(imports: dict[Path, list[Import]]) -> list[str]:
    """Every cycle of references between modules, each followed by the statements that make it."""
    modules = {module_name(rel): rel for rel in imports}

    def known(name: str) -> str | None:  # the module a reference executes (longest known prefix)
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in modules:
                return ".".join(parts[:n])
        return None

    graph: dict[str, dict[str, Import]] = {m: {} for m in modules}
    for mod, rel in modules.items():
        for imp in imports[rel]:
            if imp.type_checking:
                continue
            dep = known(imp.target) or known(imp.base)
            if dep is not None and dep != mod and not _under(mod, dep):  # a package's own __init__ is not a cycle
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
    return report


def test_references_follow_the_layers(imports):
    problems = layer_problems(imports)
    assert not problems, "references against the layers:\n" + "\n".join(problems)


def test_no_cycle_between_modules(imports):
    """Any reference (module level, in functions, importlib, strings) counts as an edge; the graph is acyclic."""
    report = import_cycles(imports)
    assert not report, "import cycle(s) between modules (move the shared code into a lower module):\n" + "\n".join(report)


def test_the_old_hidden_cycle_would_fail_both_rules():
    """How the env used to reach Ray: a module-level import up, and an importlib string back down."""
    files = {
        Path("ffenv/envs/prune_env.py"): "from ffenv.vector.ray_workers import RayEvaluator\n",
        Path("ffenv/vector/ray_workers.py"): "import importlib\n"
                                             "env_cls = importlib.import_module('ffenv.envs.prune_env').FFPruneEnv\n",
        Path("agents/tools/export.py"): "from ffprune.agents.experiments.search import result_env\n",
    }
    imports = {rel: collect_imports(src, rel.as_posix(), module_name(rel)) for rel, src in files.items()}
    problems = layer_problems(imports)
    assert any("prune_env.py:1" in p and "reaches up to ffenv.vector.ray_workers" in p for p in problems)
    assert any("tools/export.py:1" in p and "may import only" in p for p in problems)
    assert import_cycles(imports)[0] == "ffenv.envs.prune_env -> ffenv.vector.ray_workers -> ffenv.envs.prune_env"


def test_project_imports_in_functions_only_in_the_cli(imports):
    problems = [
        f"{imp.where}  -- project import inside a function: move it to the top of the module "
        "(lazy imports belong only in ffprune.agents.cli)"
        for rel, found in imports.items() if not any(_under(module_name(rel), p) for p in LAZY_IMPORTS_ALLOWED_IN)
        for imp in found if imp.in_function and imp.kind == "import" and layer_of(_reached(imp)) is not None
    ]
    problems = list(dict.fromkeys(problems))  # one line per statement, not per imported name
    assert not problems, "function-level project imports outside the command line:\n" + "\n".join(problems)
