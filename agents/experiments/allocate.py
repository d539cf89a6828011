"""Allocations from a trained policy at any target: what ``ffprune allocate`` calls.

A FastForward policy sees the episode's target as its observation's first entry; trained across targets
(``ffprune search --agent fastforward --train-targets ...``) it is **target-conditioned**: one policy, an
allocation for any target σ of the same model and mode. :func:`allocate` (an :class:`AllocateSpec`: the policy, σ and
how) reads a policy file (with the provenance its search saved in its metadata), rebuilds that env at σ and

* ``refine=0`` (**zero-shot**): takes the policy's mean action (deterministic, no sampling; ``tanh`` of the mean for
  a squashed policy) for the observation at σ; the env's projector makes it an allocation meeting σ exactly. No
  evaluation on the reward split chooses anything: the search cost is zero (``cost.evaluations == 0``, read off
  the env's own counters). The allocation is then scored as :func:`~ffprune.agents.experiments.search.run_search`
  scores a search's best — its perplexity on the full reward split and on the held-out ``eval`` split
  (``best.reward_ppl``, ``best.eval_ppl``, ``best.reward``) — which is reporting, not search cost, there and here.
* ``refine=N``: continues FastForward's search at σ for ``N`` evaluations from the policy (a warm start), **without
  the curriculum**: the policy has already learned the easy targets and the cheap fidelities, a ramp from 5 %
  sparsity would spend the refinement budget far from σ, and low-fidelity episodes would add re-scorings, so
  that ``N`` episodes would no longer be ``N`` evaluations. The first episode of every update plays the policy's
  mean (FastForward's ``mean_episode``), so the refinement's best is never below the zero-shot allocation on the
  reward split. The result is an ordinary search result.

Either way the result JSON has the schema of a search result (``read_result``, held-out scoring and
``ffprune export`` take it unchanged; on a surrogate env it is labelled as a search's is), plus ``refine``,
``policy`` (the file, its fingerprint, whether it was used on another model, and the provenance saved with it) and
``training_cost`` (what training the policy cost, from its metadata; ``None`` for a policy saved before it was
recorded). ``cost`` counts the ``N`` refinement evaluations only.

``env_id`` may name another model of the same mode and unit count than the policy was trained on (cross-model
use; its registered settings then apply, not the policy's); a policy whose observation or action size does not
fit the env is refused.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from ffenv.envs.sequential_env import FFPruneSequentialEnv, single_step_env
from ffenv.errors import FFPruneError, non_negative_int, unit_interval
from ffenv.io import check_writable, versions
from ffenv.pruning.projector import project_budget
from ffenv.registration import resolve_config
from ffenv.vector.ray_workers import WORKER_FIELDS
from ffprune.agents.experiments.search import (
    calibrated_eval_ppl,
    recorded_env_kwargs,
    run_search,
    score_allocation,
    surrogate_label,
)
from ffprune.agents.methods.fastforward import FastForwardConfig, Policy, mean_action, policy_fingerprint, read_policy
from ffprune.agents.results import RESULT_KIND, with_header, write_result
from ffprune.agents.tools.specs import spec_with

AGENT = "fastforward-allocate"
"""The ``agent`` of a zero-shot allocation's result (a refined one is an ordinary ``fastforward`` search)."""


@dataclass(frozen=True)
class AllocateSpec:
    """What an allocation is: a policy asked for a target, zero-shot or refined (where it is written, its TensorBoard
    root and whether it shows progress are :func:`allocate`'s own arguments). The mappings are never mutated."""

    named_by: ClassVar[tuple[str, str]] = ("policy", "a policy file")
    """A plain string or path given as the spec is its ``policy`` (:func:`~ffprune.agents.tools.specs.spec_with`)."""

    policy: str | Path
    """A policy file (``<result>.policy.pt`` of a ``fastforward`` search)."""
    target: float
    """The target sparsity, in ``(0, 1)`` and feasible for the env's ``min_keep`` / ``max_keep``."""
    env_id: str | None = None
    """The env to allocate on (default: the policy's); another model of the same mode and unit count is allowed."""
    env_kwargs: Mapping[str, Any] | None = None
    """Env setting overrides (on the policy's own settings when ``env_id`` is the policy's env, on the id's registered
    settings otherwise)."""
    refine: int = 0
    """``0``: zero-shot (the policy's mean, no evaluation); ``N > 0``: ``N`` evaluations of FastForward's search at
    ``target`` from the policy (no curriculum)."""
    seed: int = 0
    """The reset seed (zero-shot) or the refinement search's seed."""
    agent_kwargs: Mapping[str, Any] | None = None
    """FastForward overrides for a refinement (default: the policy's training settings)."""
    calibrate: bool = False
    """Also score the allocation's held-out ppl after post-pruning calibration (structured envs)."""
    calib_alpha: float | None = None
    """Calib's ridge penalty (default: the env's ``calib_alpha``)."""


