"""``ffprune bench --suite core``: the benchmark suite, its normalised score and aggregate statistics.

The ``core`` suite is 9 tasks, {tiny-llama, tiny-mistral, tiny-opt} × {structured 30 %, structured 50 %,
unstructured 70 %}, each a registered id (``FFPrune-<Family>-v0``, ``FFPrune-<Family>-Structured50-v0``,
``FFPrune-<Family>-Unstructured-v0``) run with a fixed budget and seeds under the bench's held-out protocol
(the search sees only the reward split; the best allocation is scored once on ``eval``). Every
(task, method, seed) cell is one bench cell in ``<out>/<task>/cells`` (resumable; Ray tasks with ``--workers``),
each task folder gets the bench's tables and plots, and the suite folder gets

* ``suite.md`` / ``scores.csv``: the normalised score of every cell and the per-task table;
* per method, the interquartile mean (IQM) of the normalised scores over tasks × seeds with a 95 %
  stratified-bootstrap interval (also with Calib, structured tasks); probability of improvement of
  FastForward over every other method; the evaluations FastForward needed to reach each agent's best;
* ``aggregate.png`` (IQM with intervals) and ``profiles.png`` (performance profiles);
* the rank agreement of the reward split and the held-out split over the allocations one FastForward
  search visited per task (Spearman ρ).

**Normalised score** of a cell, on held-out perplexity: the share of the gap between the uniform allocation
and the dense model that the method's allocation closes,

    score = (ppl_uniform − ppl_method) / (ppl_uniform − ppl_dense)

(1: dense quality; 0: no better than uniform; negative: worse). Uniform is the allocation every method can
fall back on and the one the heuristics and searches claim to improve, so "share of the uniform → dense gap
closed" means the same on every model and sparsity, and tasks can be aggregated. With Calib the reference
is uniform + Calib (same formula on the calibrated perplexities).
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ffenv.errors import FFPruneError, positive_int
from ffenv.io import atomic_write, atomic_write_json, atomic_write_text, read_json
from ffenv.registration import FAMILIES
from ffprune.agents.experiments.bench import cell_jobs, cost_to_reach, run_jobs, write_outputs
from ffprune.agents.experiments.rlstats import (
    iqm,
    performance_profile,
    probability_of_improvement,
    spearman,
    stratified_bootstrap_ci,
)
from ffprune.agents.experiments.search import result_env

REFERENCE = "uniform"
AGENT = "fastforward"


@dataclass(frozen=True)
class SuiteTask:
    """One task of a suite: a name and a registered env id (its target is the id's)."""

    name: str
    env_id: str


@dataclass(frozen=True)
class Suite:
    """A named set of tasks with the budget and seeds every method gets."""

    name: str
    tasks: tuple[SuiteTask, ...]
    budget: int
    seeds: int
    description: str


def _core_tasks() -> tuple[SuiteTask, ...]:
    tasks = []
    for family in FAMILIES:
        tasks += [SuiteTask(f"{family.lower()}-s0.3", f"FFPrune-{family}-v0"),
                  SuiteTask(f"{family.lower()}-s0.5", f"FFPrune-{family}-Structured50-v0"),
                  SuiteTask(f"{family.lower()}-u0.7", f"FFPrune-{family}-Unstructured-v0")]
    return tuple(tasks)


SUITES: dict[str, Suite] = {
    "core": Suite("core", _core_tasks(), budget=100, seeds=3,
                  description="3 bundled families x {structured 0.3, structured 0.5, unstructured 0.7}"),
}


def get_suite(name: str) -> Suite:
    """A registered suite; :class:`FFPruneError` listing the names otherwise."""
    if name not in SUITES:
        raise FFPruneError(f"suite must be one of {sorted(SUITES)}, got {name!r}")
    return SUITES[name]


def run_suite(name: str = "core", out: str | Path = "docs/results/core", budget: int | None = None,
              seeds: int | None = None, methods: list[str] | None = None, env_kwargs: dict[str, Any] | None = None,
              calibrate: bool = True, calib_alpha: float = 0.9, workers: int = 0, ray_address: str | None = None,
              progress: bool = True, agreement_points: int = 24, reps: int = 2000) -> dict[str, Any]:
    """Run (or resume) every cell of a suite, then write the per-task outputs and the suite's analysis.

    ``budget`` / ``seeds`` default to the suite's own; ``methods`` to every method that fits each task's mode
    (``uniform`` is always run: it is the score's reference). ``env_kwargs`` override every task's env (tests
    use small windows). Returns the analysis (also in ``<out>/suite.json``).
    """
    suite = get_suite(name)
    budget = positive_int("budget", suite.budget if budget is None else budget)
    seeds = positive_int("seeds", suite.seeds if seeds is None else seeds)
    out = Path(out)
    jobs, owner = [], []
    for task in suite.tasks:
        mode = {**gym.spec(task.env_id).kwargs, **(env_kwargs or {})}.get("mode", "structured")
        chosen = None if methods is None else [m for m in dict.fromkeys([REFERENCE, *methods])
                                               if m not in ("uniform-split", "flap") or mode == "structured"]
        for job in cell_jobs(task.env_id, budget, seeds, chosen, out / task.name, None, env_kwargs, calibrate,
                             calib_alpha, progress):
            jobs.append(job)
            owner.append(task.name)
    done = run_jobs(jobs, workers, ray_address, progress)
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {} for t in suite.tasks}
    for task_name, job, cell in zip(owner, jobs, done):
        cells[task_name].setdefault(job["method"], []).append(cell)
    for task in suite.tasks:
        write_outputs(out / task.name, cells[task.name], task.env_id, budget, seeds)
    analysis = analyse(suite, cells, budget, seeds, reps=reps)
    analysis["agreement"] = reward_heldout_agreement(suite, cells, out, agreement_points)
    atomic_write_json(out / "suite.json", analysis)
    write_report(out, analysis)
    return analysis


