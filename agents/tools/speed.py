"""Speed benchmark of an environment: step and Calib against one dense forward of the same reward tokens, and a
surrogate env's microseconds per step (:func:`bench_surrogate`)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ffenv.envs.backend import clear_cache
from ffenv.errors import FFPruneError, positive_int
from ffenv.lm.perplexity import nll_sum
from ffenv.registration import resolve_config
from ffprune.agents.tools.timing import median_seconds, timed


def bench_env(env_id: str, repeats: int = 7, seed: int = 0, targets: tuple[float, ...] | None = None,
              calibrate: bool = True, **env_kwargs: Any) -> dict[str, Any]:
    """Median wall times of ``env.step`` (random actions) at each target, of a dense forward over the reward
    tokens, and (structured envs) of a calibrated vs a plain evaluation on the same tokens.

    ``step_over_forward`` is the cost of a step relative to the dense model (below 1: the pruned model is
    cheaper than the dense one); ``step_over_exported_forward`` the median, over the first allocations that make a model
    of their own (what ``ffprune export`` writes; not one that empties a layer), of a step over a plain
    ``model(input_ids)`` forward of that model on the same tokens (the physical limit); ``calib_over_plain``
    what Calib costs in plain evaluations; ``reload_s`` what building and resetting the env costs again once the
    model has left memory (the statistics and dense perplexities come from the disk cache then).
    ``targets``: default the env's own target, plus 0.5 for structured envs. Every time is one
    :func:`ffprune.agents.tools.timing.timed` call (CUDA-synchronised on a GPU).

    Raises:
        FFPruneError: ``repeats`` not a positive integer, an unregistered ``env_id`` or an unknown env argument.
    """
    positive_int("repeats", repeats)
    resolve_config(env_id, env_kwargs)  # an unknown id or argument: one line, before the model is loaded
    env = gym.make(env_id, **env_kwargs)
    try:
        result = _bench(env, env_id, repeats, seed, targets, calibrate)
    finally:
        env.close()
    result["reload_s"] = round(reload_seconds(env_id, **env_kwargs), 2)
    return result


def _bench(env: gym.Env, env_id: str, repeats: int, seed: int, targets: tuple[float, ...] | None,
           calibrate: bool) -> dict[str, Any]:
    """:func:`bench_env` on the env it built."""
    base = env.unwrapped
    structured = base.config.mode == "structured"
    if targets is None:
        targets = tuple(sorted({base.config.target_sparsity, *((0.5,) if structured else ())}))
    env.action_space.seed(seed)
    tokens = base.reward_tokens
    device = base.model.device

    def forward() -> float:
        return timed(lambda: nll_sum(base.model, tokens, base.config.batch_size), device)

    forward()  # warm-up
    result: dict[str, Any] = {
        "env": env_id, "mode": base.config.mode, "units": base.n_units, "reward_tokens": int(tokens.numel()),
        "device": str(base.model.device), "threads": torch.get_num_threads(), "repeats": repeats, "steps": {}}
    dense = []
    for target in targets:
        env.reset(seed=seed, options={"target_sparsity": target})
        steps, ratios = [], []
        for _ in range(repeats):
            action = env.action_space.sample()
            dense.append(forward())
            step = timed(lambda a=action: env.step(a), device)
            steps.append(step)
            if len(ratios) < max(1, repeats // 2):  # the same allocation as a model of its own (`ffprune export`)
                try:
                    model = base.pruned_model(action, target_sparsity=target)
                except FFPruneError:  # it empties a layer's attention or FFN: no model of its own to compare with
                    continue
                ratios.append(step / _plain_forward(model, tokens, base.config.batch_size, device))
        entry = {"median_step_s": round(statistics.median(steps), 4)}
        if ratios:
            entry.update(step_over_exported_forward=round(statistics.median(ratios), 3), exported_allocations=len(ratios))
        result["steps"][f"{target:g}"] = entry
    f = statistics.median(dense)
    result["median_forward_s"] = round(f, 4)
    for entry in result["steps"].values():
        entry["step_over_forward"] = round(entry["median_step_s"] / f, 3)
    if calibrate and structured:
        action = np.zeros(base.n_units, np.float32)
        n, times = base.config.reward_windows, max(3, repeats // 2)
        plain = median_seconds(lambda: base.evaluate(action, split="reward", n_windows=n), device, times, warmup=0)
        calib = median_seconds(lambda: base.evaluate(action, split="reward", n_windows=n, calibrate=True), device, times,
                               warmup=0)
        result.update(median_plain_eval_s=round(plain, 4), median_calib_eval_s=round(calib, 4),
                      calib_over_plain=round(calib / plain, 3))
    result.update(setup_s=round(base.setup_seconds, 2), seed=seed, numpy=np.__version__)
    return result


def _plain_forward(model: torch.nn.Module, tokens: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Median seconds of a plain ``model(input_ids)`` over ``tokens`` in batches of ``batch_size`` (after one warm-up):
    the physical limit of an evaluation of that model, whatever computes the loss."""

    def run() -> None:
        with torch.inference_mode():
            for i in range(0, tokens.shape[0], batch_size):
                model(input_ids=tokens[i : i + batch_size].to(device), use_cache=False)

    return median_seconds(run, device, 3, warmup=1)


