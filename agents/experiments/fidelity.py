"""``ffprune fidelity``: which reward windows and window length rank allocations like the held-out perplexity.

A reward must rank allocations as the held-out perplexity does, at the lowest cost in tokens. For one task (the
settings are a :class:`FidelitySpec`) this study draws ``allocations`` allocations of several kinds at the task's
target — uniform, the heuristics (OWL, DLP, AlphaPruning, FLAP where structured, ATP at several common differences),
depth ramps, and random actions at three spreads — prunes the model to each once and measures, from one forward each:

* per validation window (the reward split), at every candidate length in ``lengths``: every prefix of ``n``
  windows (``n`` in ``windows``, up to ``max_tokens`` tokens) is a candidate reward of ``n × length`` tokens;
* the task's held-out perplexity (its ``eval_samples`` test windows, what every suite cell is scored on).

For each candidate it reports Spearman ρ of the candidate's perplexity vs the held-out perplexity over all
allocations (and without the random ones, the allocations a search actually meets), and recommends the cheapest
candidate with ρ ≥ ``goal``. The importance statistics stay the task's (its ``calib_samples`` × ``seq_len``
calibration windows) whatever the candidate length, so only the reward's measurement varies.

Rows are written atomically after every allocation (``rows.json``; a rerun resumes, refusing a folder of other
settings); ``fidelity.json`` / ``fidelity.md`` / ``fidelity.png`` are written at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from ffenv.errors import FFPruneError, positive_int
from ffenv.io import atomic_save_figure, atomic_write_json, atomic_write_text, read_json
from ffenv.lm.data import evaluation_windows
from ffenv.lm.perplexity import window_nll
from ffenv.registration import resolve_config
from ffprune.agents.experiments.engine import Report
from ffprune.agents.experiments.rlstats import spearman
from ffprune.agents.experiments.suite import whole_split
from ffprune.agents.tools.specs import spec_with
from ffprune.baselines.heuristics import (
    alphapruning_allocation,
    atp_allocation,
    atp_beta_range,
    dlp_allocation,
    flap_allocation,
    owl_allocation,
)

GOAL = 0.9
LENGTHS = (256, 512)
WINDOWS = (2, 4, 8, 16)
MAX_TOKENS = 4096
"""The costliest candidate reward measured (tokens per evaluation): 16 × 256, 8 × 512."""
SPREADS = (0.3, 0.6, 1.0)
"""Standard deviations of the random Gaussian actions (clipped to [-1, 1])."""


def _actions(env: gym.Env, n: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """(kind, action) of the study's allocations, deterministic in ``seed``: uniform, heuristics, 1/5 depth ramps, the
    rest random actions at :data:`SPREADS` in turn."""
    u = env.unwrapped
    out: list[tuple[str, np.ndarray]] = [("uniform", np.zeros(u.n_units, np.float32))]
    heuristics = {"owl": owl_allocation, "dlp": dlp_allocation, "alphapruning": lambda e: alphapruning_allocation(e)[0]}
    if u.config.mode == "structured":
        heuristics["flap"] = flap_allocation
    for name, allocate in heuristics.items():
        out.append((name, u.action_from_sparsities(allocate(env))))
    beta_max = atp_beta_range(env)
    for frac in (0.25, 0.5, 1.0):
        out.append(("atp", u.action_from_sparsities(atp_allocation(env, beta_max * frac))))
    rng = np.random.default_rng(seed)
    depth = np.array([unit.block for unit in u.units], np.float64) / max(1, u.n_blocks - 1) * 2 - 1
    ramps = max(0, n - len(out)) // 5
    for _ in range(ramps):
        slope, noise = rng.uniform(-1, 1), rng.uniform(0.05, 0.3)
        out.append(("ramp", np.clip(slope * depth + rng.normal(0, noise, u.n_units), -1, 1).astype(np.float32)))
    i = 0
    while len(out) < n:
        spread = SPREADS[i % len(SPREADS)]
        out.append((f"random{spread:g}", np.clip(rng.normal(0, spread, u.n_units), -1, 1).astype(np.float32)))
        i += 1
    return out[:n]


@dataclass(frozen=True)
class FidelitySpec:
    """What a fidelity study is (where it writes and whether it shows progress are :func:`run_fidelity`'s own
    arguments). The mapping is never mutated."""

    named_by: ClassVar[tuple[str, str]] = ("env_id", "an env id")
    """A plain string given as the spec is its ``env_id`` (:func:`~ffprune.agents.tools.specs.spec_with`)."""

    env_id: str
    """The task's env, a registered id (``FFPrune-SmolLM2-v0``)."""
    allocations: int = 100
    """Allocations measured (at least 10)."""
    seed: int = 0
    """Seed of the ramps and random allocations."""
    lengths: tuple[int, ...] = LENGTHS
    """Candidate window lengths (tokens, at least 2)."""
    windows: tuple[int, ...] = WINDOWS
    """Candidate numbers of reward windows."""
    goal: float = GOAL
    """The Spearman ρ a candidate reward must reach, in ``(0, 1]``."""
    max_tokens: int = MAX_TOKENS
    """The costliest candidate reward measured, in tokens."""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Env settings on top of the id's (an :class:`~ffenv.config.EnvConfig` field each)."""


