"""ffprune bench --suite: every task of a suite, normalised scores and aggregate statistics, resumable; a failing
cell does not stop the suite; the analysis is redone from the cells without any search; generated doc sections."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from ffenv.errors import FFPruneError
from ffenv.io import read_json
from ffprune.agents.cli import main
from ffprune.agents.experiments.bench import BenchOverrides, cell_path
from ffprune.agents.experiments.suite import (
    SUITES,
    Suite,
    SuiteReport,
    SuiteTask,
    SuiteVariant,
    analyse,
    check_sections,
    check_variants,
    equal_token_picks,
    get_suite,
    load_suite,
    normalised,
    render_sections,
    report_suite,
    run_suite,
    section_block,
    task_methods,
    update_sections,
)
from ffprune.agents.experiments.surrogate_rank import RankSpec
from ffprune.agents.methods.registry import METHODS, SearchMethod
from ffprune.agents.results import seed_files
from ffprune.baselines.heuristics import uniform_allocation
from ffprune.baselines.search import heuristic

SMALL = {"reward_windows": 2, "calib_samples": 4, "eval_samples": 2, "seq_len": 64}
QUIET = BenchOverrides(env_kwargs=SMALL, progress=False)
"""Small windows, no progress bars: every test run's overrides."""
ONE = Suite("one", (SuiteTask("llama-s0.3", "FFPrune-Llama-v0"),), budget=2, seeds=1, description="test: one task")


def test_core_suite_is_nine_registered_tasks():
    suite = get_suite("core")
    assert len(suite.tasks) == 9 and len({t.name for t in suite.tasks}) == 9
    targets = {}
    for task in suite.tasks:
        spec = gym.spec(task.env_id)
        targets[(spec.kwargs["model"], spec.kwargs["mode"], spec.kwargs["target_sparsity"])] = task.name
    assert {(m, mode, t) for m, mode, t in targets} == {
        (m, mode, t) for m in ("tiny-llama", "tiny-mistral", "tiny-opt")
        for mode, t in (("structured", 0.3), ("structured", 0.5), ("unstructured", 0.7))}
    with pytest.raises(FFPruneError, match="suite must be one of"):
        get_suite("nope")
    assert main(["bench", "--suite", "core", "--seeds", "0", "--quiet"]) == 2  # refused before any work
    assert main(["bench", "--suite", "core", "--budget", "0", "--quiet"]) == 2


def test_task_methods_follow_the_registry_modes():
    llama_s, llama_u = SuiteTask("s", "FFPrune-Llama-v0"), SuiteTask("u", "FFPrune-Llama-Unstructured-v0")
    structured_only = sorted(m.name for m in METHODS.values() if m.modes == ("structured",))
    assert structured_only  # uniform-split and flap today; whatever the registry says tomorrow
    single_step = [m for m, method in METHODS.items() if "single-step" in method.formulations]  # the suite's tasks
    assert "amc-ddpg" not in single_step and task_methods(llama_s) == single_step
    assert task_methods(llama_u) == [m for m in single_step if m not in structured_only]
    assert task_methods(llama_u, ["random", *structured_only]) == ["uniform", "random"]  # the reference is always run
    assert task_methods(llama_s, ["random", *structured_only]) == ["uniform", "random", *structured_only]


def test_normalised_score():
    assert normalised(90.0, 90.0, 80.0) == 0.0
    assert normalised(80.0, 90.0, 80.0) == 1.0
    assert normalised(85.0, 90.0, 80.0) == 0.5
    assert normalised(100.0, 90.0, 80.0) == -1.0
    assert normalised(None, 90.0, 80.0) is None and normalised(float("inf"), 90.0, 80.0) is None


@pytest.fixture
def flaky_method(monkeypatch):
    """A registered method ``flaky`` that raises while ``state["broken"]`` and gives the uniform allocation after."""
    state = {"broken": True, "runs": 0}

    def run(env, seed, run_context, **params):
        state["runs"] += 1
        if state["broken"]:
            raise RuntimeError("flaky | broke\non purpose")
        return {"agent_stats": heuristic(env, uniform_allocation, seed)}

    monkeypatch.setitem(METHODS, "flaky", SearchMethod("flaky", run, "heuristic", description="test: fails on demand"))
    return state


@pytest.fixture
def two_task_suite(monkeypatch):
    suite = Suite("two", (SuiteTask("llama-s0.3", "FFPrune-Llama-v0"), SuiteTask("llama-u0.7", "FFPrune-Llama-Unstructured-v0")),
                  budget=2, seeds=1, description="test: one structured, one unstructured task")
    monkeypatch.setitem(SUITES, "two", suite)
    return suite


