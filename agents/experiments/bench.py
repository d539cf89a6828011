"""``ffprune bench``: every RL agent and every baseline on one env, side by side, resumable.

    ffprune bench --env FFPrune-Llama-v0 --budget 200 --seeds 3 --out bench/llama-0.3

Each (method, seed) cell is one :func:`agents.search.run_search` with the same budget, written to
``<out>/cells/<method>/seed<k>.json`` (its TensorBoard run under ``<out>/tb/<env>/<method>/seed<k>``);
a finished cell is never recomputed, an interrupted one resumes from its checkpoint. With
``calibrate`` (structured envs) each cell's best allocation is also scored on the held-out split
after post-pruning calibration (:mod:`ffenv.pruning.calib`), stored in the cell as
``best.eval_ppl_calib``. Then the folder gets

* ``results.csv`` / ``results.md``: per method, held-out ppl mean ± std over seeds (with and without
  calibration), best reward, search cost (evaluations, tokens, wall seconds) and evaluations-to-best;
  ``results.md`` adds, per RL agent and seed, the evaluations FastForward needed to reach its best;
* ``curves.png``: best reward vs. evaluations and vs. wall seconds, all methods on one chart each;
* ``allocations.png``: the best allocation's sparsity per layer (attention and FFN) per method, seed 0.

Methods (``--methods``): any name of the registry :mod:`ffprune.agents.methods.registry` (or any SB3 algorithm);
by default every registered method that supports the env's mode (``uniform-split`` and ``flap`` need
a structured env).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ffenv.errors import FFPruneError, positive_int
from ffenv.io import atomic_write, atomic_write_json, atomic_write_text, read_json
from ffenv.vector.ray_workers import run_on_ray
from ffprune.agents.experiments.search import calibrated_eval_ppl, model_weights, result_env, run_search
from ffprune.agents.methods.registry import get_method, methods_for


def cell_path(out: Path, method: str, seed: int) -> Path:
    """Where one (method, seed) result lives."""
    return out / "cells" / method / f"seed{seed}.json"


def _check_config(out: Path, config: dict[str, Any]) -> None:
    """A bench folder holds one setting: refuse to mix results of different envs / budgets / targets."""
    path = out / "config.json"
    if path.exists():
        old = read_json(path, "bench config")
        diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
        if diff:
            raise FFPruneError(f"out={str(out)!r} holds a bench with other settings {diff} (old, new); "
                               "use another --out folder")
    atomic_write_json(path, config)


def _calibrated(cell: dict[str, Any], path: Path, alpha: float) -> dict[str, Any]:
    """Add ``best.eval_ppl_calib`` (held-out ppl after post-pruning calibration) to a finished cell."""
    best = cell["best"]
    if "eval_ppl_calib" in best and best.get("calib_alpha") == alpha:
        return cell
    for other in sorted(path.parents[1].glob("*/seed*.json")):  # a deterministic heuristic gives the same
        done = read_json(other, "bench cell")                    # allocation for every seed: measured once
        if (other != path and done.get("env_kwargs") == cell["env_kwargs"] and done["best"].get("calib_alpha") == alpha
                and done["best"]["action"] == best["action"] and "eval_ppl_calib" in done["best"]):
            best["eval_ppl_calib"], best["calib_alpha"] = done["best"]["eval_ppl_calib"], alpha
            atomic_write_json(path, cell)
            return cell
    env = result_env(cell)  # in-process: one evaluation needs no population workers
    try:
        best["eval_ppl_calib"] = calibrated_eval_ppl(env, best["action"], cell["env_kwargs"]["target_sparsity"], alpha)
    finally:
        env.close()
    best["calib_alpha"] = alpha
    atomic_write_json(path, cell)
    return cell


def cell_jobs(env_id: str, budget: int, seeds: int, methods: list[str] | None = None, out: str | Path = "bench",
              target: float | None = None, env_kwargs: dict[str, Any] | None = None, calibrate: bool = True,
              calib_alpha: float = 0.9, progress: bool = True) -> list[dict[str, Any]]:
    """The (method, seed) cells of one bench folder as :func:`run_cell` keyword arguments (settings checked,
    ``<out>/config.json`` written)."""
    out = Path(out)
    positive_int("seeds", seeds)
    positive_int("budget", budget)
    spec = gym.spec(env_id)  # unknown ids fail here, before any work
    mode = {**spec.kwargs, **(env_kwargs or {})}.get("mode", "structured")
    methods = list(methods) if methods else methods_for(mode)
    bad = [m for m in methods if mode not in get_method(m).modes]
    if bad:
        raise FFPruneError(f"methods {bad} need a structured env; {env_id} is {mode}")
    if calibrate and mode != "structured":
        calibrate = False  # Calib compensates removed heads / neurons: structured only
    _check_config(out, {"env_id": env_id, "budget": budget, "target": target, "env_kwargs": env_kwargs or {},
                        "weights": model_weights(env_id, env_kwargs)})
    return [{"env_id": env_id, "method": method, "seed": seed, "budget": budget, "out": out, "target": target,
             "env_kwargs": env_kwargs, "calibrate": calibrate, "calib_alpha": calib_alpha, "progress": progress}
            for method in methods for seed in range(seeds)]


def run_jobs(jobs: list[dict[str, Any]], workers: int = 0, ray_address: str | None = None,
             progress: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) cells: in this process, or as Ray tasks (one CPU each, one GPU each on CUDA) on a local
    Ray instance with ``workers`` CPUs or on the cluster at ``ray_address``; a task whose worker dies is retried
    once and resumes from its checkpoint."""
    if not workers:
        return [run_cell(**job) for job in jobs]
    on_gpu = any(str((job["env_kwargs"] or {}).get("device", "cpu")).startswith("cuda") for job in jobs)
    quiet = [{**job, "progress": False} for job in jobs]
    return run_on_ray(run_cell, quiet, workers, ray_address, progress, gpus_per_job=1 if on_gpu else 0)


