"""``ffprune bench-env``: median step time against one dense forward over the same reward tokens."""

from __future__ import annotations

import argparse

from ffprune.agents.cli.common import parse_kwargs

NAME = "bench-env"
HELP = "time env.step against one dense forward of the reward tokens"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ffprune bench-env``."""
    p.add_argument("--env", default="FFPrune-Llama-v0")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, action="append", help="target sparsity to time (repeatable; default: "
                   "the env's, plus 0.5 for structured envs)")
    p.add_argument("--no-calibrate", action="store_true", help="skip timing the calibrated evaluation")
    p.add_argument("--env-kwarg", action="append", metavar="KEY=VALUE", help="override an env setting (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Print :func:`ffprune.agents.tools.speed.bench_env`'s timings as JSON."""
    import json

    from ffprune.agents.tools.speed import bench_env

    targets = tuple(args.target) if args.target else None
    result = bench_env(args.env, repeats=args.repeats, seed=args.seed, targets=targets, calibrate=not args.no_calibrate,
                       **parse_kwargs(args.env_kwarg, "--env-kwarg"))
    print(json.dumps(result, indent=2))
    return 0
