"""Tables and plots of finished results: a bench folder's and a suite's, all written atomically.

A bench folder (:func:`write_outputs`, a :class:`~ffprune.agents.experiments.engine.Report`) gets

* ``results.json`` (the analysis), ``results.csv`` / ``results.md``: per method, held-out ppl mean ± std over seeds
  (with and without Calib), best reward, search cost (evaluations, tokens, wall seconds) and evaluations-to-best;
  ``results.md`` adds, per other method and seed, the evaluations FastForward needed to reach its best reward;
* ``curves.png``: best reward vs. evaluations and vs. wall seconds, all methods on one chart each;
* ``allocations.png``: the best allocation's sparsity per layer (attention and FFN) per method, seed 0.

A suite folder (:data:`SUITE_REPORT`, from :func:`ffprune.agents.experiments.suite.analyse`'s analysis)
gets ``suite.md`` (the aggregate table, what its variant labels ran, the per-task table, the reward/held-out
agreement and, if any cell failed, the failures), ``scores.csv``, ``aggregate.png`` and ``profiles.png``. A variant
label (``fastforward-tuned``: a method with other settings, ``analysis["variants"]``) is a row like a method's, drawn
orange (a FastForward variant) or green in ``aggregate.png`` and dashed in ``profiles.png``. Cells are read with their
names of today (:func:`ffprune.agents.results.read_result`).

Cells of a surrogate (:func:`ffprune.agents.results.surrogate_of`) are labelled in every title and table ("surrogate",
the evaluation set's fingerprint) and counted in surrogate evaluations (:func:`evaluation_axis`): their
``evaluations`` and ``tokens`` are 0.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ffenv.io import atomic_save_figure, atomic_write_text
from ffprune.agents.experiments.engine import Report
from ffprune.agents.results import surrogate_of

AGENT = "fastforward"
"""The method the reach tables and the suite's probability of improvement are about."""
KIND_TITLES = {"attn": "attention (heads / KV groups)", "ffn": "FFN neurons", "block": "block weights"}


# ---------------------------------------------------------------------------- one bench folder
def evaluation_axis(result: dict[str, Any]) -> str:
    """The cost axis a result's evaluations are counted on: ``"surrogate_evaluations"`` for a surrogate result (also a
    history record or a best allocation that carries it), else ``"evaluations"``."""
    return "surrogate_evaluations" if surrogate_of(result) is not None or "surrogate_evaluations" in result else "evaluations"


def surrogate_note(cells: dict[str, list[dict[str, Any]]]) -> str | None:
    """The line that labels tables of surrogate cells (``None`` for real ones)."""
    label = next((surrogate_of(r) for runs in cells.values() for r in runs if surrogate_of(r) is not None), None)
    if label is None:
        return None
    return (f"**Surrogate results**: rewards and held-out ppl predicted by the surrogate fitted on "
            f"`{str(label.get('fingerprint'))[:19]}` (`{label.get('data')}`), not measured; cost in surrogate evaluations. "
            "Never compare with or mix into real tables.")


