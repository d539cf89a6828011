"""The agents stack on a surrogate (issue 21): every kind of method searches ``gym.make(id, surrogate=True)``, its
results are labelled (JSON, tables, TensorBoard), resume, and are refused wherever real results are expected.

A tiny evaluation set is recorded once for the module on the bundled tiny-llama (as in ``tests/test_surrogate.py``:
random allocations at several targets and spreads, some with the held-out ppl, some at reduced fidelity so the
curriculum runs); the surrogate fitted on it is cached on disk, so the searches below take tenths of a second.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SURROGATE_KW

from ffenv import FFPruneEnv, FFPruneError
from ffenv.io import CheckpointPacer, atomic_write_json, pack, read_json, unpack
from ffenv.surrogate import EvaluationSet
from ffenv.wrappers import SearchAccounting
from ffprune.agents.cli import main
from ffprune.agents.experiments.bench import cell_path
from ffprune.agents.experiments.search import run_search

KW = SURROGATE_KW
ENV_ID = "FFPrune-Llama-v0"
TASK = "llama-s0.3"  # the core suite's task of ENV_ID


@pytest.fixture(scope="module")
def recorded(surrogate_recording):
    """(folder holding tiny-llama-structured.npz, its fingerprint, surrogate env kwargs): conftest's recording."""
    _env, data, folder = surrogate_recording
    return folder, data.fingerprint, {**KW, "surrogate": True, "surrogate_data": str(folder)}


def surrogate_search(recorded, tmp_path, agent="random", budget=50, name="s", **kwargs):
    return run_search(kwargs.pop("env_id", ENV_ID), agent=agent, budget=budget, seed=0, logdir=tmp_path / "runs",
                      out=tmp_path / f"{name}.json", env_kwargs=recorded[2], progress=False, **kwargs)


