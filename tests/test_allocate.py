"""A target-conditioned FastForward policy: training across targets, then ``ffprune allocate`` at any target.

Training (``run_search(..., train_targets=...)``) draws each episode's final target from the set, seeded and
resumable; :func:`ffprune.agents.experiments.allocate.allocate` turns the saved policy into an allocation at a
target with zero evaluations (the policy mean, projected), or refines it with exactly ``N`` evaluations, and
writes a search result that ``read_result`` and ``ffprune export`` take as they are.
"""

from __future__ import annotations

import json
import re

import gymnasium as gym
import numpy as np
import pytest

import ffenv  # noqa: F401
from ffenv.errors import FFPruneError, SearchInterrupted
from ffenv.io import atomic_torch_save
from ffenv.wrappers import CurriculumWrapper, SearchAccounting
from ffprune.agents.cli import main
from ffprune.agents.experiments.allocate import AGENT, allocate
from ffprune.agents.experiments.search import run_search
from ffprune.agents.methods.fastforward import Policy, policy_fingerprint, read_policy, save_policy
from ffprune.agents.results import read_result
from ffprune.agents.tools.export import export_result

ENV_KW = {"reward_windows": 4, "calib_samples": 8, "eval_samples": 8}
AGENT_KW = {"batch_episodes": 4, "hidden": (32, 32)}
TARGETS = [0.35, 0.2, 0.25]  # given unsorted: kept sorted