def _mean_std(values: list[float | None]) -> tuple[float, float]:
    arr = np.array([v for v in values if v is not None], np.float64)
    if len(arr) == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarize(cells: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per method: means (and stds) over seeds."""
    rows = []
    for method, runs in cells.items():
        row: dict[str, Any] = {"method": method, "seeds": len(runs)}
        for key, values in (
            ("eval_ppl", [r["best"]["eval_ppl"] for r in runs]),
            ("eval_ppl_after_calib", [r["best"].get("eval_ppl_after_calib") for r in runs]),
            ("reward_ppl", [r["best"]["reward_ppl"] for r in runs]),
            ("best_reward", [r["best"]["reward"] for r in runs]),
            ("evaluations", [r["cost"][evaluation_axis(r)] for r in runs]),
            ("tokens", [r["cost"]["tokens"] for r in runs]),
            ("wall_seconds", [r["cost"]["seconds"] for r in runs]),
            ("evaluations_to_best", [r["cost"]["evaluations_to_best"] for r in runs]),
        ):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
        row["dense_eval_ppl"] = runs[0]["best"]["dense_eval_ppl"]
        row["sparsity_mean"] = _mean_std([r["best"]["sparsity"] for r in runs])[0]
        if surrogate_of(runs[0]) is not None:
            row["surrogate"] = surrogate_of(runs[0]).get("fingerprint")
        rows.append(row)
    return rows


def cost_to_reach(history: list[dict[str, Any]], reward: float, axis: str | None = None) -> int | None:
    """Cost on ``axis`` (evaluations or tokens; default: the evaluations of the history's kind, surrogate ones for a
    search on a surrogate) a search spent until its best reward reached ``reward`` (``None``: never)."""
    for point in history:
        if np.isfinite(point["best_reward"]) and point["best_reward"] >= reward:
            return int(point[axis or evaluation_axis(point)])
    return None


def reach_table(cells: dict[str, list[dict[str, Any]]], agent: str = AGENT) -> list[dict[str, Any]]:
    """Per other method and seed: its best reward, its evaluations, and the evaluations ``agent`` needed to match it."""
    if agent not in cells:
        return []
    mine = {r["seed"]: r for r in cells[agent]}
    rows = []
    for method, runs in cells.items():
        if method == agent:
            continue
        for r in runs:
            if r["seed"] not in mine:
                continue
            history = mine[r["seed"]]["history"]
            rows.append({"method": method, "seed": r["seed"], "best_reward": r["best"]["reward"],
                         "evaluations": r["cost"][evaluation_axis(r)],
                         "evaluations_to_best": r["cost"]["evaluations_to_best"], "tokens_to_best": r["best"]["tokens"],
                         f"{agent}_evaluations_to_reach": cost_to_reach(history, r["best"]["reward"]),
                         f"{agent}_tokens_to_reach": cost_to_reach(history, r["best"]["reward"], "tokens")})
    return rows


def _fmt(mean: float, std: float, digits: int = 2) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _write_csv(path: Path, analysis: dict[str, Any]) -> None:
    """``results.csv``: every number of the summary rows, atomically."""
    rows = analysis["rows"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def results_markdown(analysis: dict[str, Any]) -> str:
    """``results.md``: the readable table of a bench folder's analysis (:func:`write_outputs`); its ``note`` (the
    :func:`surrogate_note` of surrogate cells) labels the table, whose evaluations are then surrogate ones."""
    rows, reach, note = analysis["rows"], analysis["reach"], analysis["note"]
    ordered = sorted(rows, key=lambda r: r["eval_ppl_mean"])
    evals = "surrogate evaluations" if note else "evaluations"
    lines = [f"### {analysis['title']}", "", *([note, ""] if note else []),
             f"| method | held-out ppl | + calib | best reward | {evals} | tokens | wall s | evals to best |",
             "|---|---|---|---|---|---|---|---|"]
    for r in ordered:
        lines.append(f"| {r['method']} | {_fmt(r['eval_ppl_mean'], r['eval_ppl_std'])} | "
                     f"{_fmt(r['eval_ppl_after_calib_mean'], r['eval_ppl_after_calib_std'])} | "
                     f"{_fmt(r['best_reward_mean'], r['best_reward_std'], 4)} | {r['evaluations_mean']:.0f} | "
                     f"{r['tokens_mean']:,.0f} | {r['wall_seconds_mean']:.0f} | "
                     f"{_fmt(r['evaluations_to_best_mean'], r['evaluations_to_best_std'], 0)} |")
    lines += ["", f"Dense held-out ppl {rows[0]['dense_eval_ppl']:.2f}. Mean ± sample std over seeds; "
              "ppl of the best allocation found (best reward on the `reward` split), measured on the held-out "
              "`eval` split; '+ calib' after post-pruning ridge calibration. Heuristics cost one evaluation."]
    if reach:
        key = next(k for k in reach[0] if k.endswith("_evaluations_to_reach"))
        agent = key.removesuffix("_evaluations_to_reach")
        lines += ["", f"Search cost {agent} needed to reach each method's best reward (same seed):", "",
                  f"| method | seed | its best reward | its evaluations to best | {agent} evaluations to reach it "
                  f"| its tokens to best | {agent} tokens to reach it |",
                  "|---|---|---|---|---|---|---|"]
        for r in reach:
            got = r[key] if r[key] is not None else "not reached"
            tok = r[f"{agent}_tokens_to_reach"]
            lines.append(f"| {r['method']} | {r['seed']} | {r['best_reward']:.4f} | {r['evaluations_to_best']} | {got} "
                         f"| {r['tokens_to_best']:,} | {f'{tok:,}' if tok is not None else 'not reached'} |")
    return "\n".join(lines) + "\n"


def plot(out: Path, cells: dict[str, list[dict[str, Any]]], title: str) -> None:
    """``curves.png`` and ``allocations.png`` of finished cells (``{method: [result, ...]}``, results with
    ``unit_names``, as :func:`~ffprune.agents.results.read_result` gives them) into ``out``: a bench report's figures,
    for a notebook's own searches."""
    _plot_curves(Path(out) / "curves.png", cells, title)
    _plot_allocations(Path(out) / "allocations.png", cells, title)


