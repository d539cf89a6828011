"""``ffprune bench``: every method end to end, all output files, resume (old folders too), clear errors, cells on Ray."""

from __future__ import annotations

import csv
import json
import os

import pytest

from ffenv.errors import FFPruneError, WorkerLostError
from ffprune.agents.cli import main as cli_main
from ffprune.agents.experiments.bench import CellFailure, cell_jobs, run_jobs
from ffprune.agents.experiments.reports import cost_to_reach
from ffprune.agents.experiments.search import model_fingerprint
from ffprune.agents.methods.registry import METHODS, SearchMethod, methods_for
from ffprune.agents.results import seed_files

TINY = ["--env-kwarg", "reward_windows=2", "--env-kwarg", "calib_samples=8", "--env-kwarg", "eval_samples=2"]
SMALL = {"reward_windows": 2, "calib_samples": 4, "eval_samples": 2, "seq_len": 64}


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
    runs = {m: 2 if METHODS[m].seeded else 1 for m in methods}  # a deterministic method runs once
    for r in rows:
        assert r["seeds"] == str(runs[r["method"]]) and float(r["eval_ppl_mean"]) > 1
        assert float(r["eval_ppl_after_calib_mean"]) > 1
        assert float(r["reward_ppl_mean"]) > 1
        if METHODS[r["method"]].heuristic:
            assert float(r["evaluations_mean"]) == 1
    md = (out / "results.md").read_text()
    assert "| fastforward |" in md and "fastforward evaluations to reach it" in md and "fastforward tokens to reach it" in md
    tb = list((out / "tb" / "FFPrune-Mistral-v0").glob("*/seed1/events.out.tfevents.*"))
    assert len(tb) >= sum(n == 2 for n in runs.values())
    cells = [p for m in sorted((out / "cells").iterdir()) for _s, p in seed_files(m)]
    assert len(cells) == sum(runs.values())
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
    assert "do not support single-step unstructured" in capsys.readouterr().err
    assert cli_main(["bench", "--seeds", "0", "--budget", "2", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "seeds" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_deterministic_methods_run_once_searches_every_seed(tmp_path):
    """Heuristics and the fixed sweeps (ATP, uniform-split) give the same result for every seed: seed 0 alone."""
    jobs = cell_jobs("FFPrune-Llama-v0", 3, 3, ["uniform", "owl", "atp", "uniform-split", "random", "fastforward"],
                     tmp_path, env_kwargs=SMALL)
    runs: dict[str, list[int]] = {}
    for job in jobs:
        runs.setdefault(job["method"], []).append(job["seed"])
    assert runs == {"uniform": [0], "owl": [0], "atp": [0], "uniform-split": [0], "random": [0, 1, 2],
                    "fastforward": [0, 1, 2]}
    assert not METHODS["atp"].seeded and not METHODS["owl"].seeded and METHODS["cmaes"].seeded


def test_a_folder_written_before_the_renames_resumes(tmp_path):
    """An old ``config.json`` (``weights``, ``reward_samples``) is the same setting under today's names."""
    out = tmp_path / "old"
    out.mkdir()
    fingerprint = model_fingerprint("FFPrune-Llama-v0", None)
    old = {"env_id": "FFPrune-Llama-v0", "budget": 3, "target": None, "env_kwargs": {"reward_samples": 2},
           "weights": fingerprint}
    (out / "config.json").write_text(json.dumps(old))
    jobs = cell_jobs("FFPrune-Llama-v0", 3, 1, ["uniform"], out, env_kwargs={"reward_windows": 2})
    assert [(j["method"], j["seed"]) for j in jobs] == [("uniform", 0)]
    assert json.loads((out / "config.json").read_text()) == {
        "env_id": "FFPrune-Llama-v0", "budget": 3, "target": None, "env_kwargs": {"reward_windows": 2},
        "weights_fingerprint": fingerprint}
    (out / "config.json").write_text(json.dumps({**old, "weights": "sha256:0000000000000000"}))
    with pytest.raises(FFPruneError, match="weights_fingerprint"):  # other weights are still refused
        cell_jobs("FFPrune-Llama-v0", 3, 1, ["uniform"], out, env_kwargs={"reward_windows": 2})


def test_a_failing_cell_is_kept_apart_only_when_asked(tmp_path, monkeypatch):
    def boom(env, seed, run, **params):
        raise RuntimeError(f"boom at seed {seed}")

    monkeypatch.setitem(METHODS, "boom", SearchMethod("boom", boom, "search", description="test: always raises"))
    jobs = cell_jobs("FFPrune-Llama-v0", 2, 2, ["boom"], tmp_path / "b", env_kwargs=SMALL, calibrate=False,
                     progress=False)
    outcomes = run_jobs(jobs, keep_going=True)
    assert all(isinstance(o, CellFailure) for o in outcomes)
    assert [(o.method, o.seed, o.error, o.message) for o in outcomes] == [("boom", 0, "RuntimeError", "boom at seed 0"),
                                                                          ("boom", 1, "RuntimeError", "boom at seed 1")]
    assert "boom" in outcomes[0].traceback and outcomes[0].as_dict()["env_id"] == "FFPrune-Llama-v0"
    with pytest.raises(RuntimeError, match="boom at seed 0"):
        run_jobs(jobs)  # by default the first failure stops the run


def test_cost_to_reach():
    history = [{"evaluations": 1, "best_reward": float("nan")}, {"evaluations": 3, "best_reward": 0.9},
               {"evaluations": 7, "best_reward": 0.95}]
    assert cost_to_reach(history, 0.9) == 3
    assert cost_to_reach(history, 0.91) == 7
    assert cost_to_reach(history, 0.99) is None
    assert json.dumps(methods_for("unstructured")).count("flap") == 0


@pytest.mark.slow
def test_ray_tasks_go_on_past_a_failure_and_name_a_lost_worker():
    pytest.importorskip("ray")
    from ffprune.agents.experiments.ray_tasks import run_on_ray

    def job(x):  # defined here: Ray ships it by value
        if x == 1:
            raise RuntimeError("job 1 broke")
        if x == 2:
            raise FFPruneError("x=2 is bad input")
        if x == 3:
            os._exit(1)  # the worker dies, and dies again on the retry
        return 10 * x

    jobs = [{"x": x} for x in range(5)]
    got = run_on_ray(job, jobs, workers=2, keep_going=True)
    assert got[0] == 0 and got[4] == 40
    assert isinstance(got[1], RuntimeError) and "job 1 broke" in str(got[1])
    assert isinstance(got[2], FFPruneError)
    assert isinstance(got[3], WorkerLostError) and "died twice" in str(got[3])
    with pytest.raises(WorkerLostError, match="died twice"):
        run_on_ray(job, [{"x": 3}], workers=1)
    with pytest.raises(FFPruneError, match="bad input"):
        run_on_ray(job, [{"x": 2}], workers=1)