def train(tmp_path, name="p", **kw):
    args = {"env_id": "FFPrune-Llama-v0", "agent": "fastforward", "budget": 8, "seed": 0, "logdir": None,
            "out": tmp_path / f"{name}.json", "env_kwargs": ENV_KW, "agent_kwargs": AGENT_KW, "progress": False,
            "train_targets": TARGETS}
    args.update(kw)
    return run_search(**args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One policy trained across TARGETS (budget 8: two PPO updates)."""
    return train(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def base_env():
    return gym.make("FFPrune-Llama-v0", **ENV_KW)


# ----------------------------------------------------------------------------- training across targets
def test_the_curriculum_draws_only_the_training_targets_from_its_seed(base_env):
    w = CurriculumWrapper(base_env, warmup_episodes=10, train_targets=TARGETS, target_seed=3)
    assert w.train_targets == (0.2, 0.25, 0.35)
    draws = [w.final_target_at(e) for e in range(300)]
    assert set(draws) == {0.2, 0.25, 0.35}  # only these, each of them
    again = CurriculumWrapper(base_env, warmup_episodes=10, train_targets=[0.25, 0.35, 0.2], target_seed=3)
    assert [again.final_target_at(e) for e in range(300)] == draws  # a pure function of (seed, episode)
    assert all(sorted(draws[i:i + 3]) == [0.2, 0.25, 0.35] for i in range(0, 300, 3))  # each once per block of 3
    other = CurriculumWrapper(base_env, warmup_episodes=10, train_targets=TARGETS, target_seed=4)
    assert [other.final_target_at(e) for e in range(300)] != draws
    for e in range(30):  # the cubic ramp goes to each episode's own drawn target; the stage records it
        stage = w.stage_at(e)
        assert stage["final_target"] == draws[e]
        assert stage["target_sparsity"] <= draws[e] + 1e-12
        assert (stage["target_sparsity"] == draws[e]) == (e >= 10) and stage["final"] == (e >= 10)
    # a population's stages are those of single episodes: reset_many passes each its drawn target
    obs, infos = w.reset_many(4, seed=0)
    assert [i["curriculum"]["final_target"] for i in infos] == draws[:4]
    assert [o[0] for o in obs] == pytest.approx([w.target_at(e) for e in range(4)])
    w.step_many(np.zeros((4, 16), np.float32))
    assert w.state_dict() == {"episodes": 4, "train_targets": [0.2, 0.25, 0.35], "target_seed": 3}
    with pytest.raises(FFPruneError, match="train_targets"):
        other.load_state_dict(w.state_dict())  # another seed: a resume must not change the draws


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"train_targets": [0.2, 0.95]}, r"train_targets must each lie in \(0, 1\) and in \[0, 0.9\].*0.95"),
    ({"train_targets": [0.2, 0.0]}, "train_targets must each lie"),
    ({"train_targets": [0.2, 0.2]}, "distinct"),
    ({"train_targets": []}, "non-empty"),
    ({"train_targets": "0.2"}, "non-empty sequence"),
    ({"train_targets": 0.2}, "non-empty sequence"),
    ({"train_targets": [0.2], "start_sparsity": 0.25}, r"start_sparsity must be in \(0, 0.2\] \(the lowest of train"),
    ({"train_targets": [0.2], "target_seed": -1}, "target_seed"),
])
def test_bad_training_targets_are_one_line(base_env, kwargs, match):
    with pytest.raises(FFPruneError, match=match) as err:
        CurriculumWrapper(base_env, **kwargs)
    assert "\n" not in str(err.value)


def test_training_records_its_targets_a_best_per_target_and_the_policys_provenance(trained, tmp_path):
    assert trained["train_targets"] == [0.2, 0.25, 0.35]
    assert trained["env_kwargs"]["target_sparsity"] == 0.35  # default target: the largest training target
    warmup = 3  # round(0.4 * 8)
    assert all(h["target"] in (0.2, 0.25, 0.35) for h in trained["history"][warmup:])
    assert all(h["target"] <= 0.35 for h in trained["history"])
    assert set(trained["best_by_target"]) <= {"0.2", "0.25", "0.35"}
    assert trained["best"]["reward"] == trained["best_by_target"]["0.35"]["reward"]
    for key, best in trained["best_by_target"].items():
        at_key = [h["reward"] for h in trained["history"] if h["target"] == float(key) and h["windows"] == 4]
        assert best["reward"] == max(at_key) and best["sparsity"] == pytest.approx(float(key), abs=0.01)
    _policy, meta = read_policy(trained["policy_file"])
    assert meta["env_id"] == "FFPrune-Llama-v0" and meta["mode"] == "structured" and len(meta["unit_names"]) == 16
    assert meta["train_targets"] == [0.2, 0.25, 0.35] and meta["budget"] == 8 and meta["seed"] == 0
    assert meta["weights_fingerprint"] == trained["weights_fingerprint"] and meta["env_kwargs"]["reward_windows"] == 4
    assert meta["agent_config"]["hidden"] == (32, 32) and meta["agent_config"]["batch_episodes"] == 4
    assert meta["training_cost"]["evaluations"] == trained["cost"]["evaluations"] and "torch" in meta["versions"]
    # same seed, same training; the result file is the returned result
    again = train(tmp_path, "again")
    assert [h["action"] for h in again["history"]] == [h["action"] for h in trained["history"]]
    assert [h["target"] for h in again["history"]] == [h["target"] for h in trained["history"]]
    assert policy_fingerprint(read_policy(again["policy_file"])[0]) == policy_fingerprint(_policy)
    assert read_result(tmp_path / "again.json")["best_by_target"] == again["best_by_target"]


def test_a_resume_mid_training_matches_the_uninterrupted_run(trained, tmp_path, monkeypatch):
    original = SearchAccounting._record

    def flaky(self, action, reward, info):
        if self.episodes == 5:  # during the second batch: the checkpoint holds the first update
            raise KeyboardInterrupt
        return original(self, action, reward, info)

    monkeypatch.setattr(SearchAccounting, "_record", flaky)
    with pytest.raises(SearchInterrupted):
        train(tmp_path, "cut")
    monkeypatch.setattr(SearchAccounting, "_record", original)
    with pytest.raises(FFPruneError, match="train_targets"):  # other targets than the checkpoint's: refused
        train(tmp_path, "cut", resume=True, train_targets=[0.2, 0.35])
    resumed = train(tmp_path, "cut", resume=True)
    assert [h["action"] for h in resumed["history"]] == [h["action"] for h in trained["history"]]
    def untimed(by_target):
        return {key: {k: v for k, v in best.items() if k != "seconds"} for key, best in by_target.items()}

    assert untimed(resumed["best_by_target"]) == untimed(trained["best_by_target"])  # all but the wall seconds
    assert resumed["cost"]["evaluations"] == trained["cost"]["evaluations"]
    assert (policy_fingerprint(read_policy(resumed["policy_file"])[0])
            == policy_fingerprint(read_policy(trained["policy_file"])[0]))


def test_training_targets_without_the_ramps_run_each_episode_at_its_drawn_target(tmp_path):
    result = train(tmp_path, "flat", budget=4, curriculum=False, seed=2)
    targets = [h["target"] for h in result["history"]]
    assert sorted(targets[:3]) == [0.2, 0.25, 0.35] and targets == [0.35, 0.2, 0.25, 0.2]  # seed 2's draws
    assert all(h["windows"] == 4 for h in result["history"])
    assert result["cost"]["evaluations"] == 4 and result["curriculum"] is False  # no re-scoring without fidelity ramp


def test_search_arguments_for_training_targets_are_checked_before_any_work(tmp_path):
    with pytest.raises(FFPruneError, match="target must be one of train_targets"):
        train(tmp_path, target=0.3)
    with pytest.raises(FFPruneError, match="learns under the curriculum"):
        train(tmp_path, agent="random")
    with pytest.raises(FFPruneError, match=r"train_targets must each lie.*0.95"):
        train(tmp_path, train_targets=[0.2, 0.95])


# ----------------------------------------------------------------------------- ffprune allocate
def test_zero_shot_allocation_meets_the_target_with_no_evaluation(trained, tmp_path, base_env):
    out = tmp_path / "a.json"
    result = allocate(trained["policy_file"], 0.3, out=out)
    u = base_env.unwrapped
    best, cost = result["best"], result["cost"]
    assert result["agent"] == AGENT and result["refine"] == 0 and result["env_kwargs"]["target_sparsity"] == 0.3
    assert cost["evaluations"] == 0 and cost["tokens"] == 0 and cost["episodes"] == 0 and result["history"] == []
    keep = np.asarray(best["keep_ratio"])
    assert float((1 - keep) @ u.sizes / u.sizes.sum()) == pytest.approx(0.3, abs=1e-9)  # the env's weighted mean
    assert best["sparsity"] == pytest.approx(0.3, abs=0.01)  # realized, after rounding to whole heads / neurons
    # the policy mean at 0.3: deterministic, and scored as a search's best is (held-out, not search cost)
    again = allocate(trained["policy_file"], 0.3, seed=5)
    assert again["best"]["action"] == best["action"] and again["best"]["eval_ppl"] == best["eval_ppl"]
    assert allocate(trained["policy_file"], 0.2)["best"]["action"] != best["action"]  # conditioned on the target
    held = u.evaluate(np.asarray(best["action"], np.float32), split="eval", target_sparsity=0.3)
    assert best["eval_ppl"] == pytest.approx(held["ppl"]) and best["layer_sparsity"] == pytest.approx(held["layer_sparsity"])
    assert best["reward"] == pytest.approx(best["dense_reward_ppl"] / best["reward_ppl"])
    policy, _ = read_policy(trained["policy_file"])
    assert result["policy"]["fingerprint"] == policy_fingerprint(policy) and not result["policy"]["cross_model"]
    assert result["policy"]["provenance"]["train_targets"] == [0.2, 0.25, 0.35]
    assert result["training_cost"]["evaluations"] == trained["cost"]["evaluations"]
    assert result["weights_fingerprint"] == trained["weights_fingerprint"]
    assert read_result(out) == json.loads(json.dumps(result))  # round-trips through the one reader


def test_a_zero_shot_result_exports_like_a_search(trained, tmp_path):
    out = tmp_path / "a.json"
    allocate(trained["policy_file"], 0.3, out=out)
    facts = export_result(out, tmp_path / "pruned", speed=False)
    assert facts["allocation"]["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert facts["reloaded"]["eval_ppl"] == pytest.approx(read_result(out)["best"]["eval_ppl"], rel=1e-4)


def test_refine_spends_exactly_n_evaluations_from_the_policy(trained, tmp_path):
    result = allocate(trained["policy_file"], 0.3, refine=3, out=tmp_path / "r.json")
    assert result["cost"]["evaluations"] == 3 and result["cost"]["episodes"] == 3 and len(result["history"]) == 3
    assert result["agent"] == "fastforward" and result["refine"] == 3 and result["curriculum"] is False
    assert all(h["target"] == 0.3 and h["windows"] == 4 for h in result["history"])
    assert result["warm_start"] == trained["policy_file"] and result["env_kwargs"]["target_sparsity"] == 0.3
    assert result["training_cost"] == read_policy(trained["policy_file"])[1]["training_cost"]
    assert read_result(tmp_path / "r.json")["refine"] == 3
    zero = allocate(trained["policy_file"], 0.3)  # the refinement's first episode is the policy's mean: zero-shot
    assert result["history"][0]["action"] == zero["best"]["action"] and result["agent_config"]["mean_episode"]
    assert result["history"][0]["reward"] == pytest.approx(zero["best"]["reward"])
    assert result["best"]["reward"] >= zero["best"]["reward"]


def test_other_models_of_the_same_shape_and_old_policies_allocate(trained, tmp_path):
    cross = allocate(trained["policy_file"], 0.3, env_id="FFPrune-Mistral-v0", env_kwargs=ENV_KW)
    assert cross["env_id"] == "FFPrune-Mistral-v0" and cross["policy"]["cross_model"]
    assert cross["env_kwargs"]["model"] == "tiny-mistral" and cross["cost"]["evaluations"] == 0
    # a policy saved by a single-target search before provenance was recorded (meta: env id, target, seed)
    policy, _ = read_policy(trained["policy_file"])
    old = tmp_path / "old.policy.pt"
    save_policy(policy, old, {"env_id": "FFPrune-Llama-v0", "target": 0.3, "seed": 0})
    result = allocate(old, 0.3, env_kwargs=ENV_KW)
    assert result["best"]["action"] == allocate(trained["policy_file"], 0.3)["best"]["action"]
    assert result["training_cost"] is None


def test_bad_input_is_one_line_and_exit_code_2(trained, tmp_path, capsys):
    policy = trained["policy_file"]
    (tmp_path / "garbage.pt").write_bytes(b"not a policy")
    (tmp_path / "a_file").write_text("")
    atomic_torch_save({"episodes": 3}, tmp_path / "other.ckpt")  # a torch file, not a policy
    small = Policy(97, 8, (32, 32))  # fits no env of the bundled models
    save_policy(small, tmp_path / "small.pt", {"env_id": "FFPrune-Llama-v0"})
    env = [arg for key, value in ENV_KW.items() for arg in ("--env-kwarg", f"{key}={value}")]
    cases = [
        (["--policy", str(tmp_path / "missing.pt"), "--target", "0.3"], "does not exist"),
        (["--policy", str(tmp_path / "garbage.pt"), "--target", "0.3"], "corrupt or not an ffprune policy"),
        (["--policy", str(tmp_path / "other.ckpt"), "--target", "0.3"], "not an ffprune policy file"),
        (["--policy", policy, "--target", "1.5"], r"target must be a number in \(0, 1\)"),
        (["--policy", policy, "--target", "0.95"], "infeasible for min_keep=0.1"),
        (["--policy", policy, "--target", "0.3", "--refine", "-1"], "refine must be an integer >= 0"),
        (["--policy", policy, "--target", "0.3", "--env", "FFPrune-Llama-Unstructured-v0"], "same mode and unit count"),
        (["--policy", str(tmp_path / "small.pt"), "--target", "0.3", *env], "same mode and unit count"),
        (["--policy", policy, "--target", "0.3", "--env", "FFPrune-Nope-v0"], "not registered"),
        (["--policy", policy, "--target", "0.3", "--out", str(tmp_path / "a_file" / "r.json")], "cannot write"),
    ]
    for argv, match in cases:
        assert main(["allocate", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("ffprune allocate: error:") and "\n" not in err and re.search(match, err), err
    assert main(["search", "--train-targets", "0.2,x"]) == 2
    assert "--train-targets expects comma-separated numbers" in capsys.readouterr().err


def test_cli_trains_and_allocates(trained, tmp_path, capsys):
    env = [arg for key, value in ENV_KW.items() for arg in ("--env-kwarg", f"{key}={value}")]
    assert main(["search", "--agent", "fastforward", "--train-targets", "0.2,0.35", "--budget", "4", "--no-curriculum",
                 "--agent-kwarg", "batch_episodes=4", "--agent-kwarg", "hidden=[32,32]", *env, "--logdir",
                 str(tmp_path / "runs"), "--out", str(tmp_path / "multi.json"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "at training target 0.35" in printed and "multi.policy.pt" in printed
    assert read_policy(tmp_path / "multi.policy.pt")[1]["train_targets"] == [0.2, 0.35]
    out = tmp_path / "cli.json"
    assert main(["allocate", "--policy", trained["policy_file"], "--target", "0.25", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot" in printed and "0 evaluations" in printed and "training the policy cost" in printed
    assert read_result(out)["env_kwargs"]["target_sparsity"] == 0.25
