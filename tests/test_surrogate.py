"""Surrogate mode (issue 21): evaluation sets, the fitted surrogate, and ``gym.make(id, surrogate=True)``.

One small evaluation set is recorded on the bundled tiny-llama (short windows, few reward windows) once for the
module: random allocations at several targets and spreads, some with the held-out ppl, some also at reduced
fidelity. Everything else is checked against it and against the real env it was recorded on.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from conftest import SURROGATE_KW
from scipy.stats import spearmanr

import ffenv
from ffenv import CurriculumWrapper, FFPruneEnv, FFPruneError, SearchAccounting
from ffenv.envs.measurement import SurrogateMeasurement
from ffenv.surrogate import EvaluationSet, FitSettings, fit, fold_of, record, split_of
from ffenv.surrogate.model import Fidelity, Surrogate, fidelity_noise
from ffenv.surrogate.records import EnvDescription

KW = SURROGATE_KW
ENV_ID = "FFPrune-Llama-v0"
FAST_FIT = FitSettings(steps=300, patience=100)


@pytest.fixture(scope="module")
def recorded(surrogate_recording):
    """(real env, evaluation set, folder holding it as tiny-llama-structured.npz): conftest's recording."""
    return surrogate_recording


def make(folder, env_id=ENV_ID, **kwargs):
    return gym.make(env_id, surrogate=True, surrogate_data=str(folder), **{**KW, **kwargs})


# ----------------------------------------------------------------------------- the evaluation set
def test_record_layout_and_reload(recorded):
    env, data, folder = recorded
    assert len(data) == 44 and data.sources == ["random:held", "random", "fidelity"]
    a = data.arrays
    assert a["unit_sparsity"].dtype == np.float16 and a["unit_sparsity"].shape == (44, env.n_units)
    assert np.isfinite(a["eval_ppl"][:16]).all() and np.isnan(a["eval_ppl"][16:]).all()
    assert sorted(set(a["windows"].tolist())) == [1, 2, 4] and set(a["seed"].tolist()) == {0}
    assert (a["reward"] > 0).all() and np.allclose(a["ppl"] * a["reward"],
                                                   [data.description.dense_ppl(0, "reward", w) for w in a["windows"]],
                                                   rtol=1e-5)
    loaded = EvaluationSet.load(folder / "tiny-llama-structured.npz")
    assert loaded.fingerprint == data.fingerprint == loaded.meta["fingerprint"]
    assert all(np.array_equal(loaded.arrays[k], a[k], equal_nan=True) for k in a)
    assert loaded.meta["unit_names"] == env.unit_names and loaded.meta["reward_windows"] == 4


