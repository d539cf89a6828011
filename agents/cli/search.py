"""``ffprune search``: one search with one method; writes the result JSON atomically and can resume."""

from __future__ import annotations

import argparse

from ffprune.agents.cli.common import (
    METHODS_HINT,
    add_env_arguments,
    add_ray_address_argument,
    add_surrogate_arguments,
    env_kwargs,
    parse_floats,
    parse_kwargs,
)

NAME = "search"
HELP = "search an allocation with one agent"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ffprune search``."""
    p.add_argument("--env", default="FFPrune-Llama-v0")
    p.add_argument("--agent", default="fastforward", metavar="METHOD",
                   help=f"a registered method ({METHODS_HINT}) or another stable-baselines3 algorithm (a2c, td3...)")
    p.add_argument("--budget", type=int, default=200, help="episodes (one evaluation each; heuristics use one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logdir", default="runs",
                   help="TensorBoard root: <logdir>/<env>/<agent>/seed<k> (--surrogate: <logdir>/surrogate/<env>/...)")
    p.add_argument("--out", help="result JSON (checkpoint beside it as <out>.ckpt)")
    p.add_argument("--target", type=float, help="target sparsity (default: the env's; with --train-targets the largest)")
    p.add_argument("--train-targets", metavar="S1,S2,...", help="train one target-conditioned policy across these "
                   "targets (each episode's final target drawn from them; `ffprune allocate` uses the policy)")
    p.add_argument("--warm-start", help="policy file of an earlier fastforward search")
    p.add_argument("--resume", action="store_true", help="continue from <out>.ckpt")
    p.add_argument("--no-curriculum", action="store_true", help="final target and full fidelity from the start")
    p.add_argument("--warmup-fraction", type=float, default=0.4, help="share of the budget the curricula span")
    p.add_argument("--agent-kwarg", action="append", metavar="KEY=VALUE", help="override an agent setting (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no progress lines")
    p.add_argument("--calibrate", action="store_true",
                   help="also report the held-out ppl after post-pruning calibration (structured envs)")
    add_env_arguments(p)
    add_surrogate_arguments(p)
    p.add_argument("--workers", type=int, default=0, help="population evaluations on this many Ray actors (a local Ray "
                   "instance with N CPUs, or N GPUs with --env-kwarg device=cuda); 0: in this process (default)")
    add_ray_address_argument(p)


def run(args: argparse.Namespace) -> int:
    """Run :func:`ffprune.agents.experiments.search.run_search` and print the best allocation's figures and cost."""
    from ffprune.agents.experiments.search import SearchSpec, run_search

    env = env_kwargs(args)
    if args.workers:
        env["workers"] = args.workers  # env population actors (EnvConfig.workers)
    if args.ray_address is not None:
        env["ray_address"] = args.ray_address
    spec = SearchSpec(args.env, args.agent, args.budget, args.seed, target=args.target, env_kwargs=env,
                      agent_kwargs=parse_kwargs(args.agent_kwarg, "--agent-kwarg"), curriculum=not args.no_curriculum,
                      warmup_fraction=args.warmup_fraction,
                      train_targets=parse_floats(args.train_targets, "--train-targets"), warm_start=args.warm_start,
                      calibrate=args.calibrate)
    result = run_search(spec, out=args.out, logdir=args.logdir, resume=args.resume, progress=not args.quiet)
    best, cost = result["best"], result["cost"]
    label = result.get("surrogate")
    print(f"{result['env_id']} {result['agent']} seed {result['seed']}: target {result['env_kwargs']['target_sparsity']}"
          f" realized sparsity {best['sparsity']:.4f}"
          + (f" | SURROGATE {label['fingerprint'][:19]} ({label['data']}): predicted, not measured" if label else ""))
    print(f"  best reward {best['reward']:.4f} | reward-split ppl {best['reward_ppl']:.2f} (dense "
          f"{best['dense_reward_ppl']:.2f}) | held-out eval ppl {best['eval_ppl']:.2f} (dense {best['dense_eval_ppl']:.2f})")
    if "eval_ppl_after_calib" in best:
        print(f"  after post-pruning calibration: held-out eval ppl {best['eval_ppl_after_calib']:.2f}")
    if label:
        print(f"  cost: {cost['surrogate_evaluations']} surrogate evaluations (0 real), {cost['seconds']:.1f} s;"
              f" best found after {cost['evaluations_to_best']} surrogate evaluations")
    else:
        print(f"  cost: {cost['evaluations']} evaluations, {cost['tokens']:,} tokens, {cost['seconds']:.1f} s;"
              f" best found after {cost['evaluations_to_best']} evaluations")
    for key, at in sorted(result.get("best_by_target", {}).items(), key=lambda kv: float(kv[0])):
        print(f"  at training target {key}: best reward {at['reward']:.4f} (reward-split ppl {at['ppl']:.2f})")
    if args.out:
        print(f"  result: {args.out}")
    if result.get("policy_file"):
        print(f"  policy: {result['policy_file']} (`ffprune allocate --policy {result['policy_file']} --target S`)")
    return 0
