from __future__ import annotations

import json

import numpy as np
import pytest

import ffprune.agents.experiments.search as search_module
from ffenv.envs.prune_env import FFPruneEnv
from ffenv.errors import FFPruneError, SearchInterrupted
from ffenv.wrappers import SearchAccounting
from ffprune.agents.cli import main as cli_main
from ffprune.agents.experiments.search import SearchSpec, run_search
from ffprune.agents.methods.fastforward import load_policy

ENV_KW = {"reward_windows": 4, "calib_samples": 8, "eval_samples": 8}
AGENT_KW = {"batch_episodes": 4, "hidden": (32, 32)}


def search(tmp_path, name="r", **kw):
    args = {"env_id": "FFPrune-Llama-v0", "agent": "fastforward", "budget": 12, "seed": 0,
            "logdir": tmp_path / "tb", "out": tmp_path / f"{name}.json", "env_kwargs": ENV_KW,
            "agent_kwargs": AGENT_KW, "progress": False}
    args.update(kw)
    return run_search(**args)


def test_fastforward_is_deterministic_with_a_seed_and_writes_its_result(tmp_path):
    a = search(tmp_path, "a")
    spec = SearchSpec("FFPrune-Llama-v0", "fastforward", 12, 0, env_kwargs=ENV_KW, agent_kwargs=AGENT_KW)
    b = run_search(spec, out=tmp_path / "b.json", logdir=None, progress=False)  # the spec says the same as keywords
    c = search(tmp_path, "c", seed=1)
    assert a["best"]["action"] == b["best"]["action"]
    assert a["best"]["reward"] == b["best"]["reward"] and a["best"]["eval_ppl"] == b["best"]["eval_ppl"]
    assert a["cost"]["evaluations"] == b["cost"]["evaluations"]
    assert a["best"]["action"] != c["best"]["action"]
    assert a["best"]["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert a["cost"]["episodes"] == 12 and a["cost"]["evaluations"] >= 12
    on_disk = json.loads((tmp_path / "a.json").read_text())  # the result file says what the search returned
    assert on_disk["complete"] and on_disk["env_id"] == "FFPrune-Llama-v0"
    assert on_disk["env_kwargs"]["target_sparsity"] == 0.3
    for key in ("reward_ppl", "eval_ppl", "layer_sparsity", "action", "dense_eval_ppl"):
        assert key in on_disk["best"]
    for key in ("evaluations", "tokens", "seconds", "evaluations_to_best"):
        assert key in on_disk["cost"]
    assert "torch" in on_disk["versions"]
    assert a["best"]["eval_ppl"] == on_disk["best"]["eval_ppl"]


def test_a_search_spec_takes_its_fields_and_refuses_anything_else():
    spec = SearchSpec("FFPrune-Mistral-v0", "cmaes", budget=40)
    assert search_module.search_spec(spec, {"seed": 2}) == SearchSpec("FFPrune-Mistral-v0", "cmaes", 40, 2)
    assert search_module.search_spec("FFPrune-OPT-v0", {"agent": "tpe"}).env_id == "FFPrune-OPT-v0"
    with pytest.raises(FFPruneError, match=r"\['budjet'\] are not search settings; settings: \['env_id'"):
        run_search("FFPrune-Llama-v0", budjet=10)  # refused before any model loads
    with pytest.raises(FFPruneError, match="spec must be a SearchSpec or an env id"):
        run_search(3)


def test_save_load_and_warm_start(tmp_path):
    first = search(tmp_path, "t20", target=0.2)
    policy_file = first["policy_file"]
    policy = load_policy(policy_file, obs_dim=97, act_dim=16)
    assert policy.act_dim == 16
    warm = search(tmp_path, "t30", warm_start=policy_file)
    assert warm["warm_start"] == policy_file and warm["env_kwargs"]["target_sparsity"] == 0.3
    with pytest.raises(ValueError, match="act_dim"):
        load_policy(policy_file, obs_dim=97, act_dim=8)
    with pytest.raises(ValueError, match="same model and mode"):
        search(tmp_path, "wrong", env_id="FFPrune-Llama-Unstructured-v0", warm_start=policy_file)  # obs_dim differs
    with pytest.raises(ValueError, match="does not exist"):
        load_policy(tmp_path / "missing.pt")


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    full = search(tmp_path, "full", budget=16)
    original = SearchAccounting._record

    def flaky(self, action, reward, info):
        if self.episodes == 10:
            raise KeyboardInterrupt
        return original(self, action, reward, info)

    monkeypatch.setattr(SearchAccounting, "_record", flaky)
    with pytest.raises(SearchInterrupted, match="interrupted after 10 episodes.*--resume.*cut.ckpt") as stopped:
        search(tmp_path, "cut", budget=16)
    assert stopped.value.episodes == 10 and stopped.value.checkpoint == str(tmp_path / "cut.ckpt")
    assert (tmp_path / "cut.ckpt").exists() and not (tmp_path / "cut.json").exists()
    monkeypatch.setattr(SearchAccounting, "_record", original)
    # the model's weights changed since the checkpoint (e.g. a retrained zoo): refused, nothing mixed
    with monkeypatch.context() as m:
        m.setattr(search_module, "model_fingerprint", lambda *a, **k: "sha256:0123456789abcdef")
        m.setattr(FFPruneEnv, "weights_fingerprint", property(lambda self: "sha256:0123456789abcdef"))
        with pytest.raises(FFPruneError, match="other model weights"):
            search(tmp_path, "cut", budget=16, resume=True)
    resumed = search(tmp_path, "cut", budget=16, resume=True)
    assert resumed["cost"]["episodes"] == 16
    assert len(resumed["history"]) == 16
    assert resumed["best"]["action"] == full["best"]["action"]
    assert resumed["best"]["reward"] == full["best"]["reward"]
    assert resumed["cost"]["evaluations"] == full["cost"]["evaluations"]
    # the resume-only state goes once the result is written (and was never left by the uninterrupted run)
    assert not (tmp_path / "cut.ckpt").exists() and not (tmp_path / "full.ckpt").exists()
    # a finished result is returned as it is
    again = search(tmp_path, "cut", budget=16, resume=True)
    assert [h["reward"] for h in again["history"]] == [h["reward"] for h in resumed["history"]]
    assert again["weights_fingerprint"] == full["weights_fingerprint"] and again["weights_fingerprint"].startswith("sha256:")
    monkeypatch.setattr(search_module, "model_fingerprint", lambda *a, **k: "sha256:0123456789abcdef")
    with pytest.raises(ValueError, match="other model weights"):
        search(tmp_path, "cut", budget=16, resume=True)


def test_tensorboard_has_cost_axis_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = search(tmp_path)
    acc = EventAccumulator(r["logdir"])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for axis in ("evaluations", "tokens", "wall_ms"):
        for name in ("reward", "best_reward", "ppl", "best_ppl"):
            assert f"by_{axis}/{name}" in tags
    rewards = acc.Scalars("by_evaluations/reward")
    assert len(rewards) == 12
    tokens = [e.step for e in acc.Scalars("by_tokens/reward")]
    assert tokens == sorted(tokens) and tokens[-1] == r["cost"]["tokens"]
    assert r["logdir"].endswith("FFPrune-Llama-v0/fastforward/seed0")
    # FastForward logs its learning every update (12 episodes, 4 per update: 3 updates), as CleanRL does
    for name in ("pg_loss", "v_loss", "entropy", "std", "approx_kl", "clipfrac", "explained_variance", "batch_reward"):
        assert f"learning/{name}" in tags, name
    assert [e.step for e in acc.Scalars("learning/approx_kl")] == [4, 8, 12]


def test_sb3_runner_stops_at_budget(tmp_path):
    r = search(tmp_path, "ppo", agent="ppo", agent_kwargs={"n_steps": 4, "batch_size": 4})
    assert r["cost"]["episodes"] == 12 and len(r["history"]) == 12
    assert r["agent_config"]["algorithm"] == "PPO"


def test_td3_explores_with_gaussian_action_noise_by_default(tmp_path):
    from stable_baselines3.common.noise import NormalActionNoise

    from ffprune.agents.experiments.tune import check_agent_kwargs
    from ffprune.agents.methods.sb3 import action_noise

    r = search(tmp_path, "td3", agent="td3", agent_kwargs=None)
    assert r["agent_config"]["algorithm"] == "TD3" and r["agent_config"]["action_noise_std"] == 0.1
    assert "action_noise" not in r["agent_config"]
    off = search(tmp_path, "td3-off", agent="td3", agent_kwargs={"action_noise_std": 0})
    assert off["agent_config"]["action_noise_std"] == 0.0
    noise = action_noise(0.2, (3,))
    assert isinstance(noise, NormalActionNoise) and np.allclose(noise._sigma, 0.2) and noise().shape == (3,)
    assert action_noise(0, (3,)) is None
    for bad in (-0.1, float("nan"), "x", True):
        with pytest.raises(FFPruneError, match="action_noise_std must be a finite number >= 0"):
            action_noise(bad, (3,))
    with pytest.raises(FFPruneError, match="PPO has none"):
        search(tmp_path, "ppo-noise", agent="ppo", agent_kwargs={"action_noise_std": 0.1})
    check_agent_kwargs("td3", {"action_noise_std": 0.3})
    with pytest.raises(FFPruneError, match="not PPO settings"):
        check_agent_kwargs("ppo", {"action_noise_std": 0.3})


def test_unknown_agent(tmp_path):
    with pytest.raises(ValueError, match="stable-baselines3 algorithm"):
        search(tmp_path, agent="dqnx")


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["fastforward", "ppo", "sac"])
def test_cli_tiny_budget_per_agent(tmp_path, agent, capsys):
    out = tmp_path / f"{agent}.json"
    argv = ["search", "--env", "FFPrune-Llama-v0", "--agent", agent, "--budget", "10", "--seed", "0",
            "--logdir", str(tmp_path / "tb"), "--out", str(out), "--quiet"]
    for k, v in ENV_KW.items():
        argv += ["--env-kwarg", f"{k}={v}"]
    if agent == "fastforward":
        argv += ["--agent-kwarg", "batch_episodes=4"]
    assert cli_main(argv) == 0
    result = json.loads(out.read_text())
    assert result["agent"] == agent and result["cost"]["episodes"] == 10
    assert np.isfinite(result["best"]["eval_ppl"])
    assert "held-out eval ppl" in capsys.readouterr().out
    # resume-only state is gone once the result is written; what the run produced stays
    assert not out.with_suffix(".ckpt").exists() and not out.with_suffix(".buffer.pkl").exists()
    assert out.with_suffix(".sb3.zip").exists() == (agent != "fastforward")


