"""``ffprune claim``: the paper's central claim measured — single-step FastForward vs multi-step (AMC-style) search.

FastForward Pruning claims that its single-step formulation reaches the quality of conventional multi-step RL
search (AMC: one layer per step, DDPG) at an order of magnitude less search cost. This experiment takes the
structured tasks of the ``core`` suite (by default the three 50 % ones), runs multi-step agents on their
sequential twins (``FFPrune-<Family>-Sequential-Structured50-v0``) at each budget (default 100 and 1000
evaluations) and seeds ``0..K-1`` (these settings are a :class:`ClaimSpec`), and compares them with the suite's
FastForward cells at budget 100 (same tasks, same seeds, same held-out protocol; read from
``<suite_out>/<task>/cells``, never re-run):

* held-out ppl and normalised score (share of the uniform → dense gap closed; the suite's uniform cell is the
  reference) of each method at each budget;
* **evaluations to reach FastForward's best reward at 100** (same seed; on the reward split): the first evaluation
  at which the multi-step search's best reward is at least FastForward's, or "not reached" within its budget;
* the single-step SB3 agents of the suite against the same agents run on the sequential twin at equal budget
  (what credit assignment over units costs or buys), when those cells were run.

Every (task, method, budget, seed) cell is a bench cell in ``<out>/<task>-b<budget>/cells`` (resumable; Ray tasks
with a :class:`~ffprune.agents.experiments.engine.Runner` of workers); the analysis is ``claim.md`` / ``claim.json``
and ``claim.png`` (best reward vs evaluations, one panel per task, FastForward single-step vs each multi-step agent at
the largest budget it ran, median over seeds).
Every cell it reads must be a real result: a surrogate one (:mod:`ffenv.surrogate`) is a one-line error.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ffenv.errors import FFPruneError, positive_int
from ffenv.io import atomic_save_figure
from ffenv.registration import formulation_of, twin_env_id
from ffprune.agents.defaults import CLAIM_BUDGETS, CLAIM_METHODS, CLAIM_SEEDS, CORE_HALF_TASKS, SUITE_BUDGET
from ffprune.agents.experiments.bench import BenchOverrides, cell_path, cell_specs, run_cell
from ffprune.agents.experiments.engine import IN_PROCESS, CellSpec, Report, Runner, run_jobs, save_failures
from ffprune.agents.experiments.reports import cost_to_reach
from ffprune.agents.experiments.suite import REFERENCE, SUITES, normalised
from ffprune.agents.results import read_result_if_any
from ffprune.agents.tools.specs import spec_with

log = logging.getLogger(__name__)

SINGLE_STEP_AGENT = "fastforward"
REFERENCE_BUDGET = SUITE_BUDGET
"""The budget of FastForward's suite cells, the single-step reference."""
REAL = {"real": True, "what": "ffprune claim"}
"""How the claim reads cells: real results only (a surrogate cell is a one-line error)."""


@dataclass(frozen=True)
class ClaimSpec:
    """What the claim's comparison is (where it writes, where the suite's cells are, where its cells run and whether it
    shows progress are :func:`run_claim`'s own arguments)."""

    tasks: Sequence[str] = CORE_HALF_TASKS
    """Structured suite tasks, any suite's (``llama-s0.5`` of ``core``; ``smollm2-s0.2`` of ``real``, whose suite folder
    is then the ``suite_out``); the multi-step agents run on each one's sequential twin."""
    budgets: Sequence[int] = CLAIM_BUDGETS
    """Budgets (evaluations) of the multi-step searches."""
    seeds: int = CLAIM_SEEDS
    """Seeds ``0..seeds-1`` (FastForward's suite cells use 0-2)."""
    methods: Sequence[str] = CLAIM_METHODS
    """Agents for the sequential envs (``amc-ddpg``, ``ppo``, ``sac``, ...)."""


