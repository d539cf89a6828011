"""``ffprune surrogate record`` and ``validate`` (issue 21): the recorder's sources, its resume, its plan, the validation
table, and bad input as one line.

A tiny core suite (three real searches on the bundled tiny-llama with short windows) and one tiny evaluation set are
made once for the module, through the command line, with the env settings test_surrogate.py uses.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy.stats import spearmanr

import ffenv
from ffenv import FFPruneEnv
from ffenv.errors import FFPruneError
from ffenv.surrogate import EvaluationSet
from ffprune.agents.cli import main
from ffprune.agents.cli import surrogate as cli
from ffprune.agents.experiments import surrogate_record as sr
from ffprune.agents.experiments.bench import cell_path
from ffprune.agents.experiments.search import run_search
from ffprune.agents.experiments.surrogate_validate import slice_metrics
from ffprune.agents.results import read_result

KW = dict(reward_windows=4, eval_samples=2, seq_len=64, calib_samples=8)
ENV_FLAGS = [f"--env-kwarg={k}={v}" for k, v in KW.items()]
TINY = ["--families", "llama", "--modes", "structured", "--seeds", "0", "--random", "4", "--spreads", "uniform,0.3",
        "--heuristics", "uniform,owl,atp", "--atp-trials", "2", "--perturb", "4", "--fidelity", "2", "--held-out", "0.3",
        "--targets", "0.3,0.5", "--chunk", "3", "--verify", "2", "--quiet", *ENV_FLAGS]
SET = "tiny-llama-structured.npz"
SEARCHES = (("llama-s0.3", "fastforward", 4, 0), ("llama-s0.3", "uniform", 1, 0), ("llama-s0.5", "random", 3, 1))
"""(task, method, budget, search seed) of the tiny suite: every search on env seed 0, as the core suite's."""


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("core")
    ids = {"llama-s0.3": "FFPrune-Llama-v0", "llama-s0.5": "FFPrune-Llama-Structured50-v0"}
    for task, method, budget, seed in SEARCHES:
        run_search(ids[task], agent=method, budget=budget, seed=seed, out=cell_path(out / task, method, seed),
                   env_kwargs=KW, logdir=None, progress=False)
    return out