def test_cli_bad_input_is_one_clear_line(capsys):
    assert cli_main(["search", "--env", "Nope-v0", "--budget", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "FFPrune-Llama-v0" in err and "Traceback" not in err
    assert cli_main(["search", "--budget", "2", "--target", "0.97", "--quiet"]) == 2
    assert "infeasible" in capsys.readouterr().err


def test_cli_bad_input_found_as_a_new_user_is_one_line_each(tmp_path, capsys):
    tiny = [a for k, v in ENV_KW.items() for a in ("--env-kwarg", f"{k}={v}")]
    # a heuristic's budget is still validated (before: accepted because heuristics run once)
    assert cli_main(["search", "--agent", "uniform", "--budget", "-3", "--quiet", "--logdir", str(tmp_path)]) == 2
    assert "budget must be a positive integer, got -3" in capsys.readouterr().err
    # an --out that cannot be written: refused before any work (before: a traceback at the end)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["search", "--agent", "uniform", "--budget", "1", "--quiet", "--out", str(blocker / "r.json"),
                     "--logdir", str(tmp_path), *tiny]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and str(blocker) in err and "Traceback" not in err
    # a corrupt checkpoint with --resume (before: an UnpicklingError traceback)
    out = tmp_path / "r.json"
    out.with_suffix(".ckpt").write_bytes(b"not a checkpoint")
    assert cli_main(["search", "--agent", "fastforward", "--budget", "4", "--quiet", "--out", str(out), "--resume",
                     "--logdir", str(tmp_path), *tiny]) == 2
    err = capsys.readouterr().err
    assert "is corrupt" in err and "without --resume" in err and len(err.strip().splitlines()) == 1  # --quiet: no bars
    # an empty or non-UTF-8 corpus file (before: DatasetGenerationError from inside datasets)
    for name, content in (("empty.txt", b""), ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1"))):
        corpus = tmp_path / name
        corpus.write_bytes(content)
        assert cli_main(["search", "--agent", "uniform", "--budget", "1", "--quiet", "--logdir", str(tmp_path),
                         "--env-kwarg", f"corpus={corpus}"]) == 2
        err = capsys.readouterr().err
        assert str(corpus) in err and len(err.strip().splitlines()) == 1


def test_genuine_bugs_keep_their_traceback(monkeypatch):
    """Only bad input (FFPruneError) becomes one line; a bug elsewhere still raises."""
    def broken(*_args, **_kw):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr("ffprune.agents.experiments.search.run_search", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli_main(["search", "--budget", "2", "--quiet"])


def test_one_registry_drives_run_search_bench_and_the_cli(tmp_path, monkeypatch, capsys):
    from ffprune.agents import methods

    calls = []

    def always_zero(env, seed, run, **params):
        calls.append(params)
        while not env.budget_spent:
            env.reset(seed=seed)
            env.step(np.zeros(env.action_space.shape, np.float32))
        return {"agent_stats": {"params": params}}

    monkeypatch.setitem(methods.METHODS, "zeros", methods.SearchMethod("zeros", always_zero, "search",
                                                                       modes=("structured",), description="test"))
    r = search(tmp_path, agent="zeros", budget=3, agent_kwargs={"k": 1})
    assert r["agent"] == "zeros" and r["cost"]["episodes"] == 3 and calls == [{"k": 1}] and r["curriculum"] is False
    assert "zeros" in methods.methods_for("structured") and "zeros" not in methods.methods_for("unstructured")
    assert cli_main(["methods"]) == 0 and "zeros" in capsys.readouterr().out
    with pytest.raises(FFPruneError, match="structured"):
        search(tmp_path, agent="zeros", env_id="FFPrune-Llama-Unstructured-v0")
    assert methods.get_method("a2c").kind == "rl"  # any other SB3 algorithm
    with pytest.raises(FFPruneError, match="stable-baselines3 algorithm"):
        methods.get_method("nope")


@pytest.mark.parametrize(("agent", "kwargs"), [("ppo", {"n_envs": 4, "n_steps": 2, "batch_size": 8}),
                                               ("sac", {"n_envs": 3, "learning_starts": 3, "batch_size": 4})])
def test_sb3_on_a_population_keeps_the_same_budget_accounting(tmp_path, agent, kwargs):
    r = search(tmp_path, agent, agent=agent, budget=10, agent_kwargs=kwargs)  # 10 is not a multiple of n_envs
    assert r["cost"]["episodes"] == 10 and len(r["history"]) == 10 and r["cost"]["evaluations"] >= 10
    assert r["agent_config"]["n_envs"] == kwargs["n_envs"] and r["best"]["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert [h["episode"] for h in r["history"]] == list(range(1, 11))


def test_fastforward_defaults_explore_inside_the_action_box():
    """The default policy's samples stay mostly inside [-1, 1] (the paper's std 1 clips about a third of them,
    and a clipped coordinate carries no information about where inside the range it should be)."""
    import torch

    from ffprune.agents.methods.fastforward import FastForwardConfig, Policy

    cfg = FastForwardConfig()
    torch.manual_seed(0)
    policy = Policy(4, 16, cfg.hidden, cfg.init_std)
    with torch.no_grad():
        samples = policy.dist(torch.zeros(4000, 4)).sample()
    assert 0.02 < (samples.abs() > 1).float().mean().item() < 0.08  # std 0.5: P(|z| > 2) = 4.6 %
    assert cfg.batch_episodes * 12 <= 100  # a budget-100 search (the core suite's) gets a dozen PPO updates


def test_mean_episode_plays_the_policy_mean_first_in_every_batch_and_does_not_learn_from_it(tmp_path):
    from ffprune.agents.methods.fastforward import FastForwardConfig

    r = search(tmp_path, "m", curriculum=False, agent_kwargs={**AGENT_KW, "mean_episode": True})
    actions = [np.array(h["action"]) for h in r["history"]]
    assert r["cost"]["evaluations"] == 12 and r["agent_config"]["mean_episode"]
    assert all(np.abs(actions[i]).max() < 0.5 < np.abs(actions[i + 1]).max() for i in (0, 4, 8))  # mean, sample
    plain = search(tmp_path, "p", curriculum=False)  # the same draws, one place later (the mean takes none)
    assert [h["action"] for h in plain["history"]][0:3] == [h["action"] for h in r["history"]][1:4]
    with pytest.raises(FFPruneError, match="batch_episodes must be >= 3 with mean_episode"):
        FastForwardConfig(batch_episodes=2, mean_episode=True)


@pytest.fixture(scope="module")
def squashed(tmp_path_factory):
    """A squashed FastForward search (budget 12, no curriculum: every episode at the final target)."""
    return search(tmp_path_factory.mktemp("squash"), "s", curriculum=False, agent_kwargs={**AGENT_KW, "squash": True})


def test_squashed_actions_lie_strictly_inside_the_box_and_are_never_clipped(squashed, tmp_path):
    actions = np.array([h["action"] for h in squashed["history"]])
    assert squashed["agent_config"]["squash"] and actions.shape == (12, 16)
    assert np.abs(actions).max() < 1.0  # tanh(u): inside (-1, 1), nothing clipped to a bound
    plain = search(tmp_path, "p", curriculum=False)  # the same seed unsquashed: some coordinates clipped to ±1
    assert (np.abs(np.array([h["action"] for h in plain["history"]])) == 1.0).any()
    again = search(tmp_path, "again", curriculum=False, agent_kwargs={**AGENT_KW, "squash": True})
    assert [h["action"] for h in again["history"]] == [h["action"] for h in squashed["history"]]  # same seed, same run
    assert again["best"]["reward"] == squashed["best"]["reward"]
    with pytest.raises(FFPruneError, match="squash must be true or false"):
        search(tmp_path, "bad", agent_kwargs={**AGENT_KW, "squash": "yes"})


def test_squash_survives_save_load_warm_start_and_allocate(squashed, tmp_path):
    import gymnasium as gym
    import torch

    from ffenv.io import atomic_torch_save, load_checkpoint
    from ffprune.agents.experiments.allocate import _refine_settings, allocate
    from ffprune.agents.methods.fastforward import policy_fingerprint, read_policy

    policy_file = squashed["policy_file"]
    policy, meta = read_policy(policy_file)
    assert policy.squash and load_policy(policy_file).squash and meta["agent_config"]["squash"]
    blob = load_checkpoint(policy_file)  # a file saved before the flag existed: no "squash", an unsquashed policy
    del blob["squash"]
    atomic_torch_save(blob, tmp_path / "old.pt")
    old, _ = read_policy(tmp_path / "old.pt")
    assert not old.squash and policy_fingerprint(old) != policy_fingerprint(policy)  # same weights, other actions
    # zero-shot: tanh of the actor's output (not the clipped mean)
    result = allocate(policy_file, 0.3)
    obs, _ = gym.make("FFPrune-Llama-v0", **ENV_KW).reset(seed=0)
    with torch.no_grad():
        mean = policy.actor(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()
    assert result["best"]["action"] == np.tanh(mean).tolist() and result["best"]["action"] != np.clip(mean, -1, 1).tolist()
    # a refinement squashes (its first episode is the zero-shot action); an override that contradicts the file is refused
    refined = allocate(policy_file, 0.3, refine=3)
    assert refined["agent_config"]["squash"] and refined["history"][0]["action"] == result["best"]["action"]
    assert _refine_settings(policy, meta, None)["squash"] is True
    with pytest.raises(FFPruneError, match="squash must be the policy's True to refine it"):
        allocate(policy_file, 0.3, refine=3, agent_kwargs={"squash": False})
    with pytest.raises(FFPruneError, match="squash must be the warm-start policy's"):
        search(tmp_path, "warm", warm_start=policy_file)  # an unsquashed search from a squashed policy


def test_a_warm_start_of_another_network_shape_is_one_line(tmp_path):
    first = search(tmp_path, "w", budget=4)
    with pytest.raises(FFPruneError, match=r"hidden must be the warm-start policy's \[32, 32\]"):
        search(tmp_path, "v", budget=4, warm_start=first["policy_file"], agent_kwargs={"hidden": (16,)})


def test_quiet_silences_the_libraries_progress_bars_too(tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    import ffenv

    tiny = [a for k, v in ENV_KW.items() for a in ("--env-kwarg", f"{k}={v}")]
    argv = ["search", "--agent", "uniform", "--budget", "1", "--logdir", str(tmp_path), *tiny]
    ffenv.clear_cache()  # the model is loaded again: transformers' "Loading weights" bar
    assert cli_main(argv) == 0 and "Loading weights" in capsys.readouterr().err
    ffenv.clear_cache()
    assert cli_main([*argv, "--quiet"]) == 0 and "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # restored afterwards
