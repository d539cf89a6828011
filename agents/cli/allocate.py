"""``ffprune allocate``: an allocation at any target from a trained FastForward policy, zero-shot or refined.

Zero-shot (``--refine 0``, the default): the policy's mean action at the target, projected onto it; no evaluation
chooses anything (search cost 0). ``--refine N``: N more evaluations of FastForward's search at the target, from
the policy. The result JSON is a search result (``ffprune export`` takes it).
"""

from __future__ import annotations

import argparse

from ffprune.agents.cli.common import add_env_arguments, env_kwargs, parse_kwargs

NAME = "allocate"
HELP = "allocate at a target with a trained (target-conditioned) FastForward policy"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ffprune allocate``."""
    p.add_argument("--policy", required=True, help="policy file of a fastforward search (<result>.policy.pt)")
    p.add_argument("--target", type=float, required=True, help="target sparsity, in (0, 1)")
    p.add_argument("--env", help="env id (default: the policy's; another model of the same mode and unit count works)")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="0: zero-shot, no evaluation (default); N: N evaluations of FastForward's search from the policy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="result JSON (the schema of `ffprune search` results)")
    p.add_argument("--logdir", default="runs/allocate",
                   help="TensorBoard root of a refinement: <logdir>/<env>/fastforward/seed<k> (default runs/allocate)")
    p.add_argument("--agent-kwarg", action="append", metavar="KEY=VALUE",
                   help="override a FastForward setting of the refinement (default: the policy's; repeatable)")
    p.add_argument("--calibrate", action="store_true",
                   help="also report the held-out ppl after post-pruning calibration (structured envs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no progress lines")
    add_env_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Run :func:`ffprune.agents.experiments.allocate.allocate` and print the allocation's figures and cost."""
    from ffprune.agents.experiments.allocate import AllocateSpec, allocate

    spec = AllocateSpec(args.policy, args.target, env_id=args.env, env_kwargs=env_kwargs(args), refine=args.refine,
                        seed=args.seed, agent_kwargs=parse_kwargs(args.agent_kwarg, "--agent-kwarg"),
                        calibrate=args.calibrate)
    result = allocate(spec, out=args.out, logdir=args.logdir, progress=not args.quiet)
    best, cost, training = result["best"], result["cost"], result.get("training_cost")
    how = f"refined with {result['refine']} evaluations" if result["refine"] else "zero-shot (policy mean)"
    print(f"{result['env_id']} at target {result['env_kwargs']['target_sparsity']}: {how}; realized sparsity "
          f"{best['sparsity']:.4f}")
    print(f"  reward {best['reward']:.4f} | reward-split ppl {best['reward_ppl']:.2f} (dense {best['dense_reward_ppl']:.2f})"
          f" | held-out eval ppl {best['eval_ppl']:.2f} (dense {best['dense_eval_ppl']:.2f})")
    if "eval_ppl_after_calib" in best:
        print(f"  after post-pruning calibration: held-out eval ppl {best['eval_ppl_after_calib']:.2f}")
    print(f"  cost: {cost['evaluations']} evaluations, {cost['tokens']:,} tokens, {cost['seconds']:.1f} s")
    if training:
        print(f"  training the policy cost {training['evaluations']} evaluations, {training['tokens']:,} tokens, "
              f"{training['seconds']:.1f} s (not counted above)")
    if args.out:
        print(f"  result: {args.out}")
    return 0
