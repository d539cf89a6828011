"""The README and the guide pages in docs/ keep working as printed.

* The README's hand-written optimiser runs as printed and shows up in TensorBoard beside the built-in methods.
* Every ```python block of README.md and docs/*.md runs (page by page, in order, in one namespace per page, in a
  temporary folder, on small settings: fewer reward, calibration and held-out windows, smaller budgets), or is
  marked ``<!-- not run here: REASON -->`` on the line above it.
* Every ``ffprune ...`` command line (in ```bash blocks and in inline code) is accepted by the CLI's argument
  parser, so a documented flag cannot go stale.
* Relative links and pictures point at files that exist; the architecture picture is drawn by its script; the
  architecture map names every module of the package.
* The generated suite sections (the README's headline, the full section in docs/suite.md) are the generator's output.
"""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md"))]
GUIDES = ["environment", "search", "suite", "export", "scaling", "results", "architecture"]
"""The guide pages the README links to (docs/<name>.md)."""

NOT_RUN = re.compile(r"<!-- not run here: (?P<reason>[^>]*\S[^>]*) -->")
TESTED_ELSEWHERE = {"<!-- own-optimiser -->", "<!-- method-example -->"}
"""Markers of python blocks that a dedicated test below runs (with its own shrinking and checks)."""

SMALL_ENV = {"reward_windows": 2, "calib_samples": 8, "eval_samples": 2, "seq_len": 64}
"""What every registered id builds while a page's blocks run (the registered kwargs are patched, so the
printed code needs no change): the blocks' arithmetic is checked, not the benchmark's numbers."""

SHRINK: dict[str, list[tuple[str, str]]] = {
    "docs/search.md": [('agent="evolution", budget=40,', 'agent="evolution", budget=3,')],
    "docs/export.md": [('agent="fastforward", budget=200,', 'agent="uniform", budget=1,'),
                       ('"pruned/llama-t0.3")  # the checks', '"pruned/llama-t0.3", speed=False)  # the checks')],
}
"""Per page: (printed text, what runs instead), each found exactly once in the page's runnable code."""

SLOW_PAGES = {"docs/export.md"}
"""Pages whose blocks take longer than the fast suite allows (a search, an export, a reload)."""


# ---------------------------------------------------------------------------- reading the pages
def python_blocks(page: str) -> list[tuple[str, str, int]]:
    """``(line above, code, line number)`` of every ```python block of a page."""
    lines = (ROOT / page).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append((lines[start - 2] if start >= 2 else "", "\n".join(body) + "\n", start + 1))
        i += 1
    return blocks


def _runs_here(above: str) -> bool:
    """Whether the python block under the line ``above`` is run by :func:`test_page_python_blocks_run`."""
    return not NOT_RUN.search(above) and above.strip() not in TESTED_ELSEWHERE