def run_cells(env_id: str, budget: int, seeds: int, methods: list[str] | None = None, out: str | Path = "bench",
              target: float | None = None, env_kwargs: dict[str, Any] | None = None, calibrate: bool = True,
              calib_alpha: float = 0.9, progress: bool = True, workers: int = 0,
              ray_address: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Run (or resume) every (method, seed) cell (:func:`run_jobs`); returns the finished cells per method."""
    jobs = cell_jobs(env_id, budget, seeds, methods, out, target, env_kwargs, calibrate, calib_alpha, progress)
    cells: dict[str, list[dict[str, Any]]] = {}
    for job, cell in zip(jobs, run_jobs(jobs, workers, ray_address, progress)):
        cells.setdefault(job["method"], []).append(cell)
    return cells


def run_cell(env_id: str, method: str, seed: int, budget: int, out: Path, target: float | None,
             env_kwargs: dict[str, Any] | None, calibrate: bool, calib_alpha: float, progress: bool) -> dict[str, Any]:
    """One (method, seed) cell: the search (resumed if interrupted) and, optionally, its calibrated score."""
    path = cell_path(out, method, seed)
    if progress:
        print(f"[bench] {env_id} {method} seed {seed}", flush=True)
    cell = run_search(env_id, agent=method, budget=budget, seed=seed, logdir=out / "tb", out=path,
                      target=target, resume=True, env_kwargs=env_kwargs, progress=progress)
    return _calibrated(cell, path, calib_alpha) if calibrate else cell


def _mean_std(values: list[float]) -> tuple[float, float]:
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
            ("eval_ppl_calib", [r["best"].get("eval_ppl_calib") for r in runs]),
            ("calib_ppl", [r["best"]["calib_ppl"] for r in runs]),
            ("best_reward", [r["best"]["reward"] for r in runs]),
            ("evaluations", [r["cost"]["evaluations"] for r in runs]),
            ("tokens", [r["cost"]["tokens"] for r in runs]),
            ("wall_seconds", [r["cost"]["seconds"] for r in runs]),
            ("evaluations_to_best", [r["cost"]["evaluations_to_best"] for r in runs]),
        ):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
        row["dense_eval_ppl"] = runs[0]["best"]["dense_eval_ppl"]
        row["sparsity_mean"] = _mean_std([r["best"]["sparsity"] for r in runs])[0]
        rows.append(row)
    return rows


def cost_to_reach(history: list[dict[str, Any]], reward: float, axis: str = "evaluations") -> int | None:
    """Cost on ``axis`` (evaluations or tokens) a search spent until its best reward reached ``reward`` (``None``: never)."""
    for point in history:
        if np.isfinite(point["best_reward"]) and point["best_reward"] >= reward:
            return int(point[axis])
    return None


def reach_table(cells: dict[str, list[dict[str, Any]]], agent: str = "fastforward") -> list[dict[str, Any]]:
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
                         "evaluations": r["cost"]["evaluations"],
                         "evaluations_to_best": r["cost"]["evaluations_to_best"], "tokens_to_best": r["best"]["tokens"],
                         f"{agent}_evaluations_to_reach": cost_to_reach(history, r["best"]["reward"]),
                         f"{agent}_tokens_to_reach": cost_to_reach(history, r["best"]["reward"], "tokens")})
    return rows


def _fmt(mean: float, std: float, digits: int = 2) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_tables(out: Path, rows: list[dict[str, Any]], reach: list[dict[str, Any]], header: str) -> None:
    """``results.csv`` (all numbers) and ``results.md`` (the readable table), both atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())

    ordered = sorted(rows, key=lambda r: r["eval_ppl_mean"])
    lines = [header, "",
             "| method | held-out ppl | + calib | best reward | evaluations | tokens | wall s | evals to best |",
             "|---|---|---|---|---|---|---|---|"]
    for r in ordered:
        lines.append(f"| {r['method']} | {_fmt(r['eval_ppl_mean'], r['eval_ppl_std'])} | "
                     f"{_fmt(r['eval_ppl_calib_mean'], r['eval_ppl_calib_std'])} | "
                     f"{_fmt(r['best_reward_mean'], r['best_reward_std'], 4)} | {r['evaluations_mean']:.0f} | "
                     f"{r['tokens_mean']:,.0f} | {r['wall_seconds_mean']:.0f} | "
                     f"{_fmt(r['evaluations_to_best_mean'], r['evaluations_to_best_std'], 0)} |")
    lines += ["", f"Dense held-out ppl {rows[0]['dense_eval_ppl']:.2f}. Mean ± sample std over seeds; "
              "ppl of the best allocation found (best reward on the `calib` reward split), measured on the held-out "
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
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")


def plot(out: Path, cells: dict[str, list[dict[str, Any]]], title: str) -> None:
    """``curves.png`` (best reward vs. evaluations / wall seconds) and ``allocations.png``."""
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
                xs = [p[axis] for p in h]
                ys = [p["best_reward"] for p in h]
                if len(h) == 1:
                    ax.scatter(xs, ys, color=color, marker="D", s=30, label=label, zorder=3)
                else:
                    ax.step(xs, ys, where="post", color=color, alpha=0.85, lw=1.4, label=label)
    axes[0].set_xlabel("evaluations (search cost)")
    axes[1].set_xlabel("wall seconds")
    axes[0].set_ylabel("best reward (dense ppl / pruned ppl, calib split)")
    for ax in axes:
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(out / "curves.png", lambda tmp: fig.savefig(tmp, dpi=110), keep_suffix=True)

    first = next(iter(cells.values()))[0]
    kinds = sorted({name.split(".")[0] for name in _unit_names(first)}, key=["attn", "ffn", "block"].index)
    fig = Figure(figsize=(6.5 * len(kinds), 4.2))
    axes = fig.subplots(1, len(kinds), squeeze=False)
    for i, (method, runs) in enumerate(cells.items()):
        r = min(runs, key=lambda c: c["seed"])
        names, sparsity = _unit_names(r), np.array(r["best"]["layer_sparsity"])
        for ax, kind in zip(axes[0], kinds):
            idx = [k for k, n in enumerate(names) if n.startswith(kind)]
            ax.plot(range(len(idx)), sparsity[idx], marker="o", ms=3, color=colors(i % 10), label=method)
    for ax, kind in zip(axes[0], kinds):
        ax.set_title({"attn": "attention (heads / KV groups)", "ffn": "FFN neurons", "block": "block weights"}[kind])
        ax.set_xlabel("layer")
        ax.set_ylabel("sparsity")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{title}: best allocation per method (seed 0)")
    fig.tight_layout()
    atomic_write(out / "allocations.png", lambda tmp: fig.savefig(tmp, dpi=110), keep_suffix=True)


def _unit_names(cell: dict[str, Any]) -> list[str]:
    n = len(cell["best"]["layer_sparsity"])
    if cell["env_kwargs"].get("mode", "structured") == "structured":
        return [f"{k}.{b}" for b in range(n // 2) for k in ("attn", "ffn")]
    return [f"block.{b}" for b in range(n)]


def run_bench(env_id: str, budget: int, seeds: int = 3, methods: list[str] | None = None, out: str | Path = "bench",
              target: float | None = None, env_kwargs: dict[str, Any] | None = None, calibrate: bool = True,
              calib_alpha: float = 0.9, progress: bool = True, workers: int = 0,
              ray_address: str | None = None) -> list[dict[str, Any]]:
    """Run/resume all cells (as Ray tasks with ``workers``), then write the tables and plots; returns the summary rows."""
    cells = run_cells(env_id, budget, seeds, methods, out, target, env_kwargs, calibrate, calib_alpha, progress,
                      workers, ray_address)
    return write_outputs(Path(out), cells, env_id, budget, seeds)


def write_outputs(out: Path, cells: dict[str, list[dict[str, Any]]], env_id: str, budget: int,
                  seeds: int) -> list[dict[str, Any]]:
    """``results.csv`` / ``results.md`` / ``curves.png`` / ``allocations.png`` of finished cells; the summary rows."""
    rows = summarize(cells)
    target_used = next(iter(cells.values()))[0]["env_kwargs"]["target_sparsity"]
    title = f"{env_id}, target {target_used:g}, budget {budget}, {seeds} seed(s)"
    write_tables(out, rows, reach_table(cells), f"### {title}")
    plot(out, cells, title)
    return rows
