"""CMA-ES (pycma) and Optuna's TPE as search baselines: budget, populations, seeding, bad input, missing packages."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest

from ffenv.errors import FFPruneError
from ffenv.wrappers import SearchAccounting
from ffprune.baselines.search import cmaes_search, tpe_search

ENV_ID = "FFPrune-Llama-v0"  # 16 structured units, ~0.07 s an evaluation at this size
SMALL = {"reward_windows": 2, "calib_samples": 8}
SEARCHES = {"cmaes": cmaes_search, "tpe": tpe_search}


@pytest.fixture(scope="module")
def base():
    """One small env shared by the searches (each gets its own accounting; the env is deterministic per seed)."""
    env = gym.make(ENV_ID, **SMALL)
    yield env
    env.close()


@pytest.fixture(scope="module")
def uniform_reward(base) -> float:
    base.reset(seed=0)
    _, reward, _, _, _ = base.step(np.zeros(base.action_space.shape, np.float32))
    return float(reward)


def _search(base, method: str, budget: int, seed: int = 0, **params):
    """Run ``method`` under a fresh accounting, recording every population and refusing single steps."""
    env = SearchAccounting(base, budget=budget)
    populations: list[int] = []
    reset_many, step_many = env.reset_many, env.step_many

    def counting_reset_many(n, **kwargs):
        populations.append(n)
        return reset_many(n, **kwargs)

    def counting_step_many(actions):
        assert len(actions) == populations[-1]  # the population that was reset
        return step_many(actions)

    def no_single_step(action):
        raise AssertionError("a population search must not step one episode at a time")

    env.reset_many, env.step_many, env.step = counting_reset_many, counting_step_many, no_single_step
    stats = SEARCHES[method](env, seed=seed, **params)
    return env, stats, populations


@pytest.mark.parametrize(("method", "params", "sizes"), [
    ("cmaes", {"popsize": 10}, [10, 10, 7]),
    ("tpe", {"batch": 8}, [8, 8, 8, 3]),
])
def test_populations_spend_the_budget_exactly(base, method, params, sizes):
    env, stats, populations = _search(base, method, budget=27, **params)
    assert populations == sizes  # one reset_many / step_many per generation (batch), the last cut to the budget left
    assert env.episodes == env.cost["evaluations"] == 27 and env.budget_spent and len(env.history) == 27
    actions = np.array([p["action"] for p in env.history])
    assert actions.shape == (27, 16) and np.all(np.abs(actions) <= 1.0)  # the raw action box
    assert all(p["target"] == pytest.approx(0.3) for p in env.history)  # at the final target, no curriculum
    if method == "cmaes":  # the cut generation is evaluated, not told
        assert stats["generations"] == 2 and stats["popsize"] == 10 and stats["last_generation"] == 7
        assert stats["sigma0"] == 0.3 and stats["sigma"] > 0
    else:
        assert stats["trials"] == 27 and stats["batches"] == 4 and stats["multivariate"] and stats["constant_liar"]
        assert env.history[stats["best_trial"]]["reward"] == pytest.approx(env.best["reward"])
    with pytest.raises(FFPruneError, match="exceed the search budget"):
        env.reset_many(1, seed=0)


@pytest.mark.parametrize("method", ["cmaes", "tpe"])
def test_same_seed_same_search_other_seed_other_search(base, uniform_reward, method):
    runs = [_search(base, method, budget=12, seed=seed)[0] for seed in (0, 0, 1)]
    actions = [np.array([p["action"] for p in env.history]) for env in runs]
    rewards = [np.array([p["reward"] for p in env.history]) for env in runs]
    np.testing.assert_array_equal(actions[0], actions[1])
    np.testing.assert_array_equal(rewards[0], rewards[1])
    assert runs[0].best["action"] == runs[1].best["action"] and runs[0].best["reward"] == runs[1].best["reward"]
    assert not np.allclose(actions[0][1:], actions[2][1:])  # (TPE's first trial is the uniform allocation either way)
    assert runs[0].best["action"] != runs[2].best["action"]
    # both start at the uniform allocation and, on this env, 12 evaluations already improve on it
    # (checked over seeds 0..7: at least +0.028 reward over 0.775; the searches are deterministic)
    for env in (runs[0], runs[2]):
        assert env.best["reward"] > uniform_reward + 0.01
    if method == "tpe":
        assert actions[0][0].tolist() == [0.0] * 16 and rewards[0][0] == pytest.approx(uniform_reward)


def test_cmaes_keeps_the_global_generator_and_tpe_optunas_verbosity(base):
    import optuna

    np.random.seed(1234)
    expected = np.random.rand(3)
    np.random.seed(1234)
    _search(base, "cmaes", budget=2, popsize=2)
    np.testing.assert_array_equal(np.random.rand(3), expected)  # pycma seeds the global generator: restored
    before = optuna.logging.get_verbosity()
    _search(base, "tpe", budget=2, batch=2)
    assert optuna.logging.get_verbosity() == before


@pytest.mark.parametrize(("method", "params", "message"), [
    ("cmaes", {"popsize": 1}, r"popsize must be an integer >= 2 \(or None: pycma's default\), got 1"),
    ("cmaes", {"popsize": 4.0}, "popsize must be an integer >= 2"),
    ("cmaes", {"popsize": True}, "popsize must be an integer >= 2"),
    ("cmaes", {"sigma0": 0.0}, "sigma0 must be a finite number > 0, got 0.0"),
    ("cmaes", {"sigma0": -0.1}, "sigma0 must be a finite number > 0"),
    ("cmaes", {"sigma0": float("nan")}, "sigma0 must be a finite number > 0"),
    ("cmaes", {"sigma0": float("inf")}, "sigma0 must be a finite number > 0"),
    ("cmaes", {"seed": -1}, "seed must be an integer >= 0"),
    ("tpe", {"batch": 0}, "batch must be a positive integer, got 0"),
    ("tpe", {"batch": 2.5}, "batch must be a positive integer"),
    ("tpe", {"n_startup_trials": -1}, "n_startup_trials must be an integer >= 0, got -1"),
    ("tpe", {"multivariate": "yes"}, "multivariate must be True or False"),
    ("tpe", {"seed": 2**32}, r"seed must be in \[0, 4294967295\] for tpe"),
])
def test_bad_parameters_are_refused_before_any_evaluation(base, method, params, message):
    env = SearchAccounting(base, budget=4)
    with pytest.raises(FFPruneError, match=message) as err:
        SEARCHES[method](env, **params)
    assert "\n" not in str(err.value) and env.episodes == 0


@pytest.mark.parametrize(("method", "package", "extra"), [("cmaes", "cma", "cma"), ("tpe", "optuna", "optuna")])
def test_a_missing_package_names_its_extra(base, monkeypatch, method, package, extra):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import <package>` raise ImportError
    env = SearchAccounting(base, budget=4)
    with pytest.raises(FFPruneError) as err:
        SEARCHES[method](env)
    assert str(err.value) == f"{method} needs the '{package}' package: pip install 'ffprune[{extra}]'"
    assert env.episodes == 0


@pytest.mark.parametrize("method", ["cmaes", "tpe"])
def test_registered_and_run_through_run_search(tmp_path, method):
    from ffprune.agents.experiments.search import run_search
    from ffprune.agents.methods.registry import METHODS, methods_for

    m = METHODS[method]
    assert m.kind == "search" and not m.heuristic and not m.curriculum and m.formulations == ("single-step",)
    assert method in methods_for("structured") and method in methods_for("unstructured")
    assert method not in methods_for("structured", "sequential")
    r = run_search("FFPrune-Llama-Unstructured-v0", agent=method, budget=5, seed=0, logdir=tmp_path,
                   out=tmp_path / "r.json", env_kwargs={**SMALL, "eval_samples": 2}, progress=False)
    assert r["cost"]["episodes"] == r["cost"]["evaluations"] == 5 and r["curriculum"] is False
    assert r["best"]["sparsity"] == pytest.approx(0.7, abs=0.02)
    assert r["agent_stats"]["last_generation" if method == "cmaes" else "trials"] == 5
    assert list(tmp_path.glob(f"FFPrune-Llama-Unstructured-v0/{method}/seed0/events.out.tfevents.*"))  # TensorBoard


@pytest.mark.parametrize("method, package", [("cmaes", "cma"), ("tpe", "optuna")])
def test_a_missing_package_leaves_the_method_out_of_the_defaults_only(monkeypatch, caplog, method, package):
    from ffprune.agents.methods import registry

    monkeypatch.setitem(sys.modules, package, None)  # find_spec answers None: not installed
    monkeypatch.setattr(registry, "_warned_missing", set())
    with caplog.at_level("WARNING", logger="ffprune"):
        assert method not in registry.methods_for("structured") and "evolution" in registry.methods_for("structured")
    assert [r.getMessage() for r in caplog.records].count(
        f"{method} left out: it needs {package} (pip install 'ffprune[{package}]')") == 1  # once, not per call
    assert registry.get_method(method).name == method  # asked for by name it is there, and says what to install