def test_a_failing_cell_does_not_stop_the_suite(tmp_path, flaky_method, two_task_suite, monkeypatch):
    out = tmp_path / "two"
    analysis = run_suite(two_task_suite.but(methods=["flaky"]), out, QUIET, report=SuiteReport(reps=50))
    failures = analysis["failures"]
    assert flaky_method["runs"] == 2  # both flaky cells ran, and neither stopped the reference cells
    assert [(f["task"], f["method"], f["seed"], f["error"]) for f in failures] == [
        ("llama-s0.3", "flaky", 0, "RuntimeError"), ("llama-u0.7", "flaky", 0, "RuntimeError")]
    assert failures[0]["message"] == "flaky | broke\non purpose"
    assert [(r["task"], r["method"]) for r in analysis["rows"]] == [("llama-s0.3", "uniform"), ("llama-u0.7", "uniform")]
    assert set(analysis["aggregate"]["plain"]) == {"uniform"}
    recorded = json.loads((out / "llama-u0.7" / "failures.json").read_text())
    assert [f["seed"] for f in recorded] == [0] and "Traceback" in recorded[0]["traceback"]
    assert not seed_files(out / "llama-u0.7" / "cells" / "flaky")  # no result for a failed cell
    md = (out / "suite.md").read_text()
    tail = md[md.index("Failures: 2 cell(s)"):]
    assert "| llama-u0.7 | flaky | 0 | RuntimeError: flaky \\| broke on purpose |" in tail
    assert "+ Calib IQM (1 structured task)" in md

    # the rerun retries only the failed cells; once they finish, the failures are gone
    flaky_method["broken"] = False
    again = run_suite(two_task_suite.but(methods=["flaky"]), out, QUIET, report=SuiteReport(reps=50))
    assert flaky_method["runs"] == 4 and again["failures"] == [] and not (out / "llama-u0.7" / "failures.json").exists()
    assert again["aggregate"]["plain"]["flaky"]["iqm"] == 0.0  # the uniform allocation again: score 0
    assert "Failures" not in (out / "suite.md").read_text()

    # the analysis again from the cells on disk: no search, no evaluation, the same numbers and files
    def no_search(*_a, **_k):
        raise AssertionError("report_suite ran a search or an evaluation")

    monkeypatch.setattr("ffprune.agents.experiments.bench.run_search", no_search)
    monkeypatch.setattr("ffprune.agents.experiments.suite.result_env", no_search)
    before = {f: (out / f).read_bytes() for f in ("suite.md", "scores.csv", "llama-u0.7/results.md")}
    report = report_suite(two_task_suite.but(methods=["flaky"]), out, report=SuiteReport(reps=50))
    assert report["aggregate"] == again["aggregate"] and report["rows"] == again["rows"]
    assert {f: (out / f).read_bytes() for f in before} == before
    with pytest.raises(FFPruneError, match="budget"):
        report_suite(two_task_suite.but(budget=3), out)


def test_analysis_needs_the_reference():
    suite = get_suite("core")
    with pytest.raises(FFPruneError, match="uniform"):
        analyse(suite.but(3, 1), {t.name: {"random": []} for t in suite.tasks})


def _cell(seed: int, rewards: list[float], tokens_each: int, final_ppl: float, target: float = 0.3) -> dict:
    """A finished cell whose search made one full evaluation per reward (action = [reward]) at ``tokens_each``."""
    history = [{"episode": i + 1, "reward": r, "target": target, "windows": 4, "action": [r], "evaluations": i + 1,
                "tokens": tokens_each * (i + 1), "best_reward": max(rewards[:i + 1])} for i, r in enumerate(rewards)]
    best = max(history, key=lambda h: h["reward"])
    return {"seed": seed, "env_kwargs": {"target_sparsity": target, "reward_windows": 4}, "history": history,
            "cost": {"tokens": history[-1]["tokens"], "evaluations": len(rewards), "seconds": 1.0},
            "best": {"action": best["action"], "reward": best["reward"], "eval_ppl": final_ppl, "reward_ppl": 1.0,
                     "dense_eval_ppl": 10.0, "episode": best["episode"], "evaluations": best["episode"]}}


