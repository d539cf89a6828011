"""ffprune bench --suite: every task of a suite, normalised scores and aggregate statistics, resumable; a failing
cell does not stop the suite; the analysis is redone from the cells without any search; generated doc sections."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from ffenv.errors import FFPruneError
from ffprune.agents.cli import main
from ffprune.agents.experiments.suite import (
    SUITES,
    Suite,
    SuiteTask,
    analyse,
    check_sections,
    get_suite,
    normalised,
    render_sections,
    report_suite,
    run_suite,
    task_methods,
    update_sections,
)
from ffprune.agents.methods.registry import METHODS, SearchMethod
from ffprune.baselines.heuristics import uniform_allocation
from ffprune.baselines.search import heuristic

SMALL = {"reward_windows": 2, "calib_samples": 4, "eval_samples": 2, "seq_len": 64}


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
    analysis = run_suite("two", out, methods=["flaky"], env_kwargs=SMALL, progress=False, reps=50)
    failures = analysis["failures"]
    assert flaky_method["runs"] == 2  # both flaky cells ran, and neither stopped the reference cells
    assert [(f["task"], f["method"], f["seed"], f["error"]) for f in failures] == [
        ("llama-s0.3", "flaky", 0, "RuntimeError"), ("llama-u0.7", "flaky", 0, "RuntimeError")]
    assert failures[0]["message"] == "flaky | broke\non purpose"
    assert [(r["task"], r["method"]) for r in analysis["rows"]] == [("llama-s0.3", "uniform"), ("llama-u0.7", "uniform")]
    assert set(analysis["aggregate"]["plain"]) == {"uniform"}
    recorded = json.loads((out / "llama-u0.7" / "failures.json").read_text())
    assert [f["seed"] for f in recorded] == [0] and "Traceback" in recorded[0]["traceback"]
    assert not list((out / "llama-u0.7" / "cells").glob("flaky/seed*.json"))  # no result for a failed cell
    md = (out / "suite.md").read_text()
    tail = md[md.index("Failures: 2 cell(s)"):]
    assert "| llama-u0.7 | flaky | 0 | RuntimeError: flaky \\| broke on purpose |" in tail
    assert "+ Calib IQM (1 structured task)" in md

    # the rerun retries only the failed cells; once they finish, the failures are gone
    flaky_method["broken"] = False
    again = run_suite("two", out, methods=["flaky"], env_kwargs=SMALL, progress=False, reps=50)
    assert flaky_method["runs"] == 4 and again["failures"] == [] and not (out / "llama-u0.7" / "failures.json").exists()
    assert again["aggregate"]["plain"]["flaky"]["iqm"] == 0.0  # the uniform allocation again: score 0
    assert "Failures" not in (out / "suite.md").read_text()

    # the analysis again from the cells on disk: no search, no evaluation, the same numbers and files
    def no_search(*_a, **_k):
        raise AssertionError("report_suite ran a search or an evaluation")

    monkeypatch.setattr("ffprune.agents.experiments.bench.run_search", no_search)
    monkeypatch.setattr("ffprune.agents.experiments.suite.result_env", no_search)
    before = {f: (out / f).read_bytes() for f in ("suite.md", "scores.csv", "llama-u0.7/results.md")}
    report = report_suite("two", out, methods=["flaky"], reps=50)
    assert report["aggregate"] == again["aggregate"] and report["rows"] == again["rows"]
    assert {f: (out / f).read_bytes() for f in before} == before
    with pytest.raises(FFPruneError, match="budget"):
        report_suite("two", out, budget=3)


def test_analysis_needs_the_reference():
    suite = get_suite("core")
    with pytest.raises(FFPruneError, match="uniform"):
        analyse(suite, {t.name: {"random": []} for t in suite.tasks}, 3, 1)


@pytest.mark.slow
def test_suite_runs_resumes_and_aggregates(tmp_path, monkeypatch, capsys):
    out = tmp_path / "core"
    analysis = run_suite("core", out, budget=3, seeds=2, methods=["fastforward", "random"], env_kwargs=SMALL,
                         progress=False, agreement_points=3, reps=200)
    tasks = [t.name for t in SUITES["core"].tasks]
    for name in tasks:
        assert (out / name / "results.md").exists() and (out / name / "cells" / "uniform" / "seed1.json").exists()
    rows = analysis["rows"]
    assert len(rows) == 9 * 3 * 2 and analysis["failures"] == []  # tasks x (uniform, fastforward, random) x seeds
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

    monkeypatch.setattr("ffprune.agents.experiments.bench.run_search", lambda *a, **k: json.loads(
        (k["out"]).read_text()) if k["out"].exists() else explode())
    again = run_suite("core", out, budget=3, seeds=2, methods=["fastforward", "random"], env_kwargs=SMALL,
                      progress=False, agreement_points=3, reps=200)
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
