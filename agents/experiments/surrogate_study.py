"""``ffprune surrogate study``: RL algorithms run to 10,000 evaluations on the surrogates of the suite's tasks.

What surrogate mode unlocks, shown: FastForward, PPO, SAC, TD3, random search and evolution (:data:`STUDY_METHODS`)
on the surrogate of every ``core`` suite task (:mod:`ffenv.surrogate`; ``gym.make(id, surrogate=True)``), each with a
budget of :data:`DEFAULT_BUDGET` episodes and :data:`DEFAULT_SEEDS` seeds, and their learning curves.

**Cells.** Every (task, method, seed) is one search of :func:`~ffprune.agents.experiments.search.run_search` with
``env_kwargs={"surrogate": True, ...}``, laid out as a bench folder per task (``<out>/<task>/config.json``, the result
JSON in ``<out>/<task>/cells/<method>/seed<k>.json.gz``, labelled surrogate; :func:`~ffprune.agents.experiments.bench.cell_specs`
checks the settings and refuses a folder of other settings, real cells or another evaluation set). The uniform
allocation (the normalised score's reference, one evaluation) always runs too. A finished cell is never rerun, an
interrupted one resumes from its checkpoint, and cells run on the engine's runner, here or as Ray tasks (a
:class:`~ffprune.agents.experiments.engine.Runner` of workers; :func:`~ffprune.agents.experiments.engine.run_jobs`). A
cell that raises is recorded and the others finish. The study's settings (tasks, methods, budget, seeds, env settings,
checkpoints, resamples, variants) are a :class:`StudySpec`.

**Curves.** When a cell finishes its learning curve is written beside it, ``<out>/<task>/curves/<method>/seed<k>.json``
(:func:`cell_curve`; a few kB, while a 10,000-episode result with its history is ≈ 6 MB): at each checkpoint of
:func:`checkpoint_grid` (log-spaced surrogate evaluations, the search's cost axis, re-scorings included) the best
allocation found so far at the task's target on all reward windows (the history's best-so-far), its reward, and its
held-out ppl **as the surrogate predicts it** (the held-out ppl is measured once per search, on its final best; at an
intermediate budget there is no measurement, so the best-so-far allocation is scored by the surrogate's held-out model,
as the final one is in a surrogate cell). The report needs only these files.

**Variants.** ``variants`` (``--variant LABEL:METHOD:key=value,...``) add a method run with other settings as a row of
its own, a :class:`~ffprune.agents.experiments.suite.SuiteVariant` as the suite runs them: its agent's keywords and
``curriculum.<setting>`` (e.g. ``ff-nocurr:fastforward:curriculum.sparsity_schedule=none,curriculum.fidelity_schedule=none``:
every episode at the final target on all reward windows), its cells and curves under ``<label>``, each recording the
variant; a folder of other settings under a label is refused before any work. This is how the study's questions are
asked at 10⁴ episodes (why a method plateaus: its curriculum, its learning rate) without touching the defaults.

**Aggregate.** At each checkpoint a run's normalised score is the suite's
(:func:`~ffprune.agents.experiments.suite.normalised`: ``(ppl_uniform − ppl) / (ppl_uniform − ppl_dense)``, with the
predicted held-out ppls of the best-so-far and of the uniform allocation and the recorded dense ppl); per method the
IQM over tasks × seeds with a 95 % stratified-bootstrap interval (:mod:`~ffprune.agents.experiments.rlstats`), at a
checkpoint where every run has a best allocation (methods under the curriculum have none before its warm-up ends, at
40 % of the budget: their curve starts there). ``study.json`` holds every number, ``study.md`` the table at
:data:`TABLE_BUDGETS` and the wall time per cell, ``curves.png`` the learning curves (log x axis).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ffenv.errors import FFPruneError, positive_int
from ffenv.io import atomic_save_figure, atomic_write_json, read_json
from ffprune.agents.experiments.bench import BenchOverrides, cell_specs, check_variant_settings, search_cell
from ffprune.agents.experiments.engine import IN_PROCESS, CellFailure, CellSpec, Job, Report, Runner, run_jobs
from ffprune.agents.experiments.reports import AGENT, evaluation_axis
from ffprune.agents.experiments.rlstats import iqm, stratified_bootstrap_ci
from ffprune.agents.experiments.search import score_allocation
from ffprune.agents.experiments.suite import (
    REFERENCE,
    SuiteVariant,
    check_variants,
    get_suite,
    method_fits,
    normalised,
    select_tasks,
    variant_specs,
)
from ffprune.agents.experiments.tune import check_agent_kwargs, parse_variant, split_settings
from ffprune.agents.results import result_env, seed_file, seed_files, surrogate_of
from ffprune.agents.tools.specs import spec_with

log = logging.getLogger(__name__)

STUDY_METHODS = ("fastforward", "ppo", "sac", "td3", "random", "evolution")
"""The methods the study runs by default."""
DEFAULT_BUDGET = 10_000
"""Episodes per search."""
DEFAULT_SEEDS = 5
"""Search seeds ``0..4`` per (task, method); every cell runs on env seed 0, the core suite's pruning instance."""
TABLE_BUDGETS = (100, 1_000, 10_000)
"""The budgets (surrogate evaluations) of the study's table (those up to the budget, and the budget itself)."""
DEFAULT_OUT = "surrogate-study"