def test_equal_tokens_scores_the_best_allocation_within_the_curriculum_spend(tmp_path, monkeypatch):
    """A search that spent more tokens than the curriculum's is scored at the allocation it had found by then: its
    final best when that came early, else one held-out evaluation, cached (a report reads the cache)."""
    suite = Suite("one", (SuiteTask("llama-s0.3", "FFPrune-Llama-v0"),), budget=3, seeds=1, description="test")
    monkeypatch.setitem(SUITES, "one", suite)
    ff = _cell(0, [0.1, 0.2, 0.3], 100, 15.0)  # curriculum: 300 tokens
    ff["history"][0]["target"] = 0.1  # an early evaluation at an easier target never counts
    cells = {"llama-s0.3": {"uniform": [_cell(0, [0.0], 100, 20.0)], "fastforward": [ff],
                            "random": [_cell(0, [0.5, 0.1, 0.2, 0.9], 100, 12.0), _cell(1, [0.7, 0.1, 0.2, 0.3], 100, 14.0)]}}
    evaluated = []

    class Env:
        class unwrapped:  # noqa: N801 - gymnasium's attribute
            @staticmethod
            def evaluate(action, split):
                evaluated.append((float(action[0]), split))
                return {"ppl": 16.0}

        def close(self):
            pass

    monkeypatch.setattr("ffprune.agents.experiments.suite.result_env", lambda cell: Env())
    (tmp_path / "llama-s0.3").mkdir()
    picks = equal_token_picks(suite, cells, tmp_path, measure=False)  # a report alone measures nothing
    assert evaluated == [] and picks["llama-s0.3"]["cells"]["random/seed0"].get("eval_ppl") is None
    partial = analyse(suite.but(3, 2), cells, reps=50, equal_tokens=picks)  # seed 1's pick is its final best: scored
    assert "random" not in partial["aggregate"]["equal_tokens"]  # no IQM from some seeds only
    picks = equal_token_picks(suite, cells, tmp_path)
    assert picks["llama-s0.3"]["tokens"] == 300
    assert picks["llama-s0.3"]["cells"] == {
        "random/seed0": {"episode": 1, "tokens": 100, "reward": 0.5, "eval_ppl": 16.0},  # 0.9 came after 300 tokens
        "random/seed1": {"episode": 1, "tokens": 100, "reward": 0.7, "eval_ppl": 14.0}}  # its final best: no evaluation
    assert evaluated == [(0.5, "eval")]
    assert equal_token_picks(suite, cells, tmp_path) == picks and len(evaluated) == 1  # cached
    analysis = analyse(suite.but(3, 2), cells, reps=50, equal_tokens=picks)
    rows = {(r["method"], r["seed"]): r for r in analysis["rows"]}
    assert rows[("random", 0)]["eval_ppl_equal_tokens"] == 16.0 and rows[("random", 0)]["score_equal_tokens"] == 0.4
    assert rows[("fastforward", 0)]["eval_ppl_equal_tokens"] == 15.0  # within its own spend: its result
    assert analysis["equal_tokens"] == {"llama-s0.3": 300}
    assert set(analysis["aggregate"]["equal_tokens"]) == {"uniform", "fastforward", "random"}
    on_surrogate = {"llama-s0.3": {row: [_cell(c["seed"], [h["reward"] for h in c["history"]], 0, 15.0) for c in runs]
                                   for row, runs in cells["llama-s0.3"].items()}}  # no tokens: nothing to equalise
    assert equal_token_picks(suite, on_surrogate, tmp_path / "surrogate") == {}


def test_full_split_measures_the_median_seed_of_the_rows_asked_once(tmp_path, monkeypatch):
    """The headline allocations on the whole test split: each asked row's median-seed cell and the dense model, measured
    once and cached; a report reads the cache, drops an entry whose cell changed, and shows the table."""
    import torch

    from ffprune.agents.experiments.reports import suite_markdown
    from ffprune.agents.experiments.suite import full_split_scores

    suite = Suite("one", (SuiteTask("llama-s0.3", "FFPrune-Llama-v0"),), budget=3, seeds=3, description="test")
    cells = {"llama-s0.3": {"uniform": [_cell(0, [0.0], 100, 20.0)],
                            "random": [_cell(0, [0.5], 100, 12.0), _cell(1, [0.7], 100, 14.0), _cell(2, [0.6], 100, 13.0)]}}
    measured = []

    class Env:
        class unwrapped:  # noqa: N801 - gymnasium's attribute
            class backend:  # noqa: N801
                @staticmethod
                def split_tokens(split, n):
                    return torch.zeros(5, 8, dtype=torch.long)

        def close(self):
            pass

    def fake_evaluate(env, action):
        measured.append(float(action[0]))
        return {"ppl": 20.0 + float(action[0]), "dense_ppl": 10.0}

    monkeypatch.setattr("ffprune.agents.experiments.suite.result_env", lambda cell: Env())
    monkeypatch.setattr("ffprune.agents.experiments.suite.whole_split", fake_evaluate)
    (tmp_path / "llama-s0.3").mkdir()
    assert full_split_scores(suite, cells, tmp_path) == {}  # nothing asked, nothing cached
    full = full_split_scores(suite, cells, tmp_path, ["random", "uniform"])
    assert measured == [pytest.approx(0.6), 0.0]  # random's median seed (2: 13.0), then uniform (dense comes with them)
    assert full["llama-s0.3"]["rows"]["random"] == {"seed": 2, "subset_ppl": 13.0, "full_ppl": pytest.approx(20.6)}
    assert full["llama-s0.3"]["windows"] == [5, 8] and full["llama-s0.3"]["dense"] == 10.0
    assert full_split_scores(suite, cells, tmp_path) == full and len(measured) == 2  # read back, nothing measured
    cells["llama-s0.3"]["random"][2]["best"]["action"] = [0.65]  # that cell ran again: its entry is stale
    assert set(full_split_scores(suite, cells, tmp_path)["llama-s0.3"]["rows"]) == {"uniform"}
    analysis = analyse(suite.but(3, 3), cells, reps=50)
    analysis["full_split"] = full
    assert "| llama-s0.3 | 5 × 8 | random (2) | 13.00 | 20.60 |" in suite_markdown(analysis)
    with pytest.raises(FFPruneError, match="full_split rows must be"):
        run_suite(SUITES["core"].but(3, 1, ["random"]), tmp_path / "x", report=SuiteReport(full_split=("randon",)))


