"""ffprune bench --suite: every task of a suite, normalised scores and aggregate statistics, resumable."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from ffenv.errors import FFPruneError
from ffprune.agents.cli import main
from ffprune.agents.experiments.suite import SUITES, analyse, check_readme, get_suite, normalised, run_suite, update_readme

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


def test_normalised_score():
    assert normalised(90.0, 90.0, 80.0) == 0.0
    assert normalised(80.0, 90.0, 80.0) == 1.0
    assert normalised(85.0, 90.0, 80.0) == 0.5
    assert normalised(100.0, 90.0, 80.0) == -1.0
    assert normalised(None, 90.0, 80.0) is None and normalised(float("inf"), 90.0, 80.0) is None


@pytest.mark.slow
def test_suite_runs_resumes_and_aggregates(tmp_path, monkeypatch, capsys):
    out = tmp_path / "core"
    analysis = run_suite("core", out, budget=3, seeds=2, methods=["fastforward", "random"], env_kwargs=SMALL,
                         progress=False, agreement_points=3, reps=200)
    tasks = [t.name for t in SUITES["core"].tasks]
    for name in tasks:
        assert (out / name / "results.md").exists() and (out / name / "cells" / "uniform" / "seed1.json").exists()
    rows = analysis["rows"]
    assert len(rows) == 9 * 3 * 2  # tasks x (uniform, fastforward, random) x seeds
    assert all(r["score"] == 0.0 for r in rows if r["method"] == "uniform")  # the reference scores 0
    structured = [r for r in rows if "-s0." in r["task"]]
    assert all(r["score_calib"] is not None for r in structured)
    assert all(r["score_calib"] is None for r in rows if "-u0." in r["task"])
    agg = analysis["aggregate"]["plain"]
    assert set(agg) == {"uniform", "fastforward", "random"} and agg["uniform"]["iqm"] == 0.0
    for method in ("fastforward", "random"):
        lo, hi = agg[method]["ci"]
        assert lo <= agg[method]["iqm"] <= hi and len(agg[method]["tasks"]) == 9
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


def test_analysis_needs_the_reference():
    suite = get_suite("core")
    with pytest.raises(FFPruneError, match="uniform"):
        analyse(suite, {t.name: {"random": []} for t in suite.tasks}, 3, 1)


def test_readme_section_is_rewritten_from_the_results(tmp_path):
    out = tmp_path / "docs" / "results" / "core"
    out.mkdir(parents=True)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- suite:core -->\nold table\n<!-- /suite:core -->\n\nafter\n")
    with pytest.raises(FFPruneError, match="suite.md"):
        update_readme(readme, out)  # nothing measured yet
    (out / "suite.md").write_text("| method | IQM |\n|---|---|\n| fastforward | 0.5 |\n")
    update_readme(readme, out)
    text = readme.read_text()
    assert "old table" not in text and "| fastforward | 0.5 |" in text and text.endswith("\n\nafter\n")
    assert "](docs/results/core/aggregate.png)" in text
    update_readme(readme, out)  # idempotent: the generated section is found again by its markers
    assert readme.read_text() == text
    with pytest.raises(FFPruneError, match="exactly one section"):
        check_readme(tmp_path / "README.md", "other")
    (tmp_path / "two.md").write_text(text + text)
    with pytest.raises(FFPruneError, match="exactly one section"):
        update_readme(tmp_path / "two.md", out)
    with pytest.raises(FFPruneError, match="not a file"):
        check_readme(tmp_path / "missing.md")
    assert main(["bench", "--env", "FFPrune-Llama-v0", "--readme", str(readme)]) == 2  # --readme needs --suite
