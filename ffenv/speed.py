"""Speed benchmark of an environment step against one dense forward of the same reward tokens."""

from __future__ import annotations

import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ffenv.errors import positive_int
from ffenv.evaluation import nll_sum


def bench_env(env_id: str, repeats: int = 7, seed: int = 0, **env_kwargs: Any) -> dict[str, Any]:
    """Median wall time of ``env.step`` (random actions) and of a dense forward over the reward tokens.

    The ratio ``step / forward`` is the overhead of projecting, pruning and restoring (goal ≤ 1.3).
    """
    positive_int("repeats", repeats)
    env = gym.make(env_id, **env_kwargs)
    base = env.unwrapped
    env.reset(seed=seed)
    env.action_space.seed(seed)
    tokens = base.reward_tokens[: base.reward_windows]
    sync = torch.cuda.synchronize if base.model.device.type == "cuda" else (lambda: None)

    def timed(fn: Any) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    timed(lambda: nll_sum(base.model, tokens, base.config.batch_size))  # warm-up
    forward, step = [], []
    for _ in range(repeats):
        action = env.action_space.sample()
        forward.append(timed(lambda: nll_sum(base.model, tokens, base.config.batch_size)))
        step.append(timed(lambda a=action: env.step(a)))
    f, s = statistics.median(forward), statistics.median(step)
    return {
        "env": env_id, "mode": base.config.mode, "units": base.n_units, "reward_tokens": int(tokens.numel()),
        "device": str(base.model.device), "threads": torch.get_num_threads(), "repeats": repeats,
        "median_forward_s": round(f, 4), "median_step_s": round(s, 4), "step_over_forward": round(s / f, 3),
        "setup_s": round(base.setup_seconds, 2), "seed": seed, "numpy": np.__version__,
    }