@pytest.mark.slow
def test_suite_runs_resumes_and_aggregates(tmp_path, monkeypatch, capsys):
    out = tmp_path / "core"
    small_core = SUITES["core"].but(3, 2, ["fastforward", "random"])
    analysis = run_suite(small_core, out, QUIET, report=SuiteReport(agreement_points=3, reps=200))
    tasks = [t.name for t in SUITES["core"].tasks]
    for name in tasks:
        assert (out / name / "results.md").exists() and cell_path(out / name, "random", 1).exists()
        assert not cell_path(out / name, "uniform", 1).exists()  # deterministic: seed 0 once
    rows = analysis["rows"]
    assert len(rows) == 9 * (1 + 2 + 2) and analysis["failures"] == []  # tasks x (uniform once, fastforward, random x 2)
    assert all(r["score"] == 0.0 for r in rows if r["method"] == "uniform")  # the reference scores 0
    structured = [r for r in rows if "-s0." in r["task"]]
    assert all(r["score_calib"] is not None for r in structured)
    assert all(r["score_calib"] is None for r in rows if "-u0." in r["task"])
    agg = analysis["aggregate"]["plain"]
    assert set(agg) == {"uniform", "fastforward", "random"} and agg["uniform"]["iqm"] == 0.0
    for method in ("fastforward", "random"):
        lo, hi = agg[method]["ci"]
        assert lo <= agg[method]["iqm"] <= hi and len(agg[method]["tasks"]) == 9
    assert all(len(a["tasks"]) == 6 for a in analysis["aggregate"]["calib"].values())
    assert "+ Calib IQM (6 structured tasks)" in (out / "suite.md").read_text()
    p = analysis["improvement"]["plain"]["random"]
    assert 0.0 <= p["ci"][0] <= p["p"] <= p["ci"][1] <= 1.0 and p["tasks"] == 9
    assert set(analysis["agreement"]) == set(tasks)
    across = analysis["agreement_across_cells"]
    assert set(across) == set(tasks) and all(-1 <= a["spearman"] <= 1 and a["cells"] >= 2 for a in across.values())
    assert all(r["reward_ppl"] > 0 for r in rows)
    assert all(-1 <= a["spearman"] <= 1 or np.isnan(a["spearman"]) for a in analysis["agreement"].values())
    for f in ("suite.md", "suite.json", "scores.csv", "aggregate.png", "profiles.png"):
        assert (out / f).exists()
    # same numbers from the written cells (resume: nothing is recomputed, the analysis is deterministic)
    def explode(**_kw):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr("ffprune.agents.experiments.bench.run_search", lambda *a, **k: read_json(k["out"])
                        if k["out"].exists() else explode())
    again = run_suite(small_core, out, QUIET, report=SuiteReport(agreement_points=3, reps=200))
    assert again["aggregate"] == analysis["aggregate"] and again["improvement"] == analysis["improvement"]
    # the command line: same folder, printed table
    assert main(["bench", "--suite", "core", "--budget", "3", "--seeds", "2", "--methods", "fastforward,random",
                 "--out", str(out), "--quiet", *sum((["--env-kwarg", f"{k}={v}"] for k, v in SMALL.items()), [])]) == 0
    assert "IQM score" in capsys.readouterr().out
    assert main(["bench", "--suite", "core", "--env", "FFPrune-Llama-v0"]) == 2


SUITE_MD = """### Suite `core`: budget 3, 1 seed(s), 9 tasks

Normalised score = ...

| method | IQM |
|---|---|
| fastforward | 0.5 |

Held-out ppl per task:

| method | llama-s0.3 |
|---|---|
| fastforward | 85.00 |
"""


