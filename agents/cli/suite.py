"""``ffprune suite``: run, report and compare benchmark suites — a registered one by name, or one's own as a file.

    ffprune suite list                                # the registered suites: tasks, budget, seeds
    ffprune suite run core --cell-workers 2 --docs README.md
    ffprune suite run my-suite.toml --out results/my-suite
    ffprune suite report real                         # tables and figures again from the cells (no search)
    ffprune suite compare docs/results/core docs/results/core-surrogate   # one suite's ranking, real vs surrogate

A suite file declares tasks (registered env ids with their own env settings), methods, budget, seeds and variants
(:func:`~ffprune.agents.experiments.suite.load_suite`). Cells resume: an interrupted run exits with 130 and the same
command continues it. A failing cell is recorded with its error and the other cells finish; the failures are listed at
the end and the exit code is 1 (the ``--docs`` files are then left as they are). ``ffprune bench --suite NAME`` is
``ffprune suite run NAME`` (``--report-only``: ``ffprune suite report``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from ffprune.agents.cli.common import (
    METHODS_HINT,
    RESULTS,
    add_cell_run_arguments,
    env_kwargs,
    interrupted,
    parse_names,
)

NAME = "suite"
HELP = "run, report or compare a benchmark suite (a registered one, or your own as a .toml / .json file)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The subcommands of ``ffprune suite``."""
    sub = p.add_subparsers(dest="action", required=True, metavar="{list,run,report,compare}")
    listing = sub.add_parser("list", help="the registered suites: tasks, budget, seeds")
    listing.set_defaults(action_run=_list)
    run = sub.add_parser("run", help="run (or resume) every cell of a suite, then its tables and figures",
                         description="Run (or resume) every cell of a suite, then write its tables and figures.")
    add_suite_arguments(run, report_only=False)
    run.set_defaults(action_run=lambda args: run_command(args, report_only=False))
    report = sub.add_parser("report", help="a suite's tables and figures again from its cells (no search)",
                            description="Rewrite a suite's tables, figures and --docs sections from the finished cells "
                            "in --out: no search, no evaluation.")
    add_suite_arguments(report, report_only=True)
    report.set_defaults(action_run=lambda args: run_command(args, report_only=True))
    compare = sub.add_parser("compare", help="one suite's method ranking in two folders: the real suite vs the same "
                             "suite on the surrogates (Kendall's tau-b of the IQM rankings)")
    from ffprune.agents.cli.surrogate import add_rank_arguments

    add_rank_arguments(compare, positional=True)


def add_suite_arguments(p: argparse.ArgumentParser, report_only: bool) -> None:
    """The options of ``ffprune suite run`` (``report_only``: of ``ffprune suite report``)."""
    p.add_argument("suite", metavar="NAME|FILE", help="a registered suite (`ffprune suite list`) or a .toml / .json "
                   "suite file")
    p.add_argument("--out", help=f"output folder (resumes what is there; default {RESULTS}/<suite>, with --surrogate "
                   f"{RESULTS}/<suite>-surrogate)")
    p.add_argument("--methods", help=f"comma-separated methods or variant labels ({METHODS_HINT}; default: the suite's"
                   + (", or every row with cells in --out)" if report_only else ", or every method that fits a task)"))
    p.add_argument("--budget", type=int, help="episodes per search (default: the suite's)")
    p.add_argument("--seeds", type=int, help="seeds 0..K-1 per method (default: the suite's)")
    if report_only:
        add_suite_options(p, full_split=False)
        p.add_argument("--surrogate", action="store_true", help="--out holds the suite run on the surrogates")
        p.set_defaults(no_calibrate=False, calib_alpha=None, cell_workers=0, ray_address=None, quiet=True,
                       full_split=None, env_kwarg=None, reward=None, surrogate_data=None)
        return
    add_suite_options(p)
    add_cell_run_arguments(p)


def add_suite_options(p: argparse.ArgumentParser, prefix: str = "", full_split: bool = True) -> None:
    """``--docs``, ``--tuned`` and (``full_split``) ``--full-split``: what a suite run takes beyond its cells (``prefix``
    heads their help: ``ffprune bench`` takes them with ``--suite``)."""
    p.add_argument("--docs", action="append", metavar="FILE",
                   help=f"{prefix}rewrite the generated suite sections FILE has markers for ('<!-- suite:NAME -->': the "
                   "full section, '<!-- suite:NAME:headline -->': the headline table); repeatable; checked before the run")
    p.add_argument("--tuned", action="append", metavar="DIR",
                   help=f"{prefix}also the variant `ffprune tune --out DIR` selected (on the reward split, on seeds the "
                   "suite does not use), on the suite's tasks and seeds, as the row <method>-tuned; repeatable (one tune "
                   "per method)")
    p.add_argument("--agreement-points", type=int, metavar="N",
                   help=f"{prefix}allocations per task of the reward / held-out agreement (held-out evaluations of one "
                   "FastForward search's allocations, measured once and cached; 0: off; default: SuiteReport's)")
    if full_split:
        p.add_argument("--full-split", metavar="ROWS", help=f"{prefix}also the whole test split's ppl of these rows' "
                       "median-seed allocations and the dense model's, per task (comma-separated; minutes each on a "
                       "CPU; measured once, cached beside the cells)")