def claim_specs(spec: ClaimSpec, out: str | Path, progress: bool = True) -> list[CellSpec]:
    """The multi-step cells of ``spec`` in ``out``: every method on every task's sequential twin at every budget and
    seed, in ``<out>/<task>-b<budget>``."""
    by_name = {t.name: t for suite in SUITES.values() for t in suite.tasks}
    unknown = [t for t in spec.tasks if t not in by_name]
    if unknown:
        raise FFPruneError(f"tasks {unknown} are not suite tasks; known: {list(by_name)}")
    specs: list[CellSpec] = []
    for name in spec.tasks:
        twin = twin_env_id(by_name[name].env_id)
        if formulation_of(twin) != "sequential":
            raise FFPruneError(f"task {name!r} has no sequential twin ({twin})")
        for budget in spec.budgets:
            specs += cell_specs(twin, budget, spec.seeds, list(spec.methods), Path(out) / f"{name}-b{budget}",
                                BenchOverrides(calibrate=False, progress=progress))
    return specs


def run_claim(spec: ClaimSpec | None = None, *, out: str | Path, suite_out: str | Path, runner: Runner = IN_PROCESS,
              progress: bool = True, **settings: Any) -> dict[str, Any]:
    """Run (or resume) the multi-step cells of ``spec`` (``settings``: :class:`ClaimSpec` fields by keyword, replacing
    its own) in ``out`` on ``runner`` (here or as Ray tasks), then write the comparison with the suite's cells in
    ``suite_out`` (module docstring); returns the analysis."""
    spec = spec_with(ClaimSpec, spec, settings, "run_claim", "claim")
    positive_int("seeds", spec.seeds)
    for b in spec.budgets:
        positive_int("budgets", b)
    specs = claim_specs(spec, out, progress)
    recorded = save_failures(specs, run_jobs(run_cell, specs, runner))  # <folder>/failures.json
    failures = [{k: v for k, v in f.items() if k != "traceback"} for f in recorded]
    return report_claim(spec, out=out, suite_out=suite_out, failures=failures)


def report_claim(spec: ClaimSpec | None = None, *, out: str | Path, suite_out: str | Path,
                 failures: Sequence[dict[str, Any]] = (), **settings: Any) -> dict[str, Any]:
    """The analysis of the cells of ``spec`` (``settings``: :class:`ClaimSpec` fields by keyword) already in ``out``
    and ``suite_out`` (no search, no evaluation): ``claim.md``, ``claim.json``, ``claim.png``; ``failures``: the
    cells :func:`run_claim` saw fail."""
    spec = spec_with(ClaimSpec, spec, settings, "report_claim", "claim")
    tasks, budgets, seeds, methods = spec.tasks, spec.budgets, spec.seeds, spec.methods
    out, suite_out = Path(out), Path(suite_out)
    rows, curves = [], {}
    for task in tasks:
        reference = read_result_if_any(cell_path(suite_out / task, REFERENCE, 0), **REAL)
        if reference is None:
            raise FFPruneError(f"no {REFERENCE} cell in {suite_out / task}: run its suite first (--suite-out: the suite's "
                               "folder, docs/results/real for a real task)")
        ff = {s: c for s in range(seeds) if (c := read_result_if_any(cell_path(suite_out / task, SINGLE_STEP_AGENT, s), **REAL))}
        ref = _Scale(reference["best"]["eval_ppl"], reference["best"]["dense_eval_ppl"],
                     {seed: cell["best"]["reward"] for seed, cell in ff.items()})
        curves[task] = {SINGLE_STEP_AGENT: [c["history"] for c in ff.values()]}
        for seed, cell in ff.items():
            rows.append(_row(ref, _key(task, SINGLE_STEP_AGENT, "single-step", REFERENCE_BUDGET, seed), cell))
        for method in methods:
            for budget in sorted(budgets):
                histories = []
                for seed in range(seeds):
                    cell = read_result_if_any(cell_path(out / f"{task}-b{budget}", method, seed), **REAL)
                    if cell is None:
                        continue
                    rows.append(_row(ref, _key(task, method, "sequential", budget, seed), cell))
                    histories.append(cell["history"])
                if histories:  # the curve of the method's largest budget run
                    curves[task][f"{method} (sequential)"] = histories
            for seed in range(seeds):  # the same agent single-step, from the suite, at the reference budget
                cell = read_result_if_any(cell_path(suite_out / task, method, seed), **REAL)
                if cell is not None:
                    rows.append(_row(ref, _key(task, method, "single-step", REFERENCE_BUDGET, seed), cell))
    analysis = {"tasks": list(tasks), "budgets": list(budgets), "seeds": seeds, "methods": list(methods),
                "reference_budget": REFERENCE_BUDGET, "rows": rows, "summary": _summary(rows), "failures": list(failures)}
    return Report("claim", claim_markdown, {"claim.png": lambda path, _: _plot(path, curves, budgets)}).write(out, analysis)