def allocate(spec: AllocateSpec | str | Path, target: float | None = None, *, out: str | Path | None = None,
             logdir: str | Path | None = None, progress: bool = False, **settings: Any) -> dict[str, Any]:
    """An allocation at a target from a saved FastForward policy; returns (and, with ``out``, writes) its result.

    ``spec`` is an :class:`AllocateSpec` or a policy file, ``target`` (when given) its target and ``settings`` its
    other fields by keyword (``allocate("seed0.policy.pt", 0.3, refine=20)``), replacing the spec's. ``logdir``: the
    TensorBoard root of a refinement (``None``: none); ``progress`` shows its bar.

    Bad input — a missing or corrupt policy file, a target outside ``(0, 1)`` or infeasible, ``refine < 0``, an
    env the policy does not fit, an unwritable ``out`` — is a one-line :class:`~ffenv.errors.FFPruneError`
    before any evaluation.
    """
    if target is not None:
        settings = {**settings, "target": target}
    spec = spec_with(AllocateSpec, spec, settings, "allocate", "allocation")
    refine = non_negative_int("refine", spec.refine)
    target = unit_interval("target", spec.target, open_high=True)
    out_path = check_writable(out) if out is not None else None
    policy_path = Path(spec.policy)
    net, meta = read_policy(policy_path)
    env_id, kwargs, cross_model = policy_env(meta, policy_path, spec.env_id, spec.env_kwargs)
    config = resolve_config(env_id, {**kwargs, "target_sparsity": target})  # feasible target, valid settings
    if meta.get("mode", config.mode) != config.mode:  # before loading the model (sizes are checked once it is)
        raise FFPruneError(f"policy {str(policy_path)!r} was trained on a {meta['mode']} env ({meta.get('env_id')}); "
                           f"{env_id} is {config.mode}: a policy fits only envs of the same mode and unit count")
    provenance = {"file": str(policy_path), "fingerprint": policy_fingerprint(net), "cross_model": cross_model,
                  "provenance": {k: v for k, v in meta.items() if k != "training_cost"}}
    extra = {"refine": refine, "policy": provenance, "training_cost": meta.get("training_cost")}
    env = gym.make(env_id, **kwargs, target_sparsity=target)
    try:
        check_fits(net, meta, policy_path, env, env_id)
        if refine == 0:
            result = _zero_shot(net, env, env_id, target, spec.seed, spec.calibrate, spec.calib_alpha)
    finally:
        env.close()
    if refine > 0:
        agent_kwargs = dict(spec.agent_kwargs) if spec.agent_kwargs is not None else None
        result = run_search(env_id, agent="fastforward", budget=refine, seed=spec.seed, logdir=logdir, out=out_path,
                            target=target, warm_start=policy_path, env_kwargs=kwargs, curriculum=False,
                            agent_kwargs=_refine_settings(net, meta, agent_kwargs), progress=progress,
                            calibrate=spec.calibrate, calib_alpha=spec.calib_alpha)
    result = with_header({**result, **extra}, RESULT_KIND)  # what the file holds
    if out_path is not None:
        write_result(out_path, result)
    return result


def policy_env(meta: dict[str, Any], policy_path: Path, env_id: str | None,
               env_kwargs: Mapping[str, Any] | None) -> tuple[str, dict[str, Any], bool]:
    """The env id and settings to allocate on, and whether it is another env than the policy was trained on.

    The policy's env (its ``env_id`` and recorded ``env_kwargs``, less the target and the population workers) unless
    ``env_id`` names another, whose registered settings then apply; ``env_kwargs`` override either.
    """
    trained_on = meta.get("env_id")
    if env_id is None and trained_on is None:
        raise FFPruneError(f"policy {str(policy_path)!r} records no env it was trained on; pass --env")
    env_id = env_id or trained_on
    same = env_id == trained_on
    recorded = meta.get("env_kwargs") if same and isinstance(meta.get("env_kwargs"), dict) else {}
    kwargs = {k: v for k, v in recorded.items() if k not in (*WORKER_FIELDS, "target_sparsity")}
    user = dict(env_kwargs or {})
    if "target_sparsity" in user:
        raise FFPruneError("the target is allocate's own argument (--target), not an env setting")
    return env_id, {**kwargs, **user}, not same


