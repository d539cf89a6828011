"""``ffprune tune``: a grid of a method's settings run as resumable cells on seeds the suite does not use, reported and
selected on the reward split alone (no held-out number is read or shown)."""

from __future__ import annotations

import json
import re

import pytest

from ffenv.errors import FFPruneError
from ffenv.io import atomic_write_json
from ffprune.agents.cli import main
from ffprune.agents.experiments.bench import cell_path
from ffprune.agents.experiments.search import run_search
from ffprune.agents.experiments.tune import (
    DEFAULT_VARIANT,
    GRIDS,
    TuneSpec,
    parse_variant,
    report_tune,
    run_tune,
    selected_settings,
    tune_markdown,
    tune_variants,
)
from ffprune.agents.results import read_result

ENV_KW = {"reward_windows": 4, "calib_samples": 8, "eval_samples": 8}
TASK = "llama-s0.5"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One task, two variants (default, squash), one seed, budget 4."""
    out = tmp_path_factory.mktemp("tune")
    variants = tune_variants("fastforward", ["squash"])
    analysis = run_tune(out=out, variants=variants, tasks=[TASK], seeds=[10], budget=4, env_kwargs=ENV_KW, progress=False)
    return out, variants, analysis


@pytest.mark.slow
def test_a_tiny_tune_writes_its_cells_and_a_report_that_report_only_reproduces(tiny, capsys):
    out, variants, analysis = tiny
    assert list(variants) == [DEFAULT_VARIANT, "squash"] and variants["squash"] == {"squash": True}
    for variant in variants:
        cell = read_result(cell_path(out / variant / TASK, "fastforward", 10))
        assert cell["complete"] and cell["seed"] == 10 and cell["budget"] == 4
        assert cell["agent_config"]["squash"] is (variant == "squash")
        assert json.loads((out / variant / "variant.json").read_text()) == {"agent_kwargs": variants[variant]}
    rows = {r["variant"]: r for r in analysis["rows"]}
    summary = {s["variant"]: s for s in analysis["summary"]}
    gap = rows["squash"]["best_reward"] - rows[DEFAULT_VARIANT]["best_reward"]
    assert summary["squash"]["difference"]["mean"] == pytest.approx(gap) and summary["squash"]["difference"]["pairs"] == 1
    assert analysis["selected"] == max(summary, key=lambda v: (summary[v]["mean"], v == DEFAULT_VARIANT))
    md, js = (out / "tune.md").read_bytes(), (out / "tune.json").read_bytes()
    argv = ["tune", "--out", str(out), "--variants", "squash", "--tasks", TASK, "--seeds", "10", "--report-only"]
    assert main(argv) == 0
    assert (out / "tune.md").read_bytes() == md and (out / "tune.json").read_bytes() == js  # byte for byte
    assert "### Tuning fastforward on the reward split" in capsys.readouterr().out
    # a rerun resumes: every cell is finished, nothing is recomputed, the report is the same
    before = cell_path(out / "squash" / TASK, "fastforward", 10).stat().st_mtime_ns
    run_tune(out=out, variants=variants, tasks=[TASK], seeds=[10], budget=4, env_kwargs=ENV_KW, progress=False)
    assert cell_path(out / "squash" / TASK, "fastforward", 10).stat().st_mtime_ns == before
    assert (out / "tune.md").read_bytes() == md
    # the report shows no held-out number: no eval_ppl field, none of the cells' held-out values
    held_out = []
    for variant in variants:
        best = read_result(cell_path(out / variant / TASK, "fastforward", 10))["best"]
        held_out += [best["eval_ppl"], best["dense_eval_ppl"]]
    for text in (md.decode(), js.decode()):
        assert "eval_ppl" not in text and "held-out ppl" not in text
        assert not any(f"{v:.2f}" in text or repr(v) in text for v in held_out)


def test_a_heuristic_tune_runs_once_per_task_and_a_setting_it_refuses_is_out_of_the_selection(tmp_path, capsys):
    """A heuristic is deterministic: one seed; a setting its own range check refuses at the task's target (OWL's λ
    far too wide for 50 %) is listed as infeasible, not a failure, and the selection among the others is final."""
    variants = {DEFAULT_VARIANT: {}, "lam0.02-m3": {"lam": 0.02, "m": 3.0}, "wide": {"lam": 0.4}}
    out = tmp_path / "owl"
    analysis = run_tune(TuneSpec("owl", variants, [TASK], [10, 11], env_kwargs=ENV_KW), out=out, progress=False)
    assert analysis["seeds"] == [10] and not cell_path(out / DEFAULT_VARIANT / TASK, "owl", 11).exists()
    assert [f["variant"] for f in analysis["infeasible"]] == ["wide"] and "lam" in analysis["infeasible"][0]["message"]
    assert analysis["failures"] == [] and analysis["missing"] == []
    assert analysis["selected"] in (DEFAULT_VARIANT, "lam0.02-m3")
    assert "out of the selection" in (out / "tune.md").read_text()
    if analysis["selected"] != DEFAULT_VARIANT:
        assert selected_settings(out).settings == {"lam": 0.02, "m": 3.0}
    with pytest.raises(FFPruneError, match=r"\['gamma'\] are not owl settings"):
        run_tune(out=tmp_path / "bad", method="owl", variants={DEFAULT_VARIANT: {}, "g": {"gamma": 1}}, tasks=[TASK], seeds=[10],
                 progress=False)
    with pytest.raises(FFPruneError, match="tasks must be real suite tasks"):
        run_tune(out=tmp_path / "bad", method="owl", variants={DEFAULT_VARIANT: {}}, tasks=[TASK], seeds=[10], suite="real",
                 progress=False)
    assert GRIDS["owl"]["lam0.05-m7"] == {"lam": 0.05, "m": 7.0} and len(GRIDS["owl"]) == 20


@pytest.mark.slow
def test_a_curriculum_variant_changes_the_schedule_not_the_agent(tiny):
    out, _variants, _ = tiny  # the default cell is finished: only full32's runs
    run_tune(out=out, variants={DEFAULT_VARIANT: {}, "full32": GRIDS["fastforward"]["full32"]}, tasks=[TASK], seeds=[10],
             budget=4, env_kwargs=ENV_KW, progress=False)
    default, full = (read_result(cell_path(out / v / TASK, "fastforward", 10)) for v in (DEFAULT_VARIANT, "full32"))
    assert full["curriculum_kwargs"] == {"fidelity_schedule": "none"} and "curriculum_kwargs" not in default
    assert full["agent_config"] == default["agent_config"]
    assert {h["windows"] for h in full["history"]} == {ENV_KW["reward_windows"]}
    assert min(h["windows"] for h in default["history"]) < ENV_KW["reward_windows"]


def test_a_folder_holding_other_settings_is_refused(tiny):
    out, _variants, _ = tiny
    with pytest.raises(FFPruneError, match="holds a variant with other settings"):
        run_tune(out=out, variants={DEFAULT_VARIANT: {}, "squash": {"squash": True, "clip_coef": 0.3}}, tasks=[TASK],
                 seeds=[10], budget=4, env_kwargs=ENV_KW, progress=False)
    with pytest.raises(FFPruneError, match="holds a tune with other settings"):
        run_tune(out=out, variants={DEFAULT_VARIANT: {}}, tasks=[TASK], seeds=[10], budget=5, env_kwargs=ENV_KW, progress=False)


SETTINGS = {DEFAULT_VARIANT: {}, "lo": {"clip_coef": 0.2}, "hi": {"clip_coef": 0.3}, "other": {"clip_coef": 0.25}}


def _fake_cell(path, reward, eval_ppl):
    """A finished cell as the report reads it (its held-out numbers are there, and must not reach the report)."""
    atomic_write_json(path, {"complete": True, "env_id": "FFPrune-Llama-Structured50-v0", "seed": 10, "budget": 100,
                             "best": {"reward": reward, "eval_ppl": eval_ppl, "dense_eval_ppl": 11.1111},
                             "history": [{"reward": reward / 2}, {"reward": reward}],
                             "cost": {"evaluations_to_best": 2}})


def _fake_tune(out, rewards, tasks=("llama-s0.5", "opt-s0.5"), seeds=(10, 11)):
    """Cells on disk for ``rewards`` = {variant: [reward per (task, seed)]}; the report over them."""
    variants = {v: SETTINGS[v] for v in rewards}
    atomic_write_json(out / "config.json", {"method": "fastforward", "budget": 100, "env_kwargs": {}})
    for variant, values in rewards.items():
        atomic_write_json(out / variant / "variant.json", {"agent_kwargs": variants[variant]})
        pairs = [(t, s) for t in tasks for s in seeds]
        for (task, seed), reward in zip(pairs, values):
            _fake_cell(cell_path(out / variant / task, "fastforward", seed), reward, 987.6543 + reward)
    return report_tune(TuneSpec("fastforward", variants, list(tasks), list(seeds)), out=out)


def test_selection_is_the_highest_mean_best_reward_and_a_tie_goes_to_default(tmp_path):
    analysis = _fake_tune(tmp_path / "a", {DEFAULT_VARIANT: [0.5, 0.6, 0.7, 0.8], "lo": [0.4, 0.6, 0.7, 0.7],
                                           "hi": [0.6, 0.7, 0.6, 0.9]})
    summary = {s["variant"]: s for s in analysis["summary"]}
    assert analysis["selected"] == "hi" and summary["hi"]["mean"] == pytest.approx(0.7)
    assert summary[DEFAULT_VARIANT]["task_means"] == pytest.approx({"llama-s0.5": 0.55, "opt-s0.5": 0.75})
    d = summary["hi"]["difference"]
    assert d["mean"] == pytest.approx(0.05) and d["wins"] == 3 and d["pairs"] == 4
    assert d["std"] == pytest.approx(0.1) and d["low"] <= d["mean"] <= d["high"]
    assert summary["lo"]["difference"]["wins"] == 0 and summary["lo"]["difference"]["mean"] == pytest.approx(-0.05)
    text = (tmp_path / "a" / "tune.md").read_text()
    assert "Selected: **hi**" in text and "| hi | clip_coef=0.3 | 0.6500 | 0.7500 | 0.7000 | +0.0500 ± 0.1000 |" in text
    assert "987" not in text and "11.11" not in text and "eval_ppl" not in (tmp_path / "a" / "tune.json").read_text()
    tie = _fake_tune(tmp_path / "t", {"other": [0.6, 0.6, 0.6, 0.6], DEFAULT_VARIANT: [0.6, 0.6, 0.6, 0.6]})
    assert tie["selected"] == DEFAULT_VARIANT
    # an unfinished variant is not selected; an unfinished default leaves nothing selected
    (cell_path(tmp_path / "a" / "hi" / "opt-s0.5", "fastforward", 11)).unlink()
    failed = {"variant": "hi", "task": "opt-s0.5", "seed": 11, "error": "RuntimeError", "message": "boom"}
    atomic_write_json(tmp_path / "a" / "failures.json", [failed, {**failed, "seed": 10}])  # seed 10 finished since
    again = report_tune(TuneSpec("fastforward", {v: SETTINGS[v] for v in (DEFAULT_VARIANT, "lo", "hi")},
                                 ["llama-s0.5", "opt-s0.5"], [10, 11]), out=tmp_path / "a")
    assert again["selected"] == DEFAULT_VARIANT and again["missing"] == [{"variant": "hi", "task": "opt-s0.5", "seed": 11}]
    assert again["failures"] == [failed] and "incomplete (3 / 4)" in tune_markdown(again)
    assert "- hi opt-s0.5 seed 11: RuntimeError: boom" in tune_markdown(again)
    (cell_path(tmp_path / "a" / DEFAULT_VARIANT / "opt-s0.5", "fastforward", 11)).unlink()
    assert report_tune(TuneSpec("fastforward", {v: SETTINGS[v] for v in (DEFAULT_VARIANT, "lo")},
                                ["llama-s0.5", "opt-s0.5"], [10, 11]), out=tmp_path / "a")["selected"] is None


def test_the_selected_settings_are_read_from_a_finished_tune_only(tmp_path):
    _fake_tune(tmp_path / "a", {DEFAULT_VARIANT: [0.5, 0.6, 0.7, 0.8], "lo": [0.4, 0.6, 0.7, 0.7], "hi": [0.6, 0.7, 0.6, 0.9]})
    assert selected_settings(tmp_path / "a") == ("fastforward", "hi", {"clip_coef": 0.3}, [10, 11], 100, "core")
    _fake_tune(tmp_path / "t", {"other": [0.6] * 4, DEFAULT_VARIANT: [0.6] * 4})
    with pytest.raises(FFPruneError, match="selected 'default' .*nothing new to run"):
        selected_settings(tmp_path / "t")
    cell_path(tmp_path / "a" / "lo" / "opt-s0.5", "fastforward", 11).unlink()  # hi is still the best, but not for good
    report_tune(TuneSpec("fastforward", {v: SETTINGS[v] for v in (DEFAULT_VARIANT, "lo", "hi")},
                         ["llama-s0.5", "opt-s0.5"], [10, 11]), out=tmp_path / "a")
    with pytest.raises(FFPruneError, match=r"1 unfinished cell\(s\), so its selection \('hi' so far\) is not final"):
        selected_settings(tmp_path / "a")
    with pytest.raises(FFPruneError, match="tune.json' does not exist: run `ffprune tune"):
        selected_settings(tmp_path / "none")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tune.json").write_text('{"method": "fastforward"}')
    with pytest.raises(FFPruneError, match="is not a tune report"):
        selected_settings(tmp_path / "bad")


def test_variants_come_from_the_grid_and_from_the_command_line():
    assert list(GRIDS["fastforward"]) == [DEFAULT_VARIANT, "batch4", "squash", "clip0.3", "mean", "lr3e-4", "full32"]
    assert list(GRIDS["ppo"]) == [DEFAULT_VARIANT, "n_steps8", "clip0.3", "ent0", "lr1e-3", "epochs4", "full32"]
    assert parse_variant("f:curriculum.fidelity_start=1,clip_coef=0.3") == (
        "f", {"curriculum.fidelity_start": 1, "clip_coef": 0.3})
    assert tune_variants("ppo") == GRIDS["ppo"]
    assert parse_variant("wide:hidden=[64,64],learning_rate=3e-4") == ("wide", {"hidden": [64, 64], "learning_rate": 3e-4})
    chosen = tune_variants("fastforward", ["mean"], [parse_variant("wide:hidden=[64,64]")])
    assert chosen == {DEFAULT_VARIANT: {}, "mean": {"mean_episode": True}, "wide": {"hidden": [64, 64]}}
    assert tune_variants("random", None, [("few", {"batch": 4})]) == {DEFAULT_VARIANT: {}, "few": {"batch": 4}}


@pytest.mark.parametrize(("argv", "match"), [
    (["--seeds", "10,2"], r"seeds must not be the core suite's 0-2 .*got \[2\]"),
    (["--seeds", "0"], r"seeds must not be the core suite's 0-2"),
    (["--seeds", "10,x"], "--seeds must be comma-separated integers"),
    (["--method", "sac"], "method 'sac' has no built-in grid"),
    (["--method", "nope"], "agent must be one of"),
    (["--variant", "wide:hiden=[64]"], r"variant 'wide': \['hiden'\] are not fastforward settings"),
    (["--variant", "fast:learning_rate=-1"], "variant 'fast': learning_rate is out of range"),
    (["--method", "ppo", "--variant", "x:clip_coef=0.3"], r"\['clip_coef'\] are not PPO settings"),
    (["--variant", "squash:squash=true"], "variant 'squash' is already defined"),
    (["--variant", "nothing"], "--variant expects NAME:key=value"),
    (["--variants", "squash,wide"], r"variants \['wide'\] are not in the fastforward grid"),
    (["--tasks", "llama-s0.9"], "tasks must be core suite tasks"),
    (["--variant", "x:curriculum.warmup_episodes=3"], r"\['curriculum.warmup_episodes'\] are not curriculum settings"),
    (["--method", "random", "--variant", "x:curriculum.stairs=2"], "does not search under the curriculum"),
])
def test_bad_input_is_one_line_and_exit_code_2_before_any_search(tmp_path, capsys, argv, match):
    assert main(["tune", "--out", str(tmp_path / "t"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ffprune tune: error:") and "\n" not in err and re.search(match, err), err
    assert not (tmp_path / "t").exists()  # refused before anything was written


def test_seeds_of_the_suite_are_refused_by_the_library_too(tmp_path):
    with pytest.raises(FFPruneError, match="held-out protocol"):
        run_tune(out=tmp_path, tasks=[TASK], seeds=[1, 10], budget=4, env_kwargs=ENV_KW)
    with pytest.raises(FFPruneError, match="run ffprune tune without --report-only first"):
        report_tune(out=tmp_path, seeds=[10])


def test_a_search_refuses_curriculum_settings_it_cannot_use(tmp_path):
    with pytest.raises(FFPruneError, match=r"curriculum_kwargs: \['warmup_episodes'\] are not curriculum settings"):
        run_search("FFPrune-Llama-v0", agent="fastforward", budget=2, logdir=None, env_kwargs=ENV_KW,
                   curriculum_kwargs={"warmup_episodes": 5}, progress=False)
    with pytest.raises(FFPruneError, match="need a search under the curriculum"):
        run_search("FFPrune-Llama-v0", agent="random", budget=2, logdir=None, env_kwargs=ENV_KW,
                   curriculum_kwargs={"stairs": 2}, progress=False)


def test_a_search_refuses_extra_keys_that_would_overwrite_its_result(tmp_path):
    with pytest.raises(FFPruneError, match=r"^extra_keys: keys \['best'\] are the result's own"):
        run_search("FFPrune-Llama-v0", agent="random", budget=2, logdir=None, env_kwargs=ENV_KW,
                   extra_keys={"best": 1, "variant": {}}, progress=False)
    with pytest.raises(FFPruneError, match="^extra_keys: values must be JSON values"):
        run_search("FFPrune-Llama-v0", agent="random", budget=2, logdir=None, env_kwargs=ENV_KW,
                   extra_keys={"variant": object()}, progress=False)
