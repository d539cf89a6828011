"""``ffprune claim``: single-step FastForward (the suite's cells) vs multi-step search on the sequential twins."""

from __future__ import annotations

import argparse
from pathlib import Path

from ffprune.agents.cli.common import add_study_arguments, interrupted, parse_names
from ffprune.agents.defaults import CLAIM_BUDGETS, CLAIM_METHODS, CLAIM_SEEDS, CORE_HALF_TASKS, joined

NAME = "claim"
HELP = "the paper's claim measured: multi-step (AMC-style) agents vs FastForward's suite cells, by evaluations"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ffprune claim``."""
    p.add_argument("--tasks", default=joined(CORE_HALF_TASKS),
                   help="comma-separated structured suite tasks (default: the three 50 %% ones of core; a real task "
                   "such as smollm2-s0.2 with --suite-out docs/results/real)")
    p.add_argument("--budgets", default=joined(CLAIM_BUDGETS), help="comma-separated budgets of the multi-step searches")
    p.add_argument("--seeds", type=int, default=CLAIM_SEEDS, help="seeds 0..K-1 (FastForward's suite cells use 0-2)")
    p.add_argument("--methods", default=joined(CLAIM_METHODS), help="comma-separated agents for the sequential envs (amc-ddpg, "
                   "ppo, sac, td3, ...)")
    add_study_arguments(p, "docs/results/claim", "FastForward's cells")


def run(args: argparse.Namespace) -> int:
    """:func:`~ffprune.agents.experiments.claim.run_claim` (or its report only); prints the table."""
    from ffenv.errors import FFPruneError, SearchInterrupted
    from ffprune.agents.experiments.claim import ClaimSpec, report_claim, run_claim
    from ffprune.agents.experiments.engine import Runner

    try:
        budgets = [int(b) for b in parse_names(args.budgets, "--budgets")]
    except ValueError:
        raise FFPruneError(f"--budgets must be comma-separated positive integers, got {args.budgets!r}") from None
    spec = ClaimSpec(parse_names(args.tasks, "--tasks"), budgets, args.seeds, parse_names(args.methods, "--methods"))
    if args.report_only:
        analysis = report_claim(spec, out=args.out, suite_out=args.suite_out)
    else:
        try:
            analysis = run_claim(spec, out=args.out, suite_out=args.suite_out,
                                 runner=Runner(args.cell_workers, args.ray_address), progress=not args.quiet)
        except (KeyboardInterrupt, SearchInterrupted):  # the cells resume by themselves, as in ffprune bench
            return interrupted(args.out)
    print((Path(args.out) / "claim.md").read_text())
    print(f"written: {args.out}/claim.md, claim.json, claim.png")
    return 1 if analysis["failures"] else 0
