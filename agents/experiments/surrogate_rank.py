"""``ffprune surrogate rank``: does the core suite rank its methods the same on the surrogates as on the real tasks?

The real suite (``ffprune bench --suite core``, default ``docs/results/core``) and the same suite run on the tasks'
surrogates (``ffprune bench --suite core --surrogate``, default ``docs/results/core-surrogate``) are read (cells only:
nothing is searched, evaluated or rewritten in either folder) and analysed by the suite's own
:func:`~ffprune.agents.experiments.suite.analyse`: each method's normalised score per cell, its IQM over tasks × seeds
with a 95 % stratified-bootstrap interval, exactly the real suite's headline. Then

* **overall**: Kendall's τ-b (:func:`~ffprune.agents.experiments.rlstats.kendall_tau_b`) between the methods' IQM on the
  real suite and on the surrogate suite, over the methods both scored on the same tasks (uniform, the reference,
  included: whether a method beats uniform is part of the ranking; a method missing from one suite, or scored on other
  tasks there, is listed as left out);
* **per task**: the same between the methods' IQM over the task's seeds;
* the discordant pairs (ranked one way on the real suite, the other on the surrogate), each marked when the two real
  IQMs' 95 % intervals overlap (a swap the real suite itself cannot resolve);

against the goal τ ≥ :data:`GOAL` (the issue's). ``ranking.json`` holds every number, ``ranking.md`` the tables. What
is compared (the suite, its tasks, budget, seeds and methods, the resamples) is a :class:`RankSpec`.

**The normalised score on a surrogate** is ``(ppl_uniform − ppl_method) / (ppl_uniform − ppl_dense)`` computed as the
suite computes it, from the surrogate suite's own cells: ``ppl_method`` and ``ppl_uniform`` are the surrogate's
*predicted* held-out ppls (of the method's best allocation, of the uniform allocation: the uniform cell, as on the real
suite), ``ppl_dense`` is the dense model's held-out ppl the evaluation set recorded (measured, the same number as on
the real suite). Predicting both ends of the numerator's difference with the same model lets a bias common to both
cancel; taking the measured uniform instead would mix a measurement and a prediction in the difference that decides the
sign of the score. The per-task table shows the measured and the predicted uniform ppl side by side, so the size of
that reference error is visible.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ffenv.errors import FFPruneError, positive_int
from ffprune.agents.experiments.engine import Report
from ffprune.agents.experiments.rlstats import iqm, kendall_tau_b
from ffprune.agents.experiments.suite import (
    REFERENCE,
    Suite,
    analyse,
    get_suite,
    read_suite_cells,
    select_tasks,
    suite_surrogates,
)
from ffprune.agents.results import describe_surrogate, read_result, surrogate_of
from ffprune.agents.tools.specs import spec_with

log = logging.getLogger(__name__)

GOAL = 0.8
"""Kendall's τ-b the surrogate suite's IQM ranking should reach against the real suite's (overall and per task)."""


def _check_folder(suite: Suite, out: Path, surrogate: bool, flag: str) -> None:
    """Every task folder of ``out`` exists and holds the kind of suite asked for (one-line errors naming ``flag``)."""
    for task in suite.tasks:
        config = out / task.name / "config.json"
        if not config.is_file():
            raise FFPruneError(f"{flag} {str(out)!r} has no task {task.name!r} ({config} is missing): run "
                               f"`ffprune bench --suite {suite.name}{' --surrogate' if surrogate else ''}` first, or "
                               "pass --tasks")
        label = surrogate_of(read_result(config))
        if surrogate and label is None:
            raise FFPruneError(f"{flag} {str(out)!r} holds a real suite ({task.name}), not one run on the surrogates "
                               f"(`ffprune bench --suite {suite.name} --surrogate`)")
        if not surrogate and label is not None:
            raise FFPruneError(f"{flag} {str(out)!r} holds a suite run on {describe_surrogate(label)} ({task.name}), "
                               "not the real suite")


def suite_analysis(suite: Suite, out: str | Path, surrogate: bool, reps: int, flag: str) -> dict[str, Any]:
    """:func:`~ffprune.agents.experiments.suite.analyse` of the cells of ``suite`` (its tasks, budget, seeds and methods:
    ``None``, every method with cells) in ``out`` (read only; ``surrogate`` says which kind of suite it must hold;
    ``reps`` bootstrap resamples; ``flag`` names the folder's option in errors)."""
    out = Path(out)
    _check_folder(suite, out, surrogate, flag)
    cells, failures = read_suite_cells(suite, out, surrogate)
    labels = suite_surrogates(suite, cells, surrogate)
    analysis = analyse(suite, cells, reps=reps, failures=failures)
    if labels is not None:
        analysis["surrogate"] = labels
    return analysis