def runnable_blocks(page: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of the page's python blocks that run here, in order, with :data:`SHRINK`'s
    replacements applied (each must match the page's runnable code exactly once)."""
    blocks = [(line, body) for above, body, line in python_blocks(page) if _runs_here(above)]
    for old, new in SHRINK.get(page, []):
        found = sum(body.count(old) for _line, body in blocks)
        assert found == 1, f"{page}: the shrink {old!r} must match the page's runnable code exactly once, found {found}"
        blocks = [(line, body.replace(old, new)) for line, body in blocks]
    return blocks


def bash_commands(page: str) -> list[tuple[int, str]]:
    """``(line, command)`` of every command in the page's ```bash blocks (continuation lines joined)."""
    lines = (ROOT / page).read_text().splitlines()
    out, inside, pending, first = [], False, "", 0
    for n, line in enumerate(lines, 1):
        if line.strip().startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if not inside:
            continue
        if not pending:
            first = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((first, pending + line))
        pending = ""
    return out


def inline_commands(page: str) -> list[tuple[int, str]]:
    """``(line, command)`` of every inline code span starting with ``ffprune `` outside fenced blocks and HTML
    comments (the generated sections' markers belong to their generator)."""
    blank = lambda m: "\n" * m.group(0).count("\n")  # noqa: E731  (keeps the line numbers)
    text = re.sub(r"```.*?```|<!--.*?-->", blank, (ROOT / page).read_text(), flags=re.S)
    return [(text.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()))
            for m in re.finditer(r"`(ffprune\s[^`]+)`", text)]


def ffprune_argvs(command: str) -> list[list[str]]:
    """The ``ffprune`` invocations of a shell line: their arguments after ``ffprune``."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)  # `a; b` splits at the `;`; `#` starts a comment
    lexer.whitespace_split = True
    tokens = list(lexer)
    argvs, segment = [], []
    for token in [*tokens, "&&"]:
        if token in ("&&", "||", ";", "|"):
            while segment and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", segment[0]):  # VAR=value prefixes
                segment = segment[1:]
            if segment and segment[0] == "ffprune":
                argvs.append(segment[1:])
            segment = []
        else:
            segment.append(token)
    return argvs


def _parser() -> argparse.ArgumentParser:
    from ffprune.agents.cli import build_parser

    return build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices}


def parse_error(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """``None`` if the CLI accepts ``argv``, else argparse's message."""
    try:
        parser.parse_args(argv)
    except SystemExit as stop:
        return None if stop.code == 0 else "rejected by the parser (see its usage message above)"
    return None


# ---------------------------------------------------------------------------- the README's own optimiser
def own_optimiser_snippet() -> str:
    text = README.read_text()
    match = re.search(r"<!-- own-optimiser -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its <!-- own-optimiser --> python block"
    return match.group(1)


def test_readme_own_optimiser_is_short_and_runs(tmp_path, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code = own_optimiser_snippet()
    assert len(code.strip().splitlines()) <= 15
    small = code.replace("budget=100", "budget=4").replace(
        'gym.make("FFPrune-Llama-v0")',
        'gym.make("FFPrune-Llama-v0", reward_windows=2, calib_samples=8, eval_samples=2, seq_len=64)')
    assert small.count("budget=4") == 1 and small.count("reward_windows=2") == 1
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(small, "README own-optimiser", "exec"), namespace)
    env = namespace["env"]
    assert env.cost["episodes"] == 4 and env.cost["evaluations"] == 4 and env.best is not None
    acc = EventAccumulator(str(tmp_path / "runs/FFPrune-Llama-v0/my-random/seed0"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"by_evaluations/best_reward", "by_tokens/reward", "by_wall_ms/ppl"} <= tags
    assert [e.step for e in acc.Scalars("by_evaluations/reward")] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------- every page's code blocks
def test_readme_is_short_and_links_every_guide():
    text = README.read_text()
    assert len(text.splitlines()) <= 200, "the README is the five-minute read; move details into a guide page"
    for name in GUIDES:
        assert (DOCS / f"{name}.md").is_file(), f"docs/{name}.md is missing"
        assert f"](docs/{name}.md)" in text, f"the README does not link docs/{name}.md"


def test_every_python_block_runs_or_says_why_not():
    """Each block is run by :func:`test_page_python_blocks_run` or marked with a reason; shrinks stay matched."""
    seen = 0
    for page in PAGES:
        for above, body, line in python_blocks(page):
            seen += 1
            marked = NOT_RUN.search(above)
            assert marked or above.strip() in TESTED_ELSEWHERE or not above.strip().startswith("<!--"), (
                f"{page}:{line}: the comment above a python block must be '<!-- not run here: REASON -->'")
            assert body.strip(), f"{page}:{line}: empty python block"
        runnable_blocks(page)  # every shrink of the page matches exactly once
    assert seen >= 8


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PAGES else p
                                  for p in PAGES if any(_runs_here(above) for above, _b, _l in python_blocks(p))])
def test_page_python_blocks_run(page, tmp_path, monkeypatch):
    import gymnasium as gym

    import ffenv
    from ffprune.agents.methods.registry import METHODS

    for env_id in ffenv.env_ids() + ffenv.env_ids(sequential=True):
        for key, value in SMALL_ENV.items():
            monkeypatch.setitem(gym.registry[env_id].kwargs, key, value)
    methods = dict(METHODS)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{Path(page).stem}"}
    try:
        for line, code in runnable_blocks(page):  # a traceback names the page and its line
            exec(compile("\n" * (line - 1) + code, page, "exec"), namespace)
    finally:
        METHODS.clear()
        METHODS.update(methods)
        for value in namespace.values():
            if isinstance(value, (gym.Env, gym.vector.VectorEnv)):
                value.close()
        ffenv.clear_cache()


def test_method_example_registers_and_runs(tmp_path, monkeypatch):
    """The method example (docs/search.md, linked from the README) gives a scored result, like a built-in method's."""
    import gymnasium as gym

    import ffenv
    from ffprune.agents.methods.registry import METHODS

    code = [body for above, body, _l in python_blocks("docs/search.md") if above.strip() == "<!-- method-example -->"]
    assert len(code) == 1, "docs/search.md lost its <!-- method-example --> python block"
    for env_id in ffenv.env_ids():
        for key, value in SMALL_ENV.items():
            monkeypatch.setitem(gym.registry[env_id].kwargs, key, value)
    small = code[0].replace('budget=100, seed=0, out="r/my-search.json")',
                            'budget=3, seed=0, out="r/my-search.json", progress=False)')
    methods = dict(METHODS)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    try:
        exec(compile(small, "README method example", "exec"), namespace)
        assert METHODS["my-search"].kind == "search"
    finally:
        METHODS.clear()
        METHODS.update(methods)
    result = namespace["result"]
    assert result["agent"] == "my-search" and result["cost"]["evaluations"] == 3
    assert result["agent_stats"] == {"episodes": 3} and result["best"]["eval_ppl"] > 0
    assert (tmp_path / "r" / "my-search.json").is_file()


# ---------------------------------------------------------------------------- command lines
def test_every_ffprune_command_line_parses():
    parser = _parser()
    subcommands = _subcommands(parser)
    assert parse_error(parser, ["search", "--no-such-flag"]) is not None  # the check can fail
    failures, checked = [], 0
    for page in PAGES:
        for line, command in bash_commands(page):
            for argv in ffprune_argvs(command):
                checked += 1
                if parse_error(parser, argv):
                    failures.append(f"{page}:{line}: ffprune {' '.join(argv)}")
        for line, command in inline_commands(page):
            argv = shlex.split(command)[1:]
            checked += 1
            if len(argv) == 1:  # a mention of a subcommand (`ffprune export`), not a command line
                if argv[0] not in subcommands:
                    failures.append(f"{page}:{line}: `{command}`: no such subcommand ({sorted(subcommands)})")
            elif parse_error(parser, argv):
                failures.append(f"{page}:{line}: `{command}`")
    assert checked >= 30
    assert not failures, "documented command lines the CLI rejects:\n" + "\n".join(failures)


def test_command_extraction():
    assert ffprune_argvs('pip install -e ".[eval]" && ffprune eval DIR --tasks x  # note') == [["eval", "DIR", "--tasks",
                                                                                               "x"]]
    assert ffprune_argvs("OMP_NUM_THREADS=1 ffprune models; tensorboard --logdir runs") == [["models"]]


# ---------------------------------------------------------------------------- links, picture, map
def test_relative_links_resolve():
    missing = []
    for page in PAGES:
        path = ROOT / page
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (path.parent / target.split("#")[0]).exists():
                missing.append(f"{page}: {target}")
    assert not missing, "links to files that do not exist:\n" + "\n".join(missing)


def test_architecture_picture_is_drawn(tmp_path):
    out = tmp_path / "architecture.png"
    done = subprocess.run([sys.executable, str(DOCS / "architecture.py"), "--out", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    assert (DOCS / "architecture.png").is_file(), "run `python docs/architecture.py` and commit the picture"


def package_modules() -> list[str]:
    """Every module of the three packages, as a path from the repository root (``__init__.py`` left out)."""
    return sorted(p.relative_to(ROOT).as_posix() for top in ("ffenv", "baselines", "agents")
                  for p in (ROOT / top).rglob("*.py") if p.name != "__init__.py")


def test_architecture_map_and_picture_name_every_module():
    table = (DOCS / "architecture.md").read_text()
    rows = runpy.run_path(str(DOCS / "architecture.py"))["ROWS"]
    picture = " ".join(f"{package} {modules}" for _stage, boxes in rows for _layer, package, modules in boxes)
    cli = "agents/cli/"  # one module per subcommand: the map and the picture name the folder
    unmapped = [m for m in package_modules() if f"`{cli if m.startswith(cli) else m}`" not in table]
    undrawn = [m for m in package_modules() if not m.startswith(cli) and Path(m).stem not in picture]
    assert not unmapped, f"docs/architecture.md's map does not name {unmapped}"
    assert not undrawn, f"docs/architecture.py's picture does not name {undrawn} (then rerun it)"


def test_readme_suite_section_is_the_generated_one():
    """The suite results in the README (the headline) and the guide pages (the full section) are
    `ffprune bench --suite core --docs FILE`'s output from docs/results/core, not hand edits."""
    from ffprune.agents.experiments.suite import check_sections, render_sections

    pages = [ROOT / page for page in PAGES if "<!-- suite:core" in (ROOT / page).read_text()]
    assert README in pages and check_sections([README], "core")[README] == ["headline"]
    assert any("full" in kinds for kinds in check_sections(pages, "core").values()), "no page holds the full section"
    stale = [page.name for page, text in render_sections(pages, DOCS / "results" / "core", "core").items()
             if page.read_text() != text]
    assert not stale, f"{stale}: rerun `ffprune bench --suite core --docs FILE` (their sections are generated)"
