"""One search, end to end: make the env, wrap it, run an agent, score the best allocation, write the result.

:func:`run_search` is what ``ffprune search`` and ``ffprune bench`` call. The result JSON holds the env
id and kwargs, the agent and its settings, the best allocation (action, per-unit sparsity, keep
ratios), its perplexity on the reward split (``calib``) and on the held-out ``eval`` split, the search
cost (episodes, evaluations, tokens, wall seconds, evaluations-to-best) and the versions used. It is
written atomically; a checkpoint beside it (``<out>.ckpt``) lets ``resume=True`` continue an
interrupted search, and a finished result is returned as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import ffenv  # noqa: F401  (registers the FFPrune ids)
from agents.monitor import SearchMonitor, atomic_write_json, run_dir, versions
from ffenv.curriculum import CurriculumWrapper


def make_search_env(env_id: str, budget: int, env_kwargs: dict[str, Any] | None = None, target: float | None = None,
                    curriculum: bool = True, warmup_fraction: float = 0.4,
                    curriculum_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """``gym.make`` + (optionally) the curriculum over the first ``warmup_fraction`` of the budget."""
    kwargs = dict(env_kwargs or {})
    if target is not None:
        kwargs["target_sparsity"] = target
    env = gym.make(env_id, **kwargs)
    if curriculum:
        if not 0.0 < warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in (0, 1], got {warmup_fraction}")
        warmup = max(1, int(round(warmup_fraction * budget)))
        env = CurriculumWrapper(env, warmup_episodes=warmup, **(curriculum_kwargs or {}))
    return env


def model_weights(env_id: str, env_kwargs: dict[str, Any] | None = None) -> str | None:
    """:func:`ffenv.models.weights_fingerprint` of the model an env id (plus overrides) would load."""
    import inspect

    from ffenv.env import FFPruneEnv
    from ffenv.models import weights_fingerprint

    default = inspect.signature(FFPruneEnv).parameters["model"].default
    model = {**gym.spec(env_id).kwargs, **(env_kwargs or {})}.get("model", default)
    return weights_fingerprint(model)


def score_allocation(env: gym.Env, action: np.ndarray, target: float) -> dict[str, Any]:
    """Perplexity of an allocation on the full reward split and on the held-out split (not search cost)."""
    base = env.unwrapped
    saved_target, saved_windows = base.target_sparsity, base.reward_windows
    base.set_target_sparsity(target)
    try:
        calib = base.evaluate(np.asarray(action, np.float32), split="calib", n_windows=len(base._b.reward_tokens))
        held = base.evaluate(np.asarray(action, np.float32), split="eval")
    finally:
        base.set_target_sparsity(saved_target)
        base.set_reward_windows(saved_windows)
    return {"calib_ppl": calib["ppl"], "dense_calib_ppl": calib["dense_ppl"], "eval_ppl": held["ppl"],
            "dense_eval_ppl": held["dense_ppl"], "sparsity": held["sparsity"],
            "layer_sparsity": held["layer_sparsity"].tolist(), "eval_tokens": held["tokens"]}


def calibrated_eval_ppl(env: gym.Env, action: np.ndarray, target: float, alpha: float = 0.9) -> float:
    """Held-out ppl of an allocation after post-pruning calibration (ridge ``alpha``; not search cost)."""
    base = env.unwrapped
    saved_target = base.target_sparsity
    base.set_target_sparsity(target)
    try:
        return base.evaluate(np.asarray(action, np.float32), split="eval", calibrate=True, calib_alpha=alpha)["ppl"]
    finally:
        base.set_target_sparsity(saved_target)


def run_search(
    env_id: str = "FFPrune-Llama-v0",
    agent: str = "fastforward",
    budget: int = 200,
    seed: int = 0,
    logdir: str | Path | None = "runs",
    out: str | Path | None = None,
    target: float | None = None,
    warm_start: str | Path | None = None,
    resume: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    curriculum: bool = True,
    warmup_fraction: float = 0.4,
    agent_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    calibrate: bool = False,
    calib_alpha: float = 0.9,
) -> dict[str, Any]:
    """Run one search and return (and, with ``out``, write) its result. See the module docstring.

    ``calibrate=True`` also scores the best allocation on the held-out split after post-pruning
    calibration (structured envs): ``best.eval_ppl_calib``, next to the uncalibrated ``best.eval_ppl``.
    """
    out_path = Path(out) if out is not None else None
    weights = model_weights(env_id, env_kwargs)
    if resume and out_path is not None and out_path.exists():
        done = json.loads(out_path.read_text())
        if done.get("weights") != weights:
            raise ValueError(f"out={str(out_path)!r} holds a search on other model weights ({done.get('weights')}, "
                             f"now {weights}): the model changed since; use another out path")
        if done.get("complete"):
            return done
    ckpt = out_path.with_suffix(".ckpt") if out_path is not None else None
    if not resume and ckpt is not None and ckpt.exists():
        ckpt.unlink()
    from baselines.search import HEURISTICS
    from baselines.search import METHODS as BASELINE_SEARCHES

    agent_name = agent.lower()
    if agent_name in BASELINE_SEARCHES:
        curriculum = False  # the baselines are defined at the final target and full fidelity
    if agent_name in HEURISTICS:
        budget = 1  # no search: one evaluation gives the heuristic allocation's reward
    env = make_search_env(env_id, budget, env_kwargs, target, curriculum, warmup_fraction)
    base = env.unwrapped
    if calibrate and base.mode != "structured":
        raise ValueError(f"calibrate needs a structured env (Calib compensates removed heads / neurons); {env_id} is "
                         f"{base.mode}")
    final_target = getattr(env, "final_target", base.target_sparsity)
    hparams = {"agent": agent_name, "budget": budget, "seed": seed, "target": final_target,
               "curriculum": curriculum, "warmup_fraction": warmup_fraction, **(agent_kwargs or {})}
    logpath = run_dir(logdir, env_id, agent_name, seed) if logdir is not None else None
    monitor = SearchMonitor(env, budget, logpath, progress=progress, hparams=hparams, weights=weights)

    extra: dict[str, Any] = {}
    try:
        if agent_name == "fastforward":
            from agents.fastforward import FastForwardConfig, run_fastforward, save_policy

            cfg = FastForwardConfig(**(agent_kwargs or {}))
            run = run_fastforward(monitor, seed=seed, config=cfg, warm_start=warm_start, checkpoint=ckpt, resume=resume)
            if out_path is not None:
                policy_file = out_path.with_suffix(".policy.pt")
                save_policy(run["policy"], policy_file, {"env_id": env_id, "target": final_target, "seed": seed})
                extra["policy_file"] = str(policy_file)
            extra["agent_config"] = run["config"]
            extra["agent_stats"] = run["stats"]
        elif agent_name in BASELINE_SEARCHES:
            from baselines.search import run_baseline_search

            extra["agent_stats"] = run_baseline_search(monitor, agent_name, seed, **(agent_kwargs or {}))
        else:
            if warm_start is not None:
                raise ValueError("warm_start is only supported by the fastforward agent")
            from agents.sb3_runner import run_sb3

            run = run_sb3(monitor, agent_name, seed=seed, checkpoint=ckpt, resume=resume, **(agent_kwargs or {}))
            extra["agent_config"] = run["config"]
    except KeyboardInterrupt:
        monitor.close_search()
        where = f"; resume with the same command and --resume (checkpoint {ckpt})" if ckpt else ""
        print(f"\ninterrupted after {monitor.episodes} episodes{where}")
        raise
    if monitor.best is None:
        monitor.close_search()
        raise ValueError(f"budget={budget} was too small: no episode reached the final target at full fidelity "
                         "(raise the budget or disable the curriculum)")
    cost = {**monitor.cost, "evaluations_to_best": monitor.evaluations_to_best,
            "setup_seconds": round(base.setup_seconds, 3)}  # frozen before the (uncounted) held-out scoring
    scores = score_allocation(env, np.array(monitor.best["action"], np.float32), final_target)
    if calibrate:
        scores.update(eval_ppl_calib=calibrated_eval_ppl(env, monitor.best["action"], final_target, calib_alpha),
                      calib_alpha=calib_alpha)
    monitor.close_search({"eval_ppl": scores["eval_ppl"], "calib_ppl": scores["calib_ppl"]})
    result = {
        "complete": True,
        "env_id": env_id,
        "env_kwargs": {**base.spec_kwargs, "target_sparsity": final_target},
        "weights": weights,
        "agent": agent_name,
        "seed": seed,
        "budget": budget,
        "curriculum": curriculum,
        "warmup_fraction": warmup_fraction,
        "warm_start": str(warm_start) if warm_start else None,
        "best": {**monitor.best, **scores},
        "cost": cost,
        "history": monitor.history,
        "logdir": str(logpath) if logpath else None,
        "versions": versions(),
        **extra,
    }
    if out_path is not None:
        atomic_write_json(out_path, result)
    return result
