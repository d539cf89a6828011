"""``ffprune amortised``: one target-conditioned FastForward policy per family and mode vs a search per target.

Trains a policy per family, mode and seed on targets that exclude the ``core`` suite's (resumable), allocates at the
suite's targets zero-shot and refined, and compares with the suite's per-target cells (read, never re-run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ffprune.agents.cli.common import add_study_arguments, interrupted, parse_names
from ffprune.agents.defaults import AMORTISED_MODES, AMORTISED_REFINE, AMORTISED_TRAIN_BUDGET, SUITE_SEEDS, joined

NAME = "amortised"
HELP = "one policy per family and mode for every target (zero-shot, refined) vs the suite's per-target searches"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ffprune amortised``."""
    p.add_argument("--families", help="comma-separated bundled families (default: all of them)")
    p.add_argument("--modes", default=joined(AMORTISED_MODES), help="comma-separated modes (structured, unstructured)")
    p.add_argument("--seeds", type=int, default=SUITE_SEEDS, help="seeds 0..K-1 (the suite's cells use 0-2)")
    p.add_argument("--budget", type=int, default=AMORTISED_TRAIN_BUDGET, help="evaluations of each policy's training")
    p.add_argument("--refine", type=int, default=AMORTISED_REFINE, help="evaluations of each refinement at a test target")
    p.add_argument("--no-cross-model", action="store_true", help="skip the cross-model rows (policies -> mistral)")
    add_study_arguments(p, "docs/results/amortised", "the per-target cells")


def run(args: argparse.Namespace) -> int:
    """:func:`~ffprune.agents.experiments.amortised.run_amortised` (or its report only); prints the tables."""
    from ffenv.errors import SearchInterrupted
    from ffprune.agents.experiments.amortised import AmortisedSpec, report_amortised, run_amortised
    from ffprune.agents.experiments.engine import Runner

    families = {} if args.families is None else {"families": parse_names(args.families, "--families")}
    spec = AmortisedSpec(**families, modes=parse_names(args.modes, "--modes"), seeds=args.seeds, budget=args.budget,
                         refine=args.refine, cross_model=not args.no_cross_model)
    if args.report_only:
        report_amortised(spec, out=args.out, suite_out=args.suite_out)
    else:
        try:
            run_amortised(spec, out=args.out, suite_out=args.suite_out,
                          runner=Runner(args.cell_workers, args.ray_address), progress=not args.quiet)
        except (KeyboardInterrupt, SearchInterrupted):
            return interrupted(args.out)
    print((Path(args.out) / "amortised.md").read_text())
    print(f"written: {args.out}/amortised.md, amortised.json")
    return 0