def test_doc_sections_are_rewritten_from_the_results(tmp_path):
    out = tmp_path / "docs" / "results" / "core"
    out.mkdir(parents=True)
    readme, guide = tmp_path / "README.md", tmp_path / "docs" / "suite.md"
    readme.write_text("# x\n\n<!-- suite:core:headline -->\nold headline\n<!-- /suite:core:headline -->\n\nafter\n")
    guide.write_text("# Suite\n\n<!-- suite:core -->\nold table\n<!-- /suite:core -->\n")
    assert check_sections([readme, guide]) == {readme: ["headline"], guide: ["full"]}
    with pytest.raises(FFPruneError, match="suite.md"):
        update_sections([readme, guide], out)  # nothing measured yet
    (out / "suite.md").write_text(SUITE_MD)
    assert update_sections([readme, guide], out) == [readme, guide]
    head, full = readme.read_text(), guide.read_text()
    assert "old headline" not in head and "| fastforward | 0.5 |" in head and head.endswith("\n\nafter\n")
    assert "Held-out ppl per task" not in head and "Suite `core`" not in head  # the aggregate table only
    assert "[docs/suite.md](docs/suite.md)" in head  # and a link to the full page
    assert "old table" not in full and "| fastforward | 85.00 |" in full and "](results/core/aggregate.png)" in full
    assert "<!-- /suite:core -->" in full and "headline" not in full
    assert update_sections([readme, guide], out) == []  # idempotent: the sections are found again by their markers
    assert render_sections([readme, guide], out) == {readme: head, guide: full}
    alone = update_sections([readme], out)  # without a full page the headline links to suite.md itself
    assert alone == [readme] and "](docs/results/core/suite.md)" in readme.read_text()

    (out / "suite.md").write_text(SUITE_MD + "\nFailures: 1 cell(s) raised ...\n\n| task | method | seed | error |\n")
    update_sections([readme], out)
    assert "Failures: 1 cell(s) raised" in readme.read_text() and "| task | method | seed | error |" not in readme.read_text()

    (tmp_path / "none.md").write_text("no markers\n")
    with pytest.raises(FFPruneError, match="none.md"):
        check_sections([readme, tmp_path / "none.md"])
    (tmp_path / "two.md").write_text(full + full)
    with pytest.raises(FFPruneError, match="two.md"):
        update_sections([tmp_path / "two.md"], out)
    with pytest.raises(FFPruneError, match="not a file"):
        check_sections([tmp_path / "missing.md"])
    with pytest.raises(FFPruneError, match="at least one"):
        check_sections([])
    with pytest.raises(FFPruneError, match="suite must be one of"):
        check_sections([readme], "nope")


# ----------------------------------------------------------------------------- variant labels (--tuned) and restricted runs
TUNED = SuiteVariant("fastforward", {"batch_episodes": 2}, {"fidelity_schedule": "none"}, name="b2", source="a test")


@pytest.fixture(scope="module")
def tuned_suite(tmp_path_factory):
    """One structured task, budget 2, one seed: uniform, fastforward and the label ``fastforward-tuned`` (TUNED)."""
    suite = ONE
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SUITES, "one", suite)
        out = tmp_path_factory.mktemp("suite") / "one"
        analysis = run_suite(suite.but(methods=["fastforward"], variants={"fastforward-tuned": TUNED}), out, QUIET,
                             report=SuiteReport(agreement_points=0, reps=50))
        yield out, analysis


def test_a_variant_runs_with_its_settings_as_a_row_of_its_own(tuned_suite):
    out, analysis = tuned_suite
    cell = read_json(cell_path(out / "llama-s0.3", "fastforward-tuned", 0))
    assert cell["agent_config"]["batch_episodes"] == 2 and cell["curriculum_kwargs"] == {"fidelity_schedule": "none"}
    assert cell["variant"] == {"label": "fastforward-tuned", "method": "fastforward", "name": "b2",
                               "agent_kwargs": {"batch_episodes": 2}, "curriculum_kwargs": {"fidelity_schedule": "none"},
                               "source": "a test"}
    default = read_json(cell_path(out / "llama-s0.3", "fastforward", 0))
    assert default["agent_config"]["batch_episodes"] != 2 and "variant" not in default
    assert (out / "llama-s0.3" / "tb" / "fastforward-tuned" / "FFPrune-Llama-v0" / "fastforward" / "seed0").is_dir()
    assert [r["method"] for r in analysis["rows"]] == ["fastforward", "uniform", "fastforward-tuned"]  # registry order
    assert set(analysis["aggregate"]["plain"]) == {"uniform", "fastforward", "fastforward-tuned"}
    assert "fastforward-tuned" in analysis["improvement"]["plain"]  # P(FF > fastforward-tuned)
    assert [r["method"] for r in analysis["reach"]] == ["fastforward-tuned"]
    assert analysis["variants"] == {"fastforward-tuned": {k: v for k, v in cell["variant"].items() if k != "label"}}
    md = (out / "suite.md").read_text()
    assert "| fastforward-tuned | 1 |" in md
    assert ('`fastforward-tuned` = fastforward with batch_episodes=2, curriculum.fidelity_schedule="none" '
            "(variant `b2`; a test)") in md
    assert "| fastforward-tuned |" in (out / "llama-s0.3" / "results.md").read_text()
    assert ",fastforward-tuned," in (out / "scores.csv").read_text()
    headline = section_block(out, out / "README.md", "one", "headline")
    assert "Variants: " in headline and "Held-out ppl per task" not in headline


