"""The ``ffprune`` command line: one module per subcommand, a fast start, errors by kind, shared parsing.

The library functions a subcommand calls are monkeypatched where a test is about the command line itself
(exit codes, what is printed, which arguments reach the library); the end-to-end runs are in the tests of
each area (test_agents, test_bench, test_export, test_suite).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import ffprune.agents.cli as cli
from ffenv.errors import FFPruneError, SearchInterrupted, WorkerLostError
from ffprune.agents.cli import main
from ffprune.agents.cli.common import parse_kwargs
from ffprune.agents.experiments.bench import BenchOverrides, BenchSpec
from ffprune.agents.experiments.engine import Runner

HEAVY = ("torch", "gymnasium", "stable_baselines3", "matplotlib", "ffenv", "ffprune.agents.methods",
         "ffprune.agents.experiments", "ffprune.agents.tools", "ray", "transformers")
"""What the parser must not import: ``--help`` and ``--version`` start without them."""

FAKE_RESULT = {
    "env_id": "FFPrune-Llama-v0", "agent": "uniform", "seed": 0, "env_kwargs": {"target_sparsity": 0.3},
    "best": {"sparsity": 0.3001, "reward": -0.25, "reward_ppl": 90.5, "dense_reward_ppl": 66.25, "eval_ppl": 101.25,
             "dense_eval_ppl": 80.11, "eval_ppl_after_calib": 95.5},
    "cost": {"evaluations": 1, "tokens": 4096, "seconds": 0.5, "evaluations_to_best": 1},
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# ----------------------------------------------------------------------------- one module per subcommand
def test_every_subcommand_is_a_module_with_its_arguments_beside_its_handler():
    names = [m.NAME for m in cli.SUBCOMMANDS]
    assert sorted(names) == ["allocate", "amortised", "bench", "bench-env", "claim", "eval", "export", "fetch", "fidelity",
                             "methods", "models", "search", "suite", "surrogate", "tune"]
    assert list(_subparsers(cli.build_parser())) == names
    for module in cli.SUBCOMMANDS:
        assert module.__name__.startswith("ffprune.agents.cli.") and module.__doc__ and module.HELP
        assert list(inspect.signature(module.add_arguments).parameters) == ["p"], module.__name__
        assert list(inspect.signature(module.run).parameters) == ["args"], module.__name__
        assert inspect.signature(module.run).return_annotation in (int, "int"), module.__name__
    args = cli.build_parser().parse_args(["search", "--budget", "3"])
    assert args.run is cli.search.run and args.command == "search" and args.budget == 3


def test_bench_and_search_name_their_workers_apart():
    """``search --workers``: env population actors; ``bench --cell-workers``: Ray tasks for the cells."""
    parser = cli.build_parser()
    assert parser.parse_args(["search", "--workers", "2"]).workers == 2
    assert parser.parse_args(["bench", "--cell-workers", "2"]).cell_workers == 2
    assert parser.parse_args(["bench", "--docs", "a.md", "--docs", "b.md"]).docs == ["a.md", "b.md"]
    assert parser.parse_args(["bench"]).calib_alpha is None  # None: the env config's calib_alpha
    assert parser.parse_args(["export", "r.json", "--out", "x"]).calib_alpha is None
    for gone in (["bench", "--workers", "2"], ["bench", "--readme", "README.md"]):
        with pytest.raises(SystemExit):
            parser.parse_args(gone)


# ----------------------------------------------------------------------------- fast start
@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["search", "--help"], ["bench", "--help"],
                                  ["surrogate", "record", "--help"]])
def test_help_and_version_import_nothing_heavy(argv):
    code = (
        "import sys\n"
        "from ffprune.agents.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "import json\n"
        f"print(json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in {HEAVY!r}))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"ffprune {version('ffprune')}"


def test_help_needs_no_registry():
    """The method and suite names come from ``ffprune methods`` and ``run()``, not from the parser."""
    sub = _subparsers(cli.build_parser())
    assert "ffprune methods" in sub["search"].format_help() and "ffprune methods" in sub["bench"].format_help()
    suite = next(a for a in sub["bench"]._actions if a.dest == "suite")
    assert suite.choices is None  # validated in run(), where the suite registry is imported


# ----------------------------------------------------------------------------- parse_kwargs
def test_parse_kwargs_reads_json_values_and_names_the_flag():
    assert parse_kwargs(["model=tiny-opt", "reward_windows=8", "keep=[0.5, 1]", "fast=true", "eq=a=b", "empty="],
                        "--env-kwarg") == {"model": "tiny-opt", "reward_windows": 8, "keep": [0.5, 1], "fast": True,
                                           "eq": "a=b", "empty": ""}
    assert parse_kwargs(None, "--env-kwarg") == {}
    with pytest.raises(FFPruneError, match=r"^--agent-kwarg expects KEY=VALUE, got 'lr'$"):
        parse_kwargs(["lr"], "--agent-kwarg")
    with pytest.raises(FFPruneError, match="--env-kwarg expects KEY=VALUE"):
        parse_kwargs(["=3"], "--env-kwarg")


def test_a_bad_kwarg_is_one_line_naming_its_flag(capsys):
    assert main(["search", "--agent-kwarg", "lr", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "ffprune search: error: --agent-kwarg expects KEY=VALUE, got 'lr'"


# ----------------------------------------------------------------------------- ffprune methods
def test_methods_lists_every_registered_method(capsys):
    from ffprune.agents.methods import METHODS

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, method in METHODS.items():
        line = next((ln for ln in lines if ln.split()[:1] == [name]), None)
        assert line is not None, name
        assert line.split()[1] == method.kind and ",".join(method.modes) in line and method.description in line


# ----------------------------------------------------------------------------- errors by kind
def _raising(error: BaseException):
    def fake(*_args, **_kwargs):
        raise error

    return fake


@pytest.mark.parametrize(("error", "code", "line"), [
    (FFPruneError("budget must be a positive integer, got -3"), 2,
     "ffprune search: error: budget must be a positive integer, got -3"),
    (WorkerLostError("a population worker died twice; run again with --resume"), 1,
     "ffprune search: a population worker died twice; run again with --resume"),
    (SearchInterrupted(7, "r.ckpt"), 130,
     "ffprune search: interrupted after 7 episodes; resume with the same command and --resume (checkpoint r.ckpt)"),
])
def test_errors_by_kind_are_one_line_and_their_exit_code(monkeypatch, capsys, error, code, line):
    monkeypatch.setattr("ffprune.agents.experiments.search.run_search", _raising(error))
    assert main(["search", "--budget", "2", "--quiet"]) == code
    captured = capsys.readouterr()
    assert captured.err.strip() == line and captured.out == ""


def test_a_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr("ffprune.agents.experiments.search.run_search", _raising(ValueError("a bug, not bad input")))
    with pytest.raises(ValueError, match="a bug"):
        main(["search", "--budget", "2", "--quiet"])


def test_an_interrupted_bench_says_how_to_resume(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("ffprune.agents.experiments.bench.run_bench", _raising(KeyboardInterrupt()))
    assert main(["bench", "--out", str(tmp_path / "b"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err and f"{tmp_path / 'b'}/cells" in err


def test_bench_passes_cell_workers_and_the_envs_calib_alpha(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_bench(spec, *, out, runner, progress):
        calls.append((spec, out, runner, progress))
        (Path(out) / "results.md").parent.mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.md").write_text("| method | ppl |\n")
        return [], []

    monkeypatch.setattr("ffprune.agents.experiments.bench.run_bench", fake_bench)
    out = str(tmp_path / "b")
    assert main(["bench", "--out", out, "--cell-workers", "3", "--methods", "uniform, owl", "--env-kwarg",
                 "reward_windows=2", "--reward", "calibrated", "--quiet"]) == 0
    assert main(["bench", "--out", out, "--calib-alpha", "0.5", "--budget", "4", "--seeds", "1"]) == 0
    first, second = calls
    assert first == (BenchSpec("FFPrune-Llama-v0", 200, 3, ["uniform", "owl"],
                               env_kwargs={"reward_windows": 2, "reward": "calibrated"}), out, Runner(3), False)
    assert first[0].calib_alpha is None  # not given: the env config's calib_alpha
    assert (second[0].budget, second[0].seeds) == (4, 1) and second[0].calib_alpha == 0.5
    assert second[2] == Runner(0) and second[3] is True
    assert "| method | ppl |" in capsys.readouterr().out


@pytest.mark.parametrize(("failures", "code"), [
    ([{"task": "llama-s0.3", "env_id": "FFPrune-Llama-v0", "method": "ppo", "seed": 1, "error": "RuntimeError",
       "message": "out of memory", "traceback": ""}], 1),
    ([], 0),
])
def test_suite_failures_are_listed_and_the_exit_code_says_so(monkeypatch, tmp_path, capsys, failures, code):
    import ffprune.agents.experiments.suite as suite

    out, docs = tmp_path / "core", tmp_path / "README.md"
    docs.write_text("<!-- suite:core -->\n<!-- /suite:core -->\n")
    calls = []

    def fake_suite(suite, out, overrides, runner, report):
        calls.append(("run", suite.name, suite.budget, suite.seeds, suite.methods, overrides, runner))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "suite.md").write_text("| method | IQM score |\n")
        return {"failures": failures}

    monkeypatch.setattr(suite, "run_suite", fake_suite)
    monkeypatch.setattr(suite, "check_sections", lambda files, name: calls.append(("check", files, name)))
    monkeypatch.setattr(suite, "update_sections", lambda files, o, name: calls.append(("update", files, o, name)) or [docs])
    assert main(["bench", "--suite", "core", "--out", str(out), "--docs", str(docs), "--budget", "2", "--quiet"]) == code
    captured = capsys.readouterr()
    assert calls[0] == ("check", [str(docs)], "core")  # checked before the run
    assert calls[1] == ("run", "core", 2, 3, None, BenchOverrides(progress=False), Runner(0, None))
    assert "| method | IQM score |" in captured.out
    if failures:
        assert len(calls) == 2  # the docs are not rewritten from a suite with failed cells
        assert "failed: llama-s0.3 ppo seed 1: RuntimeError: out of memory" in captured.err
        assert "1 cell(s) of suite core failed" in captured.err
    else:
        assert calls[2] == ("update", [str(docs)], str(out), "core") and captured.err == ""
        assert f"updated: the suite:core sections of {docs}" in captured.out


def test_bench_suite_arguments_are_checked_in_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("ffprune.agents.experiments.suite.run_suite", _raising(AssertionError("no run on bad input")))
    assert main(["bench", "--suite", "core", "--docs", str(tmp_path / "missing.md"), "--quiet"]) == 2
    assert "missing.md" in capsys.readouterr().err  # the docs are checked before hours of search
    assert main(["bench", "--suite", "nope", "--quiet"]) == 2
    assert "nope" in (err := capsys.readouterr().err) and "core" in err
    assert main(["bench", "--suite", "core", "--env", "FFPrune-Llama-v0", "--quiet"]) == 2
    assert "--suite runs its own tasks" in capsys.readouterr().err
    assert main(["bench", "--docs", "README.md", "--quiet"]) == 2
    assert "needs --suite" in capsys.readouterr().err


# ----------------------------------------------------------------------------- search output and logging
def test_search_prints_the_result_and_shows_library_progress_on_stderr(monkeypatch, capsys):
    calls = []

    def fake_search(spec, **kwargs):
        calls.append((spec, kwargs))
        logging.getLogger("ffprune.agents.experiments.search").info("progress line")
        logging.getLogger("ffenv.envs.prune_env").debug("debug line")
        return FAKE_RESULT

    monkeypatch.setattr("ffprune.agents.experiments.search.run_search", fake_search)
    handlers = {n: list(logging.getLogger(n).handlers) for n in cli.LOGGERS}
    assert main(["search", "--agent", "uniform", "--workers", "2", "--env-kwarg", "reward_windows=2",
                 "--agent-kwarg", "k=1", "--calibrate"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "progress line\n"
    assert "reward-split ppl 90.50 (dense 66.25)" in captured.out and "held-out eval ppl 101.25" in captured.out
    assert "after post-pruning calibration: held-out eval ppl 95.50" in captured.out
    spec, kwargs = calls[0]
    assert spec.env_kwargs == {"reward_windows": 2, "workers": 2} and spec.agent_kwargs == {"k": 1}
    assert spec.agent == "uniform" and spec.calibrate is True and kwargs["progress"] is True
    assert main(["search", "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: warnings only
    assert {n: list(logging.getLogger(n).handlers) for n in cli.LOGGERS} == handlers  # the handler is removed again
