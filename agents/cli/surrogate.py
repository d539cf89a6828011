"""``ffprune surrogate``: record the evaluation sets surrogate mode is fitted on, validate the surrogates, and use them.

``ffprune surrogate record`` builds (or resumes) one set per (family, mode) from its suite's histories and new
evaluations (random allocations at several spreads, the heuristics, perturbations of the best, reduced-fidelity
pairs, held-out ppl for a share of them); ``--dry-run`` prints the plan and its time. ``ffprune surrogate validate``
fits each surrogate and scores it on its test allocations (Spearman rank correlations per suite task).
``ffprune surrogate rank`` compares the core suite's method ranking on the surrogates with the real one (Kendall's
τ-b of the IQM rankings), and ``ffprune surrogate study`` runs RL algorithms to 10,000 evaluations on the surrogates
of the suite's tasks (learning curves; resumable).
"""

from __future__ import annotations

import argparse
from typing import Any

from ffprune.agents.cli.common import (
    METHODS_HINT,
    RESULTS,
    add_cell_workers_argument,
    interrupted,
    parse_floats,
    parse_kwargs,
    parse_names,
)
from ffprune.agents.defaults import RECORD, joined

NAME = "surrogate"
HELP = "record the evaluation sets of surrogate mode (resumable), validate the surrogates, rank, study"
RECORD_DESCRIPTION = (
    "Record (or resume: the same command continues; Ctrl-C loses at most one chunk) the evaluation set of each "
    "(family, mode) into OUT/<model>-<mode>.npz. Sources: its suite's histories (no evaluation; checked by "
    "re-measuring a few), random allocations at several spreads, the heuristics, perturbations of the best so far, "
    "allocations at reduced fidelity too, all at the suite's and the curriculum's targets; a share also gets the "
    "held-out ppl. Cost with the defaults: one (family, mode, env seed) is about 11 min structured and 15 min "
    "unstructured on one CPU core (about 930 / 900 reward-evaluation equivalents at the 0.7 / 1.0 s one evaluation "
    "took per core in the core suite); all of it (3 families x 2 modes, env seed 0: the core suite's instance) about "
    "1.3 h on one core, half with --cell-workers 2 (each further env seed as much again). --dry-run prints the plan "
    "and its time without evaluating.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sub-subcommands ``record`` and ``validate`` and their options."""
    sub = p.add_subparsers(dest="action", required=True, metavar="{record,validate,rank,study}")
    rec = sub.add_parser("record", help="record the evaluation sets (resumable)", description=RECORD_DESCRIPTION)
    rec.add_argument("--families", help="comma-separated families (default: the bundled ones): bundled (llama, "
                     "mistral, opt) or real (smollm2: fetched on first use; read its suite, docs/results/real)")
    rec.add_argument("--modes", help="comma-separated modes (default: both)")
    rec.add_argument("--seeds", default="0", help="comma-separated env seeds (pruning instances; default 0: every "
                     "core suite cell ran on env seed 0, its search seed varies the agent only)")
    rec.add_argument("--out", help="folder of the sets (default: the bundled ffenv/surrogate/data)")
    rec.add_argument("--suite-out", help="the suite's results, their histories (default: each family's suite, "
                     "docs/results/core or docs/results/real)")
    rec.add_argument("--no-suite", action="store_true", help="do not read the suite's histories")
    rec.add_argument("--random", type=int, default=RECORD["random"], help="random rows per spread per seed")
    rec.add_argument("--spreads", default=joined(RECORD["spreads"]), help="random spreads: 'uniform' (in [-1, 1]) or s "
                     "(N(0, s) clipped)")
    rec.add_argument("--heuristics", default=joined(RECORD["heuristics"]), help="heuristics at every target (flap: "
                     "structured only)")
    rec.add_argument("--atp-trials", type=int, default=RECORD["atp_trials"], help="ATP common differences per target")
    rec.add_argument("--perturb", type=int, default=RECORD["perturb"], help="perturbations of the best allocations "
                     "per seed")
    rec.add_argument("--fidelity", type=int, default=RECORD["fidelity"], help="allocations per seed measured at full "
                     "and every reduced fidelity")
    rec.add_argument("--fidelity-windows", default=joined(RECORD["fidelity_windows"]), help="reduced fidelities (reward "
                     "windows below the env's)")
    rec.add_argument("--held-out", type=float, default=RECORD["held_out"], help="share of the random, heuristic and "
                     "perturbed rows that also get the held-out ppl (about 6.5 reward evaluations each)")
    rec.add_argument("--targets", help="comma-separated targets of the new rows (default: structured 0.1-0.6 by 0.05, "
                     "unstructured 0.1-0.4 by 0.1 and 0.5-0.8 by 0.05)")
    rec.add_argument("--task-weight", type=int, default=RECORD["task_weight"], help="the suite tasks' targets are "
                     "drawn this many times as often")
    rec.add_argument("--chunk", type=int, default=RECORD["chunk"], help="most evaluations between two saves")
    rec.add_argument("--verify", type=int, default=RECORD["verify"], help="suite rows re-measured before the suite's "
                     "rows are kept (0: none)")
    rec.add_argument("--sample-seed", type=int, default=0, help="seed of every draw")
    rec.add_argument("--env-kwarg", action="append", metavar="KEY=VALUE", help="override an env setting (repeatable; "
                     "the suite's rows are used only when the cells ran with the same settings)")
    rec.add_argument("--dry-run", action="store_true", help="print the plan (rows, held-out ppls, evaluations per "
                     "source; chunks done; time) and exit")
    add_cell_workers_argument(rec)
    rec.add_argument("--quiet", action="store_true", help="no progress bars, no progress lines")
    rec.set_defaults(action_run=_record)
    val = sub.add_parser("validate", help="fit each surrogate and score it on its test allocations",
                         description="Fit each (family, mode)'s surrogate on its set's train split and score it on the "
                         "test split: Spearman rho of predicted vs real reward (overall, top decile) and held-out ppl (also "
                         "cross-validated over every row with one), "
                         "per core suite task, against gradient-boosted trees when scikit-learn is installed. Writes "
                         "OUT/validation.json and OUT/validation.md.")
    val.add_argument("--families", help="comma-separated families (default: the bundled ones; bundled, or "
                     "smollm2)")
    val.add_argument("--modes", help="comma-separated modes (default: both)")
    val.add_argument("--data", help="folder of the sets (default: the bundled ffenv/surrogate/data)")
    val.add_argument("--out", default="docs/results/surrogate", help="where validation.json and validation.md go")
    val.add_argument("--fit-kwarg", action="append", metavar="KEY=VALUE", help="a FitSettings field (repeatable; "
                     "default: the settings an env fits with)")
    val.add_argument("--no-compare", action="store_true", help="skip the gradient-boosted trees")
    val.add_argument("--folds", type=int, default=5, help="folds of the held-out ppl's cross-validation by allocation "
                     "(each a refit of the surrogate; 0: none)")
    val.add_argument("--quiet", action="store_true", help="no progress lines")
    val.set_defaults(action_run=_validate)
    _add_rank(sub)
    _add_study(sub)


CORE_TASKS = "llama-s0.3, llama-s0.5, llama-u0.7, and the same for mistral and opt"


def _add_rank(sub: Any) -> None:
    rank = sub.add_parser("rank", help="the core suite's method ranking on the surrogates vs the real one (also "
                          "`ffprune suite compare`)")
    add_rank_arguments(rank, positional=False)


def add_rank_arguments(rank: argparse.ArgumentParser, positional: bool) -> None:
    """The options of ``ffprune surrogate rank`` (``--real``, ``--surrogate-out``) and ``ffprune suite compare``
    (``positional``: the two folders as arguments, and ``--suite``)."""
    rank.description = ("Read a real suite's cells and the same suite's cells on the surrogates (made by `ffprune suite run "
                        "NAME --surrogate`), score every cell as the suite's headline does (on the surrogate: predicted "
                        "held-out ppls of the method and of uniform, recorded dense ppl), and compare the methods' IQM "
                        "rankings: Kendall's tau-b overall and per task (goal >= 0.8). Reads only; writes "
                        "OUT/ranking.json and OUT/ranking.md.")
    if positional:
        rank.add_argument("real", metavar="REAL", help="the real suite's folder (docs/results/core)")
        rank.add_argument("surrogate_out", metavar="SURROGATE", help="the surrogate suite's folder "
                          "(docs/results/core-surrogate)")
        rank.add_argument("--suite", default="core", help="the suite both folders hold (default core)")
    else:
        rank.add_argument("--real", default="docs/results/core", help="the real suite's folder")
        rank.add_argument("--surrogate-out", default="docs/results/core-surrogate", help="the surrogate suite's folder")
        rank.set_defaults(suite="core")
    rank.add_argument("--out", default=f"{RESULTS}/surrogate", help="where ranking.json and ranking.md go")
    rank.add_argument("--tasks", help=f"comma-separated suite tasks (default: all of the suite's; core: {CORE_TASKS})")
    rank.add_argument("--budget", type=int, help="the suites' budget (default: the suite's, 100)")
    rank.add_argument("--seeds", type=int, help="seeds read per method (default: the suite's, 3)")
    rank.add_argument("--methods", help=f"comma-separated methods ({METHODS_HINT}; default: every one both suites ran)")
    rank.add_argument("--reps", type=int, default=2000, help="bootstrap resamples of the intervals")
    rank.set_defaults(action_run=rank_command)


def _add_study(sub: Any) -> None:
    study = sub.add_parser("study", help="RL algorithms to 10,000 evaluations on the surrogates (learning curves)",
                           description="FastForward, PPO, SAC, TD3, random search and evolution on the surrogate of "
                           "every core suite task (env seed 0), 10,000 episodes and 5 seeds each by default; resumable "
                           "(the same command continues; finished cells are kept). Writes per task the result JSONs "
                           "(OUT/<task>/cells, labelled surrogate) and each cell's learning curve (OUT/<task>/curves: "
                           "the best-so-far allocation's predicted held-out ppl at log-spaced budgets), then "
                           "OUT/study.md, study.json and curves.png: per method the IQM normalised best-so-far score "
                           "over tasks x seeds with 95 % stratified-bootstrap intervals vs surrogate evaluations, and "
                           "the wall time per cell.")
    study.add_argument("--tasks", help=f"comma-separated suite tasks (default: all 9: {CORE_TASKS})")
    study.add_argument("--methods", default="fastforward,ppo,sac,td3,random,evolution",
                       help=f"comma-separated methods ({METHODS_HINT}; uniform, the score's reference, always runs)")
    study.add_argument("--variant", action="append", metavar="LABEL:METHOD:KEY=VALUE,...",
                       help="also run a method with other settings, as a row of its own (repeatable), e.g. "
                       "'ff-nocurr:fastforward:curriculum.sparsity_schedule=none,curriculum.fidelity_schedule=none' "
                       "or 'ff-lr3e-4:fastforward:learning_rate=3e-4'; with --report-only, its label is reported")
    study.add_argument("--budget", type=int, default=10_000, help="episodes per search")
    study.add_argument("--seeds", type=int, default=5, help="search seeds 0..K-1 per (task, method)")
    study.add_argument("--out", default="docs/results/surrogate-study", help="output folder (resumes what is there)")
    study.add_argument("--surrogate-data", metavar="PATH", help="the evaluation sets (.npz or a folder of them; "
                       "default: the bundled ones)")
    study.add_argument("--env-kwarg", action="append", metavar="KEY=VALUE", help="override an env setting (repeatable; "
                       "it must match what the evaluation set was recorded with)")
    study.add_argument("--points", type=int, default=40, help="log-spaced checkpoints of the learning curves")
    study.add_argument("--reps", type=int, default=2000, help="bootstrap resamples of the intervals")
    study.add_argument("--tensorboard", action="store_true", help="also write each search's TensorBoard run "
                       "(OUT/<task>/tb/surrogate/...)")
    study.add_argument("--report-only", action="store_true", help="no search: rewrite the report from the curves in --out")
    add_cell_workers_argument(study)
    study.add_argument("--quiet", action="store_true", help="no progress bars, no progress lines")
    study.set_defaults(action_run=_study)


def run(args: argparse.Namespace) -> int:
    """Run the chosen sub-subcommand."""
    return args.action_run(args)


def _seeds(text: str) -> list[int]:
    from ffenv.errors import FFPruneError

    try:
        return [int(s) for s in parse_names(text, "--seeds")]
    except ValueError:
        raise FFPruneError(f"--seeds must be comma-separated integers such as 0,1,2, got {text!r}") from None


def settings_of(args: argparse.Namespace) -> Any:
    """The :class:`~ffprune.agents.experiments.surrogate_record.RecordSettings` the ``record`` flags ask for."""
    from ffenv.errors import FFPruneError
    from ffprune.agents.experiments.surrogate_record import RecordSettings

    spreads: list[str | float] = []
    for s in parse_names(args.spreads, "--spreads"):
        try:
            spreads.append(s if s == "uniform" else float(s))
        except ValueError:
            raise FFPruneError(f"--spreads takes 'uniform' or numbers, got {s!r}") from None
    try:
        windows = tuple(int(w) for w in parse_names(args.fidelity_windows, "--fidelity-windows"))
    except ValueError:
        raise FFPruneError(f"--fidelity-windows must be comma-separated integers, got {args.fidelity_windows!r}") from None
    targets = parse_floats(args.targets, "--targets")
    return RecordSettings(random=args.random, spreads=tuple(spreads), heuristics=tuple(parse_names(args.heuristics,
                          "--heuristics")), atp_trials=args.atp_trials, perturb=args.perturb, fidelity=args.fidelity,
                          fidelity_windows=windows, held_out=args.held_out,
                          targets=None if targets is None else tuple(targets), task_weight=args.task_weight,
                          chunk=args.chunk, verify=args.verify, suite=not args.no_suite, seed=args.sample_seed)


def _families_modes(args: argparse.Namespace) -> dict[str, list[str]]:
    """``--families`` and ``--modes`` as spec fields, those given only (the others: the library's defaults)."""
    given = {"families": args.families, "modes": args.modes}
    return {name: parse_names(value, f"--{name}") for name, value in given.items() if value is not None}


def _record(args: argparse.Namespace) -> int:
    from ffenv.errors import SearchInterrupted
    from ffprune.agents.experiments import surrogate_record as sr
    from ffprune.agents.experiments.engine import Runner

    spec = sr.RecordSpec(**_families_modes(args), seeds=_seeds(args.seeds), settings=settings_of(args),
                         env_kwargs=parse_kwargs(args.env_kwarg, "--env-kwarg") or None)
    where = {"out": args.out, "suite_out": args.suite_out, "suites": RESULTS}
    if args.dry_run:
        print(sr.plan_markdown(sr.plan_record(spec, **where)))
        return 0
    try:
        summaries = sr.run_record(spec, runner=Runner(args.cell_workers, args.ray_address), progress=not args.quiet,
                                  **where)
    except (KeyboardInterrupt, SearchInterrupted):
        return interrupted(args.out or "ffenv/surrogate/data")
    print(sr.summary_markdown(summaries))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from ffenv.errors import FFPruneError
    from ffenv.surrogate import FitSettings
    from ffprune.agents.experiments.surrogate_validate import ValidateSpec, run_validate, validation_markdown

    fit = parse_kwargs(args.fit_kwarg, "--fit-kwarg")
    try:
        settings = FitSettings(**fit)
    except TypeError:
        fields = list(FitSettings.__dataclass_fields__)
        raise FFPruneError(f"--fit-kwarg takes FitSettings fields {fields}, got {sorted(fit)}") from None
    spec = ValidateSpec(**_families_modes(args), settings=settings, compare=not args.no_compare, folds=args.folds)
    analysis = run_validate(spec, data=args.data, out=args.out)
    print(validation_markdown(analysis))
    print(f"written: {args.out}/validation.md, validation.json")
    return 0


def _optional_names(text: str | None, flag: str) -> list[str] | None:
    return None if text is None else parse_names(text, flag)


def rank_command(args: argparse.Namespace) -> int:
    """``ffprune surrogate rank`` / ``ffprune suite compare``: :func:`~ffprune.agents.experiments.surrogate_rank.run_rank`."""
    from ffprune.agents.experiments.surrogate_rank import RankSpec, ranking_markdown, run_rank

    spec = RankSpec(args.suite, _optional_names(args.tasks, "--tasks"), args.budget, args.seeds,
                    _optional_names(args.methods, "--methods"), args.reps)
    analysis = run_rank(spec, real_out=args.real, surrogate_out=args.surrogate_out, out=args.out)
    print(ranking_markdown(analysis))
    print(f"written: {args.out}/ranking.md, ranking.json")
    return 0


def _study(args: argparse.Namespace) -> int:
    import sys

    from ffenv.errors import SearchInterrupted
    from ffprune.agents.experiments.engine import Runner
    from ffprune.agents.experiments.surrogate_study import (
        StudySpec,
        parse_study_variant,
        report_study,
        run_study,
        study_markdown,
    )

    tasks, methods = _optional_names(args.tasks, "--tasks"), parse_names(args.methods, "--methods")
    variants = dict(parse_study_variant(v) for v in args.variant or [])
    spec = StudySpec(tasks, methods, args.budget, args.seeds, points=args.points, reps=args.reps, variants=variants)
    if args.report_only:
        analysis = report_study(spec, out=args.out)
    else:
        env = parse_kwargs(args.env_kwarg, "--env-kwarg")
        if args.surrogate_data is not None:
            env["surrogate_data"] = args.surrogate_data
        try:
            analysis = run_study(spec, out=args.out, runner=Runner(args.cell_workers, args.ray_address),
                                 progress=not args.quiet, tensorboard=args.tensorboard, env_kwargs=env)
        except (KeyboardInterrupt, SearchInterrupted):
            return interrupted(args.out)
    print(study_markdown(analysis))
    print(f"written: {args.out}/study.md, study.json, curves.png; per task the cells and their curves")
    failures = analysis.get("failures") or []
    if failures:
        print(f"ffprune surrogate study: {len(failures)} cell(s) failed; run the same command again to retry them",
              file=sys.stderr)
        return 1
    return 0