def reload_seconds(env_id: str, **env_kwargs: Any) -> float:
    """Seconds to build ``env_id`` and reset it in this process once its model is no longer in memory (the process
    cache cleared): what every later process pays when the calibration statistics and dense ppls are on disk."""
    resolve_config(env_id, env_kwargs)
    clear_cache()
    t0 = time.perf_counter()
    env = gym.make(env_id, **env_kwargs)
    env.reset(seed=0)
    seconds = time.perf_counter() - t0
    env.close()
    return seconds


SURROGATE_GOAL_US = 1000.0
"""What a surrogate step may cost at most (issue 21: ≤ 1 ms per step)."""


def bench_surrogate(env_id: str, steps: int = 2000, repeats: int = 5, seed: int = 0,
                    targets: tuple[float, ...] | None = None, population: int = 256,
                    **env_kwargs: Any) -> dict[str, Any]:
    """Microseconds per step of ``gym.make(env_id, surrogate=True, **env_kwargs)``.

    Per target (default: the env's own, plus 0.5 for structured envs): the median over ``repeats`` loops of the mean
    time of ``steps`` ``env.step`` calls on pre-drawn random actions (one episode per step, as a search runs
    them), at full fidelity; also one reduced-fidelity loop (a quarter of the reward windows, when the surrogate
    has fidelity data) and a population of ``population`` episodes through ``reset_many`` / ``step_many``
    (per episode). ``setup_s`` is what building the env took (the evaluation set and its fit; no model is loaded).

    Raises:
        FFPruneError: a bad count, an unregistered ``env_id``, an unknown env argument, or no evaluation set.
    """
    for name, value in (("steps", steps), ("repeats", repeats), ("population", population)):
        positive_int(name, value)
    env_kwargs = {**env_kwargs, "surrogate": True}
    resolve_config(env_id, env_kwargs)
    t0 = time.perf_counter()
    env = gym.make(env_id, **env_kwargs)
    setup = time.perf_counter() - t0
    try:
        base = env.unwrapped
        if targets is None:
            structured = base.config.mode == "structured"
            targets = tuple(sorted({base.config.target_sparsity, *((0.5,) if structured else ())}))
        env.action_space.seed(seed)
        actions = np.stack([env.action_space.sample() for _ in range(steps)])

        def per_step_us(options: dict[str, Any]) -> float:
            env.reset(seed=seed, options=options)
            loops = []
            for _ in range(repeats + 1):  # the first loop warms up
                start = time.perf_counter()
                for a in actions:
                    env.step(a)
                loops.append((time.perf_counter() - start) / steps * 1e6)
            return round(statistics.median(loops[1:]), 1)

        result: dict[str, Any] = {"env": env_id, "surrogate": True, "mode": base.config.mode, "units": base.n_units,
                                  "data_fingerprint": base.surrogate.fingerprint, "steps": steps, "repeats": repeats,
                                  "threads": torch.get_num_threads(), "per_target": {}}
        for target in targets:
            result["per_target"][f"{target:g}"] = {"median_step_us": per_step_us({"target_sparsity": target})}
        full = base.config.reward_windows
        low = max(1, full // 4)
        if low < full and len(base.surrogate.fidelity.windows):
            result["reduced_fidelity"] = {"reward_windows": low, "median_step_us": per_step_us({"reward_windows": low})}
        pop = actions[np.arange(population) % steps]
        start = time.perf_counter()
        base.reset_many(population, seed=seed)
        base.step_many(pop)
        result["population"] = {"episodes": population,
                                "us_per_episode": round((time.perf_counter() - start) / population * 1e6, 1)}
        worst = max(v["median_step_us"] for v in result["per_target"].values())
        result.update(goal_us=SURROGATE_GOAL_US, meets_goal=worst <= SURROGATE_GOAL_US, setup_s=round(setup, 3),
                      fit_s=base.surrogate.info.get("fit_seconds"), seed=seed, numpy=np.__version__)
        return result
    finally:
        env.close()