def checkpoint_grid(budget: int, points: int = 40) -> list[int]:
    """``points`` log-spaced checkpoints from 1 to ``budget`` (rounded, distinct), plus :data:`TABLE_BUDGETS` up to
    ``budget`` and ``budget`` itself."""
    budget, points = positive_int("budget", budget), positive_int("points", points)
    grid = np.unique(np.round(np.logspace(0, np.log10(budget), points)).astype(int)).tolist()
    return sorted(set(grid) | {b for b in TABLE_BUDGETS if b <= budget} | {budget})


def curve_path(out: str | Path, method: str, seed: int) -> Path:
    """Where one (method, seed) cell's curve lives in a task folder."""
    return seed_file(Path(out) / "curves" / method, seed)


def parse_study_variant(text: str) -> tuple[str, SuiteVariant]:
    """``"LABEL:METHOD:key=value,key=value"`` → ``(LABEL, SuiteVariant)`` (module docstring, Variants); the settings are
    checked against the method's (:func:`~ffprune.agents.experiments.tune.check_agent_kwargs`). A missing part or a
    setting the method does not have is a one-line :class:`FFPruneError`."""
    label, sep, rest = text.partition(":")
    if not sep or not label.strip() or ":" not in rest:
        raise FFPruneError(f"--variant expects LABEL:METHOD:key=value,key=value (e.g. "
                           f"ff-lr3e-4:fastforward:learning_rate=3e-4), got {text!r}")
    label = label.strip()
    try:
        method, kwargs = parse_variant(rest)
    except FFPruneError as err:
        raise FFPruneError(f"--variant {label}: {err}") from None
    check_agent_kwargs(method, kwargs, label)
    agent, curriculum = split_settings(kwargs)
    return label, SuiteVariant(method, agent, curriculum, name=label, source="ffprune surrogate study --variant")


def cell_curve(cell: dict[str, Any], checkpoints: Sequence[int], task: str | None = None,
               budget: int | None = None) -> dict[str, Any]:
    """The learning curve of a finished surrogate cell (module docstring): per checkpoint (surrogate evaluations), the
    best reward found so far at the cell's target on all reward windows, the episode that found it and the surrogate's
    predicted held-out ppl of that allocation (``None`` before the first). ``budget``: the study's (default: the
    cell's; a heuristic's cell has budget 1). A real cell is an :class:`FFPruneError`."""
    label = surrogate_of(cell)
    if label is None:
        raise FFPruneError(f"cell {cell.get('env_id')}/{cell.get('agent')}/seed{cell.get('seed')} is a real result: the "
                           "study's curves score allocations with the surrogate")
    axis = evaluation_axis(cell)
    target = cell["env_kwargs"]["target_sparsity"]
    changes: list[tuple[int, dict[str, Any]]] = []  # (cost when found, history point) each time the best improved
    last = float("-inf")
    for point in cell["history"]:
        best = point["best_reward"]
        if np.isfinite(best) and best > last:
            changes.append((int(point[axis]), point))
            last = best
    picks = []
    for checkpoint in checkpoints:
        found = [i for i, (cost, _p) in enumerate(changes) if cost <= checkpoint]
        picks.append(found[-1] if found else None)
    eval_ppl: dict[int, float] = {}
    env = result_env(cell) if any(p is not None for p in picks) else None
    try:
        for i in sorted({p for p in picks if p is not None}):
            action = np.asarray(changes[i][1]["action"], np.float32)
            eval_ppl[i] = float(score_allocation(env, action, target)["eval_ppl"])
    finally:
        if env is not None:
            env.close()
    best = cell["best"]
    variant = cell.get("variant")
    return {"task": task, "env_id": cell["env_id"], "method": cell["agent"] if variant is None else variant["label"],
            "seed": cell["seed"], **({} if variant is None else {"variant": variant}),
            "budget": cell["budget"] if budget is None else budget, "surrogate": label, "target": target, "axis": axis,
            "checkpoints": list(checkpoints),
            "best_reward": [None if p is None else float(changes[p][1]["best_reward"]) for p in picks],
            "best_episode": [None if p is None else int(changes[p][1]["episode"]) for p in picks],
            "eval_ppl": [None if p is None else eval_ppl[p] for p in picks],
            "dense_eval_ppl": float(best["dense_eval_ppl"]),
            "final": {"reward": float(best["reward"]), "eval_ppl": float(best["eval_ppl"])},
            "cost": dict(cell["cost"])}