def _plot_curves(path: Path, cells: dict[str, list[dict[str, Any]]], title: str) -> None:
    """``curves.png`` (``path``): best reward vs. evaluations and vs. wall seconds, every method and seed."""
    colors = matplotlib.colormaps["tab10"]
    fig = Figure(figsize=(13, 4.8))  # no pyplot: no global state, no GUI backend
    axes = fig.subplots(1, 2, sharey=True)
    for i, (method, runs) in enumerate(cells.items()):
        color = colors(i % 10)
        for j, r in enumerate(runs):
            h = [p for p in r["history"] if np.isfinite(p["best_reward"])]
            if not h:
                continue
            label = method if j == 0 else None
            for ax, axis in zip(axes, ("evaluations", "seconds")):
                xs = [p[evaluation_axis(p) if axis == "evaluations" else axis] for p in h]
                ys = [p["best_reward"] for p in h]
                if len(h) == 1:
                    ax.scatter(xs, ys, color=color, marker="D", s=30, label=label, zorder=3)
                else:
                    ax.step(xs, ys, where="post", color=color, alpha=0.85, lw=1.4, label=label)
    surrogate = any(surrogate_of(r) is not None for runs in cells.values() for r in runs)
    axes[0].set_xlabel("surrogate evaluations (search cost)" if surrogate else "evaluations (search cost)")
    axes[1].set_xlabel("wall seconds")
    axes[0].set_ylabel("best reward (dense ppl / pruned ppl, reward split)")
    for ax in axes:
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def _plot_allocations(path: Path, cells: dict[str, list[dict[str, Any]]], title: str) -> None:
    """``allocations.png`` (``path``): the best allocation's sparsity per layer and unit kind, per method (lowest seed)."""
    colors = matplotlib.colormaps["tab10"]
    first = next(iter(cells.values()))[0]
    kinds = sorted({name.split(".")[0] for name in first["unit_names"]}, key=list(KIND_TITLES).index)
    fig = Figure(figsize=(6.5 * len(kinds), 4.2))
    axes = fig.subplots(1, len(kinds), squeeze=False)
    for i, (method, runs) in enumerate(cells.items()):
        r = min(runs, key=lambda c: c["seed"])
        names, sparsity = r["unit_names"], np.array(r["best"]["layer_sparsity"])
        for ax, kind in zip(axes[0], kinds):
            idx = [k for k, n in enumerate(names) if n.startswith(kind)]
            ax.plot(range(len(idx)), sparsity[idx], marker="o", ms=3, color=colors(i % 10), label=method)
    for ax, kind in zip(axes[0], kinds):
        ax.set_title(KIND_TITLES[kind])
        ax.set_xlabel("layer")
        ax.set_ylabel("sparsity")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{title}: best allocation per method (seed 0)")
    fig.tight_layout()
    atomic_save_figure(fig, path)


def write_outputs(out: Path, cells: dict[str, list[dict[str, Any]]], env_id: str, budget: int,
                  seeds: int) -> list[dict[str, Any]]:
    """The report of a bench folder's finished cells (``{method: [result, ...]}``): ``results.json`` (the analysis:
    title, surrogate note, summary rows, FastForward's cost to reach each method's best), ``results.md``,
    ``results.csv``, ``curves.png`` and ``allocations.png``, through :class:`~ffprune.agents.experiments.engine.Report`;
    returns the summary rows."""
    target_used = next(iter(cells.values()))[0]["env_kwargs"]["target_sparsity"]
    note = surrogate_note(cells)
    title = f"{env_id}{' on the SURROGATE' if note else ''}, target {target_used:g}, budget {budget}, {seeds} seed(s)"
    analysis = {"title": title, "note": note, "rows": summarize(cells), "reach": reach_table(cells)}
    report = Report("results", results_markdown, {"results.csv": _write_csv,
                                                  "curves.png": lambda path, a: _plot_curves(path, cells, a["title"]),
                                                  "allocations.png": lambda path, a: _plot_allocations(
                                                      path, cells, a["title"])})
    return report.write(out, analysis)["rows"]


# ---------------------------------------------------------------------------- a suite folder
SCORE_FIELDS = ["task", "method", "seed", "reward_ppl", "eval_ppl", "eval_ppl_after_calib", "dense_eval_ppl", "score",
                "score_calib", "evaluations", "seconds", "tokens", "eval_ppl_equal_tokens", "score_equal_tokens"]