@dataclass(frozen=True)
class _Scale:
    """What a task's rows are measured against: uniform's and the dense model's held-out ppl (the score's 0 and 1)
    and FastForward's best reward per seed (the reward another method has to reach)."""

    uniform: float
    dense: float
    ff_best: dict[int, float]


def _key(task: str, method: str, formulation: str, budget: int, seed: int) -> dict[str, Any]:
    """Which cell a row is: its first five fields."""
    return {"task": task, "method": method, "formulation": formulation, "budget": budget, "seed": seed}


def _row(ref: _Scale, key: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    method, ff_best = key["method"], ref.ff_best.get(key["seed"])
    reach = cost_to_reach(cell["history"], ff_best) if ff_best is not None and method != SINGLE_STEP_AGENT else None
    return {**key, "best_reward": cell["best"]["reward"], "eval_ppl": cell["best"]["eval_ppl"],
            "score": normalised(cell["best"]["eval_ppl"], ref.uniform, ref.dense),
            "evaluations": cell["cost"]["evaluations"],
            "env_steps": cell["cost"].get("env_steps", cell["cost"]["episodes"]),
            "seconds": cell["cost"]["seconds"], "evaluations_to_reach_ff": reach,
            "evaluations_to_best": cell["cost"]["evaluations_to_best"], "late_reward": late_reward(cell["history"]),
            "reached_ff": None if method == SINGLE_STEP_AGENT else reach is not None}


def late_reward(history: list[dict[str, Any]], share: float = 0.1) -> float:
    """Mean reward of the last ``share`` of a search's episodes: what its policy does once it has learned (a search
    whose late reward sits far below its best found that best by chance and stopped exploring)."""
    rewards = [float(p["reward"]) for p in history]
    tail = rewards[-max(1, int(round(share * len(rewards)))):]
    return float(np.mean(tail))


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, method, formulation, budget): mean ± std of held-out ppl and score over seeds, how many seeds reached
    FastForward's best, and the median evaluations they needed."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], r["formulation"], r["budget"]), []).append(r)
    out = []
    for (task, method, formulation, budget), rs in groups.items():
        ppl = np.array([r["eval_ppl"] for r in rs], float)
        score = np.array([r["score"] for r in rs if r["score"] is not None], float)
        reached = [r["evaluations_to_reach_ff"] for r in rs if r["evaluations_to_reach_ff"] is not None]
        out.append({"task": task, "method": method, "formulation": formulation, "budget": budget, "seeds": len(rs),
                    "eval_ppl_mean": float(ppl.mean()), "eval_ppl_std": float(ppl.std(ddof=1)) if len(ppl) > 1 else 0.0,
                    "score_mean": float(score.mean()) if len(score) else None,
                    "reached_ff": None if method == SINGLE_STEP_AGENT else len(reached),
                    "evaluations_to_reach_ff_median": float(np.median(reached)) if reached else None,
                    "evaluations_to_best_median": float(np.median([r["evaluations_to_best"] for r in rs])),
                    "best_reward_mean": float(np.mean([r["best_reward"] for r in rs])),
                    "late_reward_mean": float(np.mean([r["late_reward"] for r in rs])),
                    "seconds_mean": float(np.mean([r["seconds"] for r in rs]))})
    return out