@dataclass(frozen=True)
class StudyCell:
    """What a study cell adds to its search's :class:`~ffprune.agents.experiments.engine.CellSpec`."""

    checkpoints: tuple[int, ...]
    """The evaluation counts the curve is read at (:func:`checkpoint_grid`)."""
    tensorboard: bool = False
    """Write the search's TensorBoard run (under ``<task>/tb``)."""


def run_study_cell(job: Job[StudyCell]) -> dict[str, Any]:
    """One study cell: its curve if already written for these checkpoints, else the search (resumed if interrupted; a
    finished result is read back) and its :func:`cell_curve`, written atomically. A variant's files are under its label.
    Returns the curve (small: what a Ray task sends back)."""
    spec, checkpoints = job.spec, list(job.extra.checkpoints)
    path = curve_path(spec.folder, spec.label, spec.seed)
    if path.exists():
        done = read_json(path, "study curve")
        if done.get("budget") == spec.budget and done.get("checkpoints") == checkpoints:
            return done
    log.info("[study] %s", spec.describe())
    cell = search_cell(spec, spec.logdir if job.extra.tensorboard else None)
    curve = cell_curve(cell, checkpoints, spec.task, spec.budget)
    atomic_write_json(path, curve)
    return curve


def _row(method: str, variant: dict[str, Any] | None) -> str:
    """The study row (and folder name) of a cell: its method's, or its variant's label."""
    return method if variant is None else variant["label"]


def _check_variant_curves(folder: Path, label: str, record: dict[str, Any]) -> None:
    """Refuse (one line, before any work) a label whose curves in a task folder ran other settings (its cells are
    checked by :func:`~ffprune.agents.experiments.suite.variant_specs`)."""
    for _seed, path in seed_files(folder / "curves" / label):
        check_variant_settings(path.parent, read_json(path, "study curve").get("variant"), record, "curves")


@dataclass(frozen=True)
class StudySpec:
    """What the study is (where it writes, where its cells run, whether it shows progress and writes TensorBoard runs
    are :func:`run_study`'s own arguments). The mappings are never mutated."""

    tasks: Sequence[str] | None = None
    """Names of ``core`` suite tasks (default: all 9)."""
    methods: Sequence[str] | None = None
    """Distinct registered methods (default :data:`STUDY_METHODS`; uniform, the score's reference, always runs)."""
    budget: int = DEFAULT_BUDGET
    """Episodes per search."""
    seeds: int = DEFAULT_SEEDS
    """Search seeds ``0..seeds-1`` per (task, method)."""
    env_kwargs: Mapping[str, Any] | None = None
    """Env settings on top of ``surrogate=True`` (``surrogate_data`` for another evaluation set)."""
    points: int = 40
    """Log-spaced checkpoints of the curves (:func:`checkpoint_grid`)."""
    reps: int = 2000
    """Bootstrap resamples of the intervals."""
    variants: Mapping[str, SuiteVariant] | None = None
    """Label → :class:`~ffprune.agents.experiments.suite.SuiteVariant`: rows of their own after the methods (module
    docstring, Variants); a report needs only their labels."""


def study_settings(spec: StudySpec) -> StudySpec:
    """``spec`` checked, with its defaults filled in: the task names, the methods, the budget and seeds, the surrogate
    env settings (``surrogate=True`` added); one-line :class:`FFPruneError` for bad input, before any work."""
    suite = select_tasks(get_suite("core"), spec.tasks)
    methods = list(STUDY_METHODS if spec.methods is None else spec.methods)
    if not methods or len(set(methods)) != len(methods):
        raise FFPruneError(f"methods must be distinct registered methods (`ffprune methods` lists them), got {methods}")
    kwargs = dict(spec.env_kwargs or {})
    if kwargs.get("surrogate", True) is not True:
        raise FFPruneError("the study runs on the surrogates: surrogate must stay true among the env settings")
    kwargs["surrogate"] = True
    return replace(spec, tasks=[t.name for t in suite.tasks], methods=methods, budget=positive_int("budget", spec.budget),
                   seeds=positive_int("seeds", spec.seeds), env_kwargs=kwargs)