"""The columns of ``scores.csv`` (one row per cell)."""


def calib_tasks(analysis: dict[str, Any]) -> str:
    """The tasks the ``+ Calib`` aggregates cover, in words (``"6 structured tasks"``): Calib scores exist for
    structured tasks only."""
    n = len(set().union(*(a["tasks"] for a in analysis["aggregate"]["calib"].values())))
    return f"{n} structured task{'' if n == 1 else 's'}"


def _cell(text: Any) -> str:
    """A value as one markdown table cell (no line breaks, pipes escaped)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def variants_note(variants: dict[str, dict[str, Any]]) -> str:
    """The ``Variants:`` paragraph of ``suite.md``: what each variant label's row ran (its method and the settings that
    differ) and where the settings come from."""
    parts = []
    for label, v in variants.items():
        settings = [f"{k}={json.dumps(x)}" for k, x in (v.get("agent_kwargs") or {}).items()]
        settings += [f"curriculum.{k}={json.dumps(x)}" for k, x in (v.get("curriculum_kwargs") or {}).items()]
        origin = "; ".join(x for x in (f"variant `{v['name']}`" if v.get("name") else "", v.get("source") or "") if x)
        parts.append(f"`{label}` = {v['method']} with {', '.join(settings)}" + (f" ({origin})" if origin else ""))
    return ("Variants: a method run with other settings than its own, as a row of its own (cells in "
            "`<task>/cells/<label>`): " + "; ".join(_cell(p) for p in parts) + ".")


def suite_markdown(analysis: dict[str, Any]) -> str:
    """``suite.md``: the aggregate table first (the headline), then what its variant rows ran (if any), the per-task
    table, the agreement and the failures."""
    agg, imp = analysis["aggregate"], analysis["improvement"]
    order = sorted(agg["plain"], key=lambda m: -agg["plain"][m]["iqm"])
    covered = calib_tasks(analysis)
    tokens = bool(agg.get("equal_tokens"))
    label = analysis.get("surrogate")
    on = " on the SURROGATE" if label else ""
    lines = [f"### Suite `{analysis['suite']}`{on}: budget {analysis['budget']}, {analysis['seeds']} seed(s), "
             f"{len(analysis['tasks'])} tasks", "",
             *([f"**Surrogate results**: every reward and held-out ppl below is predicted by the tasks' surrogates "
                f"({', '.join(f'`{k}`: `{str(v)[:19]}`' for k, v in sorted(label.items()))}), not measured; budgets "
                "and costs count surrogate evaluations. Never compare with or mix into the real suite.", ""]
               if label else []),
             "Normalised score = share of the uniform → dense held-out ppl gap closed (1 = dense, 0 = uniform). "
             f"IQM over tasks × seeds with 95 % stratified-bootstrap intervals ({analysis['bootstrap_reps']} resamples); "
             "P(FF > X): probability that FastForward's score beats the method's on a task, averaged over the tasks both ran.",
             *(["", "At equal tokens: each method's best allocation within the tokens the curriculum's searches spent "
                "on the task (" + ", ".join(f"{t} {n:,}" for t, n in analysis["equal_tokens"].items())
                + "; their cheap early evaluations cost fewer tokens than full ones), scored on the held-out split."]
               if analysis.get("equal_tokens") else []),
             "", f"| method | tasks | IQM score | 95 % CI | + Calib IQM ({covered}) | 95 % CI | P(FF > X) "
             f"| P(FF > X), + Calib ({covered}) |" + (" IQM at equal tokens | 95 % CI |" if tokens else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if tokens else "")]
    for m in order:
        a, c, e = agg["plain"][m], agg["calib"].get(m), agg.get("equal_tokens", {}).get(m)
        p, pc = imp["plain"].get(m), imp["calib"].get(m)
        lines.append(f"| {m} | {len(a['tasks'])} | {a['iqm']:.3f} | [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}] | "
                     + (f"{c['iqm']:.3f} | [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}] | " if c else "– | – | ")
                     + (f"{p['p']:.2f} [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}] | " if p else "– | ")
                     + (f"{pc['p']:.2f} [{pc['ci'][0]:.2f}, {pc['ci'][1]:.2f}] |" if pc else "– |")
                     + ((f" {e['iqm']:.3f} | [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}] |" if e else " – | – |")
                        if tokens else ""))
    if analysis.get("variants"):
        lines += ["", variants_note(analysis["variants"])]
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
    full = analysis.get("full_split") or {}
    if full:
        lines += ["", "Headline allocations on the **whole** test split (every window, not the held-out subset the tables "
                  "above use; each row's median-seed cell; `--full-split ROWS` measures them):", "",
                  "| task | windows × tokens | row (seed) | held-out subset ppl | whole-split ppl |", "|---|---|---|---|---|"]
        for t in tasks:
            if t in full:
                f = full[t]
                shape = f"{f['windows'][0]} × {f['windows'][1]}"
                lines.append(f"| {t} | {shape} | dense | {dense[t]:.2f} | {f['dense']:.2f} |")
                lines += [f"| {t} | {shape} | {row} ({e['seed']}) | {e['subset_ppl']:.2f} | {e['full_ppl']:.2f} |"
                          for row, e in sorted(f["rows"].items(), key=lambda kv: kv[1]["full_ppl"])]
    failures = analysis.get("failures") or []
    if failures:
        lines += ["", f"Failures: {len(failures)} cell(s) raised and are left out of every table above; the same command "
                  "retries them (their errors are in `<task>/failures.json`):", "",
                  "| task | method | seed | error |", "|---|---|---|---|"]
        lines += [f"| {f['task']} | {f['method']} | {f['seed']} | {_cell(f['error'])}: {_cell(f['message'])} |"
                  for f in failures]
    return "\n".join(lines) + "\n"


def write_scores(path: Path, analysis: dict[str, Any]) -> None:
    """``scores.csv``: one row per (task, method, seed) of a suite's analysis."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SCORE_FIELDS)
    writer.writeheader()
    writer.writerows(analysis["rows"])
    atomic_write_text(path, buf.getvalue())