def test_a_variant_label_must_not_be_a_method_and_its_folder_must_hold_its_settings(tuned_suite, monkeypatch):
    out, _ = tuned_suite
    monkeypatch.setattr("ffprune.agents.experiments.bench.run_search", _no_search)
    other = dataclasses.replace(TUNED, agent_kwargs={"batch_episodes": 4})
    with pytest.raises(FFPruneError, match=r"fastforward-tuned' holds cells of other settings \(.*'batch_episodes': 2"
                       r".*now .*'batch_episodes': 4"):
        run_suite(ONE.but(methods=[], variants={"fastforward-tuned": other}), out, QUIET)
    for label, variant, match in [("random", TUNED, "is a method's name"), ("PPO", TUNED, "is a method's name"),
                                  ("a b", TUNED, "letters, digits"),
                                  ("ff-x", dataclasses.replace(TUNED, agent_kwargs={}, curriculum_kwargs={}), "sets nothing"),
                                  ("ff-x", dataclasses.replace(TUNED, method="nope"), "agent must be one of")]:
        with pytest.raises(FFPruneError, match=match):
            check_variants({label: variant})
    with pytest.raises(FFPruneError, match="collide"):
        check_variants({"ff-x": TUNED, "FF-X": TUNED})
    with pytest.raises(FFPruneError, match="neither methods nor variant labels"):
        report_suite(dataclasses.replace(ONE, methods=("fastforward", "ff-missing")), out)


def _no_search(*_a, **_k):
    raise AssertionError("a search ran")


def test_a_restricted_run_keeps_every_other_row_in_the_report(tuned_suite, monkeypatch, capsys):
    out, first = tuned_suite
    failed = {"task": "llama-s0.3", "env_id": "FFPrune-Llama-v0", "method": "ppo", "seed": 0, "error": "RuntimeError",
              "message": "earlier", "traceback": ""}
    (out / "llama-s0.3" / "failures.json").write_text(json.dumps([failed, {**failed, "method": "random"}]))
    again = run_suite(ONE.but(methods=["random"]), out, QUIET, report=SuiteReport(agreement_points=0, reps=50))
    assert [r["method"] for r in again["rows"]] == ["fastforward", "random", "uniform", "fastforward-tuned"]
    assert [(f["method"], f["message"]) for f in again["failures"]] == [("ppo", "earlier")]  # not retried: still listed
    (out / "llama-s0.3" / "failures.json").unlink()
    assert again["aggregate"]["plain"]["fastforward-tuned"] == first["aggregate"]["plain"]["fastforward-tuned"]
    table = (out / "llama-s0.3" / "results.md").read_text()
    assert all(f"| {m} |" in table for m in ("uniform", "fastforward", "random", "fastforward-tuned"))
    # --report-only shows them too (no search), --methods restricts the report, a label is named like a method
    monkeypatch.setattr("ffprune.agents.experiments.bench.run_search", _no_search)
    assert report_suite(ONE, out, report=SuiteReport(reps=50))["rows"] == again["rows"]
    shown = dataclasses.replace(ONE, methods=("random", "fastforward-tuned"))
    assert [r["method"] for r in report_suite(shown, out, report=SuiteReport(reps=50))["rows"]] == [
        "random", "uniform", "fastforward-tuned"]  # the run's order (registration), whatever order they are named in
    assert main(["bench", "--suite", "one", "--out", str(out), "--report-only", "--quiet"]) == 0  # the fixture's suite
    assert "| fastforward-tuned |" in capsys.readouterr().out


def test_a_variant_runs_only_on_the_tasks_its_method_supports(tmp_path, two_task_suite, monkeypatch):
    seen = []

    def run(env, seed, run_context, **params):
        seen.append(params)
        return {"agent_stats": heuristic(env, uniform_allocation, seed)}

    monkeypatch.setitem(METHODS, "sonly", SearchMethod("sonly", run, "heuristic", modes=("structured",),
                                                       description="test: structured only, takes a setting"))
    analysis = run_suite(two_task_suite.but(methods=[], variants={"sonly-x": SuiteVariant("sonly", {"k": 1})}),
                         tmp_path / "two", BenchOverrides(env_kwargs=SMALL, calibrate=False, progress=False),
                         report=SuiteReport(reps=50))
    assert seen == [{"k": 1}]
    assert [(r["task"], r["method"]) for r in analysis["rows"]] == [
        ("llama-s0.3", "uniform"), ("llama-s0.3", "sonly-x"), ("llama-u0.7", "uniform")]
    assert analysis["reach"] == []  # its method is a heuristic: no search to reach
    assert not (tmp_path / "two" / "llama-u0.7" / "cells" / "sonly-x").exists()