def test_corrupt_or_altered_file_is_one_line_error(recorded, tmp_path):
    _env, data, folder = recorded
    raw = (folder / "tiny-llama-structured.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    for name in ("cut.npz", "junk.npz"):
        with pytest.raises(FFPruneError, match="corrupt") as err:
            EvaluationSet.load(tmp_path / name)
        assert "\n" not in str(err.value) and "ffprune surrogate record" in str(err.value)
    altered = {k: v.copy() for k, v in data.arrays.items()}
    altered["reward"][3] *= 1.01
    with open(tmp_path / "altered.npz", "wb") as fh:
        np.savez_compressed(fh, meta=np.array(json.dumps(data.meta)), **altered)
    with pytest.raises(FFPruneError, match="fingerprint"):
        EvaluationSet.load(tmp_path / "altered.npz")
    with pytest.raises(FFPruneError, match="does not exist"):
        EvaluationSet.load(tmp_path / "absent.npz")


def test_split_is_by_allocation_and_stable(recorded):
    _env, data, _folder = recorded
    rows = np.random.default_rng(1).uniform(0, 0.9, (2000, 16)).astype(np.float16)
    names = split_of(rows)
    shares = {s: float(np.mean(names == s)) for s in ("train", "validation", "test")}
    assert 0.66 < shares["train"] < 0.74 and 0.12 < shares["validation"] < 0.18 and 0.12 < shares["test"] < 0.18
    order = np.random.default_rng(2).permutation(len(rows))
    assert np.array_equal(split_of(rows[order]), names[order])  # not by row order
    assert split_of(rows[5]) == names[5] and split_of(rows[5].astype(np.float32)) == names[5]
    masks = data.split()
    assert np.array_equal(masks["train"] + masks["validation"] + masks["test"], np.ones(len(data), bool))
    # the fidelity rows repeat allocations of the first rows: each lands in the split of its allocation
    assert np.array_equal(masks["test"][32:38], masks["test"][:6]) and np.array_equal(masks["test"][38:], masks["test"][:6])
    # cross-validation folds: by allocation too, balanced, independent of the split
    folds = fold_of(rows, 5)
    assert set(folds.tolist()) == set(range(5)) and all(0.17 < np.mean(folds == k) < 0.23 for k in range(5))
    assert np.array_equal(fold_of(rows[order], 5), folds[order])
    assert 0.17 < np.mean(folds[names == "test"] == 0) < 0.23
    with pytest.raises(FFPruneError, match="folds must be a positive integer"):
        fold_of(rows, 0)


# ----------------------------------------------------------------------------- the fit
def test_fit_is_deterministic_for_a_seed_and_never_reads_the_test_split(recorded):
    _env, data, _folder = recorded
    a, b = fit(data, FAST_FIT), fit(data, FAST_FIT)
    assert all(np.array_equal(x, y) for x, y in zip(a.reward_model.weights, b.reward_model.weights))
    other = fit(data, FitSettings(steps=20, seed=1))
    assert not np.array_equal(other.reward_model.weights[0], a.reward_model.weights[0])
    test = data.split()["test"]
    assert test.any()
    changed = EvaluationSet(data.meta, {**data.arrays, "reward": np.where(test, 0.01, data.arrays["reward"])})
    assert np.array_equal(fit(changed, FAST_FIT).reward_model.weights[0], a.reward_model.weights[0])
    # it learned the reward: the ranking of the recorded full-fidelity rows
    full = data.arrays["windows"] == 4
    x = a.inputs(data.arrays["unit_sparsity"][full], data.arrays["target"][full], 0)
    assert spearmanr(a.reward_model.predict(x)[0], np.log(data.arrays["reward"][full])).statistic > 0.8
    # the disk cache's round trip gives the same surrogate
    again = Surrogate.from_arrays(a.arrays(), data)
    assert again.predict_reward(x[0, :16], 0.3, 0) == a.predict_reward(x[0, :16], 0.3, 0)
    paired = 6 - int(test[:6].sum())  # fidelity pairs come from the train and validation splits only
    assert a.fidelity.pairs.tolist() == [paired, paired] and a.eval_model is not None
    # the held-out model reads the predicted log reward as its last input; predict_log is the batch form
    log_r, log_e = a.predict_log(x[:3])
    assert np.allclose(log_r, a.reward_model.predict(x[:3])[0])
    assert a.eval_model.x_shift.shape == (x.shape[1] + 1,)
    assert np.exp(log_e[0]) == pytest.approx(a.predict_eval_ppl(x[0, :16], float(x[0, 16]), 0)[0])
    # exclude: those rows are read by no model (a cross-validation fold)
    fold = fold_of(data.arrays["unit_sparsity"], 5) == 0
    without = fit(data, FAST_FIT, exclude=fold)
    scrambled = EvaluationSet(data.meta, {**data.arrays, "reward": np.where(fold, 0.01, data.arrays["reward"]),
                                          "eval_ppl": np.where(fold, 1e4, data.arrays["eval_ppl"])})
    again = fit(scrambled, FAST_FIT, exclude=fold)
    assert np.array_equal(again.reward_model.weights[0], without.reward_model.weights[0])
    assert without.eval_model is not None and np.array_equal(again.eval_model.weights[0], without.eval_model.weights[0])
    assert not np.array_equal(without.reward_model.weights[0], a.reward_model.weights[0])


def test_fidelity_interpolates_and_refuses_without_data():
    f = Fidelity(8, np.array([2, 4]), np.array([-0.2, -0.1]), np.array([0.08, 0.04]), np.array([5, 5]))
    assert f.at(8) == (0.0, 0.0) and f.at(4) == pytest.approx((-0.1, 0.04)) and f.at(1) == pytest.approx((-0.2, 0.08))
    b3, s3 = f.at(3)
    assert -0.2 < b3 < -0.1 and 0.04 < s3 < 0.08
    empty = Fidelity(8, np.array([], np.int64), np.array([]), np.array([]), np.array([], np.int64))
    with pytest.raises(FFPruneError, match="no reduced-fidelity"):
        empty.at(2)


# ----------------------------------------------------------------------------- the env
def test_surrogate_env_has_the_real_env_spaces_observations_and_allocations(recorded):
    real, data, folder = recorded
    env = make(folder)
    base = env.unwrapped
    assert isinstance(base.measurement, SurrogateMeasurement) and base.surrogate is base.measurement.surrogate
    for ask in (lambda: base.model, lambda: base.windows("eval"), lambda: base.pruned_model(sparsities=np.zeros(base.n_units))):
        with pytest.raises(FFPruneError, match="measures no model: build the env without surrogate=True"):
            ask()  # a surrogate env has no model: asking for one is explicit (the real env)
    assert len(base.real_backend().blocks) == len(real.blocks)  # by name: what heuristics read the weights through
    assert env.observation_space == real.observation_space and env.action_space == real.action_space
    assert base.unit_names == real.unit_names and np.array_equal(base.sizes, real.sizes)
    obs, info = env.reset(seed=0)
    real_obs, real_info = real.reset(seed=0)
    assert np.array_equal(obs, real_obs) and info == real_info
    rng = np.random.default_rng(5)
    for target in (0.3, 0.5):
        obs, info = env.reset(options={"target_sparsity": target})
        assert np.array_equal(obs, real.reset(options={"target_sparsity": target})[0])
        for _ in range(3):
            action = rng.uniform(-1, 1, real.n_units).astype(np.float32)
            _obs, reward, terminated, _trunc, info = env.step(action)
            real_info = real._allocation_info(real.pruner.to_unit_sparsity(
                ffenv.project_budget(action, target, real.sizes, 0.1, 1.0), (1 - target) * real.sizes.sum()))
            assert np.array_equal(info["layer_sparsity"], real_info["layer_sparsity"])
            assert info["sparsity"] == real_info["sparsity"] and terminated
            assert info["surrogate"] is True and 0.05 < reward < 1.5 and info["surrogate_std"] >= 0
            assert info["ppl"] == pytest.approx(info["dense_ppl"] / reward)
            assert info["cost"] == {"evaluations": 0, "tokens": 0, "surrogate_evaluations": 1}
    assert base.cost["surrogate_evaluations"] == 6 and base.cost["evaluations"] == 0 and base.cost["tokens"] == 0
    # the reward split's ppl at full fidelity, as a search's final scoring asks for it: the full-fidelity step's
    _obs, reward, *_ = env.step(action)
    calib = base.evaluate(action, split="reward", n_windows=base.config.reward_windows, target_sparsity=base.target_sparsity)
    assert calib["ppl"] == pytest.approx(base.dense_ppl / reward) and calib["surrogate"] is True and calib["tokens"] == 0
    with pytest.raises(FFPruneError, match="all 4 reward windows without Calib"):
        base.evaluate(action, split="reward", n_windows=2)
    # the recorded allocations come back close to their measured rewards
    full = data.arrays["windows"] == 4
    pred = [base.surrogate.predict_reward(s, t, 0)[0] for s, t in
            zip(data.arrays["unit_sparsity"][full], data.arrays["target"][full])]
    assert np.mean(np.abs(np.log(pred) - np.log(data.arrays["reward"][full]))) < 0.1


def test_unstructured_rounding_without_the_model_is_the_engines():
    real = FFPruneEnv(**{**KW, "mode": "unstructured", "target_sparsity": 0.7})
    rows = record(real, np.zeros((1, real.n_units), np.float32), source="zero")
    description = EnvDescription(rows.meta)
    keep = np.random.default_rng(3).uniform(0.05, 1.0, (20, real.n_units))
    for k in keep:
        s = description.to_unit_sparsity(k, 0.0)
        assert np.array_equal(s, real.pruner.to_unit_sparsity(k, 0.0))
        assert np.array_equal(description.kept_params(s), real.pruner.kept_params(s))
    assert np.array_equal(description.features(0), real.features)


def test_reward_is_deterministic_per_allocation_and_reduced_fidelity_error_is_a_function_of_it(recorded):
    _real, _data, folder = recorded
    a, b = make(folder).unwrapped, make(folder).unwrapped
    actions = np.random.default_rng(7).uniform(-1, 1, (4, a.n_units)).astype(np.float32)
    full = []
    for env in (a, b):
        env.reset(seed=3)
        full.append([env.step(x)[1] for x in actions])
    assert full[0] == full[1]
    low = []
    for env, seed in ((a, 3), (b, 3), (a, 4)):
        env.reset(seed=seed, options={"reward_windows": 1})
        low.append([env.step(x)[1] for x in actions])
    # as the real env (fixed reward windows): same allocation, same windows -> same reward, whatever the reset seed
    assert low[0] == low[1] == low[2]
    assert [a.score(x, reward_windows=1)[0] for x in actions[::-1]] == low[0][::-1]  # nor the order of episodes
    two = [a.score(x, reward_windows=2)[0] for x in actions]
    bias, spread = a.surrogate.fidelity.at(1)
    assert spread > 0 and not np.allclose(low[0], full[0]) and two != low[0]
    assert a.reset(options={"reward_windows": 1})[1]["dense_ppl"] == a.surrogate.description.dense_ppl(0, "reward", 1)
    # the error is b_w + s_w * eps, eps a standard normal over allocations (its mean and spread: the fitted ones)
    many = np.random.default_rng(8).uniform(-1, 1, (400, a.n_units)).astype(np.float32)
    errors = np.array([np.log(a.score(x, reward_windows=1)[0]) - np.log(a.score(x, reward_windows=4)[0]) for x in many])
    assert abs(errors.mean() - bias) < 4 * spread / np.sqrt(len(many)) and abs(errors.std() / spread - 1) < 0.15
    eps = [fidelity_noise(np.full(16, 0.3), 0.3, seed, w) for seed, w in ((0, 1), (0, 2), (1, 1))]
    assert len(set(eps)) == 3 and eps[0] == fidelity_noise(np.full(16, 0.3, np.float32), 0.3, 0, 1)
    assert fidelity_noise(np.full(16, -0.0), 0.3, 0, 1) == fidelity_noise(np.zeros(16), 0.3, 0, 1)


def test_evaluate_predicts_the_held_out_ppl_labelled_surrogate(recorded):
    real, _data, folder = recorded
    env = make(folder).unwrapped
    action = np.zeros(env.n_units, np.float32)
    out = env.evaluate(action, target_sparsity=0.3)
    truth = real.evaluate(action, target_sparsity=0.3)
    assert out["surrogate"] is True and out["tokens"] == 0 and out["split"] == "eval"
    assert np.array_equal(out["layer_sparsity"], truth["layer_sparsity"]) and out["dense_ppl"] == truth["dense_ppl"]
    assert 0.5 < out["ppl"] / truth["ppl"] < 2.0
    with pytest.raises(FFPruneError, match="split must be 'eval' or 'reward'"):
        env.evaluate(action, split="test")
    with pytest.raises(FFPruneError, match="n_windows=2"):
        env.evaluate(action, n_windows=1)
    with pytest.raises(FFPruneError, match="calibrate"):
        env.evaluate(action, calibrate=True)


def test_vector_env_sequential_twin_and_search_accounting(recorded):
    _real, _data, folder = recorded
    vec = gym.make_vec(ENV_ID, num_envs=4, surrogate=True, surrogate_data=str(folder), **KW)
    vec.reset(seed=0)
    _obs, rewards, terminated, _trunc, infos = vec.step(vec.action_space.sample())
    assert rewards.shape == (4,) and terminated.all() and all(infos["final_info"]["surrogate"])
    vec.close()
    seq = make(folder, "FFPrune-Llama-Sequential-v0")
    seq.reset(seed=0)
    for _ in range(seq.unwrapped.n_units):
        _obs, reward, done, _trunc, info = seq.step(np.zeros(1, np.float32))
    assert done and info["surrogate"] and reward > 0
    search = SearchAccounting(CurriculumWrapper(make(folder), warmup_episodes=4, fidelity_start=0.25), budget=6)
    search.reset(seed=0)
    search.step(search.action_space.sample())
    search.reset_many(5)
    search.step_many(np.stack([search.action_space.sample() for _ in range(5)]))
    with pytest.raises(FFPruneError, match="budget"):
        search.reset_many(1)
    cost = search.cost
    assert cost["episodes"] == 6 and cost["evaluations"] == 0 and cost["tokens"] == 0
    assert cost["surrogate_evaluations"] >= 6 and search.evaluations_to_best >= 1
    assert [p["surrogate_evaluations"] for p in search.history] == sorted(p["surrogate_evaluations"]
                                                                         for p in search.history)
    state = search.state_dict()
    real_search = SearchAccounting(FFPruneEnv(**KW), budget=6)
    with pytest.raises(FFPruneError, match="surrogate"):
        real_search.load_state_dict(state)


def test_sb3_check_env_passes(recorded):
    from stable_baselines3.common.env_checker import check_env

    check_env(make(folder=recorded[2]).unwrapped, warn=False)


def test_bench_env_surrogate_reports_microseconds_per_step(recorded):
    from ffprune.agents.tools.speed import bench_surrogate

    out = bench_surrogate(ENV_ID, steps=30, repeats=1, population=8, surrogate_data=str(recorded[2]), **KW)
    assert out["surrogate"] is True and set(out["per_target"]) == {"0.3", "0.5"}
    assert all(v["median_step_us"] > 0 for v in out["per_target"].values()) and isinstance(out["meets_goal"], bool)
    assert out["reduced_fidelity"]["reward_windows"] == 1 and out["population"]["episodes"] == 8


@pytest.mark.parametrize("kwargs, match", [
    ({"model": "tiny-opt"}, "no surrogate evaluation set for model='tiny-opt'.*tiny-llama-structured.npz"),
    ({"seed": 5}, r"no evaluations for seed=5 \(recorded seeds: \[0\]\)"),
    ({"seq_len": 32}, "recorded with seq_len=64, not 32"),
    ({"workers": 2}, "use workers=0"),
])
def test_missing_data_or_mismatch_is_one_line_error(recorded, kwargs, match):
    with pytest.raises(FFPruneError, match=match) as err:
        make(recorded[2], **kwargs)
    assert "\n" not in str(err.value)


def test_no_data_and_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(FFPruneError, match=r"holds none; record it with `ffprune surrogate record`"):
        make(tmp_path)
    with pytest.raises(FFPruneError, match="does not exist"):
        make(tmp_path / "absent.npz")
    with pytest.raises(FFPruneError, match="surrogate_data needs surrogate=True"):
        ffenv.EnvConfig(surrogate_data=str(tmp_path))
    with pytest.raises(FFPruneError, match="surrogate must be True or False"):
        ffenv.EnvConfig(surrogate="yes")
    with pytest.raises(FFPruneError, match="record measures real evaluations"):
        record(type("Env", (), {"unwrapped": type("B", (), {"score_many": 1,
                                                            "config": ffenv.EnvConfig(surrogate=True)})()})(),
               np.zeros((1, 16), np.float32))


def test_bench_env_cli_surrogate(recorded, capsys):
    from ffprune.agents.cli import main

    folder = str(recorded[2])
    kwargs = [f"--env-kwarg={k}={v}" for k, v in KW.items()]
    assert main(["bench-env", "--surrogate", "--surrogate-data", folder, "--steps", "20", "--repeats", "1", *kwargs]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["surrogate"] is True and out["goal_us"] == 1000.0
    assert main(["bench-env", "--surrogate-data", folder]) == 2
    assert capsys.readouterr().err.strip() == "ffprune bench-env: error: --surrogate-data needs --surrogate"
    assert main(["bench-env", "--surrogate", "--env", "FFPrune-OPT-v0", "--surrogate-data", folder]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no surrogate evaluation set for model='tiny-opt'" in err
