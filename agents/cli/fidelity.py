"""``ffprune fidelity``: the reward windows and length that rank allocations like the held-out perplexity, cheapest first."""

from __future__ import annotations

import argparse
from pathlib import Path

from ffprune.agents.cli.common import parse_names

NAME = "fidelity"
HELP = "choose a task's reward windows: Spearman rho of candidate rewards vs the held-out ppl over many allocations"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ffprune fidelity``."""
    p.add_argument("--env", required=True, help="a registered id, e.g. FFPrune-SmolLM2-v0")
    p.add_argument("--out", required=True, help="folder of rows.json (resumable), fidelity.md / .json / .png")
    p.add_argument("--allocations", type=int, default=100, help="allocations to measure (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random allocations")
    p.add_argument("--lengths", default="256,512", help="candidate window lengths (tokens)")
    p.add_argument("--windows", default="2,4,8,16", help="candidate numbers of reward windows")
    p.add_argument("--max-tokens", type=int, default=4096, help="the costliest candidate reward, in tokens (default 4096)")
    p.add_argument("--goal", type=float, default=0.9, help="the Spearman rho a reward must reach (default 0.9)")
    p.add_argument("--full-split", type=int, metavar="N", help="after the study: the full test split's ppl of N of its "
                   "allocations (spread over their held-out range) beside the held-out subset's (full_split.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """:func:`~ffprune.agents.experiments.fidelity.run_fidelity`; prints the table."""
    from ffenv.errors import FFPruneError
    from ffprune.agents.experiments.fidelity import FidelitySpec, run_fidelity

    try:
        lengths = tuple(int(x) for x in parse_names(args.lengths, "--lengths"))
        windows = tuple(int(x) for x in parse_names(args.windows, "--windows"))
    except ValueError:
        raise FFPruneError("--lengths and --windows must be comma-separated positive integers") from None
    spec = FidelitySpec(args.env, args.allocations, args.seed, lengths, windows, args.goal, args.max_tokens)
    run_fidelity(spec, out=args.out, progress=not args.quiet)
    print((Path(args.out) / "fidelity.md").read_text())
    if args.full_split is not None:
        from ffprune.agents.experiments.fidelity import run_full_split

        run_full_split(args.out, args.full_split, progress=not args.quiet)
        print((Path(args.out) / "full_split.md").read_text())
    return 0