# ----------------------------------------------------------------------------- searches
def test_search_is_labelled_scored_by_the_surrogate_and_plots_by_surrogate_evaluations(recorded, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, fingerprint, env_kwargs = recorded
    result = surrogate_search(recorded, tmp_path)
    assert result["surrogate"] == {"fingerprint": fingerprint, "data": str(folder / "tiny-llama-structured.npz")}
    assert json.loads((tmp_path / "s.json").read_text())["surrogate"] == result["surrogate"]
    cost, best = result["cost"], result["best"]
    assert cost["surrogate_evaluations"] == 50 and cost["evaluations"] == 0 and cost["tokens"] == 0
    assert result["env_kwargs"]["surrogate"] is True and best["surrogate"] is True and best["eval_tokens"] == 0
    assert 1 <= cost["evaluations_to_best"] == best["surrogate_evaluations"] <= 50
    # held-out scoring: the surrogate's predicted held-out ppl of the best allocation; reward-split: its prediction
    env = FFPruneEnv(**env_kwargs)
    predicted = env.evaluate(np.array(best["action"], np.float32))
    assert best["eval_ppl"] == predicted["ppl"] and best["eval_ppl_surrogate_std"] == predicted["surrogate_std"]
    assert best["reward_ppl"] == pytest.approx(best["dense_reward_ppl"] / best["reward"])
    # TensorBoard: under <logdir>/surrogate/..., by surrogate evaluations (the real axes stay 0: not plotted)
    assert result["logdir"] == str(tmp_path / "runs" / "surrogate" / ENV_ID / "random" / "seed0")
    acc = EventAccumulator(result["logdir"])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {f"by_surrogate_evaluations/{t}" for t in ("reward", "best_reward", "ppl", "best_ppl")} <= tags
    assert not any(t.startswith(("by_evaluations/", "by_tokens/")) for t in tags)
    assert [e.step for e in acc.Scalars("by_surrogate_evaluations/reward")] == list(range(1, 51))


@pytest.mark.parametrize("agent, env_id, budget", [
    ("fastforward", ENV_ID, 16), ("ppo", ENV_ID, 16), ("sac", ENV_ID, 12), ("td3", ENV_ID, 12),
    ("evolution", ENV_ID, 12), ("cmaes", ENV_ID, 12), ("tpe", ENV_ID, 12), ("uniform", ENV_ID, 1),
    ("amc-ddpg", "FFPrune-Llama-Sequential-v0", 6),
])
def test_every_kind_of_method_searches_the_surrogate(recorded, tmp_path, agent, env_id, budget):
    if agent in ("cmaes", "tpe"):
        pytest.importorskip({"cmaes": "cma", "tpe": "optuna"}[agent])
    result = surrogate_search(recorded, tmp_path, agent, budget, env_id=env_id)
    cost = result["cost"]
    assert result["surrogate"]["fingerprint"] == recorded[1] and cost["episodes"] == budget
    assert cost["evaluations"] == 0 and cost["tokens"] == 0 and cost["surrogate_evaluations"] >= budget
    assert all("surrogate_evaluations" in h for h in result["history"]) and result["best"]["surrogate"] is True


def test_fastforward_on_the_surrogate_resumes_to_the_uninterrupted_result(recorded, tmp_path, monkeypatch):
    full = surrogate_search(recorded, tmp_path, "fastforward", 48, "full")
    assert full["cost"]["surrogate_evaluations"] >= 48  # the curriculum's re-scorings are surrogate evaluations too
    original = SearchAccounting._record

    def flaky(self, action, reward, info):
        if self.episodes == 30:
            raise KeyboardInterrupt
        return original(self, action, reward, info)

    monkeypatch.setattr(SearchAccounting, "_record", flaky)
    with pytest.raises(Exception, match="interrupted after 30 episodes"):
        surrogate_search(recorded, tmp_path, "fastforward", 48, "cut")
    monkeypatch.setattr(SearchAccounting, "_record", original)
    resumed = surrogate_search(recorded, tmp_path, "fastforward", 48, "cut", resume=True)
    assert resumed["best"]["action"] == full["best"]["action"] and resumed["best"]["reward"] == full["best"]["reward"]
    assert [h["reward"] for h in resumed["history"]] == [h["reward"] for h in full["history"]]
    assert resumed["cost"]["surrogate_evaluations"] == full["cost"]["surrogate_evaluations"]
    # a finished surrogate result is returned as it is; the real env or another evaluation set refuses it
    again = surrogate_search(recorded, tmp_path, "fastforward", 48, "cut", resume=True)
    assert json.dumps(again["history"]) == json.dumps(resumed["history"])  # (NaN best rewards before the first)
    with pytest.raises(FFPruneError, match="holds a search on the surrogate fitted on sha256:.*runs on the real env"):
        run_search(ENV_ID, agent="fastforward", budget=48, out=tmp_path / "cut.json", resume=True, env_kwargs=KW,
                   logdir=None, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    data = EvaluationSet.load(recorded[0] / "tiny-llama-structured.npz")
    keep = np.arange(len(data)) != 3
    EvaluationSet(data.meta, {k: v[keep] for k, v in data.arrays.items()}).save(other / "tiny-llama-structured.npz")
    with pytest.raises(FFPruneError, match="holds a search on the surrogate fitted on .*this one runs on the surrogate"):
        run_search(ENV_ID, agent="fastforward", budget=48, out=tmp_path / "cut.json", resume=True, logdir=None,
                   env_kwargs={**recorded[2], "surrogate_data": str(other)}, progress=False)


def test_cli_search_surrogate_prints_the_label(recorded, tmp_path, capsys):
    folder = str(recorded[0])
    kwargs = [f"--env-kwarg={k}={v}" for k, v in KW.items()]
    out = tmp_path / "r.json"
    assert main(["search", "--agent", "random", "--budget", "20", "--quiet", "--surrogate", "--surrogate-data", folder,
                 "--out", str(out), "--logdir", str(tmp_path / "runs"), *kwargs]) == 0
    text = capsys.readouterr().out
    assert "SURROGATE sha256:" in text and "20 surrogate evaluations (0 real)" in text
    assert json.loads(out.read_text())["surrogate"]["fingerprint"] == recorded[1]
    assert main(["search", "--surrogate-data", folder, "--budget", "2"]) == 2
    assert capsys.readouterr().err.strip() == "ffprune search: error: --surrogate-data needs --surrogate"


# ----------------------------------------------------------------------------- refused where real results are expected
def test_real_result_readers_refuse_surrogate_results(recorded, tmp_path):
    from ffprune.agents.experiments.amortised import report_amortised, run_amortised
    from ffprune.agents.experiments.claim import report_claim
    from ffprune.agents.experiments.tune import report_tune, run_tune
    from ffprune.agents.results import read_result, read_result_if_any
    from ffprune.agents.tools.export import export_result

    surrogate_search(recorded, tmp_path, "random", 8, "s")
    path = tmp_path / "s.json"
    assert read_result(path)["surrogate"]["fingerprint"] == recorded[1]  # read as such, it is a result like any other
    for call in (lambda: read_result(path, real=True, what="the test"),
                 lambda: read_result_if_any(path, real=True),
                 lambda: export_result(path, tmp_path / "export")):
        with pytest.raises(FFPruneError, match="is a surrogate result .*expects real results") as err:
            call()
        assert "\n" not in str(err.value)
    assert not (tmp_path / "export").exists()
    # the studies that read the core suite's cells: a surrogate cell where the suite's should be
    suite_out = tmp_path / "suite"
    for method in ("uniform", "fastforward"):
        (suite_out / TASK / "cells" / method).mkdir(parents=True)
        atomic_write_json(cell_path(suite_out / TASK, method, 0), read_json(path))
    with pytest.raises(FFPruneError, match="surrogate result .*ffprune claim expects real results"):
        report_claim(out=tmp_path / "claim", suite_out=suite_out, tasks=[TASK], budgets=[100], seeds=1)
    with pytest.raises(FFPruneError, match="surrogate result .*ffprune amortised expects real results"):
        report_amortised(out=tmp_path / "amortised", suite_out=suite_out, families=["llama"], modes=["structured"], seeds=1)
    tune = tmp_path / "tune"
    (tune / "default" / TASK / "cells" / "fastforward").mkdir(parents=True)
    (tune / "config.json").write_text(json.dumps({"method": "fastforward", "budget": 100, "env_kwargs": {}}))
    atomic_write_json(cell_path(tune / "default" / TASK, "fastforward", 10), read_json(path))
    with pytest.raises(FFPruneError, match="surrogate result .*ffprune tune expects real results"):
        report_tune(out=tune, method="fastforward", variants={"default": {}}, tasks=[TASK], seeds=[10])
    for call, what in ((lambda: run_tune(out=tmp_path / "t2", env_kwargs=recorded[2]), "ffprune tune"),
                       (lambda: run_amortised(out=tmp_path / "a2", suite_out=tmp_path, env_kwargs=recorded[2]),
                        "ffprune amortised")):
        with pytest.raises(FFPruneError, match=f"{what} runs and reads real searches.*surrogate=True is refused"):
            call()
    assert not (tmp_path / "t2").exists() and not (tmp_path / "a2").exists()


@pytest.fixture
def one_task_suite(monkeypatch):
    from ffprune.agents.experiments.suite import SUITES, Suite, SuiteTask

    suite = Suite("one", (SuiteTask(TASK, ENV_ID),), budget=6, seeds=1, description="test: one structured task")
    monkeypatch.setitem(SUITES, "one", suite)
    return suite


def test_surrogate_suite_is_labelled_and_never_mixes_with_the_real_suite(recorded, tmp_path, one_task_suite):
    from ffprune.agents.experiments.bench import BenchOverrides, cell_specs
    from ffprune.agents.experiments.suite import SuiteReport, report_suite, run_suite, section_block, suite_surrogates

    out = tmp_path / "one-surrogate"
    random_only = one_task_suite.but(methods=["random"])
    analysis = run_suite(random_only, out, BenchOverrides(env_kwargs=recorded[2], progress=False),
                         report=SuiteReport(agreement_points=4, reps=50))
    assert analysis["surrogate"] == {TASK: recorded[1]} and not analysis["failures"]
    assert {r["method"]: r["evaluations"] for r in analysis["rows"]} == {"uniform": 1, "random": 6}
    assert all(r["eval_ppl_after_calib"] is None for r in analysis["rows"])  # no Calib on a surrogate
    assert "SURROGATE" in (out / "suite.md").read_text() and recorded[1][:19] in (out / "suite.md").read_text()
    table = (out / TASK / "results.md").read_text()
    assert "on the SURROGATE" in table and "| surrogate evaluations |" in table
    assert json.loads((out / TASK / "config.json").read_text())["surrogate"]["fingerprint"] == recorded[1]
    assert report_suite("one", out, surrogate=True)["surrogate"] == {TASK: recorded[1]}
    # the real suite refuses it, on resume and on report; nor does it go into the docs' sections
    with pytest.raises(FFPruneError, match="the real one suite expects real results"):
        report_suite("one", out)
    with pytest.raises(FFPruneError, match="holds cells of the surrogate fitted on sha256:.*run on the real env"):
        run_suite(random_only, out, BenchOverrides(env_kwargs=KW, progress=False), report=SuiteReport(reps=50))
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- suite:one -->\n<!-- /suite:one -->\n")
    with pytest.raises(FFPruneError, match="docs' generated suite:one sections expects real results"):
        section_block(out, doc, "one")
    # and a surrogate suite refuses real cells
    real = tmp_path / "real"
    cell_specs(ENV_ID, 6, 1, ["random"], real / TASK, BenchOverrides(env_kwargs=KW))  # writes the real task's config.json
    with pytest.raises(FFPruneError, match="holds real cells, not a suite run on the surrogate"):
        report_suite("one", real, surrogate=True)
    cell = read_json(cell_path(out / TASK, "random", 0))
    real_cell = {k: v for k, v in cell.items() if k != "surrogate"}
    real_cell["env_kwargs"] = {k: v for k, v in cell["env_kwargs"].items() if k not in ("surrogate", "surrogate_data")}
    with pytest.raises(FFPruneError, match="is a real result in a suite run on the surrogate"):
        suite_surrogates(one_task_suite, {TASK: {"random": [cell, real_cell]}}, surrogate=True)
    with pytest.raises(FFPruneError, match="cell llama-s0.3/random/seed0 is a surrogate result"):
        suite_surrogates(one_task_suite, {TASK: {"random": [cell]}}, surrogate=False)


def test_bench_suite_surrogate_writes_to_its_own_folder(recorded, tmp_path, monkeypatch, capsys):
    from ffprune.agents.experiments import suite as suite_module

    calls = []
    monkeypatch.setattr(suite_module, "run_suite", lambda *a, **k: calls.append(("run", a, k)) or {"failures": []})
    monkeypatch.setattr(suite_module, "report_suite", lambda *a, **k: calls.append(("report", a, k)) or {"failures": []})
    monkeypatch.chdir(tmp_path)
    folder = str(recorded[0])
    assert main(["bench", "--suite", "core", "--surrogate", "--surrogate-data", folder, "--quiet"]) == 0
    kind, args, kwargs = calls[-1]
    assert kind == "run" and args[1] == "docs/results/core-surrogate" and args[2].env_kwargs["surrogate"] is True
    assert main(["bench", "--suite", "core", "--env-kwarg", "surrogate=true", "--report-only"]) == 0
    kind, args, kwargs = calls[-1]
    assert kind == "report" and args[1] == "docs/results/core-surrogate" and kwargs["surrogate"] is True
    assert main(["bench", "--suite", "core", "--report-only"]) == 0
    assert calls[-1][1][1] == "docs/results/core" and calls[-1][2]["surrogate"] is False
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- suite:core -->\n<!-- /suite:core -->\n")
    capsys.readouterr()
    assert main(["bench", "--suite", "core", "--surrogate", "--docs", str(doc)]) == 2
    assert "--docs writes the real suite's generated sections" in capsys.readouterr().err


# ----------------------------------------------------------------------------- cheap checkpoints for long runs
def test_checkpoint_pacer_bounds_the_share_of_time_spent_writing(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("ffenv.io.time.perf_counter", lambda: clock[0])
    pacer = CheckpointPacer(share=0.1)
    assert pacer.due()

    def slow_write():
        clock[0] += 2.0  # a write that takes 2 s: the next is due 18 s after it ended

    assert pacer.maybe(slow_write) and pacer.writes == 1
    clock[0] += 17.0
    assert not pacer.due() and not pacer.maybe(slow_write)
    clock[0] += 1.0
    assert pacer.maybe(slow_write) and pacer.writes == 2
    assert pacer.maybe(lambda: None) is False  # still paced by the last (slow) write
    with pytest.raises(FFPruneError, match=r"share must be in \(0, 1\)"):
        CheckpointPacer(share=1.0)
    state = {"history": [{"reward": 0.5, "action": [0.1, -0.2]}] * 3, "best": None}
    assert isinstance(pack(state), bytes) and unpack(pack(state)) == state and unpack(state) is state