def _per_task_iqm(analysis: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {method: IQM of its normalised scores over the task's seeds}}``."""
    scores: dict[str, dict[str, list[float]]] = {}
    for row in analysis["rows"]:
        if row["score"] is not None:
            scores.setdefault(row["task"], {}).setdefault(row["method"], []).append(row["score"])
    return {task: {m: iqm(np.array(v)[:, None]) for m, v in by_method.items()} for task, by_method in scores.items()}


def compare(real: dict[str, float], surrogate: dict[str, float],
            real_ci: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """The agreement of two ``{method: score}`` rankings over the methods both have: Kendall's τ-b (``None`` below two
    methods or when one side is constant), each side's rank (1 = best), the discordant pairs (with ``real_ci``: whether
    the two real intervals overlap) and whether τ-b meets :data:`GOAL`."""
    methods = sorted(set(real) & set(surrogate), key=lambda m: (-real[m], m))
    a, b = np.array([real[m] for m in methods]), np.array([surrogate[m] for m in methods])
    tau = kendall_tau_b(a, b) if len(methods) >= 2 else float("nan")
    tau = None if np.isnan(tau) else tau

    def ranks(values: np.ndarray) -> list[int]:
        return [int(1 + np.sum(values > v)) for v in values]

    discordant = []
    for i, m in enumerate(methods):
        for n in methods[i + 1:]:
            if np.sign(real[m] - real[n]) * np.sign(surrogate[m] - surrogate[n]) < 0:
                pair: dict[str, Any] = {"methods": [m, n]}
                if real_ci is not None:
                    (lo_m, hi_m), (lo_n, hi_n) = real_ci[m], real_ci[n]
                    pair["real_ci_overlap"] = bool(lo_m <= hi_n and lo_n <= hi_m)
                discordant.append(pair)
    return {"methods": methods, "real": [real[m] for m in methods], "surrogate": [surrogate[m] for m in methods],
            "real_rank": ranks(a), "surrogate_rank": ranks(b), "kendall_tau_b": tau, "discordant": discordant,
            "meets_goal": None if tau is None else bool(tau >= GOAL)}


def _uniform_ppl(analysis: dict[str, Any]) -> dict[str, float]:
    """Per task, the held-out ppl of the reference (uniform) allocation, lowest seed."""
    out: dict[str, float] = {}
    for row in sorted(analysis["rows"], key=lambda r: r["seed"]):
        if row["method"] == REFERENCE:
            out.setdefault(row["task"], row["eval_ppl"])
    return out


@dataclass(frozen=True)
class RankSpec:
    """What a ranking comparison is (the two suite folders it reads and the folder it writes are :func:`run_rank`'s own
    arguments)."""

    suite: str = "core"
    """The registered suite both folders hold."""
    tasks: Sequence[str] | None = None
    """Tasks of the suite compared (default: all of them)."""
    budget: int | None = None
    """The suites' budget (default: the suite's; both folders must hold it)."""
    seeds: int | None = None
    """Seeds read per method (default: the suite's)."""
    methods: Sequence[str] | None = None
    """Methods read (default: every registered method that fits a task's mode and has cells)."""
    reps: int = 2000
    """Bootstrap resamples of the intervals."""


def run_rank(spec: RankSpec | None = None, *, real_out: str | Path, surrogate_out: str | Path, out: str | Path,
             **settings: Any) -> dict[str, Any]:
    """Compare the method rankings of the real suite in ``real_out`` and the surrogate suite in ``surrogate_out`` (module
    docstring) as ``spec`` says (``settings``: :class:`RankSpec` fields by keyword, replacing its own), and write
    ``ranking.json`` and ``ranking.md`` to ``out``; the analysis."""
    spec = spec_with(RankSpec, spec, settings, "run_rank", "ranking")
    chosen = select_tasks(get_suite(spec.suite), spec.tasks)
    budget = positive_int("budget", chosen.budget if spec.budget is None else spec.budget)
    seeds = positive_int("seeds", chosen.seeds if spec.seeds is None else spec.seeds)
    reps = positive_int("reps", spec.reps)
    if Path(real_out).resolve() == Path(surrogate_out).resolve():
        raise FFPruneError(f"the real suite and the surrogate suite must be two folders, got {str(real_out)!r} twice")
    out = Path(out)
    REPORT.check(out)
    read = chosen.but(budget, seeds, spec.methods)
    real = suite_analysis(read, real_out, False, reps, "--real")
    sur = suite_analysis(read, surrogate_out, True, reps, "--surrogate-out")
    agg_real, agg_sur = real["aggregate"]["plain"], sur["aggregate"]["plain"]
    left_out = sorted(m for m in set(agg_real) | set(agg_sur)
                      if m not in agg_real or m not in agg_sur or agg_real[m]["tasks"] != agg_sur[m]["tasks"])
    agg_real = {m: a for m, a in agg_real.items() if m not in left_out}  # an IQM over other tasks does not compare
    agg_sur = {m: a for m, a in agg_sur.items() if m not in left_out}
    overall = compare({m: a["iqm"] for m, a in agg_real.items()}, {m: a["iqm"] for m, a in agg_sur.items()},
                      {m: a["ci"] for m, a in agg_real.items()})
    overall["real_ci"] = [agg_real[m]["ci"] for m in overall["methods"]]
    overall["surrogate_ci"] = [agg_sur[m]["ci"] for m in overall["methods"]]
    overall["tasks"] = [sorted(agg_real[m]["tasks"]) for m in overall["methods"]]
    overall["left_out"] = left_out
    task_real, task_sur = _per_task_iqm(real), _per_task_iqm(sur)
    uniform_real, uniform_sur = _uniform_ppl(real), _uniform_ppl(sur)
    per_task = {}
    for task in chosen.tasks:
        found = compare(task_real.get(task.name, {}), task_sur.get(task.name, {}))
        found["uniform_eval_ppl"] = {"real": uniform_real.get(task.name), "surrogate": uniform_sur.get(task.name)}
        per_task[task.name] = found
    analysis = {"suite": chosen.name, "tasks": [t.name for t in chosen.tasks], "budget": budget, "seeds": seeds,
                "goal": GOAL, "bootstrap_reps": reps, "real_out": str(real_out), "surrogate_out": str(surrogate_out),
                "surrogate": sur.get("surrogate"), "overall": overall, "per_task": per_task,
                "failures": {"real": real["failures"], "surrogate": sur["failures"]}}
    return REPORT.write(out, analysis)


def _tau(value: float | None, goal: float) -> str:
    return "–" if value is None else f"{value:.3f} {'✓' if value >= goal else '✗'}"


def _pairs(found: dict[str, Any]) -> str:
    if not found["discordant"]:
        return "none"
    return ", ".join(f"{p['methods'][0]} / {p['methods'][1]}" + (" (real CIs overlap)" if p.get("real_ci_overlap") else "")
                     for p in found["discordant"])


def ranking_markdown(analysis: dict[str, Any]) -> str:
    """The readable tables of :func:`run_rank`: the headline IQMs side by side, then τ-b per task."""
    goal, o = analysis["goal"], analysis["overall"]
    lines = [f"### Method ranking of suite `{analysis['suite']}`: real vs surrogate (budget {analysis['budget']}, "
             f"{analysis['seeds']} seed(s), {len(analysis['tasks'])} task(s))", "",
             f"Real: `{analysis['real_out']}`; surrogate: `{analysis['surrogate_out']}` (every score there predicted by "
             "the tasks' surrogates). Normalised score = share of the uniform → dense held-out ppl gap closed, per cell, "
             "as in the suite's headline; on the surrogate from the predicted held-out ppls of the method and of uniform "
             "and the recorded dense ppl. IQM over tasks × seeds with 95 % stratified-bootstrap intervals "
             f"({analysis['bootstrap_reps']} resamples). Kendall's τ-b of the two IQM rankings: "
             f"**{_tau(o['kendall_tau_b'], goal)}** over {len(o['methods'])} methods (goal ≥ {goal}).", "",
             "| method | tasks | real IQM | 95 % CI | real rank | surrogate IQM | 95 % CI | surrogate rank |",
             "|---|---|---|---|---|---|---|---|"]
    for i, m in enumerate(o["methods"]):
        (rl, rh), (sl, sh) = o["real_ci"][i], o["surrogate_ci"][i]
        lines.append(f"| {m} | {len(o['tasks'][i])} | {o['real'][i]:.3f} | [{rl:.3f}, {rh:.3f}] | {o['real_rank'][i]} | "
                     f"{o['surrogate'][i]:.3f} | [{sl:.3f}, {sh:.3f}] | {o['surrogate_rank'][i]} |")
    lines += ["", f"Discordant pairs: {_pairs(o)}."]
    if o["left_out"]:
        lines += ["", f"Left out of the overall ranking (not scored on the same tasks in both suites): "
                  f"{', '.join(o['left_out'])}."]
    lines += ["",
              "Per task (IQM over the task's seeds; uniform's held-out ppl measured on the real task and predicted by "
              "the surrogate, the reference of the normalised score):", "",
              "| task | methods | τ-b | uniform ppl real | uniform ppl predicted | discordant pairs |",
              "|---|---|---|---|---|---|"]
    for task, found in analysis["per_task"].items():
        u = found["uniform_eval_ppl"]
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {task} | {len(found['methods'])} | {_tau(found['kendall_tau_b'], goal)} | {fmt(u['real'])} | "
                     f"{fmt(u['surrogate'])} | {_pairs(found)} |")
    missed = [t for t, f in analysis["per_task"].items() if f["meets_goal"] is False]
    if missed:
        lines += ["", f"Tasks below the goal: {', '.join(missed)}."]
    failed = {k: len(v) for k, v in analysis["failures"].items() if v}
    if failed:
        lines += ["", "Failed cells left out: " + ", ".join(f"{k} {n}" for k, n in failed.items()) + "."]
    return "\n".join(lines) + "\n"


REPORT = Report("ranking", ranking_markdown)
"""The ranking's report: ``ranking.json`` and ``ranking.md``."""