def _fake_tune(folder, selected="batch4", missing=(), method="fastforward", settings=None, budget=100):
    summary = [{"variant": "default", "agent_kwargs": {}},
               {"variant": "batch4", "agent_kwargs": settings or {"batch_episodes": 4,
                                                                  "curriculum.fidelity_schedule": "none"}}]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tune.json").write_text(json.dumps({"method": method, "seeds": [10, 11, 12], "budget": budget, "summary": summary,
                                                  "selected": selected, "missing": list(missing)}))
    return folder


def test_agreement_points_reach_the_report_and_zero_turns_it_off(tmp_path, monkeypatch, capsys):
    import ffprune.agents.experiments.suite as suite

    reports = []

    def fake_report(suite, out, surrogate=False, report=None):
        reports.append(report)
        Path(out).mkdir(parents=True, exist_ok=True)
        return {"failures": []}

    monkeypatch.setattr(suite, "report_suite", fake_report)
    out = str(tmp_path / "g")
    assert main(["suite", "report", "gemma3", "--out", out, "--agreement-points", "0"]) == 0
    assert main(["suite", "report", "gemma3", "--out", out]) == 0
    assert [r.agreement_points for r in reports] == [0, SuiteReport().agreement_points]
    capsys.readouterr()
    assert main(["suite", "report", "gemma3", "--out", out, "--agreement-points", "-1"]) == 2
    assert "--agreement-points must be >= 0" in capsys.readouterr().err


