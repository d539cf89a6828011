"""One search, end to end: make the env, wrap it, run a method, score the best allocation, write the result.

:func:`run_search` is what ``ffprune search`` and ``ffprune bench`` call; any registered method
(:mod:`ffprune.agents.methods.registry`) runs through it. The env is ``SearchAccounting(CurriculumWrapper(gym.make(...)))``
(the curriculum only for methods that learn), with a :class:`~ffenv.wrappers.logger.SearchLogger` for TensorBoard
and the progress bar. The result JSON holds the env id and its configuration, the method and its
settings, the best allocation (action, per-unit sparsity, keep ratios), its perplexity on the reward split
(``calib``) and on the held-out ``eval`` split, the search cost (episodes, evaluations, tokens, wall
seconds, evaluations-to-best) and the versions used. It is written atomically; a checkpoint beside it
(``<out>.ckpt``) lets ``resume=True`` continue an interrupted search, and a finished result is returned
as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from ffenv.config import EnvConfig
from ffenv.errors import FFPruneError, positive_int, unit_interval
from ffenv.io import atomic_write_json, check_writable, read_json, versions
from ffenv.lm.models import weights_fingerprint
from ffenv.vector.ray_workers import WORKER_FIELDS
from ffenv.wrappers import CurriculumWrapper, SearchAccounting
from ffenv.wrappers.logger import SearchLogger
from ffprune.agents.methods.registry import METHODS, RunContext, get_method


def make_search_env(env_id: str, budget: int, env_kwargs: dict[str, Any] | None = None, target: float | None = None,
                    curriculum: bool = True, warmup_fraction: float = 0.4,
                    curriculum_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """``gym.make`` + (optionally) the curriculum over the first ``warmup_fraction`` of the budget."""
    kwargs = dict(env_kwargs or {})
    if target is not None:
        kwargs["target_sparsity"] = target
    env = gym.make(env_id, **kwargs)
    if curriculum:
        unit_interval("warmup_fraction", warmup_fraction)
        warmup = max(1, int(round(warmup_fraction * budget)))
        env = CurriculumWrapper(env, warmup_episodes=warmup, **(curriculum_kwargs or {}))
    return env


def result_env(result: dict[str, Any]) -> gym.Env:
    """An in-process env with a finished search's settings (``env_id`` + ``env_kwargs``), for scoring its
    allocations again: the population workers (:data:`~ffenv.vector.ray_workers.WORKER_FIELDS`) are left out."""
    kwargs = {k: v for k, v in result["env_kwargs"].items() if k not in WORKER_FIELDS}
    return gym.make(result["env_id"], **kwargs)


def model_weights(env_id: str, env_kwargs: dict[str, Any] | None = None) -> str | None:
    """:func:`ffenv.lm.models.weights_fingerprint` of the model an env id (plus overrides) would load."""
    model = {**gym.spec(env_id).kwargs, **(env_kwargs or {})}.get("model", EnvConfig().model)
    return weights_fingerprint(model)


def score_allocation(env: gym.Env, action: np.ndarray, target: float) -> dict[str, Any]:
    """Perplexity of an allocation on the full reward split and on the held-out split (not search cost)."""
    base = env.unwrapped
    action = np.asarray(action, np.float32)
    calib = base.evaluate(action, split="calib", n_windows=base.config.reward_windows, target_sparsity=target)
    held = base.evaluate(action, split="eval", target_sparsity=target)
    return {"calib_ppl": calib["ppl"], "dense_calib_ppl": calib["dense_ppl"], "eval_ppl": held["ppl"],
            "dense_eval_ppl": held["dense_ppl"], "sparsity": held["sparsity"],
            "layer_sparsity": held["layer_sparsity"].tolist(), "eval_tokens": held["tokens"]}


def calibrated_eval_ppl(env: gym.Env, action: np.ndarray, target: float, alpha: float = 0.9) -> float:
    """Held-out ppl of an allocation after post-pruning calibration (ridge ``alpha``; not search cost)."""
    return env.unwrapped.evaluate(np.asarray(action, np.float32), split="eval", target_sparsity=target,
                                  calibrate=True, calib_alpha=alpha)["ppl"]


def run_dir(logdir: str | Path, env_id: str, method: str, seed: int) -> Path:
    """``<logdir>/<env>/<method>/seed<k>``: where one search's TensorBoard events go."""
    return Path(logdir) / env_id / method / f"seed{seed}"


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

    ``agent`` is any name of :func:`ffprune.agents.methods.get_method`. ``calibrate=True`` also scores the
    best allocation on the held-out split after post-pruning calibration (structured envs):
    ``best.eval_ppl_calib``, next to the uncalibrated ``best.eval_ppl``.
    """
    method = get_method(agent)
    budget = positive_int("budget", budget)
    if warm_start is not None and not method.warm_start:
        raise FFPruneError(f"warm_start is only supported by {[m.name for m in METHODS.values() if m.warm_start]}; "
                           f"{method.name!r} cannot start from a policy file")
    out_path = Path(out) if out is not None else None
    weights = model_weights(env_id, env_kwargs)
    if resume and out_path is not None and out_path.exists():
        done = read_json(out_path, "result")
        if done.get("weights") != weights:
            raise FFPruneError(f"out={str(out_path)!r} holds a search on other model weights ({done.get('weights')}, "
                               f"now {weights}): the model changed since; use another out path")
        if done.get("complete"):
            return done
    if out_path is not None:
        check_writable(out_path)
    ckpt = out_path.with_suffix(".ckpt") if out_path is not None else None
    if not resume and ckpt is not None and ckpt.exists():
        ckpt.unlink()
    if not method.curriculum:
        curriculum = False  # the baselines are defined at the final target and full fidelity
    if method.heuristic:
        budget = 1  # no search: one evaluation gives the heuristic allocation's reward
    env = make_search_env(env_id, budget, env_kwargs, target, curriculum, warmup_fraction)
    base = env.unwrapped
    if base.config.mode not in method.modes:
        raise FFPruneError(f"{method.name!r} needs a {' or '.join(method.modes)} env; {env_id} is {base.config.mode}")
    if calibrate and base.config.mode != "structured":
        raise FFPruneError(f"calibrate needs a structured env (Calib compensates removed heads / neurons); {env_id} is "
                           f"{base.config.mode}")
    final_target = base.config.target_sparsity
    hparams = {"agent": method.name, "budget": budget, "seed": seed, "target": final_target,
               "curriculum": curriculum, "warmup_fraction": warmup_fraction, **(agent_kwargs or {})}
    logpath = run_dir(logdir, env_id, method.name, seed) if logdir is not None else None
    logger = SearchLogger(logpath, progress=progress, hparams=hparams)
    search = SearchAccounting(env, budget, logger)
    context = RunContext(checkpoint=ckpt, resume=resume, warm_start=Path(warm_start) if warm_start else None,
                         out=out_path, logdir=logpath, log=logger.log_learning,
                         meta={"env_id": env_id, "target": final_target, "seed": seed})
    try:
        extra = method.run(search, seed, context, **(agent_kwargs or {}))
    except KeyboardInterrupt:
        search.close()
        where = f"; resume with the same command and --resume (checkpoint {ckpt})" if ckpt else ""
        print(f"\ninterrupted after {search.episodes} episodes{where}")
        raise
    except BaseException:
        search.close()  # flushes TensorBoard and releases Ray workers
        raise
    if search.best is None:
        search.close()
        raise FFPruneError(f"budget={budget} was too small: no episode reached the final target at full fidelity "
                           "(raise the budget or disable the curriculum)")
    cost = {**search.cost, "evaluations_to_best": search.evaluations_to_best,
            "setup_seconds": round(base.setup_seconds, 3)}  # frozen before the (uncounted) held-out scoring
    scores = score_allocation(env, np.array(search.best["action"], np.float32), final_target)
    if calibrate:
        scores.update(eval_ppl_calib=calibrated_eval_ppl(env, search.best["action"], final_target, calib_alpha),
                      calib_alpha=calib_alpha)
    logger.close({"eval_ppl": scores["eval_ppl"], "calib_ppl": scores["calib_ppl"]})
    search.close()
    result = {
        "complete": True,
        "env_id": env_id,
        "env_kwargs": base.config.as_kwargs(),
        "weights": weights,
        "agent": method.name,
        "seed": seed,
        "budget": budget,
        "curriculum": curriculum,
        "warmup_fraction": warmup_fraction,
        "warm_start": str(warm_start) if warm_start else None,
        "best": {**search.best, **scores},
        "cost": cost,
        "history": search.history,
        "logdir": str(logpath) if logpath else None,
        "versions": versions(),
        **extra,
    }
    if out_path is not None:
        atomic_write_json(out_path, result)
    return result