def _jobs(spec: StudySpec, out: Path, progress: bool, tensorboard: bool) -> list[Job[StudyCell]]:
    """Every cell of the checked ``spec`` (:func:`study_settings`, its variants checked; task folders' ``config.json``
    written); a variant runs on the tasks its method fits. No Calib: a surrogate predicts none."""
    suite = select_tasks(get_suite("core"), spec.tasks)
    budget, seeds, env_kwargs = spec.budget, spec.seeds, dict(spec.env_kwargs or {})
    extra = StudyCell(tuple(checkpoint_grid(budget, spec.points)), tensorboard)
    overrides = BenchOverrides(env_kwargs=env_kwargs, calibrate=False, progress=progress)
    specs: list[CellSpec] = []
    for task in suite.tasks:
        folder = out / task.name
        specs += cell_specs(task.env_id, budget, seeds, list(dict.fromkeys([REFERENCE, *(spec.methods or ())])), folder,
                            overrides)
        for label, variant in (spec.variants or {}).items():
            if method_fits(task.env_id, variant.method, env_kwargs):
                specs += variant_specs(task, folder, label, variant, budget, seeds, overrides)
                _check_variant_curves(folder, label, variant.record(label))
    return [Job(cell, extra) for cell in specs]


def run_study(spec: StudySpec | None = None, *, out: str | Path = DEFAULT_OUT, runner: Runner = IN_PROCESS,
              progress: bool = True, tensorboard: bool = False, **settings: Any) -> dict[str, Any]:
    """Run (or resume) every cell of the study ``spec`` (``settings``: :class:`StudySpec` fields by keyword, replacing
    its own) in ``out``, on ``runner`` (here or as Ray tasks), and write its report (module docstring); the analysis.
    ``tensorboard``: each search's TensorBoard run in ``<out>/<task>/tb``.
    """
    spec = study_settings(spec_with(StudySpec, spec, settings, "run_study", "study"))
    variants = check_variants(spec.variants)
    taken = [label for label in variants if label in (spec.methods or ())]
    if taken:
        raise FFPruneError(f"variant labels {taken} are also in methods: a row each, under one name")
    positive_int("reps", spec.reps)
    spec = replace(spec, variants=variants)
    out = Path(out)
    REPORT.check(out)
    jobs = _jobs(spec, out, progress, tensorboard)
    outcomes = run_jobs(run_study_cell, jobs, runner)
    curves = [c for c in outcomes if not isinstance(c, CellFailure)]
    failures = [{"task": job.spec.task, **({} if job.spec.variant is None else {"variant": job.spec.label}),
                 **c.as_dict(trace=False), "method": job.spec.method}
                for job, c in zip(jobs, outcomes) if isinstance(c, CellFailure)]
    return _report(spec, [*(spec.methods or ()), *variants], out, curves, failures)


def report_study(spec: StudySpec | None = None, *, out: str | Path = DEFAULT_OUT, **settings: Any) -> dict[str, Any]:
    """The study's report again from the curve files of ``spec`` (``settings``: :class:`StudySpec` fields by keyword; its
    variants' labels are rows after the methods) in ``out`` (no search, no evaluation; cells not there are left out,
    as are curves of another budget or other checkpoints than ``points`` gives)."""
    spec = spec_with(StudySpec, spec, settings, "report_study", "study")
    rows = [*(STUDY_METHODS if spec.methods is None else spec.methods), *(spec.variants or {})]
    spec = study_settings(replace(spec, methods=rows, env_kwargs=None))
    positive_int("reps", spec.reps)
    budget, points = spec.budget, spec.points
    grid = checkpoint_grid(budget, points)
    out = Path(out)
    curves = []
    for task in spec.tasks or ():
        for method in dict.fromkeys([REFERENCE, *(spec.methods or ())]):
            for seed in range(spec.seeds):
                path = curve_path(out / task, method, seed)
                if path.exists():
                    curve = read_json(path, "study curve")
                    if curve.get("budget") == budget and curve.get("checkpoints") == grid:
                        curves.append(curve)
    if not curves:
        raise FFPruneError(f"{str(out)!r} holds no study curves at budget {budget} with {points} points: run `ffprune "
                           "surrogate study` first (or pass the --budget and --points it ran with)")
    return _report(spec, spec.methods or (), out, curves, [])