def _order(analysis: dict[str, Any]) -> list[str]:
    """The rows of a suite's figures: by IQM normalised score, best first."""
    return sorted(analysis["aggregate"]["plain"], key=lambda m: -analysis["aggregate"]["plain"][m]["iqm"])


def _bar_color(row: str, analysis: dict[str, Any]) -> str:
    """FastForward red, a variant label of it orange, another variant label green, every other method blue."""
    variant = (analysis.get("variants") or {}).get(row)
    if variant is not None:
        return "tab:orange" if variant["method"] == AGENT else "tab:green"
    return "tab:red" if row == AGENT else "tab:blue"


def plot_aggregate(path: Path, analysis: dict[str, Any]) -> None:
    """``aggregate.png``: each row's IQM normalised score with its interval, per score kind."""
    order = _order(analysis)
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for ax, kind in zip(axes, ("plain", "calib")):
        agg = analysis["aggregate"][kind]
        names = [m for m in order if m in agg]
        y = np.arange(len(names))
        iqms = np.array([agg[m]["iqm"] for m in names])
        lo = iqms - np.array([agg[m]["ci"][0] for m in names])
        hi = np.array([agg[m]["ci"][1] for m in names]) - iqms
        ax.barh(y, iqms, xerr=[lo, hi], color=[_bar_color(m, analysis) for m in names], alpha=0.8)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("IQM normalised score (95 % CI)")
        ax.set_title("held-out ppl" + (f" after Calib ({calib_tasks(analysis)})"
                                       if kind == "calib" else ""))
        ax.grid(alpha=0.3, axis="x")
    on = " on the SURROGATE (predicted)" if analysis.get("surrogate") else ""
    fig.suptitle(f"suite {analysis['suite']}{on}: budget {analysis['budget']}, {analysis['seeds']} seeds")
    fig.tight_layout()
    atomic_save_figure(fig, path)


def plot_profiles(path: Path, analysis: dict[str, Any]) -> None:
    """``profiles.png``: each row's performance profile (share of runs above each score)."""
    order = _order(analysis)
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab10"]
    for i, m in enumerate(order):
        p = analysis["profiles"][m]
        color = cmap(i % 10)
        ax.plot(p["taus"], p["profile"], label=m, color=color, lw=2 if m == AGENT else 1,
                ls="--" if m in (analysis.get("variants") or {}) else "-")
        ax.fill_between(p["taus"], p["low"], p["high"], color=color, alpha=0.15)
    ax.set_xlabel("normalised score τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path)


SUITE_REPORT = Report("suite", suite_markdown, {"scores.csv": write_scores, "aggregate.png": plot_aggregate,
                                                "profiles.png": plot_profiles})
"""A suite's report: ``suite.json`` (the analysis), ``suite.md`` (:func:`suite_markdown`), ``scores.csv``,
``aggregate.png`` and ``profiles.png``."""
