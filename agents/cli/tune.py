"""``ffprune tune``: a grid of settings of one method (FastForward's, SB3 PPO's, a heuristic's) tuned on the reward
split only.

Each (variant, task, seed) cell is a resumable search at the suite's budget (``--suite``, default core) on seeds that
are not the suite's (10, 11, 12 by default; 0-2 are refused; a heuristic runs the first only); the variant with the
highest mean best reward (reward split) is selected, ties going to default. No held-out number is read or shown. The
report goes to docs/results/tune-<method> (tune-<method>-<suite> for another suite) unless --out says otherwise
(``<method>`` in --out is replaced by the method's name).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ffprune.agents.cli.common import add_env_arguments, add_study_arguments, env_kwargs, interrupted, parse_names
from ffprune.agents.defaults import TUNE_SEEDS, TUNE_TASKS, joined

NAME = "tune"
HELP = "tune a method's settings (a grid of variants) on the reward split, on seeds the suite does not use"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ffprune tune``."""
    p.add_argument("--method", default="fastforward", help="the method to tune (built-in grids: fastforward, ppo, owl, "
                   "alphapruning, dlp; any other method needs --variant)")
    p.add_argument("--suite", default="core", help="the suite whose tasks the variants are compared on (default core; "
                   "`ffprune bench --suite NAME --tuned DIR` runs the selection on the same suite)")
    p.add_argument("--variants", help="comma-separated names from the method's built-in grid (default: all of it; "
                   "default, the method's own settings, is always run)")
    p.add_argument("--variant", action="append", metavar="NAME:KEY=VALUE,...",
                   help="a custom variant (repeatable), e.g. 'wide:hidden=[512,512],learning_rate=3e-4'")
    p.add_argument("--tasks", help=f"comma-separated tasks of the suite (default: {joined(TUNE_TASKS)} on core, every "
                   "task of another suite)")
    p.add_argument("--seeds", default=joined(TUNE_SEEDS), help="comma-separated seeds (not 0-2: the suite's held-out "
                   "protocol uses them)")
    p.add_argument("--budget", type=int, help="evaluations per search (default: the suite's; another budget tunes for "
                   "another protocol)")
    add_env_arguments(p)
    add_study_arguments(p, "docs/results/tune-<method>", None)


def run(args: argparse.Namespace) -> int:
    """:func:`~ffprune.agents.experiments.tune.run_tune` (or its report only); prints the table."""
    from ffenv.errors import FFPruneError, SearchInterrupted
    from ffprune.agents.experiments.engine import Runner
    from ffprune.agents.experiments.tune import TuneSpec, parse_variant, report_tune, run_tune, tune_variants

    try:
        seeds = [int(s) for s in parse_names(args.seeds, "--seeds")]
    except ValueError:
        raise FFPruneError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    names = parse_names(args.variants, "--variants") if args.variants is not None else None
    variants = tune_variants(args.method, names, [parse_variant(v) for v in args.variant or []])
    out = args.out.replace("<method>", args.method.lower())
    if args.suite != "core" and args.out == "docs/results/tune-<method>":
        out += f"-{args.suite}"
    tasks = parse_names(args.tasks, "--tasks") if args.tasks is not None else None
    spec = TuneSpec(args.method, variants, tasks, seeds, args.budget, env_kwargs(args) or None, args.suite)
    if args.report_only:
        analysis = report_tune(spec, out=out)
    else:
        try:
            analysis = run_tune(spec, out=out, runner=Runner(args.cell_workers, args.ray_address),
                                progress=not args.quiet)
        except (KeyboardInterrupt, SearchInterrupted):  # the cells resume by themselves, as in ffprune bench
            return interrupted(out)
    print((Path(out) / "tune.md").read_text())
    print(f"written: {out}/tune.md, tune.json")
    return 1 if analysis["failures"] else 0