# ---------------------------------------------------------------------------- the analysis
def analyse_study(curves: Sequence[dict[str, Any]], tasks: Sequence[str], methods: Sequence[str], budget: int,
                  seeds: int, reps: int = 2000) -> dict[str, Any]:
    """Per method and checkpoint: IQM of the normalised best-so-far score over tasks × seeds with its 95 %
    stratified-bootstrap interval (``None`` where a run has no best allocation yet or a task has no uniform
    reference), runs counted; per method the wall seconds of its cells; the tables' budgets."""
    by_key = {(c["task"], c["method"], c["seed"]): c for c in curves}
    checkpoints = next(iter(curves))["checkpoints"] if curves else checkpoint_grid(budget)
    reference = {}
    for task in tasks:
        ref = next((by_key[(task, REFERENCE, s)] for s in range(seeds) if (task, REFERENCE, s) in by_key), None)
        if ref is not None:
            reference[task] = ref["final"]["eval_ppl"]
    results: dict[str, Any] = {}
    wall: dict[str, Any] = {}
    for method in methods:
        runs = {t: [by_key[(t, method, s)] for s in range(seeds) if (t, method, s) in by_key] for t in tasks}
        runs = {t: r for t, r in runs.items() if r and t in reference}
        cells = [c for r in runs.values() for c in r]
        if not cells:
            continue
        iqms, lows, highs, counts = [], [], [], []
        n = min(len(r) for r in runs.values())
        for k in range(len(checkpoints)):
            scores = [[normalised(c["eval_ppl"][k], reference[t], c["dense_eval_ppl"]) for c in runs[t][:n]]
                      for t in sorted(runs)]
            counts.append(sum(s is not None for row in scores for s in row))
            if any(s is None for row in scores for s in row):
                point = lo = hi = None
            else:
                point, lo, hi = stratified_bootstrap_ci(np.array(scores, np.float64).T, iqm, reps=reps)
            iqms.append(point)
            lows.append(lo)
            highs.append(hi)
        results[method] = {"iqm": iqms, "low": lows, "high": highs, "runs_with_best": counts, "runs": n * len(runs),
                           "tasks": sorted(runs)}
        seconds = np.array([c["cost"]["seconds"] for c in cells], np.float64)
        setup = np.array([c["cost"].get("setup_seconds", 0.0) for c in cells], np.float64)
        wall[method] = {"cells": len(cells), "median": float(np.median(seconds)), "min": float(seconds.min()),
                        "max": float(seconds.max()), "total": float(seconds.sum()), "setup_median": float(np.median(setup)),
                        "evaluations_median": float(np.median([c["cost"][c["axis"]] for c in cells]))}
    labels = {c["task"]: c["surrogate"].get("fingerprint") for c in curves}
    table = [b for b in TABLE_BUDGETS if b <= budget] + ([budget] if budget not in TABLE_BUDGETS else [])
    variants = {c["method"]: c["variant"] for c in curves if c.get("variant") and c["method"] in results}
    return {"budget": budget, "seeds": seeds, "tasks": list(tasks), "methods": list(methods), "checkpoints": checkpoints,
            "axis": "surrogate_evaluations", "surrogate": labels, "reference_eval_ppl": reference, "curves": results,
            "wall_seconds": wall, "table_budgets": table, "bootstrap_reps": reps,
            **({"variants": {k: variants[k] for k in sorted(variants)}} if variants else {})}


def _report(spec: StudySpec, rows: Sequence[str], out: Path, curves: list[dict[str, Any]],
            failures: list[dict[str, Any]]) -> dict[str, Any]:
    analysis = analyse_study(curves, spec.tasks or (), rows, spec.budget, spec.seeds, spec.reps)
    analysis["failures"] = failures
    return REPORT.write(out, analysis)


def _at(analysis: dict[str, Any], method: str, budget: int) -> str:
    curve = analysis["curves"][method]
    k = analysis["checkpoints"].index(budget)
    if curve["iqm"][k] is None:
        return f"– ({curve['runs_with_best'][k]}/{curve['runs']} runs with a best)"
    return f"{curve['iqm'][k]:.3f} [{curve['low'][k]:.3f}, {curve['high'][k]:.3f}]"


