"""``ffprune bench``: every method on one env, or every task of a suite; tables, plots and TensorBoard runs.

The (method, seed) cells are resumable: an interrupted bench (Ctrl-C) exits with 130 and the same command
continues it. ``--tuned DIR`` adds the variant ``ffprune tune --out DIR`` selected to a suite as the row
``<method>-tuned`` (this module composes the tune's reader and the suite; the suite does not import the tune).
A suite records a failing cell with its error and finishes the others; the failures are listed
at the end and the exit code is 1 (the ``--docs`` files are then left as they are).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ffprune.agents.cli.common import METHODS_HINT, add_cell_run_arguments, env_kwargs
from ffprune.agents.cli.suite import add_suite_options

NAME = "bench"
HELP = "all agents and baselines on one env (or a suite): tables, plots, TensorBoard"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ffprune bench``."""
    p.add_argument("--env", help="the env (default FFPrune-Llama-v0)")
    p.add_argument("--suite", metavar="NAME", help="run every task of a benchmark suite (core) instead of one env "
                   "(default --out docs/results/<suite>, with --surrogate docs/results/<suite>-surrogate; its own budget "
                   "and seeds unless given)")
    add_suite_options(p, prefix="with --suite: ")
    p.add_argument("--report-only", action="store_true", help="with --suite: no search, no evaluation; rewrite the suite's "
                   "tables, figures and --docs sections from the finished cells in --out (after a change of the report)")
    p.add_argument("--budget", type=int, help="episodes per search (heuristics use one; default 200, or the suite's)")
    p.add_argument("--seeds", type=int, help="seeds 0..K-1 per method (default 3, or the suite's)")
    p.add_argument("--methods", help=f"comma-separated registered methods ({METHODS_HINT}; default: all that fit the "
                   "env's mode)")
    p.add_argument("--target", type=float, help="target sparsity (default: the env's)")
    p.add_argument("--out", help="output folder (resumes what is already there; default bench)")
    add_cell_run_arguments(p)


def run(args: argparse.Namespace) -> int:
    """:func:`~ffprune.agents.experiments.bench.run_bench` on one env, or
    :func:`~ffprune.agents.experiments.suite.run_suite`; prints the tables and what was written."""
    from ffenv.errors import FFPruneError

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    if args.suite is None:
        if args.docs or args.report_only or args.tuned:
            flag = "--docs" if args.docs else "--report-only" if args.report_only else "--tuned"
            raise FFPruneError(f"{flag} works on a suite's results; it needs --suite")
        return _bench(args, methods)
    if args.env is not None or args.target is not None:
        raise FFPruneError("--suite runs its own tasks (envs and targets); drop --env / --target")
    return _suite(args, methods)


def _bench(args: argparse.Namespace, methods: list[str] | None) -> int:
    from ffenv.errors import SearchInterrupted
    from ffprune.agents.cli.common import interrupted
    from ffprune.agents.cli.suite import failed
    from ffprune.agents.experiments.bench import BenchSpec, run_bench
    from ffprune.agents.experiments.engine import Runner

    out = args.out or "bench"
    given = {"env_id": args.env, "budget": args.budget, "seeds": args.seeds}  # unset: BenchSpec's defaults
    spec = BenchSpec(**{k: v for k, v in given.items() if v is not None}, methods=methods, env_kwargs=env_kwargs(args),
                     target=args.target, calibrate=not args.no_calibrate, calib_alpha=args.calib_alpha)
    try:
        _rows, failures = run_bench(spec, out=out, runner=Runner(args.cell_workers, args.ray_address),
                                    progress=not args.quiet)
    except (KeyboardInterrupt, SearchInterrupted):  # a bench resumes its cells by itself: no --resume to add
        return interrupted(f"{out}/cells")
    if (Path(out) / "results.md").exists():
        print((Path(out) / "results.md").read_text())
    if failures:
        return failed(failures, spec.env_id, out)
    print(f"written: {out}/results.json, results.md, results.csv, curves.png, allocations.png; TensorBoard: {out}/tb")
    return 0


def _suite(args: argparse.Namespace, methods: list[str] | None) -> int:
    """``--suite NAME``: ``ffprune suite run NAME`` (``--report-only``: ``ffprune suite report NAME``)."""
    from ffenv.errors import FFPruneError
    from ffprune.agents.cli.suite import run_command

    if args.report_only and args.full_split:
        raise FFPruneError("--full-split measures allocations: it does not go with --report-only (whose report shows "
                           "what earlier runs measured)")
    return run_command(args, report_only=args.report_only)