def run_fidelity(spec: FidelitySpec | str | None = None, *, out: str | Path, progress: bool = True,
                 **settings: Any) -> dict[str, Any]:
    """Run (or resume) the study into ``out`` and return its summary (see the module docstring). ``spec`` is a
    :class:`FidelitySpec` or an env id; ``settings`` are its fields by keyword (``run_fidelity("FFPrune-SmolLM2-v0",
    out="fid", allocations=50, env_kwargs={"seq_len": 256})``), replacing the spec's."""
    spec = spec_with(FidelitySpec, spec, settings, "run_fidelity", "fidelity")
    env_id, env_kwargs, allocations, seed, goal, max_tokens = (spec.env_id, dict(spec.env_kwargs), spec.allocations,
                                                                 spec.seed, spec.goal, spec.max_tokens)
    positive_int("allocations", allocations)
    if allocations < 10:
        raise FFPruneError(f"allocations must be >= 10 for a rank correlation worth reading, got {allocations}")
    lengths, windows = tuple(sorted(set(spec.lengths))), tuple(sorted(set(spec.windows)))
    for name, values in (("lengths", lengths), ("windows", windows)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 2 - (name == "windows") for v in values):
            raise FFPruneError(f"{name} must be positive integers{' >= 2' if name == 'lengths' else ''}, got {list(values)}")
    if not 0 < goal <= 1:
        raise FFPruneError(f"goal must be in (0, 1], got {goal}")
    positive_int("max_tokens", max_tokens)
    count = {length: max([n for n in windows if n * length <= max_tokens], default=0) for length in lengths}
    if not all(count.values()):
        raise FFPruneError(f"max_tokens={max_tokens} admits no candidate of length {min(count, key=count.get)} "
                           f"(windows {list(windows)})")
    resolve_config(env_id, env_kwargs)
    out = Path(out)
    manifest = {"env_id": env_id, "env_kwargs": env_kwargs, "allocations": allocations, "seed": seed,
                "lengths": list(lengths), "windows": list(windows), "max_tokens": max_tokens}
    rows_file = out / "rows.json"
    saved: dict[str, Any] = {"rows": []}
    if rows_file.exists():
        saved = read_json(rows_file, "rows.json")
        if saved.get("settings") != manifest:
            raise FFPruneError(f"out={str(out)!r} holds a fidelity study with other settings ({saved.get('settings')}); "
                               "choose another folder")
    rows: list[dict[str, Any]] = saved["rows"]
    if len(rows) < allocations:  # a finished study is only analysed again: no model is loaded
        _measure(env_id, env_kwargs, manifest, count, saved, rows_file, progress)
    dense_held = saved["dense_held_out_ppl"]
    summary = analyse(manifest, rows, goal, dense_held)
    return REPORT.write(out, summary)


