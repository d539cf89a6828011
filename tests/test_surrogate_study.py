"""What the surrogates are for and how far to trust them (issue 21): ``ffprune surrogate rank`` (the core suite's method
ranking on the surrogates vs the real one, Kendall's τ-b) and ``ffprune surrogate study`` (RL algorithms to many
evaluations on the surrogates, learning curves), on conftest's tiny recorded evaluation set (tiny-llama structured),
two suite tasks (``llama-s0.3``, ``llama-s0.5``), tiny budgets.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import SURROGATE_KW

from ffenv import FFPruneEnv, FFPruneError
from ffenv.io import read_json
from ffprune.agents.cli import main
from ffprune.agents.experiments import bench
from ffprune.agents.experiments.bench import BenchSpec, cell_path, run_cells
from ffprune.agents.experiments.rlstats import kendall_tau_b
from ffprune.agents.experiments.search import run_search
from ffprune.agents.experiments.surrogate_rank import GOAL, run_rank
from ffprune.agents.experiments.surrogate_study import (
    TABLE_BUDGETS,
    StudySpec,
    cell_curve,
    checkpoint_grid,
    curve_path,
    report_study,
    run_study,
)

TASKS = {"llama-s0.3": "FFPrune-Llama-v0", "llama-s0.5": "FFPrune-Llama-Structured50-v0"}
"""The two core suite tasks on tiny-llama structured, the (model, mode) conftest records."""


@pytest.fixture(scope="module")
def surrogate_kw(surrogate_recording):
    """Env settings of the tiny surrogate (conftest's recording)."""
    return {**SURROGATE_KW, "surrogate": True, "surrogate_data": str(surrogate_recording[2])}


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """``ffprune ARGV`` fails with exit code 2 and one stderr line holding every needle."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# ----------------------------------------------------------------------------- Kendall's tau-b
def test_kendall_tau_b_counts_pairs_and_corrects_for_ties():
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau_b([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # C = 2, D = 1 of 3 pairs
    # ties: a = [1, 1, 2], b = [1, 2, 3]: C = 2, D = 0, n0 = 3, n1 = 1, n2 = 0 -> 2 / sqrt(2 * 3)
    assert kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))
    with pytest.raises(FFPruneError, match="equally long vectors of >= 2 values"):
        kendall_tau_b([1, 2], [1, 2, 3])
    with pytest.raises(FFPruneError, match="finite"):
        kendall_tau_b([1, float("nan")], [1, 2])
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 12))
        a, b = rng.integers(0, 4, n).astype(float), rng.integers(0, 4, n).astype(float)
        want = stats.kendalltau(a, b).statistic
        got = kendall_tau_b(a, b)
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)


# ----------------------------------------------------------------------------- the study's curves
def test_checkpoint_grid_is_log_spaced_with_the_table_budgets():
    grid = checkpoint_grid(10_000, 40)
    assert grid[0] == 1 and grid[-1] == 10_000 and grid == sorted(set(grid)) and set(TABLE_BUDGETS) <= set(grid)
    assert 35 <= len(grid) <= 43
    assert checkpoint_grid(30, 5) == [1, 2, 5, 13, 30]  # 30 ** (k / 4), rounded
    with pytest.raises(FFPruneError, match="budget must be a positive integer"):
        checkpoint_grid(0)


def test_cell_curve_scores_the_best_so_far_with_the_surrogate(surrogate_kw):
    cell = run_search(TASKS["llama-s0.3"], agent="random", budget=20, seed=1, logdir=None, env_kwargs=surrogate_kw,
                      progress=False)
    grid = [1, 3, 7, 20]
    curve = cell_curve(cell, grid, "llama-s0.3")
    rewards = [p["reward"] for p in cell["history"]]  # random search: every episode at the target, all windows
    assert curve["best_reward"] == [max(rewards[:k]) for k in grid]
    assert curve["best_episode"] == [int(np.argmax(rewards[:k])) + 1 for k in grid]
    env = FFPruneEnv(**{**surrogate_kw, "target_sparsity": 0.3})
    for k, episode, ppl in zip(grid, curve["best_episode"], curve["eval_ppl"]):
        action = np.array(cell["history"][episode - 1]["action"], np.float32)
        assert ppl == env.evaluate(action, split="eval")["ppl"], k  # the surrogate's predicted held-out ppl
    assert curve["eval_ppl"][-1] == cell["best"]["eval_ppl"] and curve["final"]["eval_ppl"] == cell["best"]["eval_ppl"]
    assert curve["surrogate"] == cell["surrogate"] and curve["axis"] == "surrogate_evaluations"
    real = {k: v for k, v in cell.items() if k != "surrogate"}
    real["env_kwargs"] = {**cell["env_kwargs"], "surrogate": False}
    with pytest.raises(FFPruneError, match="is a real result: the study's curves score allocations with the surrogate"):
        cell_curve(real, grid)


@pytest.mark.slow
def test_study_runs_resumes_and_reports_learning_curves(surrogate_kw, tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    methods = ["random", "evolution", "fastforward"]
    kwargs = dict(budget=30, seeds=2, out=out, env_kwargs={k: v for k, v in surrogate_kw.items() if k != "surrogate"},
                  progress=False, points=8, reps=50)
    analysis = run_study(tasks=list(TASKS), methods=methods, **kwargs)
    grid = checkpoint_grid(30, 8)
    assert analysis["checkpoints"] == grid and analysis["table_budgets"] == [30] and analysis["failures"] == []
    for task, env_id in TASKS.items():
        config = json.loads((out / task / "config.json").read_text())
        assert config["env_id"] == env_id and config["budget"] == 30 and config["surrogate"]["data"].endswith(".npz")
        for method in ["uniform", *methods]:
            for seed in range(2 if method != "uniform" else 1):  # a deterministic method runs once
                cell = read_json(cell_path(out / task, method, seed))
                curve = read_json(curve_path(out / task, method, seed))
                assert cell["surrogate"] == curve["surrogate"] and curve["checkpoints"] == grid
                assert curve["final"]["eval_ppl"] == cell["best"]["eval_ppl"]
    # the aggregate: IQM of the suite's normalised score over 2 tasks x 2 seeds, where every run has a best
    ff = analysis["curves"]["fastforward"]
    assert ff["runs"] == 4 and ff["iqm"][0] is None and ff["runs_with_best"][0] == 0  # under the curriculum's warm-up
    for method in ("random", "evolution"):
        curve = analysis["curves"][method]
        assert all(v is not None for v in curve["iqm"]) and curve["runs_with_best"] == [4] * len(grid)
        assert all(lo <= v <= hi for v, lo, hi in zip(curve["iqm"], curve["low"], curve["high"]))
    uniform = {t: read_json(curve_path(out / t, "uniform", 0))["final"]["eval_ppl"] for t in TASKS}
    finals = []
    for task in TASKS:
        for seed in range(2):
            c = read_json(curve_path(out / task, "evolution", seed))
            finals.append((uniform[task] - c["eval_ppl"][-1]) / (uniform[task] - c["dense_eval_ppl"]))
    assert analysis["curves"]["evolution"]["iqm"][-1] == pytest.approx(np.mean(sorted(finals)[1:3]))
    assert set(analysis["wall_seconds"]) == set(methods) and analysis["wall_seconds"]["random"]["cells"] == 4
    md = (out / "study.md").read_text()
    assert "**Surrogate results**" in md and "| evolution | 0." in md and "30 evaluations" in md
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # resumed: no search runs again; the report from the curve files alone is the same
    monkeypatch.setattr(bench, "run_search", lambda *a, **k: pytest.fail("a finished cell ran again"))
    assert run_study(tasks=list(TASKS), methods=methods, **kwargs)["curves"] == analysis["curves"]
    spec = StudySpec(list(TASKS), methods, 30, 2, reps=50, points=8)
    assert report_study(spec, out=out)["curves"] == analysis["curves"]
    assert main(["surrogate", "study", "--tasks", ",".join(TASKS), "--methods", ",".join(methods), "--budget", "30",
                 "--seeds", "2", "--out", str(out), "--reps", "50", "--points", "8", "--report-only", "--quiet"]) == 0
    assert "| evolution |" in capsys.readouterr().out
    # the folder holds these settings: another budget is refused, before any search
    with pytest.raises(FFPruneError, match="holds a bench with other settings"):
        run_study(tasks=list(TASKS), methods=methods, **{**kwargs, "budget": 31})


def test_a_failing_study_cell_is_recorded_and_the_others_finish(surrogate_kw, tmp_path, monkeypatch, capsys):
    real_search = bench.run_search  # the study's cells search through bench.search_cell

    def flaky(spec, **kwargs):
        if spec.agent == "random" and spec.seed == 1:
            raise RuntimeError("boom")
        return real_search(spec, **kwargs)

    monkeypatch.setattr(bench, "run_search", flaky)
    out = tmp_path / "s"
    argv = ["surrogate", "study", "--tasks", "llama-s0.3", "--methods", "random", "--budget", "6", "--seeds", "2",
            "--out", str(out), "--points", "3", "--reps", "20", "--quiet", "--surrogate-data", surrogate_kw["surrogate_data"],
            *[f"--env-kwarg={k}={v}" for k, v in SURROGATE_KW.items()]]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "1 cell(s) failed; run the same command again to retry them" in captured.err
    study = json.loads((out / "study.json").read_text())
    assert [(f["task"], f["method"], f["seed"], f["error"], f["message"]) for f in study["failures"]] == [
        ("llama-s0.3", "random", 1, "RuntimeError", "boom")]
    assert study["curves"]["random"]["runs"] == 1 and "| llama-s0.3 | random | 1 | RuntimeError: boom |" in captured.out
    monkeypatch.setattr(bench, "run_search", real_search)
    assert main(argv) == 0  # the same command retries the failed cell only
    assert json.loads((out / "study.json").read_text())["curves"]["random"]["runs"] == 2


def test_study_variants_are_rows_of_their_own_with_their_settings_recorded(surrogate_kw, tmp_path, capsys):
    out = tmp_path / "s"
    data = ["--surrogate-data", surrogate_kw["surrogate_data"]] + [f"--env-kwarg={k}={v}" for k, v in SURROGATE_KW.items()]
    nocurr = ("ff-nocurr:fastforward:batch_episodes=4,curriculum.sparsity_schedule=none,"
              "curriculum.fidelity_schedule=none")
    common = ["surrogate", "study", "--tasks", "llama-s0.3", "--budget", "12", "--seeds", "1", "--out", str(out),
              "--points", "4", "--reps", "20", "--quiet"]
    argv = [*common, "--methods", "fastforward", "--variant", nocurr, *data]
    assert main(argv) == 0
    study = json.loads((out / "study.json").read_text())
    assert study["methods"] == ["fastforward", "ff-nocurr"]
    # under the curriculum FastForward has no best at the target before the warm-up ends; without it, from episode 1
    assert study["curves"]["fastforward"]["runs_with_best"][0] == 0
    assert study["curves"]["ff-nocurr"]["runs_with_best"] == [1] * len(study["checkpoints"])
    curve = read_json(curve_path(out / "llama-s0.3", "ff-nocurr", 0))
    cell = read_json(cell_path(out / "llama-s0.3", "ff-nocurr", 0))
    assert curve["method"] == "ff-nocurr" and cell["agent"] == "fastforward" and curve["variant"] == cell["variant"]
    assert cell["variant"]["agent_kwargs"] == {"batch_episodes": 4}
    assert cell["variant"]["curriculum_kwargs"] == {"sparsity_schedule": "none", "fidelity_schedule": "none"}
    assert cell["curriculum_kwargs"] == cell["variant"]["curriculum_kwargs"] and cell["agent_config"]["batch_episodes"] == 4
    assert "| ff-nocurr |" in capsys.readouterr().out
    assert study["variants"] == {"ff-nocurr": cell["variant"]}
    assert main([*common, "--methods", "fastforward", "--variant", nocurr, "--report-only"]) == 0
    out_text = capsys.readouterr().out
    assert "| ff-nocurr |" in out_text
    assert ('* `ff-nocurr`: fastforward with `batch_episodes=4`, `curriculum.sparsity_schedule="none"`, '
            '`curriculum.fidelity_schedule="none"`') in out_text
    # the label's folder holds other settings: refused before any search; bad variants are one line
    one_line_error(capsys, [*common, "--methods", "fastforward", "--variant",
                            "ff-nocurr:fastforward:batch_episodes=6", *data], "holds cells of other settings")
    one_line_error(capsys, [*common, "--variant", "fastforward:batch_episodes=4", *data],
                   "--variant expects LABEL:METHOD:key=value")
    one_line_error(capsys, [*common, "--variant", "x:fastforward:nope=1", *data], "variant 'x'", "not fastforward settings")
    one_line_error(capsys, [*common, "--variant", "x:random:curriculum.stairs=2", *data],
                   "does not search under the curriculum")
    one_line_error(capsys, [*common, "--variant", "random:fastforward:batch_episodes=4", *data], "is a method's name")


def test_study_bad_input_is_one_line(capsys, tmp_path, surrogate_kw):
    out = str(tmp_path / "s")
    one_line_error(capsys, ["surrogate", "study", "--tasks", "llama-s0.4", "--out", out],
                   "tasks must be distinct tasks of suite 'core'", "llama-s0.3")
    one_line_error(capsys, ["surrogate", "study", "--methods", "random,random", "--out", out], "methods must be distinct")
    one_line_error(capsys, ["surrogate", "study", "--budget", "0", "--out", out], "budget must be a positive integer")
    one_line_error(capsys, ["surrogate", "study", "--seeds", "-1", "--out", out], "seeds must be a positive integer")
    one_line_error(capsys, ["surrogate", "study", "--env-kwarg", "surrogate=false", "--out", out],
                   "surrogate must stay true")
    one_line_error(capsys, ["surrogate", "study", "--report-only", "--out", out], "holds no study curves at budget 10000")
    data = ["--surrogate-data", surrogate_kw["surrogate_data"]] + [f"--env-kwarg={k}={v}" for k, v in SURROGATE_KW.items()]
    one_line_error(capsys, ["surrogate", "study", "--tasks", "llama-s0.3", "--methods", "nope", "--out", out, *data],
                   "nope")
    # a (model, mode) without an evaluation set: named, with what exists, before any search
    one_line_error(capsys, ["surrogate", "study", "--tasks", "llama-u0.7", "--methods", "random", "--out", out, *data],
                   "mode='unstructured'", "tiny-llama-structured.npz")


# ----------------------------------------------------------------------------- the ranking, real vs surrogate
@pytest.fixture(scope="module")
def suites(tmp_path_factory, surrogate_kw):
    """Two tiny suite folders of the two tasks (budget 4, 2 seeds, uniform, owl, random, evolution; alphapruning on the
    surrogate only): real and on the surrogate, written by the bench (the suite's per-task layout)."""
    root = tmp_path_factory.mktemp("suites")
    methods = ["uniform", "owl", "random", "evolution"]
    for kind, kw, extra in (("real", SURROGATE_KW, []), ("surrogate", surrogate_kw, ["alphapruning"])):
        for task, env_id in TASKS.items():
            run_cells(BenchSpec(env_id, 4, 2, methods + extra, env_kwargs=kw, calibrate=False), out=root / kind / task,
                      progress=False)
    return root


@pytest.mark.slow
def test_rank_compares_the_iqm_rankings_with_kendall_tau(suites, tmp_path, capsys):
    analysis = run_rank(real_out=suites / "real", surrogate_out=suites / "surrogate", out=tmp_path / "rank",
                        tasks=list(TASKS), budget=4, seeds=2, reps=50)
    overall = analysis["overall"]
    assert overall["methods"] == sorted(overall["methods"], key=lambda m: overall["real_rank"][overall["methods"].index(m)])
    assert set(overall["methods"]) == {"uniform", "owl", "random", "evolution"}
    assert overall["left_out"] == ["alphapruning"]  # in one suite only: not in the ranking, but said so
    assert overall["kendall_tau_b"] == pytest.approx(kendall_tau_b(overall["real"], overall["surrogate"]))
    assert overall["meets_goal"] == (overall["kendall_tau_b"] >= GOAL)
    real = read_json(cell_path(suites / "real" / "llama-s0.3", "uniform", 0))
    sur = read_json(cell_path(suites / "surrogate" / "llama-s0.3", "uniform", 0))
    assert analysis["per_task"]["llama-s0.3"]["uniform_eval_ppl"] == {"real": real["best"]["eval_ppl"],
                                                                        "surrogate": sur["best"]["eval_ppl"]}
    uniform = overall["methods"].index("uniform")
    assert overall["real"][uniform] == 0.0 and overall["surrogate"][uniform] == 0.0  # the reference, on both
    for task, found in analysis["per_task"].items():
        assert len(found["methods"]) == 4, task
        n = sum(1 for i, m in enumerate(found["methods"]) for k in found["methods"][i + 1:]
                if (found["real"][i] - found["real"][found["methods"].index(k)])
                * (found["surrogate"][i] - found["surrogate"][found["methods"].index(k)]) < 0)
        assert len(found["discordant"]) == n
    saved = json.loads((tmp_path / "rank" / "ranking.json").read_text())
    assert saved["overall"]["kendall_tau_b"] == overall["kendall_tau_b"] and saved["surrogate"]["llama-s0.3"]
    md = (tmp_path / "rank" / "ranking.md").read_text()
    assert "Kendall's τ-b" in md and "| llama-s0.5 | 4 |" in md and "Left out of the overall ranking" in md
    assert main(["surrogate", "rank", "--real", str(suites / "real"), "--surrogate-out", str(suites / "surrogate"),
                 "--out", str(tmp_path / "cli"), "--tasks", ",".join(TASKS), "--budget", "4", "--seeds", "2",
                 "--reps", "50"]) == 0
    assert json.loads((tmp_path / "cli" / "ranking.json").read_text())["overall"] == saved["overall"]
    assert "written:" in capsys.readouterr().out


@pytest.mark.slow
def test_rank_refuses_swapped_missing_and_mismatched_folders(suites, tmp_path, capsys):
    real, sur, tasks = str(suites / "real"), str(suites / "surrogate"), ",".join(TASKS)
    base = ["surrogate", "rank", "--out", str(tmp_path), "--tasks", tasks, "--budget", "4", "--seeds", "2"]
    one_line_error(capsys, [*base, "--real", sur, "--surrogate-out", real], "--real", "holds a suite run on the surrogate")
    one_line_error(capsys, [*base, "--real", real, "--surrogate-out", real], "must be two folders")
    one_line_error(capsys, ["surrogate", "rank", "--out", str(tmp_path), "--real", real, "--surrogate-out", sur,
                            "--budget", "4"], "--real", "has no task 'llama-u0.7'")
    one_line_error(capsys, ["surrogate", "rank", "--out", str(tmp_path), "--real", real, "--surrogate-out", sur,
                            "--tasks", tasks], "at budget 4, not", "at budget 100")
    one_line_error(capsys, [*base, "--real", real, "--surrogate-out", sur, "--reps", "0"], "reps must be a positive")