def check_fits(net: Policy, meta: dict[str, Any], policy_path: Path, env: gym.Env, env_id: str) -> None:
    """Refuse (one line) an env the policy cannot act on: a sequential env, another mode, other sizes."""
    if isinstance(env.unwrapped, FFPruneSequentialEnv):
        raise FFPruneError(f"{env_id} is a sequential env; a FastForward policy allocates on single-step envs")
    base = single_step_env(env)
    obs_dim, act_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    mode = meta.get("mode", base.config.mode)
    if mode != base.config.mode or (net.obs_dim, net.act_dim) != (obs_dim, act_dim):
        raise FFPruneError(f"policy {str(policy_path)!r} was trained on {meta.get('env_id', 'an env')} ({mode}, "
                           f"{net.act_dim} units, observation size {net.obs_dim}); {env_id} is {base.config.mode} with "
                           f"{act_dim} units (observation size {obs_dim}): a policy fits only envs of the same mode and "
                           "unit count")


def _zero_shot(net: Policy, env: gym.Env, env_id: str, target: float, seed: int, calibrate: bool,
               calib_alpha: float | None) -> dict[str, Any]:
    """The policy's mean action at ``target``, projected; scored like a search's best (not search cost)."""
    base = single_step_env(env)
    cfg = base.config
    start = dict(base.cost)
    t0 = time.perf_counter()
    obs, _ = env.reset(seed=seed)
    action = mean_action(net, obs, env.action_space.low, env.action_space.high)
    keep = project_budget(action, target, base.sizes, cfg.min_keep, cfg.max_keep)
    seconds = time.perf_counter() - t0
    cost = {"episodes": 0, "evaluations": base.cost["evaluations"] - start["evaluations"],
            "tokens": base.cost["tokens"] - start["tokens"], "seconds": round(seconds, 3), "evaluations_to_best": 0,
            "setup_seconds": round(base.setup_seconds, 3)}
    label = surrogate_label(env_id, config=cfg)
    if label is not None:
        cost["surrogate_evaluations"] = 0
    scores = score_allocation(env, action, target)
    if calibrate:
        if cfg.mode != "structured":
            raise FFPruneError(f"calibrate needs a structured env (Calib compensates removed heads / neurons); "
                               f"{env_id} is {cfg.mode}")
        alpha = cfg.calib_alpha if calib_alpha is None else float(calib_alpha)
        scores.update(eval_ppl_after_calib=calibrated_eval_ppl(env, action, target, alpha), calib_alpha=alpha)
    reward_ppl = scores["reward_ppl"]
    if cfg.reward == "calibrated":  # the reward as this env defines it (reporting: evaluate() is not search cost)
        reward_ppl = base.evaluate(action, split="reward", n_windows=cfg.reward_windows, target_sparsity=target,
                                   calibrate=True)["ppl"]
    reward = scores["dense_reward_ppl"] / reward_ppl if np.isfinite(reward_ppl) and reward_ppl > 0 else 0.0
    best = {"reward": float(reward), "ppl": float(reward_ppl), "action": action.tolist(),
            "layer_sparsity": scores["layer_sparsity"], "keep_ratio": keep.tolist(), "sparsity": scores["sparsity"],
            "episode": 0, "evaluations": 0, "tokens": 0, "seconds": round(seconds, 3), **scores}
    return {"complete": True, **({"surrogate": label} if label is not None else {}), "env_id": env_id,
            "env_kwargs": recorded_env_kwargs(env),
            "weights_fingerprint": base.weights_fingerprint, "unit_names": list(base.unit_names), "agent": AGENT,
            "seed": seed, "budget": 0, "curriculum": False, "warmup_fraction": None, "warm_start": None, "best": best,
            "cost": cost, "history": [], "logdir": None, "versions": versions()}


def _refine_settings(net: Policy, meta: dict[str, Any], agent_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """FastForward's settings for a refinement: the policy's training settings (its network shape and whether it
    squashes above all), then ``agent_kwargs``; another ``hidden`` or ``squash`` than the policy file's is refused.
    ``mean_episode`` is on unless ``agent_kwargs`` turns it off: each update's first episode plays the policy's mean,
    so the refinement's best is at least the zero-shot allocation's reward (on the reward split)."""
    trained = meta.get("agent_config") if isinstance(meta.get("agent_config"), dict) else {}
    settings = {**{k: v for k, v in trained.items() if k != "extra"}, **(agent_kwargs or {})}
    if "hidden" in settings and tuple(settings["hidden"]) != net.hidden:
        raise FFPruneError(f"hidden must be the policy's {list(net.hidden)} to refine it, got {settings['hidden']!r}")
    if "squash" in settings and settings["squash"] != net.squash:
        raise FFPruneError(f"squash must be the policy's {net.squash} to refine it, got {settings['squash']!r}")
    settings["hidden"], settings["squash"] = net.hidden, net.squash
    if int(settings.get("batch_episodes", FastForwardConfig.batch_episodes)) >= 3:  # the policy's own answer is a
        settings["mean_episode"] = (agent_kwargs or {}).get("mean_episode", True)  # candidate: never below zero-shot
    return settings