def _measure(env_id: str, env_kwargs: dict[str, Any], settings: dict[str, Any], count: dict[int, int],
             saved: dict[str, Any], rows_file: Path, progress: bool) -> None:
    """Measure the allocations ``saved["rows"]`` lacks (and the dense model), appending to it and rewriting
    ``rows_file`` atomically after each one."""
    env = gym.make(env_id, **env_kwargs)
    u = env.unwrapped
    cfg = u.config
    if cfg.surrogate:
        raise FFPruneError("the fidelity study measures the real model: surrogate=True is refused")
    ctx = u.model.config.max_position_embeddings
    valid = {length: evaluation_windows(u.tokenizer, cfg.corpus, "reward", seq_len=length, max_positions=ctx)[:n]
             for length, n in count.items()}
    for length, tokens in valid.items():
        if len(tokens) < count[length]:
            raise FFPruneError(f"windows: the reward split has only {len(tokens)} windows of {length} tokens")
    held = u.windows("eval")

    def measure() -> tuple[dict[str, list[float]], float]:
        """Per-window NLL at every candidate length, and the held-out ppl, of the model as it is now."""
        nll = {str(length): window_nll(u.model, tokens).tolist() for length, tokens in valid.items()}
        held_nll = float(window_nll(u.model, held).sum())
        return nll, math.exp(min(700.0, held_nll / (held.shape[0] * (held.shape[1] - 1))))

    rows = saved["rows"]
    actions = _actions(env, settings["allocations"], settings["seed"])
    saved["dense_nll"], saved["dense_held_out_ppl"] = measure()
    bar = tqdm(total=len(actions), initial=len(rows), desc=f"fidelity {env_id}", disable=not progress)
    for i in range(len(rows), len(actions)):
        kind, action = actions[i]
        t0 = time.perf_counter()
        with u.backend.pruned(u.allocation(action)):
            nll, held_out_ppl = measure()
        rows.append({"index": i, "kind": kind, "action": action.tolist(), "nll": nll, "held_out_ppl": held_out_ppl,
                     "seconds": time.perf_counter() - t0})
        atomic_write_json(rows_file, {"settings": settings, "dense_nll": saved["dense_nll"],
                                      "dense_held_out_ppl": saved["dense_held_out_ppl"], "rows": rows})
        bar.update(1)
    bar.close()
    env.close()


def _ppl(row_nll: list[float], n: int, length: int) -> float:
    return math.exp(min(700.0, sum(row_nll[:n]) / (n * (length - 1))))


def analyse(settings: dict[str, Any], rows: list[dict[str, Any]], goal: float, dense_held_out: float) -> dict[str, Any]:
    """Per candidate (length, windows): tokens per evaluation, Spearman ρ vs the held-out ppl over all rows, over the
    non-random rows and over the best quarter by held-out ppl (the close calls at the end of a search); the cheapest
    candidate reaching ``goal`` over all rows."""
    held = np.array([r["held_out_ppl"] for r in rows])
    searched = np.array([not r["kind"].startswith("random") for r in rows])
    best = held <= np.quantile(held, 0.25)  # the allocations a search ends among: close calls
    candidates = []
    for length in settings["lengths"]:
        for n in [n for n in settings["windows"] if n * length <= settings["max_tokens"]]:
            ppl = np.array([_ppl(r["nll"][str(length)], n, length) for r in rows])
            candidates.append({"length": length, "windows": n, "tokens": length * n, "rho": spearman(ppl, held),
                               "rho_non_random": spearman(ppl[searched], held[searched]) if searched.sum() > 2 else None,
                               "rho_best_quarter": spearman(ppl[best], held[best]) if best.sum() > 2 else None})
    candidates.sort(key=lambda c: (c["tokens"], c["length"]))
    reaching = sorted((c for c in candidates if c["rho"] >= goal), key=lambda c: (c["tokens"], -c["rho"]))
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    return {"settings": settings, "allocations": len(rows), "kinds": kinds, "goal": goal,
            "dense_held_out_ppl": dense_held_out, "held_out_ppl_range": [float(held.min()), float(held.max())],
            "candidates": candidates, "recommended": reaching[0] if reaching else None,
            "seconds_per_allocation": float(np.median([r["seconds"] for r in rows]))}