def report_options(args: argparse.Namespace, full_split: tuple[str, ...]) -> Any:
    """What the suite's report measures beyond the cells (:class:`~ffprune.agents.experiments.suite.SuiteReport`), from
    the flags (``--agreement-points`` checked here; unset: the library's default)."""
    from ffenv.errors import FFPruneError
    from ffprune.agents.experiments.suite import SuiteReport

    points = args.agreement_points  # every parser of a suite run has it (add_suite_options)
    if points is None:
        return SuiteReport(full_split=full_split)
    if points < 0:
        raise FFPruneError(f"--agreement-points must be >= 0 (0: no agreement measured), got {points}")
    return SuiteReport(agreement_points=points, full_split=full_split)


def run(args: argparse.Namespace) -> int:
    """The chosen subcommand."""
    return args.action_run(args)


def _list(args: argparse.Namespace) -> int:
    from ffprune.agents.experiments.suite import SUITES

    for suite in SUITES.values():
        print(f"{suite.name}: {suite.description} (budget {suite.budget}, {suite.seeds} seeds)")
        for task in suite.tasks:
            extra = f" {dict(task.env_kwargs)}" if task.env_kwargs else ""
            print(f"  {task.name:<16} {task.env_id}{extra}")
    return 0


def tuned_variants(folders: list[str], budget: int, suite: str) -> dict[str, Any]:
    """``--tuned DIR ...``: label ``<method>-tuned`` → the :class:`~ffprune.agents.experiments.suite.SuiteVariant` of the
    variant each tune folder selected (:func:`~ffprune.agents.experiments.tune.selected_settings`); two tunes of one
    method, a tune compared at another budget than the suite's ``budget`` or on another suite's tasks are a one-line
    error. The command composes the two: the suite does not know about tunes."""
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


def failed(failures: list[dict[str, Any]], what: str, out: str, docs: bool = False) -> int:
    """List the failed cells (stderr) and say how to retry them: exit code 1."""
    from ffprune.agents.experiments.engine import failure_lines

    for line in failure_lines(failures):
        print(f"failed: {line}", file=sys.stderr)
    kept = " (--docs files left as they are)" if docs else ""
    print(f"ffprune: {len(failures)} cell(s) of {what} failed{kept}; the other cells are in {out}; run the command "
          "again (with their methods) to retry the failed ones", file=sys.stderr)
    return 1


def default_out(suite: Any, source: str, surrogate: bool) -> str:
    """A suite's default output folder: ``docs/results/<name>`` for a registered suite (the committed results), else
    ``results/<name>`` beside where the command runs; ``-surrogate`` appended on the surrogates."""
    from ffprune.agents.experiments.suite import SUITES

    root = RESULTS if source in SUITES else "results"
    return f"{root}/{suite.name}{'-surrogate' if surrogate else ''}"


def run_command(args: argparse.Namespace, report_only: bool) -> int:
    """``ffprune suite run`` / ``report`` (and ``ffprune bench --suite``): the suite loaded and its fields overridden by
    the flags, then :func:`~ffprune.agents.experiments.suite.run_suite` or ``report_suite``."""
    from ffenv.errors import FFPruneError, SearchInterrupted
    from ffprune.agents.experiments.bench import BenchOverrides
    from ffprune.agents.experiments.engine import Runner
    from ffprune.agents.experiments.suite import check_sections, load_suite, report_suite, run_suite

    source = str(args.suite)
    suite = load_suite(source)  # an unknown name or a bad file: one line
    budget = suite.budget if args.budget is None else args.budget
    variants = tuned_variants(args.tuned, budget, suite.name) if args.tuned else {}
    methods = parse_names(args.methods, "--methods") if args.methods else None
    kwargs = env_kwargs(args)
    surrogate = bool(kwargs.get("surrogate"))  # --surrogate or --env-kwarg surrogate=true
    if args.docs and surrogate:
        raise FFPruneError("--docs writes the real suite's generated sections; a suite run on the surrogate keeps its "
                           "labelled tables in its --out folder")
    if args.docs:
        check_sections(args.docs, suite.name)  # before hours of search, not after
    out = args.out or default_out(suite, source, surrogate)
    try:
        if report_only:  # every row with cells in out, tuned ones too; --tuned adds its labels to --methods
            shown = None if methods is None else [*methods, *variants]
            suite = suite.but(args.budget, args.seeds)
            if shown is not None:  # rows to show: methods and variant labels (read_suite_cells tells them apart)
                suite = dataclasses.replace(suite, methods=tuple(shown))
            analysis = report_suite(suite, out, surrogate=surrogate, report=report_options(args, ()))
        else:
            full = tuple(parse_names(args.full_split, "--full-split")) if args.full_split else ()
            suite = suite.but(args.budget, args.seeds, methods, {**suite.variants, **variants} if variants else None)
            overrides = BenchOverrides(env_kwargs=kwargs, calibrate=not args.no_calibrate, calib_alpha=args.calib_alpha,
                                       progress=not args.quiet)
            analysis = run_suite(suite, out, overrides, Runner(args.cell_workers, args.ray_address),
                                 report_options(args, full))
    except (KeyboardInterrupt, SearchInterrupted):
        return interrupted(f"{out}/<task>/cells")
    report = Path(out) / "suite.md"
    if report.exists():
        print(report.read_text())
    if analysis["failures"]:
        return failed(analysis["failures"], f"suite {suite.name}", out, bool(args.docs))
    if args.docs:
        from ffprune.agents.experiments.suite import update_sections

        changed = update_sections(args.docs, out, suite.name)
        if changed:
            print(f"updated: the suite:{suite.name} sections of {', '.join(map(str, changed))}")
        else:
            print(f"up to date: the suite:{suite.name} sections of {', '.join(args.docs)}")
    print(f"written: {out}/suite.md, suite.json, scores.csv, aggregate.png, profiles.png and one bench folder per task")
    return 0
