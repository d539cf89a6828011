"""Score a heuristic allocation on an env through its public API (no search, zero search evaluations).

    python -m baselines.run --env FFPrune-Llama-v0 --method owl
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import gymnasium as gym
import numpy as np

import ffenv  # noqa: F401  (registers the ids)
from agents.search import score_allocation
from baselines.allocators import alphapruning_sparsities, hill_alpha, owl_sparsities, uniform_sparsities
from ffenv.env import UNIT_FEATURES
from ffenv.models import decoder_blocks

METHODS = ("uniform", "owl", "alphapruning")


def block_sparsities(env: gym.Env, method: str, **params: float) -> np.ndarray:
    """Per-unit sparsities of a heuristic ``method`` (blocks' units share their block's sparsity)."""
    u = env.unwrapped
    target = u.target_sparsity
    blocks = np.array([unit.block for unit in u.units])
    sizes = np.array([u.sizes[blocks == b].sum() for b in range(u.n_blocks)])
    if method == "uniform":
        per_block = uniform_sparsities(target, u.n_blocks)
    elif method == "owl":
        obs, _ = env.reset()
        feats = obs[1:].reshape(u.n_units, len(UNIT_FEATURES))
        ratio = feats[:, UNIT_FEATURES.index("outlier_ratio")]
        per_block = owl_sparsities(np.array([ratio[blocks == b][0] for b in range(u.n_blocks)]), target, sizes, **params)
    elif method == "alphapruning":
        alphas = [np.mean([hill_alpha(lin.weight) for lin in b.linears.values()]) for b in decoder_blocks(u.model)]
        per_block = alphapruning_sparsities(np.array(alphas), target, sizes, **params)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return per_block[blocks]


def run_baseline(env_id: str, method: str, env_kwargs: dict[str, Any] | None = None, **params: float) -> dict[str, Any]:
    """Held-out and reward-split perplexity of a heuristic allocation."""
    env = gym.make(env_id, **(env_kwargs or {}))
    env.reset(seed=0)
    u = env.unwrapped
    s = block_sparsities(env, method, **params)
    action = u.action_from_sparsities(s)
    scores = score_allocation(env, action, u.target_sparsity)
    return {"env_id": env_id, "method": method, "params": params, "target_sparsity": u.target_sparsity,
            "action": action.tolist(), **scores, "cost": {"evaluations": 0}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env", default="FFPrune-Llama-v0")
    ap.add_argument("--method", choices=METHODS, default="uniform")
    ap.add_argument("--target", type=float)
    args = ap.parse_args(argv)
    kw = {"target_sparsity": args.target} if args.target is not None else {}
    r = run_baseline(args.env, args.method, kw)
    print(json.dumps({k: v for k, v in r.items() if k not in ("action", "layer_sparsity")}, indent=1))


if __name__ == "__main__":
    main()