def render(summary: dict[str, Any]) -> str:
    """``fidelity.md``: the candidates' table and the recommendation."""
    s = summary["settings"]
    lines = [f"# Reward fidelity on {s['env_id']}", "",
             f"{summary['allocations']} allocations ({', '.join(f'{k} {v}' for k, v in summary['kinds'].items())}) at the "
             f"task's target, seed {s['seed']}; held-out ppl (the task's held-out windows) from "
             f"{summary['held_out_ppl_range'][0]:.1f} to {summary['held_out_ppl_range'][1]:.1f} (dense "
             f"{summary['dense_held_out_ppl']:.2f}). Spearman ρ of each candidate reward's ppl vs the held-out ppl; "
             "*non-random*: without the random actions; *best quarter*: among the quarter with the lowest held-out ppl "
             "(the close calls a search ends with).", "",
             "| length | windows | tokens | ρ | ρ non-random | ρ best quarter |", "|---|---|---|---|---|---|"]
    for c in summary["candidates"]:
        cells = ["–" if c[k] is None else f"{c[k]:.3f}" for k in ("rho_non_random", "rho_best_quarter")]
        lines.append(f"| {c['length']} | {c['windows']} | {c['tokens']} | {c['rho']:.3f} | {' | '.join(cells)} |")
    rec = summary["recommended"]
    lines += ["", f"Cheapest candidate with ρ ≥ {summary['goal']}: " + (
        f"**{rec['windows']} × {rec['length']} tokens** (ρ {rec['rho']:.3f})." if rec else "none."),
        f"Median {summary['seconds_per_allocation']:.1f} s per allocation (every candidate and the held-out windows).", ""]
    return "\n".join(lines)