def test_bench_tuned_adds_the_selected_variant_and_refuses_bad_input_in_one_line(tmp_path, monkeypatch, capsys):
    import ffprune.agents.experiments.suite as suite

    calls = []

    def fake_suite(suite, out, overrides, runner, report):
        calls.append((list(suite.methods), dict(suite.variants)))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "suite.md").write_text("| method | IQM score |\n")
        return {"failures": []}

    monkeypatch.setattr(suite, "run_suite", fake_suite)
    tune = _fake_tune(tmp_path / "tune-ff")
    assert main(["bench", "--suite", "core", "--out", str(tmp_path / "core"), "--methods", "cmaes", "--tuned", str(tune),
                 "--quiet"]) == 0
    assert calls == [(["cmaes"], {"fastforward-tuned": SuiteVariant(
        "fastforward", {"batch_episodes": 4}, {"fidelity_schedule": "none"}, name="batch4",
        source=f"selected by `ffprune tune` on the reward split of seeds 10, 11, 12: `{tune.as_posix()}/tune.json`")})]
    capsys.readouterr()
    bad = [(["--tuned", str(tmp_path / "none")], "tune.json' does not exist"),
           (["--tuned", str(_fake_tune(tmp_path / "d", selected="default"))], "nothing new to run"),
           (["--tuned", str(_fake_tune(tmp_path / "u", missing=[{"variant": "x"}]))], "1 unfinished cell"),
           (["--tuned", str(tune), "--tuned", str(_fake_tune(tmp_path / "t2"))], "both tunes of fastforward"),
           (["--tuned", str(_fake_tune(tmp_path / "s", settings={"hiden": 1}))], r"\['hiden'\] are not fastforward"),
           (["--tuned", str(_fake_tune(tmp_path / "b", budget=50))], "compared at budget 50, the suite runs at 100"),
           (["--env", "FFPrune-Llama-v0", "--tuned", str(tune)], "--tuned works on a suite's results")]
    for argv, match in bad:
        suite_args = [] if "--env" in argv else ["--suite", "core"]
        assert main(["bench", *suite_args, "--out", str(tmp_path / "core"), *argv, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ffprune bench: error:") and "\n" not in err and re.search(match, err), err
    assert len(calls) == 1


# ----------------------------------------------------------------------------- suites as data: one's own suite file
SUITE_FILE = """
name = "llama-targets"
description = "tiny-llama at structured 0.4"
budget = 2
seeds = 1
methods = ["random"]

[[tasks]]
name = "llama-s0.4"
env_id = "FFPrune-Llama-v0"
env_kwargs = { target_sparsity = 0.4 }

[variants.random-x]
method = "fastforward"
agent_kwargs = { batch_episodes = 2 }
"""


def test_a_suite_file_runs_its_own_tasks_methods_and_variants(tmp_path, capsys):
    path = tmp_path / "mine.toml"
    path.write_text(SUITE_FILE)
    suite = load_suite(path)
    assert (suite.name, suite.budget, suite.seeds, suite.methods) == ("llama-targets", 2, 1, ("random",))
    assert suite.tasks == (SuiteTask("llama-s0.4", "FFPrune-Llama-v0", {"target_sparsity": 0.4}),)
    assert suite.variants["random-x"].source == f"suite file {path}"
    out = tmp_path / "out"
    argv = ["suite", "run", str(path), "--out", str(out), "--no-calibrate", "--quiet",
            *[a for k, v in SMALL.items() for a in ("--env-kwarg", f"{k}={v}")]]
    assert main(argv) == 0
    folder = out / "llama-s0.4"
    assert sorted(p.name for p in (folder / "cells").iterdir()) == ["random", "random-x", "uniform"]
    cell = read_json(cell_path(folder, "random", 0))
    assert cell["env_kwargs"]["target_sparsity"] == 0.4 and abs(cell["best"]["sparsity"] - 0.4) < 0.01
    assert read_json(cell_path(folder, "random-x", 0))["variant"]["agent_kwargs"] == {"batch_episodes": 2}
    analysis = read_json(out / "suite.json")
    assert analysis["suite"] == "llama-targets" and analysis["tasks"] == [
        {"name": "llama-s0.4", "env_id": "FFPrune-Llama-v0", "env_kwargs": {"target_sparsity": 0.4}}]
    capsys.readouterr()
    assert main(["suite", "report", str(path), "--out", str(out)]) == 0  # from the cells, no search
    assert "| random-x |" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "match"), [
    ('budget = 2\n[[tasks]]\nname = "a"\nenv_id = "FFPrune-Nope-v0"\n', r"tasks\[0\] \(a\):"),
    ('[[tasks]]\nname = "a b"\nenv_id = "FFPrune-Llama-v0"\n', "tasks\\[0\\].name must be letters"),
    ('taks = []\n', r"unknown keys \['taks'\]"),
    ('budget = 0\n[[tasks]]\nname = "a"\nenv_id = "FFPrune-Llama-v0"\n', "budget"),
    ('[[tasks]]\nname = "a"\nenv_id = "FFPrune-Llama-v0"\nenv_kwargs = { target_sparsity = 1.5 }\n', "target_sparsity"),
    ('methods = ["nope"]\n[[tasks]]\nname = "a"\nenv_id = "FFPrune-Llama-v0"\n', "nope"),
    ('[[tasks]]\nname = "a"\nenv_id = "FFPrune-Llama-v0"\n[[tasks]]\nname = "A"\nenv_id = "FFPrune-Llama-v0"\n',
     "distinct"),
    ('[[tasks]]\nname = "a"\nenv_id = "FFPrune-Llama-v0"\n[variants.uniform]\nmethod = "fastforward"\n'
     'agent_kwargs = { batch_episodes = 2 }\n', "is a method's name"),
    ('tasks = [', "is not valid TOML"),
    ('[[tasks]]\nname = "a"\nenv_id = "FFPrune-Llama-v0"\n[variants.ff-x]\nmethod = "fastforward"\n'
     'agent_kwargs = { hiden = 2 }\n', r"variant 'ff-x': \['hiden'\] are not fastforward settings"),
    ('[[tasks]]\nname = "a"\nenv_id = "FFPrune-Llama-v0"\n[variants.ppo-x]\nmethod = "ppo"\n'
     'agent_kwargs = { n_step = 8 }\n', r"\['n_step'\] are not PPO settings"),
    ('[[tasks]]\nname = "a"\nenv_id = "FFPrune-Llama-v0"\n[variants.owl-x]\nmethod = "owl"\n'
     'agent_kwargs = { lamda = 0.1 }\n', r"\['lamda'\] are not owl settings"),
])
def test_a_bad_suite_file_is_one_line_naming_the_field(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(FFPruneError, match=match) as err:
        load_suite(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_suite_names_files_and_compare(tmp_path, monkeypatch, capsys):
    with pytest.raises(FFPruneError, match=r"one of \['core', .*'real'\] or a .toml / .json suite file, got 'cor'"):
        load_suite("cor")
    with pytest.raises(FFPruneError, match="does not exist"):
        load_suite(tmp_path / "none.json")
    (tmp_path / "s.json").write_text(json.dumps({"tasks": [{"name": "t", "env_id": "FFPrune-OPT-Unstructured-v0"}]}))
    assert load_suite(tmp_path / "s.json") == Suite("s", (SuiteTask("t", "FFPrune-OPT-Unstructured-v0"),), 100, 3)
    assert main(["suite", "list"]) == 0 and "smollm2-s0.2     FFPrune-SmolLM2-v0" in capsys.readouterr().out
    calls = []
    monkeypatch.setattr("ffprune.agents.experiments.surrogate_rank.run_rank",
                        lambda spec, **where: calls.append((spec, where)) or {})
    monkeypatch.setattr("ffprune.agents.experiments.surrogate_rank.ranking_markdown", lambda a: "")
    assert main(["suite", "compare", "A", "B", "--out", "C", "--tasks", "llama-s0.3"]) == 0
    assert main(["surrogate", "rank", "--real", "A", "--surrogate-out", "B", "--out", "C", "--tasks", "llama-s0.3"]) == 0
    assert calls[0] == calls[1] == (RankSpec("core", ["llama-s0.3"], None, None, None, 2000),
                                    {"real_out": "A", "surrogate_out": "B", "out": "C"})
