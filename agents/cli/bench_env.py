"""``ffprune bench-env``: median step time against one dense forward over the same reward tokens, or
(``--surrogate``) microseconds per step of the task's surrogate env."""

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
    p.add_argument("--surrogate", action="store_true", help="time the surrogate env instead (microseconds per step, "
                   "goal <= 1 ms; --repeats loops of --steps steps)")
    p.add_argument("--surrogate-data", metavar="PATH", help="the surrogate's evaluation set (.npz or a folder of them; "
                   "default: the bundled one)")
    p.add_argument("--steps", type=int, default=2000, help="steps per timed loop with --surrogate")


def run(args: argparse.Namespace) -> int:
    """Print :func:`ffprune.agents.tools.speed.bench_env`'s timings (``--surrogate``:
    :func:`~ffprune.agents.tools.speed.bench_surrogate`'s) as JSON."""
    import json

    from ffenv.errors import FFPruneError
    from ffprune.agents.tools.speed import bench_env, bench_surrogate

    targets = tuple(args.target) if args.target else None
    kwargs = parse_kwargs(args.env_kwarg, "--env-kwarg")
    if args.surrogate:
        if args.surrogate_data is not None:
            kwargs["surrogate_data"] = args.surrogate_data
        result = bench_surrogate(args.env, steps=args.steps, repeats=args.repeats, seed=args.seed, targets=targets,
                                 **kwargs)
    elif args.surrogate_data is not None:
        raise FFPruneError("--surrogate-data needs --surrogate")
    else:
        result = bench_env(args.env, repeats=args.repeats, seed=args.seed, targets=targets,
                           calibrate=not args.no_calibrate, **kwargs)
    print(json.dumps(result, indent=2))
    return 0