def normalised(ppl: float | None, uniform: float | None, dense: float) -> float | None:
    """Share of the uniform → dense held-out perplexity gap closed (see the module docstring)."""
    if ppl is None or uniform is None or not np.isfinite(ppl) or uniform == dense:
        return None
    return float((uniform - ppl) / (uniform - dense))


def analyse(suite: Suite, cells: dict[str, dict[str, list[dict[str, Any]]]], budget: int, seeds: int,
            reps: int = 2000) -> dict[str, Any]:
    """Normalised scores of every cell and the aggregate statistics (module docstring)."""
    rows, scores = [], {"plain": {}, "calib": {}}
    for task in suite.tasks:
        by_method = cells[task.name]
        if REFERENCE not in by_method:
            raise FFPruneError(f"task {task.name!r} has no {REFERENCE!r} cells: the normalised score needs them")
        ref = by_method[REFERENCE][0]["best"]
        for method, runs in by_method.items():
            for cell in sorted(runs, key=lambda c: c["seed"]):
                best = cell["best"]
                row = {"task": task.name, "method": method, "seed": cell["seed"], "eval_ppl": best["eval_ppl"],
                       "eval_ppl_calib": best.get("eval_ppl_calib"), "dense_eval_ppl": best["dense_eval_ppl"],
                       "score": normalised(best["eval_ppl"], ref["eval_ppl"], best["dense_eval_ppl"]),
                       "score_calib": normalised(best.get("eval_ppl_calib"), ref.get("eval_ppl_calib"),
                                                 best["dense_eval_ppl"]),
                       "reward_ppl": best["calib_ppl"],
                       "evaluations": cell["cost"]["evaluations"], "seconds": cell["cost"]["seconds"]}
                rows.append(row)
                for kind, key in (("plain", "score"), ("calib", "score_calib")):
                    if row[key] is not None:
                        scores[kind].setdefault(method, {}).setdefault(task.name, []).append(row[key])
    aggregate: dict[str, Any] = {}
    for kind, by_method in scores.items():
        aggregate[kind] = {}
        for method, by_task in by_method.items():
            matrix = _matrix(by_task)
            point, lo, hi = stratified_bootstrap_ci(matrix, iqm, reps=reps)
            aggregate[kind][method] = {"iqm": point, "ci": [lo, hi], "tasks": sorted(by_task),
                                       "runs": int(matrix.shape[0]), "mean": float(matrix.mean())}
    improvement = {}
    for kind, by_method in scores.items():
        improvement[kind] = {}
        if AGENT not in by_method:
            continue
        for method in by_method:
            if method == AGENT:
                continue
            common = sorted(set(by_method[AGENT]) & set(by_method[method]))
            if not common:
                continue
            x = _matrix({t: by_method[AGENT][t] for t in common})
            y = _matrix({t: by_method[method][t] for t in common})
            point, lo, hi = probability_of_improvement(x, y, reps=reps)
            improvement[kind][method] = {"p": point, "ci": [lo, hi], "tasks": len(common)}
    taus = np.linspace(-1.0, 1.0, 81)
    profiles = {}
    for method, by_task in scores["plain"].items():
        prof, lo, hi = performance_profile(_matrix(by_task), taus, reps=min(reps, 500))
        profiles[method] = {"taus": taus.tolist(), "profile": prof.tolist(), "low": lo.tolist(), "high": hi.tolist()}
    across = {}
    for task in suite.tasks:  # do the methods' best allocations rank the same on the reward and held-out splits?
        pairs = sorted({(r["reward_ppl"], r["eval_ppl"]) for r in rows if r["task"] == task.name})  # distinct allocations
        if len(pairs) >= 2:
            reward_ppl, eval_ppl = np.array(pairs).T
            across[task.name] = {"spearman": spearman(-reward_ppl, -eval_ppl), "cells": len(pairs)}
    return {"suite": suite.name, "budget": budget, "seeds": seeds, "tasks": [t.__dict__ for t in suite.tasks],
            "rows": rows, "agreement_across_cells": across, "aggregate": aggregate, "improvement": improvement,
            "profiles": profiles,
            "reach": _reach(suite, cells), "bootstrap_reps": reps}