def study_markdown(analysis: dict[str, Any]) -> str:
    """``study.md``: the IQM normalised best-so-far score at the table's budgets and the wall time per cell."""
    budgets, methods = analysis["table_budgets"], [m for m in analysis["methods"] if m in analysis["curves"]]
    labels = analysis["surrogate"]
    order = sorted(methods, key=lambda m: -next((v for v in reversed(analysis["curves"][m]["iqm"]) if v is not None),
                                                float("-inf")))
    lines = [f"### Surrogate study: {len(methods)} methods × {len(analysis['tasks'])} tasks × {analysis['seeds']} seed(s), "
             f"{analysis['budget']:,} episodes each", "",
             "**Surrogate results**: every reward and held-out ppl below is predicted by the tasks' surrogates ("
             + ", ".join(f"`{t}`: `{str(f)[:19]}`" for t, f in sorted(labels.items())) + "), not measured; cost in "
             "surrogate evaluations. Never compare with or mix into the real suite.", "",
             "Normalised best-so-far score (1 = dense, 0 = uniform: the suite's score, of the best allocation found "
             "within that many surrogate evaluations, with its predicted held-out ppl), IQM over tasks × seeds with 95 % "
             f"stratified-bootstrap intervals ({analysis['bootstrap_reps']} resamples). –: some runs have no best "
             "allocation at the task's target yet (under the curriculum the first comes after its warm-up, 40 % of "
             "the budget).", "",
             "| method | " + " | ".join(f"{b:,} evaluations" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for m in order:
        lines.append(f"| {m} | " + " | ".join(_at(analysis, m, b) for b in budgets) + " |")
    variants = analysis.get("variants") or {}
    if variants:
        lines += ["", "Variants (a method run with other settings, a row of its own):", ""]
        lines += [f"* `{label}`: {v['method']} with " + ", ".join(
                  f"`{k}={json.dumps(x)}`" for k, x in [*v["agent_kwargs"].items(),
                                                         *((f"curriculum.{c}", y) for c, y in v["curriculum_kwargs"].items())])
                  for label, v in variants.items()]
    lines += ["", "Wall time per cell (search only, one CPU thread per cell; seconds):", "",
              "| method | cells | median | min | max | total | surrogate evaluations (median) |",
              "|---|---|---|---|---|---|---|"]
    for m in order:
        w = analysis["wall_seconds"][m]
        lines.append(f"| {m} | {w['cells']} | {w['median']:.1f} | {w['min']:.1f} | {w['max']:.1f} | {w['total']:.0f} | "
                     f"{w['evaluations_median']:,.0f} |")
    failures = analysis.get("failures") or []
    if failures:
        lines += ["", f"Failures: {len(failures)} cell(s) raised and are left out; the same command retries them:", "",
                  "| task | method | seed | error |", "|---|---|---|---|"]
        lines += [f"| {f['task']} | {f['method']} | {f['seed']} | {f['error']}: {' '.join(str(f['message']).split())} |"
                  for f in failures]
    return "\n".join(lines) + "\n"


def plot_curves(path: Path, analysis: dict[str, Any]) -> None:
    """The learning curves: per method the IQM normalised best-so-far score vs surrogate evaluations (log x axis) with
    its 95 % interval."""
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab10"]
    x = np.array(analysis["checkpoints"], np.float64)
    for i, method in enumerate(m for m in analysis["methods"] if m in analysis["curves"]):
        curve = analysis["curves"][method]
        ok = np.array([v is not None for v in curve["iqm"]])
        if not ok.any():
            continue
        y = np.array([np.nan if v is None else v for v in curve["iqm"]], np.float64)
        lo = np.array([np.nan if v is None else v for v in curve["low"]], np.float64)
        hi = np.array([np.nan if v is None else v for v in curve["high"]], np.float64)
        color = cmap(i % 10)
        ax.plot(x[ok], y[ok], marker="o", ms=2.5, color=color, lw=2 if method == AGENT else 1.3, label=method)
        ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.15)
    ax.set_xscale("log")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("surrogate evaluations (search cost)")
    ax.set_ylabel("IQM normalised best-so-far score (95 % CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"on the SURROGATE (predicted): {len(analysis['tasks'])} tasks × {analysis['seeds']} seeds, "
                 f"budget {analysis['budget']:,}")
    fig.tight_layout()
    atomic_save_figure(fig, path)


REPORT = Report("study", study_markdown, {"curves.png": plot_curves})
"""The study's report: ``study.json``, ``study.md`` and ``curves.png``."""
