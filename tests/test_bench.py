"""``ffprune bench``: every method end to end, all output files, resume, and clear errors."""

from __future__ import annotations

import csv
import json

import pytest

from ffprune.agents.cli import main as cli_main
from ffprune.agents.experiments.bench import cost_to_reach
from ffprune.agents.methods.registry import methods_for

TINY = ["--env-kwarg", "reward_windows=2", "--env-kwarg", "calib_samples=8", "--env-kwarg", "eval_samples=2"]


@pytest.mark.slow
def test_bench_runs_every_method_writes_everything_and_resumes(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--env", "FFPrune-Mistral-v0", "--budget", "4", "--seeds", "2", "--out", str(out), "--quiet", *TINY]
    assert cli_main(argv) == 0
    for name in ("results.csv", "results.md", "curves.png", "allocations.png", "config.json"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "results.csv").open()))
    methods = methods_for("structured")
    assert sorted(r["method"] for r in rows) == sorted(methods)
    for r in rows:
        assert r["seeds"] == "2" and float(r["eval_ppl_mean"]) > 1 and float(r["eval_ppl_calib_mean"]) > 1
        expected = 1 if r["method"] in ("uniform", "owl", "alphapruning", "flap") else None
        if expected:
            assert float(r["evaluations_mean"]) == expected
    md = (out / "results.md").read_text()
    assert "| fastforward |" in md and "fastforward evaluations to reach it" in md and "fastforward tokens to reach it" in md
    tb = list((out / "tb" / "FFPrune-Mistral-v0").glob("*/seed1/events.out.tfevents.*"))
    assert len(tb) >= len(methods)
    cells = sorted((out / "cells").glob("*/seed*.json"))
    assert len(cells) == 2 * len(methods)
    stamp = {p: p.stat().st_mtime_ns for p in cells}

    # resume: nothing is recomputed, the tables are rewritten from the cells
    assert cli_main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in cells} == stamp
    capsys.readouterr()
    # another budget in the same folder is refused with a clear message
    assert cli_main([*argv[:4], "5", *argv[5:]]) == 2
    assert "other settings" in capsys.readouterr().err


def test_bench_bad_input(tmp_path, capsys):
    assert cli_main(["bench", "--env", "Nope-v0", "--budget", "2", "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "Nope" in (err := capsys.readouterr().err) and "FFPrune-Llama-v0" in err
    assert cli_main(["bench", "--env", "FFPrune-Llama-Unstructured-v0", "--methods", "flap", "--budget", "2",
                     "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "structured" in capsys.readouterr().err
    assert cli_main(["bench", "--seeds", "0", "--budget", "2", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "seeds" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_cost_to_reach():
    history = [{"evaluations": 1, "best_reward": float("nan")}, {"evaluations": 3, "best_reward": 0.9},
               {"evaluations": 7, "best_reward": 0.95}]
    assert cost_to_reach(history, 0.9) == 3
    assert cost_to_reach(history, 0.91) == 7
    assert cost_to_reach(history, 0.99) is None
    assert json.dumps(methods_for("unstructured")).count("flap") == 0