def claim_markdown(analysis: dict[str, Any]) -> str:
    """The readable table of :func:`report_claim`."""
    lines = [f"### Single-step FastForward (budget {analysis['reference_budget']}) vs multi-step search", "",
             "Held-out ppl mean ± std over seeds; score = share of the uniform → dense held-out gap closed (the suite's "
             "normalised score); reached = seeds whose search reached FastForward's best reward at budget "
             f"{analysis['reference_budget']} (same seed, reward split), with the median evaluations it took. Wall seconds "
             "depend on how many cells shared the machine when each ran (the suite's cells and these were run at "
             "different times and loads): compare methods on evaluations, the cost axis every method shares. Best found at = "
             "median evaluation at which the search found its best allocation; best / late reward = mean over seeds of the "
             "best reward and of the mean reward of the last 10 % of episodes (what the learned policy does by then).", "",
             "| task | method | formulation | budget | seeds | held-out ppl | score | reached FF's best | evaluations to reach "
             "(median) | best found at | best / late reward | wall s (mean) |", "|---" * 12 + "|"]
    for s in sorted(analysis["summary"], key=lambda s: (s["task"], s["method"] != SINGLE_STEP_AGENT, s["method"],
                                                        s["formulation"], s["budget"])):
        reached = "–" if s["reached_ff"] is None else f"{s['reached_ff']} / {s['seeds']}"
        median = "–" if s["evaluations_to_reach_ff_median"] is None else f"{s['evaluations_to_reach_ff_median']:.0f}"
        score = "–" if s["score_mean"] is None else f"{s['score_mean']:.3f}"
        lines.append(f"| {s['task']} | {s['method']} | {s['formulation']} | {s['budget']} | {s['seeds']} | "
                     f"{s['eval_ppl_mean']:.2f} ± {s['eval_ppl_std']:.2f} | {score} | {reached} | {median} | "
                     f"{s['evaluations_to_best_median']:.0f} | {s['best_reward_mean']:.3f} / {s['late_reward_mean']:.3f} | "
                     f"{s['seconds_mean']:.0f} |")
    if analysis["failures"]:
        lines += ["", "Failed cells (retried by running the command again):", ""]
        lines += [f"- {f['env_id']} {f['method']} seed {f['seed']}: {f['error']}: {f['message']}" for f in analysis["failures"]]
    return "\n".join(lines) + "\n"


def _median_curve(histories: list[list[dict[str, Any]]], grid: np.ndarray) -> np.ndarray:
    """Median over seeds of the best reward reached by each number of evaluations on ``grid`` (NaN before any)."""
    rows = []
    for h in histories:
        xs = np.array([p["evaluations"] for p in h], float)
        ys = np.array([p["best_reward"] for p in h], float)
        idx = np.searchsorted(xs, grid, side="right") - 1
        inside = (idx >= 0) & (grid <= xs[-1])  # nothing before the first evaluation or after the search's budget
        rows.append(np.where(inside, ys[np.clip(idx, 0, None)], np.nan))
    if not rows:
        return np.full(len(grid), np.nan)
    with warnings.catch_warnings():  # before a seed's first full-fidelity episode its best is NaN: expected
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(np.array(rows), axis=0)


def _plot(path: Path, curves: dict[str, dict[str, list[list[dict[str, Any]]]]], budgets: Sequence[int]) -> None:
    colors = matplotlib.colormaps["tab10"]
    fig = Figure(figsize=(5 * len(curves), 4.2))
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    grid = np.unique(np.geomspace(1, max(budgets), 200).astype(int))
    for ax, (task, by_method) in zip(axes, curves.items()):
        for i, (method, histories) in enumerate(by_method.items()):
            if histories:
                ax.step(grid, _median_curve(histories, grid), where="post", color=colors(i % 10), lw=1.6,
                        label=f"{method} ({len(histories)} seeds)")
        ax.axvline(REFERENCE_BUDGET, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("evaluations (search cost)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("best reward (median over seeds)")
    fig.suptitle("single-step FastForward vs multi-step search: best reward vs evaluations")
    fig.tight_layout()
    atomic_save_figure(fig, path)