def _matrix(by_task: dict[str, list[float]]) -> np.ndarray:
    """``[runs, tasks]`` from per-task lists (deterministic methods have identical runs; lists are cut to the
    shortest so every task has the same number of runs)."""
    n = min(len(v) for v in by_task.values())
    return np.array([by_task[t][:n] for t in sorted(by_task)], np.float64).T


def _reach(suite: Suite, cells: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Per task, agent and seed: its best reward, its evaluations to best, FastForward's evaluations to reach it."""
    out = []
    for task in suite.tasks:
        by_method = cells[task.name]
        ff = {c["seed"]: c for c in by_method.get(AGENT, [])}
        for method in ("ppo", "sac", "evolution", "random"):
            for cell in by_method.get(method, []):
                mine = ff.get(cell["seed"])
                reward = cell["best"]["reward"]
                out.append({"task": task.name, "method": method, "seed": cell["seed"], "best_reward": reward,
                            "evaluations_to_best": cell["best"]["evaluations"],
                            "fastforward_to_reach": cost_to_reach(mine["history"], reward) if mine else None})
    return out


def reward_heldout_agreement(suite: Suite, cells: dict[str, dict[str, list[dict[str, Any]]]], out: Path,
                             points: int = 24) -> dict[str, Any]:
    """Spearman ρ between the reward (held-in ``calib`` split) and the held-out perplexity over ``points``
    allocations one FastForward search (lowest seed) visited at the final target on all reward windows, per
    task; measured once and cached in ``<out>/<task>/agreement.json``. Not counted in any search's cost."""
    result = {}
    for task in suite.tasks:
        runs = cells[task.name].get(AGENT)
        if not runs or points < 2:
            continue
        path = out / task.name / "agreement.json"
        cell = min(runs, key=lambda c: c["seed"])
        target = cell["env_kwargs"]["target_sparsity"]
        visited = [h for h in cell["history"] if "action" in h and h["target"] == target
                   and h.get("windows") == cell["env_kwargs"]["reward_windows"]]
        if len(visited) < 2:
            continue
        picks = [visited[i] for i in np.unique(np.linspace(0, len(visited) - 1, min(points, len(visited))).astype(int))]
        key = {"seed": cell["seed"], "episodes": [h["episode"] for h in picks]}
        if path.exists():
            cached = read_json(path, "agreement cache")
            if cached.get("key") == key:
                result[task.name] = cached["result"]
                continue
        env = result_env(cell)
        held_out = [env.unwrapped.evaluate(np.asarray(h["action"], np.float32), split="eval")["ppl"] for h in picks]
        env.close()
        rho = spearman(np.array([h["reward"] for h in picks]), -np.array(held_out))
        result[task.name] = {"spearman": rho, "points": len(picks), "seed": cell["seed"],
                             "reward": [h["reward"] for h in picks], "eval_ppl": held_out}
        atomic_write_json(path, {"key": key, "result": result[task.name]})
    return result


def write_report(out: Path, analysis: dict[str, Any]) -> None:
    """``suite.md``, ``scores.csv``, ``aggregate.png`` and ``profiles.png`` from :func:`analyse`'s result."""
    buf = io.StringIO()
    fields = ["task", "method", "seed", "reward_ppl", "eval_ppl", "eval_ppl_calib", "dense_eval_ppl", "score",
              "score_calib", "evaluations", "seconds"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(analysis["rows"])
    atomic_write_text(out / "scores.csv", buf.getvalue())
    agg, imp = analysis["aggregate"], analysis["improvement"]
    order = sorted(agg["plain"], key=lambda m: -agg["plain"][m]["iqm"])
    lines = [f"### Suite `{analysis['suite']}`: budget {analysis['budget']}, {analysis['seeds']} seed(s), "
             f"{len(analysis['tasks'])} tasks", "",
             "Normalised score = share of the uniform → dense held-out ppl gap closed (1 = dense, 0 = uniform). "
             f"IQM over tasks × seeds with 95 % stratified-bootstrap intervals ({analysis['bootstrap_reps']} resamples); "
             "P(FF > X): probability that FastForward's score beats the method's on a task, averaged over the tasks both ran.",
             "", "| method | tasks | IQM score | 95 % CI | + calib IQM | 95 % CI | P(FF > X) | P(FF > X), calib |",
             "|---|---|---|---|---|---|---|---|"]
    for m in order:
        a, c = agg["plain"][m], agg["calib"].get(m)
        p, pc = imp["plain"].get(m), imp["calib"].get(m)
        lines.append(f"| {m} | {len(a['tasks'])} | {a['iqm']:.3f} | [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}] | "
                     + (f"{c['iqm']:.3f} | [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}] | " if c else "– | – | ")
                     + (f"{p['p']:.2f} [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}] | " if p else "– | ")
                     + (f"{pc['p']:.2f} [{pc['ci'][0]:.2f}, {pc['ci'][1]:.2f}] |" if pc else "– |"))
    tasks = [t["name"] for t in analysis["tasks"]]
    lines += ["", "Held-out ppl per task (mean over seeds; dense in the header):", "",
              "| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    dense = {t: next((r["dense_eval_ppl"] for r in analysis["rows"] if r["task"] == t), float("nan")) for t in tasks}
    lines.append("| dense | " + " | ".join(f"{dense[t]:.2f}" for t in tasks) + " |")
    for m in order:
        vals = []
        for t in tasks:
            v = [r["eval_ppl"] for r in analysis["rows"] if r["task"] == t and r["method"] == m]
            vals.append(f"{np.mean(v):.2f}" if v else "–")
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    agree, across = analysis.get("agreement") or {}, analysis.get("agreement_across_cells") or {}
    if agree or across:
        lines += ["", "Reward split vs held-out split, Spearman ρ: over the allocations one FastForward search visited "
                  "(lowest seed), and over the distinct best allocations of the task's cells (all methods and seeds):", "",
                  "| task | ρ, one search | allocations | ρ, all cells | distinct allocations |", "|---|---|---|---|---|"]
        for t in tasks:
            a, c = agree.get(t), across.get(t)
            lines.append(f"| {t} | " + (f"{a['spearman']:.3f} | {a['points']} | " if a else "– | – | ")
                         + (f"{c['spearman']:.3f} | {c['cells']} |" if c else "– | – |"))
    atomic_write_text(out / "suite.md", "\n".join(lines) + "\n")
    _plot(out, analysis, order)


def readme_block(out: str | Path, readme: str | Path, suite: str = "core") -> str:
    """The README's generated suite section: ``<out>/suite.md`` with the aggregate figure, between markers."""
    out = Path(out)
    table = out / "suite.md"
    if not table.exists():
        raise FFPruneError(f"{str(table)!r} does not exist: run `ffprune bench --suite {suite}` first")
    rel = Path(os.path.relpath(out, Path(readme).resolve().parent)).as_posix()
    body = table.read_text().rstrip("\n")
    return (f"<!-- suite:{suite} (generated by `ffprune bench --suite {suite} --readme`; do not edit) -->\n"
            f"{body}\n\n![IQM normalised scores per method]({rel}/aggregate.png)\n"
            f"![performance profiles]({rel}/profiles.png)\n<!-- /suite:{suite} -->")


def check_readme(readme: str | Path, suite: str = "core") -> tuple[str, re.Pattern[str]]:
    """The README's text and the pattern of its one ``<!-- suite:<name> -->`` section; one-line error otherwise."""
    readme = Path(readme)
    if not readme.is_file():
        raise FFPruneError(f"readme {str(readme)!r} is not a file")
    text = readme.read_text()
    pattern = re.compile(rf"<!-- suite:{re.escape(suite)}\b.*?<!-- /suite:{re.escape(suite)} -->", re.S)
    if len(pattern.findall(text)) != 1:
        raise FFPruneError(f"readme {str(readme)!r} needs exactly one section '<!-- suite:{suite} -->' ... "
                           f"'<!-- /suite:{suite} -->' to replace")
    return text, pattern


def update_readme(readme: str | Path, out: str | Path, suite: str = "core") -> None:
    """Replace the README's ``<!-- suite:<name> ... -->`` … ``<!-- /suite:<name> -->`` section with
    :func:`readme_block` (atomically); the section must already be there."""
    text, pattern = check_readme(readme, suite)
    block = readme_block(out, readme, suite)
    atomic_write_text(Path(readme), pattern.sub(lambda _m: block, text))


def _plot(out: Path, analysis: dict[str, Any], order: list[str]) -> None:
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for ax, kind in zip(axes, ("plain", "calib")):
        agg = analysis["aggregate"][kind]
        names = [m for m in order if m in agg]
        y = np.arange(len(names))
        iqms = np.array([agg[m]["iqm"] for m in names])
        lo = iqms - np.array([agg[m]["ci"][0] for m in names])
        hi = np.array([agg[m]["ci"][1] for m in names]) - iqms
        ax.barh(y, iqms, xerr=[lo, hi], color=["tab:red" if m == AGENT else "tab:blue" for m in names], alpha=0.8)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("IQM normalised score (95 % CI)")
        ax.set_title("held-out ppl" + (" after Calib (structured tasks)" if kind == "calib" else ""))
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"suite {analysis['suite']}: budget {analysis['budget']}, {analysis['seeds']} seeds")
    fig.tight_layout()
    atomic_write(out / "aggregate.png", lambda tmp: fig.savefig(tmp, dpi=110), keep_suffix=True)
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab10"]
    for i, m in enumerate(order):
        p = analysis["profiles"][m]
        color = cmap(i % 10)
        ax.plot(p["taus"], p["profile"], label=m, color=color, lw=2 if m == AGENT else 1)
        ax.fill_between(p["taus"], p["low"], p["high"], color=color, alpha=0.15)
    ax.set_xlabel("normalised score τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out / "profiles.png", lambda tmp: fig.savefig(tmp, dpi=110), keep_suffix=True)
