"""``ffprune bench``: every method end to end, all output files, resume (old folders too), clear errors, cells on Ray."""

from __future__ import annotations

import csv
import json
import os
import pickle

import pytest

from ffenv.errors import FFPruneError, WorkerLostError
from ffprune.agents.cli import main as cli_main
from ffprune.agents.experiments.bench import BenchOverrides, BenchSpec, cell_specs, run_bench, run_cell
from ffprune.agents.experiments.engine import IN_PROCESS, CellFailure, Report, Runner, run_jobs
from ffprune.agents.experiments.reports import SUITE_REPORT, cost_to_reach
from ffprune.agents.experiments.search import model_fingerprint
from ffprune.agents.methods.registry import METHODS, SearchMethod, methods_for
from ffprune.agents.results import FOLDER_KIND, RESULT_FORMAT, read_result, seed_files
from ffprune.agents.tools.specs import spec_with

TINY = ["--env-kwarg", "reward_windows=2", "--env-kwarg", "calib_samples=8", "--env-kwarg", "eval_samples=2"]
SMALL = {"reward_windows": 2, "calib_samples": 4, "eval_samples": 2, "seq_len": 64}


@pytest.mark.slow
def test_bench_runs_every_method_writes_everything_and_resumes(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--env", "FFPrune-Mistral-v0", "--budget", "4", "--seeds", "2", "--out", str(out), "--quiet", *TINY]
    assert cli_main(argv) == 0
    for name in ("results.json", "results.csv", "results.md", "curves.png", "allocations.png", "config.json"):
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
    specs = cell_specs("FFPrune-Llama-v0", 3, 3, ["uniform", "owl", "atp", "uniform-split", "random", "fastforward"],
                       tmp_path, BenchOverrides(env_kwargs=SMALL))
    runs: dict[str, list[int]] = {}
    for spec in specs:
        runs.setdefault(spec.method, []).append(spec.seed)
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
    specs = cell_specs("FFPrune-Llama-v0", 3, 1, ["uniform"], out, BenchOverrides(env_kwargs={"reward_windows": 2}))
    assert [(s.method, s.seed) for s in specs] == [("uniform", 0)]
    assert json.loads((out / "config.json").read_text()) == old  # the same settings: left as written
    assert read_result(out / "config.json") == {
        "env_id": "FFPrune-Llama-v0", "budget": 3, "target": None, "env_kwargs": {"reward_windows": 2},
        "weights_fingerprint": fingerprint}
    fresh = tmp_path / "new"
    cell_specs("FFPrune-Llama-v0", 3, 1, ["uniform"], fresh, BenchOverrides(env_kwargs={"reward_windows": 2}))
    assert json.loads((fresh / "config.json").read_text()) == {  # a new manifest says what it is
        "kind": FOLDER_KIND, "format": RESULT_FORMAT, **read_result(out / "config.json")}
    (out / "config.json").write_text(json.dumps({**old, "weights": "sha256:0000000000000000"}))
    with pytest.raises(FFPruneError, match="weights_fingerprint"):  # other weights are still refused
        cell_specs("FFPrune-Llama-v0", 3, 1, ["uniform"], out, BenchOverrides(env_kwargs={"reward_windows": 2}))


def test_a_failing_cell_is_recorded_and_the_others_finish(tmp_path, monkeypatch):
    """The one failure policy: a cell that raises is recorded with its error, the other cells finish, the failure list
    lists it until a rerun finishes it."""
    random_run = METHODS["random"].run

    def boom(env, seed, run, **params):
        if seed == 0:
            raise RuntimeError(f"boom at seed {seed}")
        return random_run(env, seed, run, **params)

    monkeypatch.setitem(METHODS, "boom", SearchMethod("boom", boom, "search", description="test: raises at seed 0"))
    out = tmp_path / "b"
    specs = cell_specs("FFPrune-Llama-v0", 2, 2, ["boom"], out, BenchOverrides(env_kwargs=SMALL, calibrate=False, progress=False))
    outcomes = run_jobs(run_cell, specs)
    assert isinstance(outcomes[0], CellFailure) and not isinstance(outcomes[1], CellFailure)
    failure = outcomes[0]
    assert (failure.task, failure.method, failure.seed, failure.error, failure.message) == (
        "b", "boom", 0, "RuntimeError", "boom at seed 0")
    assert "boom" in failure.traceback and failure.as_dict()["env_id"] == "FFPrune-Llama-v0"
    bench = BenchSpec("FFPrune-Llama-v0", 2, 2, ["boom"], env_kwargs=SMALL, calibrate=False)
    rows, failures = run_bench(bench, out=out, progress=False)
    assert [(f["method"], f["seed"], f["message"]) for f in failures] == [("boom", 0, "boom at seed 0")]
    assert json.loads((out / "failures.json").read_text())[0]["error"] == "RuntimeError"
    assert [r["method"] for r in rows] == ["boom"]  # the finished seed is reported
    monkeypatch.setitem(METHODS, "boom", SearchMethod("boom", random_run, "search", description="fixed"))
    assert run_bench(bench, out=out, progress=False)[1] == []
    assert not (out / "failures.json").exists()  # the rerun finished it: no record left


def test_experiment_specs_take_their_fields_by_keyword_and_refuse_anything_else(tmp_path):
    """Every experiment's settings are a frozen spec: keywords replace its fields (:func:`spec_with`), an unknown one is a
    one-line error naming the settings (where the jobs run is a :class:`Runner`, not a setting), and specs pickle (their
    jobs go to Ray)."""
    from ffprune.agents.experiments.allocate import AllocateSpec, allocate
    from ffprune.agents.experiments.amortised import AmortisedSpec
    from ffprune.agents.experiments.claim import ClaimSpec, run_claim
    from ffprune.agents.experiments.fidelity import FidelitySpec
    from ffprune.agents.experiments.surrogate_rank import RankSpec
    from ffprune.agents.experiments.surrogate_record import RecordSpec, plan_record
    from ffprune.agents.experiments.surrogate_study import StudySpec
    from ffprune.agents.experiments.surrogate_validate import ValidateSpec
    from ffprune.agents.experiments.tune import TuneSpec

    spec = BenchSpec("FFPrune-OPT-v0", budget=40)
    assert spec_with(BenchSpec, spec, {"seeds": 1}, "run_bench", "bench") == BenchSpec("FFPrune-OPT-v0", 40, 1)
    assert spec_with(BenchSpec, None, {}, "run_bench", "bench") == BenchSpec() and IN_PROCESS == Runner(0, None)
    with pytest.raises(FFPruneError, match=r"^run_bench: \['budjet'\] are not bench settings; settings: \['env_id', "):
        run_bench(budjet=3)
    with pytest.raises(FFPruneError, match=r"^run_claim: \['workers'\] are not claim settings; settings: \['tasks'"):
        run_claim(out=tmp_path / "c", suite_out=tmp_path, workers=2)  # where cells run is a Runner
    with pytest.raises(FFPruneError, match=r"^run_bench: spec must be a BenchSpec or an env id, got ClaimSpec$"):
        run_bench(ClaimSpec())
    # a plain string is the field the spec is named by (an env id; a policy file for allocate), given once
    assert spec_with(BenchSpec, "FFPrune-OPT-v0", {"budget": 40}, "run_bench", "bench") == spec
    assert spec_with(AllocateSpec, tmp_path / "p.pt", {"target": 0.3}, "allocate", "allocation").policy == tmp_path / "p.pt"
    assert spec_with(FidelitySpec, "FFPrune-OPT-v0", {}, "run_fidelity", "fidelity") == FidelitySpec("FFPrune-OPT-v0")
    with pytest.raises(FFPruneError, match=r"^run_bench: env_id given twice \('FFPrune-OPT-v0' and env_id='FFPrune-L"):
        run_bench("FFPrune-OPT-v0", env_id="FFPrune-Llama-v0", out=tmp_path / "b")
    with pytest.raises(FFPruneError, match=r"^run_claim: spec must be a ClaimSpec, got str$"):
        run_claim("smollm2-s0.2", out=tmp_path / "c", suite_out=tmp_path)  # a claim is not named by one string
    with pytest.raises(FFPruneError, match=r"^allocate: \['target'\] must be given"):
        allocate(tmp_path / "p.policy.pt")
    with pytest.raises(FFPruneError, match=r"^plan_record: \['family'\] are not recording settings"):
        plan_record(family="llama")
    assert not list(tmp_path.iterdir())  # every refusal before any work
    specs = [spec, ClaimSpec(), AmortisedSpec(), AllocateSpec("p.pt", 0.3), FidelitySpec("FFPrune-Llama-v0"), TuneSpec(),
             RankSpec(), RecordSpec(), StudySpec(), ValidateSpec()]
    assert [pickle.loads(pickle.dumps(s)) for s in specs] == specs


def test_one_report_writer_writes_json_markdown_and_figures_and_checks_them_first(tmp_path):
    """Every experiment's report is a :class:`Report`: ``<name>.json``, ``<name>.md``, its figures, in that order."""
    from ffprune.agents.experiments import amortised, fidelity, surrogate_rank, surrogate_study, surrogate_validate, tune

    drawn = []
    report = Report("demo", lambda a: f"# {a['x']}\n", {"demo.png": lambda path, a: drawn.append((path.name, a["x"]))})
    assert report.files() == ["demo.json", "demo.md", "demo.png"]
    assert report.write(tmp_path / "r", {"x": 3}) == {"x": 3}
    assert json.loads((tmp_path / "r" / "demo.json").read_text()) == {"x": 3}
    assert (tmp_path / "r" / "demo.md").read_text() == "# 3\n" and drawn == [("demo.png", 3)]
    (tmp_path / "r" / "blocked" / "demo.md").mkdir(parents=True)  # a folder where a file of the report goes
    with pytest.raises(FFPruneError, match="is a folder; give a file path"):
        report.check(tmp_path / "r" / "blocked")
    names = [m.REPORT.name for m in (amortised, fidelity, surrogate_rank, surrogate_study, surrogate_validate, tune)]
    assert names == ["amortised", "fidelity", "ranking", "study", "validation", "tune"]
    assert SUITE_REPORT.files() == ["suite.json", "suite.md", "scores.csv", "aggregate.png", "profiles.png"]


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

    got = run_on_ray(job, list(range(5)), workers=2)
    assert got[0] == 0 and got[4] == 40
    assert isinstance(got[1], RuntimeError) and "job 1 broke" in str(got[1])
    assert isinstance(got[2], FFPruneError) and "bad input" in str(got[2])
    assert isinstance(got[3], WorkerLostError) and "died twice" in str(got[3])