def _plot(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for length in summary["settings"]["lengths"]:
        pts = [c for c in summary["candidates"] if c["length"] == length]
        line, = ax.plot([c["tokens"] for c in pts], [c["rho"] for c in pts], "o-", label=f"{length}-token windows")
        ax.plot([c["tokens"] for c in pts], [c["rho_best_quarter"] for c in pts], "s:", color=line.get_color(),
                label=f"{length}: best quarter")
    ax.axhline(summary["goal"], color="grey", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("reward tokens per evaluation")
    ax.set_ylabel("Spearman ρ vs held-out ppl")
    ax.set_title(summary["settings"]["env_id"])
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------- the held-out subset vs the full split
FULL_SPLIT_FILE = "full_split.json"


def full_split_picks(rows: list[dict[str, Any]], count: int) -> list[int]:
    """``count`` of a study's rows spread evenly over its range of held-out ppl (lowest, highest and between; each row
    once): the allocations whose full-split ppl is measured."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["held_out_ppl"], i))
    return sorted({order[int(round(j))] for j in np.linspace(0, len(order) - 1, min(count, len(order)))})


def run_full_split(out: str | Path, count: int = 20, progress: bool = True) -> dict[str, Any]:
    """How the task's fixed held-out subset (its ``eval_samples`` test windows, what every cell is scored on) tracks
    the **whole** test split: for ``count`` allocations of the finished study in ``out`` (:func:`full_split_picks`),
    the ppl over every ``seq_len``-token window of the split, beside the subset's. Resumable (``full_split.json`` is
    rewritten atomically after each allocation); returns :func:`analyse_full_split`'s summary, also written to
    ``full_split.md``."""
    positive_int("count", count)
    if count < 5:
        raise FFPruneError(f"count must be >= 5 allocations for a rank correlation worth reading, got {count}")
    out = Path(out)
    study = read_json(out / "rows.json", "fidelity rows (run `ffprune fidelity` first)")
    if len(study.get("rows", [])) < study["settings"]["allocations"]:
        raise FFPruneError(f"{str(out / 'rows.json')!r} is an unfinished study ({len(study['rows'])} of "
                           f"{study['settings']['allocations']} allocations): run `ffprune fidelity` to finish it first")
    picks = full_split_picks(study["rows"], count)
    path = out / FULL_SPLIT_FILE
    saved = read_json(path, "full-split rows") if path.exists() else {}
    if saved.get("picks") not in (None, picks):
        raise FFPruneError(f"{str(path)!r} measured other allocations ({saved['picks']}); use another count or remove it")
    rows: list[dict[str, Any]] = saved.get("rows", [])
    if len(rows) < len(picks):
        env = gym.make(study["settings"]["env_id"], **study["settings"]["env_kwargs"])
        tokens = env.unwrapped.backend.split_tokens("eval", None)
        bar = tqdm(total=len(picks), initial=len(rows), desc="full test split", disable=not progress)
        for index in picks[len(rows):]:
            row = study["rows"][index]
            t0 = time.perf_counter()
            measured = whole_split(env, np.asarray(row["action"], np.float32))
            saved["dense_full_ppl"] = measured["dense_ppl"]
            rows.append({"index": index, "kind": row["kind"], "subset_ppl": row["held_out_ppl"],
                         "full_ppl": measured["ppl"], "seconds": time.perf_counter() - t0})
            atomic_write_json(path, {"picks": picks, "windows": list(tokens.shape), "dense_full_ppl": saved["dense_full_ppl"],
                                     "dense_subset_ppl": study["dense_held_out_ppl"], "rows": rows})
            bar.update(1)
        bar.close()
        env.close()
        saved = read_json(path, "full-split rows")
    summary = analyse_full_split(saved, study["settings"]["env_id"])
    atomic_write_text(out / "full_split.md", render_full_split(summary))
    return summary


def analyse_full_split(saved: dict[str, Any], env_id: str) -> dict[str, Any]:
    """Spearman ρ of the subset's ppl vs the full split's over the measured allocations, and the ratio subset / full
    (median, range) with the dense model's beside it."""
    rows = saved["rows"]
    subset = np.array([r["subset_ppl"] for r in rows])
    full = np.array([r["full_ppl"] for r in rows])
    ratio = subset / full
    return {"env_id": env_id, "allocations": len(rows), "windows": saved["windows"],
            "dense_subset_ppl": saved["dense_subset_ppl"], "dense_full_ppl": saved["dense_full_ppl"],
            "rho": spearman(subset, full) if len(rows) >= 2 else None,
            "ratio_median": float(np.median(ratio)), "ratio_range": [float(ratio.min()), float(ratio.max())],
            "seconds_per_allocation": float(np.median([r["seconds"] for r in rows])), "rows": rows}


def render_full_split(summary: dict[str, Any]) -> str:
    """``full_split.md``: the subset vs the full test split."""
    n, length = summary["windows"]
    lines = [f"# The held-out subset vs the whole test split on {summary['env_id']}", "",
             f"{summary['allocations']} allocations of the fidelity study, spread over its range of held-out ppl; the "
             f"full split is all {n} windows of {length} tokens ({n * length:,} tokens). Dense: subset "
             f"{summary['dense_subset_ppl']:.2f}, full {summary['dense_full_ppl']:.2f}.", "",
             f"Spearman ρ (subset vs full) **{summary['rho']:.3f}**; subset / full ppl: median "
             f"{summary['ratio_median']:.3f}, range [{summary['ratio_range'][0]:.3f}, {summary['ratio_range'][1]:.3f}]; "
             f"median {summary['seconds_per_allocation']:.0f} s per allocation on the full split.", "",
             "| allocation | kind | subset ppl | full-split ppl | ratio |", "|---|---|---|---|---|"]
    for r in sorted(summary["rows"], key=lambda r: r["full_ppl"]):
        lines.append(f"| {r['index']} | {r['kind']} | {r['subset_ppl']:.2f} | {r['full_ppl']:.2f} | "
                     f"{r['subset_ppl'] / r['full_ppl']:.3f} |")
    return "\n".join(lines) + "\n"


REPORT = Report("fidelity", render, {"fidelity.png": _plot})
"""The study's report: ``fidelity.json``, ``fidelity.md`` and ``fidelity.png``."""