@pytest.fixture(scope="module")
def recorded(suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("sets")
    assert main(["surrogate", "record", *TINY, "--out", str(out), "--suite-out", str(suite)]) == 0
    return out


def _settings() -> sr.RecordSettings:
    return cli.settings_of(cli_args(TINY))


def cli_args(argv: list[str]):
    from ffprune.agents.cli import build_parser

    return build_parser().parse_args(["surrogate", "record", *argv])


# ----------------------------------------------------------------------------- what is recorded
def test_every_source_is_recorded_with_the_planned_counts(recorded, suite):
    data = EvaluationSet.load(recorded / SET)
    a = data.arrays
    counts = {s: int((a["source"] == i).sum()) for i, s in enumerate(data.sources)}
    assert set(counts) == {"suite:fastforward", "suite:uniform", "suite:random", "random:uniform", "random:0.3",
                           "heuristic:uniform", "heuristic:owl", "heuristic:atp", "perturb", "fidelity"}
    plan = sr.seed_plan(_settings(), "llama", "structured", 4)
    new = {c.kind: 0 for c in plan}
    for c in plan:
        new[c.kind] += c.rows
    assert counts["random:uniform"] + counts["random:0.3"] == new["random"] == 8
    assert counts["heuristic:uniform"] + counts["heuristic:owl"] + counts["heuristic:atp"] == new["heuristics"] == 8
    assert counts["perturb"] == 4 and counts["fidelity"] == new["fidelity"] == 2 * 2  # full + 2 windows each
    eligible = [data.sources.index(s) for s in counts if s.split(":")[0] in ("random", "heuristic", "perturb")]
    held = np.isin(a["source"], eligible) & np.isfinite(a["eval_ppl"])
    assert held.sum() == sum(c.held_out for c in plan) == round(0.3 * 20)
    new_rows = a["source"] >= data.sources.index("random:uniform")
    assert set(np.round(a["target"][new_rows].astype(np.float64), 6).tolist()) == {0.3, 0.5}
    assert set(a["seed"].tolist()) == {0}
    recorder = data.meta["recorder"]
    assert recorder["progress"]["0"] == {"chunks": len(plan), "rows": len(data)}
    assert recorder["verification"]["0"]["passed"] and recorder["verification"]["0"]["max_rel_diff"] == 0.0
    assert recorder["settings"] == _settings().as_meta("structured", "llama")
    # the fidelity rows come in pairs: the same allocation on all windows and on 2
    fid = np.flatnonzero(a["source"] == data.sources.index("fidelity"))
    assert a["windows"][fid].tolist() == [4, 2, 4, 2]
    assert np.array_equal(a["unit_sparsity"][fid[0]], a["unit_sparsity"][fid[1]])


def test_suite_rows_are_the_cells_histories_projected_not_measured(recorded, suite):
    data = EvaluationSet.load(recorded / SET)
    a = data.arrays
    env = FFPruneEnv(**KW)
    for task, method, _budget, seed in SEARCHES:
        cell = read_result(cell_path(suite / task, method, seed))
        mine = np.flatnonzero(a["source"] == data.sources.index(f"suite:{method}"))
        history = cell["history"]
        assert len(mine) in (len(history), len(history) + 1)  # + the best, re-scored on all windows
        for row, point in zip(mine, history):
            assert a["reward"][row] == np.float32(point["reward"]) and a["windows"][row] == point["windows"]
            assert np.array_equal(a["unit_sparsity"][row],
                                  sr.realised_sparsity(env, point["action"], point["target"]).astype(np.float16))
        best = cell["best"]
        with_eval = mine[np.isfinite(a["eval_ppl"][mine])]
        assert len(with_eval) == 1 and a["eval_ppl"][with_eval[0]] == np.float32(best["eval_ppl"])
        assert np.array_equal(a["unit_sparsity"][with_eval[0]], np.asarray(best["layer_sparsity"], np.float16))
    # the projection without measuring is what a step realises
    actions = np.random.default_rng(0).uniform(-1, 1, (4, env.n_units)).astype(np.float32)
    for action, target in zip(actions, (0.1, 0.3, 0.5, 0.6)):
        _reward, info = env.score(action, target_sparsity=target)
        assert np.array_equal(sr.realised_sparsity(env, action, target), info["layer_sparsity"])


def test_suite_rows_that_do_not_reproduce_are_dropped(suite, tmp_path, monkeypatch):
    monkeypatch.setattr(sr, "VERIFY_RTOL", -1.0)  # nothing reproduces "better than exactly"
    argv = [*TINY, "--random", "1", "--spreads", "uniform", "--heuristics", "uniform", "--perturb", "0", "--fidelity",
            "0", "--out", str(tmp_path), "--suite-out", str(suite)]
    assert main(["surrogate", "record", *argv]) == 0
    data = EvaluationSet.load(tmp_path / SET)
    assert not any(s.startswith("suite:") for s in data.sources)
    assert data.meta["recorder"]["verification"]["0"]["passed"] is False


# ----------------------------------------------------------------------------- resume
def test_an_interrupted_record_resumes_to_the_same_set(recorded, suite, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real_record = sr.record

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_record(*args, **kwargs)

    argv = ["surrogate", "record", *TINY, "--out", str(tmp_path), "--suite-out", str(suite)]
    monkeypatch.setattr(sr, "record", interrupting)
    assert main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    partial = EvaluationSet.load(tmp_path / SET)
    done = partial.meta["recorder"]["progress"]["0"]["chunks"]
    assert 0 < done < len(sr.seed_plan(_settings(), "llama", "structured", 4))
    ffenv.clear_cache()  # as a new process would: the model and its statistics again
    monkeypatch.setattr(sr, "record", real_record)
    assert main(argv) == 0
    whole = EvaluationSet.load(recorded / SET)
    again = EvaluationSet.load(tmp_path / SET)
    assert again.fingerprint == whole.fingerprint
    assert all(np.array_equal(again.arrays[k], whole.arrays[k], equal_nan=True) for k in whole.arrays)
    # a finished set: the same command evaluates nothing and leaves it as it is
    monkeypatch.setattr(sr, "record", lambda *a, **k: pytest.fail("a finished set was evaluated again"))
    assert main(argv) == 0
    assert EvaluationSet.load(tmp_path / SET).fingerprint == whole.fingerprint


def test_a_set_recorded_with_other_settings_is_refused(recorded, capsys):
    argv = ["surrogate", "record", *TINY, "--random", "5", "--out", str(recorded), "--no-suite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recorded with other settings (random, suite" in err


# ----------------------------------------------------------------------------- the plan
def test_dry_run_prints_the_plan_and_records_nothing(suite, tmp_path, capsys):
    assert main(["surrogate", "record", *TINY, "--out", str(tmp_path), "--suite-out", str(suite), "--dry-run"]) == 0
    out = capsys.readouterr().out
    suite_rows = sum(len(read_result(cell_path(suite / t, m, s))["history"]) for t, m, _b, s in SEARCHES)
    row = re.search(r"\| suite \| (\d+) \| (\d+) \|", out)
    assert row and int(row.group(1)) >= suite_rows and int(row.group(2)) == 3  # one held-out ppl per cell's best
    assert "| random:uniform | 4 |" in out and "| heuristic:uniform/owl/atp | 8 |" in out and "| fidelity | 4 |" in out
    assert "chunks done: seed 0: 0/" in out and not list(tmp_path.iterdir())


def test_help_states_the_default_plans_time(tmp_path):
    defaults = sr.RecordSettings()
    assert cli.settings_of(cli_args([])) == defaults  # the CLI's written-out defaults are the library's
    plan = sr.plan_record(out=tmp_path / "sets", suite_out=tmp_path / "no-suite")  # the suite's checks, no rows
    minutes = {s["mode"]: s["per_seed"][0]["minutes"] for s in plan["sets"]}
    evaluations = {s["mode"]: s["per_seed"][0]["evaluations"] for s in plan["sets"]}
    assert f"about {minutes['structured']:.0f} min structured and {minutes['unstructured']:.0f} min" in cli.RECORD_DESCRIPTION
    assert f"about {round(evaluations['structured'], -1):.0f} / {round(evaluations['unstructured'], -1):.0f} " \
           "reward-evaluation equivalents" in cli.RECORD_DESCRIPTION
    assert f"about {plan['minutes'] / 60:.1f} h on one core" in cli.RECORD_DESCRIPTION


def test_a_real_family_records_around_its_suite_target_at_its_own_cost(tmp_path):
    """SmolLM2 (the ``real`` suite): new rows up to 0.1 above its task's target, a held-out ppl costs its 32 / 8
    windows, its evaluations its measured seconds; its suite is docs/results/real. Planned without loading the model."""
    settings = sr.RecordSettings(suite=False, random=2, perturb=0, fidelity=0)
    assert settings.targets_of("structured", "smollm2") == (0.1, 0.15, 0.2, 0.25, 0.3)
    assert settings.targets_of("unstructured", "smollm2") == sr.TARGETS["unstructured"]
    assert settings.targets_of("structured", "llama") == sr.TARGETS["structured"]  # the bundled sets' meta unchanged
    assert str(sr.default_suite_out("smollm2", None, "docs/results")) == "docs/results/real"
    with pytest.raises(FFPruneError, match="give suite_out"):  # the library points nowhere by itself
        sr.default_suite_out("smollm2")
    config = sr.env_config("smollm2", "structured", 0)
    assert (config.model, config.eval_samples, sr.held_out_cost(config)) == ("smollm2-135m", 32, 4.0)
    plan = sr.plan_record(families=["smollm2"], modes=["structured"], out=tmp_path, settings=settings)
    entry = plan["sets"][0]
    assert entry["path"].endswith("smollm2-135m-structured.npz") and entry["seconds_per_evaluation"] == 3.5
    sources = entry["per_seed"][0]["sources"]
    heuristics = sources["heuristic:uniform/owl/alphapruning/flap/dlp/atp"]
    assert heuristics["rows"] == 5 * 9  # 5 targets x (uniform, OWL, AlphaPruning, FLAP, DLP, 4 ATP)
    assert heuristics["evaluations"] == 5 * (9 + 2) + 4.0 * heuristics["held_out"]  # FLAP, DLP: a calibration pass
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- validation
def test_slice_metrics_rank_and_goals():
    rng = np.random.default_rng(0)
    reward = rng.uniform(0.2, 0.9, 40)
    rows = np.ones(40, bool)
    perfect = slice_metrics(np.log(reward), reward, None, np.full(40, np.nan), rows, ~rows)
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["top_decile_spearman"] == pytest.approx(1.0)
    assert perfect["goals"] == {"spearman": True, "top_decile": True, "eval_spearman": None, "eval_top_decile": None}
    assert perfect["mae_log_reward"] == pytest.approx(0)
    assert perfect["top_decile_rows"] == 4 and perfect["eval_spearman"] is None
    reversed_ = slice_metrics(-np.log(reward), reward, -np.log(reward), 1 / reward, rows, rows)
    assert reversed_["spearman"] == pytest.approx(-1.0) and reversed_["goals"]["spearman"] is False
    # held-out: predicted log ppl -log r vs real ppl 1/r, the same order; its top decile is the 4 lowest ppls
    assert reversed_["eval_spearman"] == pytest.approx(1.0) and reversed_["eval_top_decile_spearman"] == pytest.approx(1)
    assert reversed_["eval_top_decile_rows"] == 4 and reversed_["goals"]["eval_spearman"] is True
    noisy = slice_metrics(np.log(reward) + rng.normal(0, 0.2, 40), reward, None, reward, rows, ~rows)
    assert 0.5 < noisy["spearman"] < 0.95 and noisy["goals"]["spearman"] is False
    few = slice_metrics(np.log(reward), reward, None, reward, rows & (np.arange(40) < 2), ~rows)
    assert few["spearman"] is None and few["goals"]["spearman"] is None


def test_validate_writes_the_table_per_task(recorded, tmp_path, capsys):
    out = tmp_path / "validation"
    argv = ["surrogate", "validate", "--families", "llama", "--modes", "structured", "--data", str(recorded), "--out",
            str(out), "--fit-kwarg", "steps=200", "--fit-kwarg", "patience=100", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    analysis = json.loads((out / "validation.json").read_text())
    table = (out / "validation.md").read_text()
    assert table in printed and "| llama-s0.3 |" in table and "| llama-s0.5 |" in table
    (s,) = analysis["sets"]
    data = EvaluationSet.load(recorded / SET)
    assert s["rows"] == len(data) and s["splits"]["test"] == int(data.split()["test"].sum())
    mlp = s["models"]["mlp-ensemble"]
    assert set(mlp["slices"]) == {"all targets", "llama-s0.3", "llama-s0.5"} and mlp["us_per_prediction"] > 0
    full_test = int((data.split()["test"] & (data.arrays["windows"] == 4)).sum())
    assert mlp["slices"]["all targets"]["rows"] == s["test"]["full_fidelity"] == full_test
    # cross-validation: every row with a held-out ppl, each predicted out of its fold
    a = data.arrays
    measured = np.isfinite(a["eval_ppl"]) & (a["eval_ppl"] > 0)
    cv = mlp["slices"]["all targets"]["cross_validated"]
    assert s["cv_folds"] == 5 and cv["cv_rows"] == int(measured.sum()) > s["test"]["held_out"]
    assert cv["cv_spearman"] is not None and "cross-validated" in table
    both = measured & (a["windows"] == 4)
    assert cv["real_reward_spearman"] == pytest.approx(spearmanr(-a["reward"][both], a["eval_ppl"][both]).statistic)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        assert "scikit-learn is not installed" in table
    else:
        assert "hist-gradient-boosting" in s["models"] and "HistGradientBoostingRegressor" in table


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, match", [
    (["record", "--families", "gpt"], r"families must be among \['gemma3', 'llama', 'mistral', 'opt', 'smollm2'\] .*\['gpt'\]"),
    (["record", "--modes", "dense"], r"modes must be among \['structured', 'unstructured'\]"),
    (["record", "--seeds", "-1"], r"seeds must be env seeds in \[0, 32767\]"),
    (["record", "--seeds", "40000"], r"seeds must be env seeds in \[0, 32767\]"),
    (["record", "--seeds", "0,x"], "--seeds must be comma-separated integers"),
    (["record", "--seeds", "0,0"], "seeds must be distinct"),
    (["record", "--env-kwarg", "seed=3"], r"env settings \['seed'\] are set by the recorder"),
    (["record", "--held-out", "1.5"], r"held_out must be a share in \[0, 1\]"),
    (["record", "--spreads", "uniform,wide"], "--spreads takes 'uniform' or numbers"),
    (["record", "--heuristics", "owl,magic"], r"heuristics must be among .*\['magic'\]"),
    (["record", "--targets", "0.95"], "target_sparsity=0.95 is infeasible"),
    (["record", "--chunk", "0"], "chunk must be a positive integer"),
    (["record", "--no-suite", "--random", "0", "--perturb", "0", "--fidelity", "0", "--heuristics", "atp", "--atp-trials",
      "0"], "nothing to record"),
    (["validate", "--families", "gpt"], "families must be among"),
    (["validate", "--fit-kwarg", "trees=3"], "--fit-kwarg takes FitSettings fields"),
    (["validate", "--folds", "1"], r"folds must be 0 \(no cross-validation\) or an integer >= 2, got 1"),
])
def test_bad_input_is_one_line(argv, match, tmp_path, capsys):
    out = ["--out", str(tmp_path)] if argv[0] == "record" else ["--data", str(tmp_path), "--out", str(tmp_path)]
    assert main(["surrogate", *argv, *out, "--dry-run"] if argv[0] == "record" else ["surrogate", *argv, *out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err), err
    assert not list(tmp_path.glob("*.npz"))


def test_unwritable_out_and_missing_sets_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["surrogate", "record", "--out", str(blocker / "sets"), "--families", "llama", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err and "file/sets" in err
    assert main(["surrogate", "validate", "--data", str(tmp_path), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no evaluation set" in err and "ffprune surrogate record" in err
    (tmp_path / SET).write_bytes(b"junk")
    assert main(["surrogate", "record", "--out", str(tmp_path), "--families", "llama", "--modes", "structured",
                 "--dry-run"]) == 2
    assert "corrupt" in capsys.readouterr().err
