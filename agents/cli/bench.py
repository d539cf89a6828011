"""``ffprune bench``: every method on one env, or every task of a suite; tables, plots and TensorBoard runs.

The (method, seed) cells are resumable: an interrupted bench (Ctrl-C) exits with 130 and the same command
continues it. ``--tuned DIR`` adds the variant ``ffprune tune --out DIR`` selected to a suite as the row
``<method>-tuned`` (this module composes the tune's reader and the suite; the suite does not import the tune).
A suite records a failing cell with its error and finishes the others; the failures are listed
at the end and the exit code is 1 (the ``--docs`` files are then left as they are).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ffprune.agents.cli.common import (
    METHODS_HINT,
    add_cell_workers_argument,
    add_env_arguments,
    add_surrogate_arguments,
    env_kwargs,
    parse_names,
)

NAME = "bench"
HELP = "all agents and baselines on one env (or a suite): tables, plots, TensorBoard"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ffprune bench``."""
    p.add_argument("--env", help="the env (default FFPrune-Llama-v0)")
    p.add_argument("--suite", metavar="NAME", help="run every task of a benchmark suite (core) instead of one env "
                   "(default --out docs/results/<suite>, with --surrogate docs/results/<suite>-surrogate; its own budget "
                   "and seeds unless given)")
    p.add_argument("--docs", action="append", metavar="FILE",
                   help="with --suite: rewrite the generated suite sections FILE has markers for ('<!-- suite:NAME -->': "
                   "the full section, '<!-- suite:NAME:headline -->': the headline table); repeatable; checked before the run")
    p.add_argument("--tuned", action="append", metavar="DIR",
                   help="with --suite: also run the variant `ffprune tune --out DIR` selected (on the reward split, on seeds the "
                   "suite does not use) on the suite's tasks and seeds, as the row <method>-tuned; repeatable (one tune "
                   "per method)")
    p.add_argument("--full-split", metavar="ROWS", help="with --suite: also the whole test split's ppl of these rows' "
                   "median-seed allocations and the dense model's, per task (comma-separated; minutes each on a CPU; "
                   "measured once, cached beside the cells)")
    p.add_argument("--report-only", action="store_true", help="with --suite: no search, no evaluation; rewrite the suite's "
                   "tables, figures and --docs sections from the finished cells in --out (after a change of the report)")
    p.add_argument("--budget", type=int, help="episodes per search (heuristics use one; default 200, or the suite's)")
    p.add_argument("--seeds", type=int, help="seeds 0..K-1 per method (default 3, or the suite's)")
    p.add_argument("--methods", help=f"comma-separated registered methods ({METHODS_HINT}; default: all that fit the "
                   "env's mode)")
    p.add_argument("--target", type=float, help="target sparsity (default: the env's)")
    p.add_argument("--out", help="output folder (resumes what is already there; default bench)")
    p.add_argument("--no-calibrate", action="store_true", help="skip the post-pruning calibration column")
    p.add_argument("--calib-alpha", type=float, help="ridge penalty of the calibration (default: the env's calib_alpha)")
    add_env_arguments(p)
    add_surrogate_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars, no progress lines")
    add_cell_workers_argument(p)


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


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments ``run_bench`` and ``run_suite`` share (``calib_alpha`` only when given: else the env's)."""
    options: dict[str, Any] = {"calibrate": not args.no_calibrate, "workers": args.cell_workers,
                               "ray_address": args.ray_address, "progress": not args.quiet}
    if args.calib_alpha is not None:
        options["calib_alpha"] = args.calib_alpha
    return options


def _interrupted(cells: str) -> int:
    print(f"\ninterrupted; run the same command again to resume (finished cells in {cells} are kept)", file=sys.stderr)
    return 130


def _failed(failures: list[dict[str, Any]], what: str, out: str, docs: bool = False) -> int:
    """List the failed cells (stderr) and say how to retry them: exit code 1."""
    from ffprune.agents.experiments.engine import failure_lines

    for line in failure_lines(failures):
        print(f"failed: {line}", file=sys.stderr)
    kept = " (--docs files left as they are)" if docs else ""
    print(f"ffprune bench: {len(failures)} cell(s) of {what} failed{kept}; the other cells are in {out}; run the command "
          "again (with their methods) to retry the failed ones", file=sys.stderr)
    return 1


def _bench(args: argparse.Namespace, methods: list[str] | None) -> int:
    from ffenv.errors import SearchInterrupted
    from ffprune.agents.experiments.bench import BenchOverrides, run_bench

    out = args.out or "bench"
    options = _options(args)
    overrides = BenchOverrides(env_kwargs(args), args.target, options["calibrate"], options.get("calib_alpha"),
                               options["progress"])
    try:
        _rows, failures = run_bench(args.env or "FFPrune-Llama-v0", 200 if args.budget is None else args.budget,
                                    3 if args.seeds is None else args.seeds, methods, out, overrides,
                                    options["workers"], options["ray_address"])
    except (KeyboardInterrupt, SearchInterrupted):  # a bench resumes its cells by itself: no --resume to add
        return _interrupted(f"{out}/cells")
    if (Path(out) / "results.md").exists():
        print((Path(out) / "results.md").read_text())
    if failures:
        return _failed(failures, args.env or "FFPrune-Llama-v0", out)
    print(f"written: {out}/results.csv, results.md, curves.png, allocations.png; TensorBoard: {out}/tb")
    return 0


def tuned_variants(folders: list[str], budget: int, suite: str = "core") -> dict[str, Any]:
    """``--tuned DIR ...``: label ``<method>-tuned`` → the :class:`~ffprune.agents.experiments.suite.SuiteVariant` of the
    variant each tune folder selected (:func:`~ffprune.agents.experiments.tune.selected_settings`); two tunes of one
    method, a tune compared at another budget than the suite's ``budget`` or on another suite's tasks are a one-line
    error. The command
    composes the two: the suite does not know about tunes."""
    from ffenv.errors import FFPruneError
    from ffprune.agents.experiments.suite import SuiteVariant
    from ffprune.agents.experiments.tune import selected_settings, split_settings

    variants: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for folder in folders:
        tune = selected_settings(folder)
        label = f"{tune.method}-tuned"
        if label in variants:
            raise FFPruneError(f"--tuned {sources[label]} and --tuned {folder} are both tunes of {tune.method}: give one")
        if tune.suite != suite:
            raise FFPruneError(f"--tuned {folder}: its variants were compared on suite {tune.suite!r}'s tasks, this is "
                               f"suite {suite!r}: tune on its tasks (`ffprune tune --suite {suite} --method {tune.method}`)")
        if tune.budget != budget:
            raise FFPruneError(f"--tuned {folder}: its variants were compared at budget {tune.budget}, the suite runs at "
                               f"{budget}: tune at the suite's budget (`ffprune tune --budget {budget}`)")
        agent_kwargs, curriculum_kwargs = split_settings(tune.settings)
        seeds = ", ".join(map(str, tune.seeds))
        source = (f"selected by `ffprune tune` on the reward split{f' of seeds {seeds}' if seeds else ''}: "
                  f"`{Path(folder).as_posix()}/tune.json`")
        variants[label] = SuiteVariant(tune.method, agent_kwargs, curriculum_kwargs, name=tune.name, source=source)
        sources[label] = folder
    return variants


def _suite(args: argparse.Namespace, methods: list[str] | None) -> int:
    from ffenv.errors import FFPruneError, SearchInterrupted
    from ffprune.agents.experiments.suite import check_variants, get_suite, report_suite, run_suite

    spec = get_suite(args.suite)  # an unknown name: one line listing the suites
    suite = spec.name
    budget = spec.budget if args.budget is None else args.budget
    variants = check_variants(tuned_variants(args.tuned, budget, suite)) if args.tuned else {}
    surrogate = bool(env_kwargs(args).get("surrogate"))  # --surrogate or --env-kwarg surrogate=true
    if args.docs and surrogate:
        raise FFPruneError("--docs writes the real suite's generated sections; a suite run on the surrogate keeps its "
                           "labelled tables in its --out folder")
    if args.docs:
        from ffprune.agents.experiments.suite import check_sections

        check_sections(args.docs, suite)  # before hours of search, not after
    out = args.out or f"docs/results/{suite}{'-surrogate' if surrogate else ''}"
    try:
        if args.report_only and args.full_split:
            raise FFPruneError("--full-split measures allocations: it does not go with --report-only (whose report shows "
                               "what earlier runs measured)")
        if args.report_only:  # every row with cells in out, tuned ones too; --tuned adds its labels to --methods
            shown = None if methods is None else [*methods, *variants]
            analysis = report_suite(suite, out, args.budget, args.seeds, shown, surrogate=surrogate)
        else:
            full = parse_names(args.full_split, "--full-split") if args.full_split else None
            analysis = run_suite(suite, out, args.budget, args.seeds, methods, env_kwargs(args) or None, **_options(args),
                                 **({"variants": variants} if variants else {}), **({"full_split": full} if full else {}))
    except (KeyboardInterrupt, SearchInterrupted):
        return _interrupted(f"{out}/<task>/cells")
    report = Path(out) / "suite.md"
    if report.exists():
        print(report.read_text())
    if analysis["failures"]:
        return _failed(analysis["failures"], f"suite {suite}", out, bool(args.docs))
    if args.docs:
        from ffprune.agents.experiments.suite import update_sections

        changed = update_sections(args.docs, out, suite)
        if changed:
            print(f"updated: the suite:{suite} sections of {', '.join(map(str, changed))}")
        else:
            print(f"up to date: the suite:{suite} sections of {', '.join(args.docs)}")
    print(f"written: {out}/suite.md, suite.json, scores.csv, aggregate.png, profiles.png and one bench folder per task")
    return 0
