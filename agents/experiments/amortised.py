"""``ffprune amortised``: one target-conditioned FastForward policy per family and mode, serving the suite's targets.

A per-target search (every method of the ``core`` suite) restarts from scratch for each target and model. A policy
whose observation carries the target can instead be trained once across targets and then asked for any target
(:mod:`ffprune.agents.experiments.allocate`). The protocol, per family (``llama``, ``mistral``, ``opt``) and mode:

* **train** one FastForward policy with ``train_targets`` that exclude the suite's test targets
  (:data:`PROTOCOL`: structured ``0.2 … 0.6`` without 0.3 and 0.5; unstructured ``0.5 … 0.8`` without 0.7) for
  ``budget`` evaluations (default :data:`TRAIN_BUDGET`; the curriculum's ramps as in any FastForward search), seeds
  ``0..K-1``;
* **zero-shot**: the policy's mean at each test target, projected — no evaluation (``refine=0``);
* **refine**: ``refine`` evaluations (default 20) of FastForward's search at the test target from that policy;
* compare held-out ppl and normalised score (the suite's uniform cell is the reference, as in the suite) with the
  per-target methods' ``core`` suite cells at budget 100 (read from ``<suite_out>``, never re-run), and the
  **evaluations each approach spends to serve all the targets of a family**: a per-target method ``100 × targets``,
  the policy ``budget`` (+ ``refine × targets``).

**Cross-model rows**: the features are family-neutral (every bundled family has 16 structured / 8 unstructured
units), so a policy trained on one family can allocate for another at zero evaluations. Per mode, the ``llama`` and
``opt`` policies (already trained above) allocate zero-shot for ``mistral``; and one policy trained on both — the
``llama`` policy's training continued on ``opt`` for another ``budget`` evaluations (a warm start; FastForward
trains on one env at a time) — does too.

The settings (families, modes, seeds, budgets) are an :class:`AmortisedSpec`. Every job resumes (training checkpoints,
finished allocations are kept) and runs in-process or as Ray tasks (a
:class:`~ffprune.agents.experiments.engine.Runner`). The analysis is ``amortised.md`` / ``amortised.json``. It compares
with the real suite: surrogate settings and surrogate results (:mod:`ffenv.surrogate`) are refused with a one-line
error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ffenv.errors import FFPruneError, non_negative_int, positive_int
from ffenv.io import beside
from ffenv.registration import FAMILY_MODELS, TASK_TARGETS, family_env_id, family_id
from ffprune.agents.defaults import AMORTISED_MODES, AMORTISED_REFINE, AMORTISED_TRAIN_BUDGET, SUITE_BUDGET, SUITE_SEEDS
from ffprune.agents.experiments.allocate import AllocateSpec, allocate
from ffprune.agents.experiments.bench import cell_path
from ffprune.agents.experiments.engine import IN_PROCESS, Report, Runner, keyword_jobs, raise_failures, run_jobs
from ffprune.agents.experiments.search import SearchSpec, run_search
from ffprune.agents.experiments.suite import REFERENCE, get_suite, normalised, task_name
from ffprune.agents.results import read_result, read_result_if_any, refuse_surrogate_settings, seed_file
from ffprune.agents.tools.specs import spec_with

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModeProtocol:
    """The training targets of one mode and the suite tasks they serve."""

    train_targets: tuple[float, ...]
    """Training targets: none of them is a test target."""
    test_targets: tuple[float, ...]
    """The suite's targets of the mode (its tasks ``<family>-s0.3`` ...)."""


TRAIN_TARGETS: dict[str, tuple[float, ...]] = {"structured": (0.2, 0.25, 0.35, 0.4, 0.45, 0.55, 0.6),
                                               "unstructured": (0.5, 0.55, 0.6, 0.65, 0.75, 0.8)}
"""Each mode's training targets: between and around the suite's, none of them a test target."""
PROTOCOL: dict[str, ModeProtocol] = {mode: ModeProtocol(TRAIN_TARGETS[mode], TASK_TARGETS[mode])
                                     for mode in AMORTISED_MODES}
TRAIN_BUDGET = AMORTISED_TRAIN_BUDGET
"""Evaluations of one policy's training (per family, mode and seed)."""
REFINE = AMORTISED_REFINE
"""Evaluations of a refinement at one test target."""
PER_TARGET_BUDGET = SUITE_BUDGET
"""The ``core`` suite's budget per target (the per-target methods' cells)."""
REAL = {"real": True, "what": "ffprune amortised"}
"""How the study reads results: real ones only (a surrogate result is a one-line error)."""
TRANSFER_TO = "mistral"
TRANSFER_FROM = ("llama", "opt")


def _train_path(out: Path, policy: str, mode: str, seed: int) -> Path:
    return seed_file(out / "policies" / f"{policy}-{mode}", seed)


def _policy_file(result: Path) -> Path:
    return beside(result, ".policy.pt")


@dataclass(frozen=True)
class AmortisedSpec:
    """What the amortised study is (where it writes, where the suite's cells are, where its jobs run and whether it shows
    progress are :func:`run_amortised`'s own arguments). The mapping is never mutated."""

    families: Sequence[str] = tuple(FAMILY_MODELS)
    """Bundled families, one policy each per mode and seed."""
    modes: Sequence[str] = tuple(PROTOCOL)
    """Modes of :data:`PROTOCOL`."""
    seeds: int = SUITE_SEEDS
    """Seeds ``0..seeds-1`` (the suite's cells use 0-2)."""
    budget: int = TRAIN_BUDGET
    """Evaluations of each policy's training."""
    refine: int = REFINE
    """Evaluations of each refinement at a test target (0: zero-shot only)."""
    cross_model: bool = True
    """Also the cross-model rows (the llama, opt and llama+opt policies allocating for mistral; module docstring)."""
    env_kwargs: Mapping[str, Any] | None = None
    """Env settings everywhere (not the target; the suite's cells were run without any)."""


def train_job(spec: SearchSpec, out: Path, progress: bool = False) -> dict[str, Any]:
    """One policy's training: the resumable FastForward search ``spec`` (with its ``train_targets``) into ``out``; its
    result. A finished result whose policy file is missing (policies are not committed with the results) is trained
    again: same seed, same policy."""
    log.info("[amortised] train %s seed %d%s", spec.env_id, spec.seed, f" from {spec.warm_start}" if spec.warm_start else "")
    return run_search(spec, out=out, logdir=out.parents[2] / "tb", resume=_policy_file(out).exists() or not out.exists(),
                      progress=progress)


def allocate_job(spec: AllocateSpec, out: Path, progress: bool = False) -> dict[str, Any]:
    """One allocation (zero-shot or refined: :class:`~ffprune.agents.experiments.allocate.AllocateSpec`) into ``out``;
    a finished one is read back, not recomputed."""
    if out.exists():
        done = read_result(out, **REAL)
        if done.get("complete"):
            return done
    log.info("[amortised] allocate %s at %s refine %d seed %d", spec.policy, spec.target, spec.refine, spec.seed)
    return allocate(spec, out=out, progress=progress)


def _run(fn: Any, jobs: list[dict[str, Any]], runner: Runner) -> list[Any]:
    """Every job (:func:`~ffprune.agents.experiments.engine.run_jobs`); then, if any failed, one error listing them (the
    analysis needs every policy and allocation; what finished is kept and the same command resumes)."""
    if runner.workers:
        jobs = [{**job, "progress": False} for job in jobs]
    done = run_jobs(keyword_jobs(fn), jobs, runner)
    raise_failures("ffprune amortised", done)
    return done


def run_amortised(spec: AmortisedSpec | None = None, *, out: str | Path, suite_out: str | Path,
                  runner: Runner = IN_PROCESS, progress: bool = True, **settings: Any) -> dict[str, Any]:
    """Train (or resume) the policies of ``spec`` (``settings``: :class:`AmortisedSpec` fields by keyword, replacing its
    own) in ``out``, allocate at the test targets (every job on ``runner``: here or as Ray tasks), then write the
    analysis against the suite's cells in ``suite_out`` (module docstring)."""
    spec = spec_with(AmortisedSpec, spec, settings, "run_amortised", "amortised")
    families, modes, seeds, budget, refine = spec.families, spec.modes, spec.seeds, spec.budget, spec.refine
    env_kwargs = dict(spec.env_kwargs) if spec.env_kwargs is not None else None
    out = Path(out)
    refuse_surrogate_settings(env_kwargs, "ffprune amortised")
    positive_int("seeds", seeds)
    positive_int("budget", budget)
    non_negative_int("refine", refine)
    unknown = [m for m in modes if m not in PROTOCOL]
    if unknown:
        raise FFPruneError(f"modes must be among {list(PROTOCOL)}, got {unknown}")
    for f in families:
        family_id(f)  # the protocol's families are the bundled ones: one line for another

    def training(family: str, mode: str, seed: int, warm_start: Path | None = None) -> SearchSpec:
        return SearchSpec(family_env_id(family, mode), "fastforward", budget, seed, env_kwargs=env_kwargs,
                          train_targets=PROTOCOL[mode].train_targets, warm_start=warm_start)

    trains = [{"spec": training(f, m, s), "out": _train_path(out, f, m, s), "progress": progress}
              for m in modes for f in families for s in range(seeds)]
    _run(train_job, trains, runner)
    both = spec.cross_model and all(f in families for f in (*TRANSFER_FROM, TRANSFER_TO))
    if both:  # the llama policy's training continued on opt: one policy that has seen both families
        second = [{"spec": training(TRANSFER_FROM[1], m, s, _policy_file(_train_path(out, TRANSFER_FROM[0], m, s))),
                   "out": _train_path(out, "+".join(TRANSFER_FROM), m, s), "progress": progress}
                  for m in modes for s in range(seeds)]
        _run(train_job, second, runner)
    allocations = []
    for m in modes:
        proto = PROTOCOL[m]
        for s in range(seeds):
            for f in families:
                policy = _policy_file(_train_path(out, f, m, s))
                for t in proto.test_targets:
                    task = task_name(f, m, t)
                    for r in dict.fromkeys((0, refine)):
                        allocations.append({"spec": AllocateSpec(policy, t, env_kwargs=env_kwargs, refine=r, seed=s),
                                            "out": seed_file(out / task / f"refine{r}", s), "progress": progress})
            if both:
                for source in (*TRANSFER_FROM, "+".join(TRANSFER_FROM)):
                    policy = _policy_file(_train_path(out, source, m, s))
                    for t in proto.test_targets:
                        task = task_name(TRANSFER_TO, m, t)
                        allocations.append({"spec": AllocateSpec(policy, t, family_env_id(TRANSFER_TO, m), env_kwargs,
                                                                 refine=0, seed=s),
                                            "out": seed_file(out / task / f"from-{source}", s), "progress": progress})
    _run(allocate_job, allocations, runner)
    return report_amortised(spec, out=out, suite_out=suite_out)


def report_amortised(spec: AmortisedSpec | None = None, *, out: str | Path, suite_out: str | Path,
                     **settings: Any) -> dict[str, Any]:
    """The analysis of what ``spec`` (``settings``: :class:`AmortisedSpec` fields by keyword) left in ``out``, against
    the suite's cells in ``suite_out`` (no search, no evaluation): ``amortised.md`` and ``amortised.json``."""
    spec = spec_with(AmortisedSpec, spec, settings, "report_amortised", "amortised")
    families, modes, seeds, budget, refine = spec.families, spec.modes, spec.seeds, spec.budget, spec.refine
    out, suite_out = Path(out), Path(suite_out)
    suite = get_suite("core")
    known = {t.name for t in suite.tasks}
    rows: list[dict[str, Any]] = []
    for m in modes:
        proto = PROTOCOL[m]
        n = len(proto.test_targets)
        for f in families:
            for t in proto.test_targets:
                task = task_name(f, m, t)
                if task not in known:
                    raise FFPruneError(f"{task} is not a core suite task")
                reference = read_result_if_any(cell_path(suite_out / task, REFERENCE, 0), **REAL)
                if reference is None:
                    raise FFPruneError(f"no {REFERENCE} cell in {suite_out / task}: run the core suite first")
                gap = (reference["best"]["eval_ppl"], reference["best"]["dense_eval_ppl"])
                entries = []  # (approach, kind, cells, evaluations spent per family)
                for r in dict.fromkeys((0, refine)):
                    cells = _cells(seed_file(out / task / f"refine{r}", s) for s in range(seeds))
                    entries.append(("zero-shot" if r == 0 else f"refine {r}", "amortised", cells, budget + r * n))
                if f == TRANSFER_TO:
                    for source in (*TRANSFER_FROM, "+".join(TRANSFER_FROM)):
                        cells = _cells(seed_file(out / task / f"from-{source}", s) for s in range(seeds))
                        entries.append((f"zero-shot, policy of {source}", "cross-model", cells, 0))
                for method_dir in sorted((suite_out / task / "cells").glob("*")):
                    cells = _cells(cell_path(suite_out / task, method_dir.name, s) for s in range(seeds))
                    entries.append((method_dir.name, "per-target", cells, cells[0]["cost"]["evaluations"] * n if cells else 0))
                rows += [_row({"task": task, "mode": m, "approach": approach, "kind": kind}, cells, spent, gap)
                         for approach, kind, cells, spent in entries if cells]
    analysis = {"families": list(families), "modes": list(modes), "seeds": seeds, "budget": budget, "refine": refine,
                "protocol": {m: {"train_targets": list(PROTOCOL[m].train_targets),
                                 "test_targets": list(PROTOCOL[m].test_targets)} for m in modes},
                "per_target_budget": PER_TARGET_BUDGET, "rows": rows, "goals": _goals(rows, refine)}
    return REPORT.write(out, analysis)


def _cells(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The finished results among ``paths`` (one per seed; a seed not run yet is left out)."""
    return [c for p in paths if (c := read_result_if_any(p, **REAL)) is not None]


def _row(head: dict[str, Any], cells: list[dict[str, Any]], spent: int, gap: tuple[float, float]) -> dict[str, Any]:
    """One row of the table: ``head`` (task, mode, approach, kind), then held-out ppl over the seeds' cells, their
    normalised score (``gap``: uniform's and the dense model's held-out ppl) and what they spent."""
    uniform, dense = gap
    ppl = np.array([c["best"]["eval_ppl"] for c in cells], float)
    return {**head, "seeds": len(cells),
            "eval_ppl_mean": float(ppl.mean()), "eval_ppl_std": float(ppl.std(ddof=1)) if len(ppl) > 1 else 0.0,
            "score_mean": float(np.mean([normalised(p, uniform, dense) for p in ppl])), "evaluations_per_family": spent,
            "evaluations_here": float(np.mean([c["cost"]["evaluations"] for c in cells]))}


def _goals(rows: list[dict[str, Any]], refine: int) -> list[dict[str, Any]]:
    """Per task: is zero-shot within 1 % of per-target FastForward's held-out ppl, and is ``refine`` ahead of every
    per-target method (lower mean held-out ppl)?"""
    goals = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = {r["approach"]: r for r in rows if r["task"] == task}
        per_target = [r for r in rows if r["task"] == task and r["kind"] == "per-target"]
        ff, zero, refined = mine.get("fastforward"), mine.get("zero-shot"), mine.get(f"refine {refine}")
        best_other = min(per_target, key=lambda r: r["eval_ppl_mean"]) if per_target else None
        goals.append({
            "task": task,
            "zero_shot_vs_fastforward": None if not (ff and zero) else zero["eval_ppl_mean"] / ff["eval_ppl_mean"] - 1,
            "zero_shot_within_1pct": None if not (ff and zero) else zero["eval_ppl_mean"] <= 1.01 * ff["eval_ppl_mean"],
            "best_per_target": None if best_other is None else best_other["approach"],
            "refine_ahead_of_every_per_target": None if not (refined and best_other) else
            refined["eval_ppl_mean"] < best_other["eval_ppl_mean"]})
    return goals


def amortised_markdown(analysis: dict[str, Any]) -> str:
    """The readable tables of :func:`report_amortised`."""
    budget, refine = analysis["budget"], analysis["refine"]
    lines = ["### One policy per family and mode vs a search per target", "",
             f"Policies trained for {budget} evaluations on targets "
             + "; ".join(f"{m} {p['train_targets']}" for m, p in analysis["protocol"].items())
             + f", then asked for the suite's targets zero-shot (no evaluation) or refined for {refine} evaluations; "
             f"per-target methods: the `core` suite's cells (budget {analysis['per_target_budget']} per target). "
             "Held-out ppl mean ± std over seeds; score = share of the uniform → dense held-out gap closed; evaluations "
             "per family = what the approach spends to serve every target of the family in this mode (a policy: its "
             "training plus the refinements; cross-model rows reuse policies trained for their own family: 0 more).",
             "", "| task | approach | seeds | held-out ppl | score | evaluations per family |", "|---" * 6 + "|"]
    order = {"amortised": 0, "cross-model": 1, "per-target": 2}
    for r in sorted(analysis["rows"], key=lambda r: (r["task"], order[r["kind"]], r["eval_ppl_mean"])):
        name = f"**{r['approach']}**" if r["kind"] != "per-target" else r["approach"]
        lines.append(f"| {r['task']} | {name} | {r['seeds']} | {r['eval_ppl_mean']:.2f} ± {r['eval_ppl_std']:.2f} | "
                     f"{r['score_mean']:.3f} | {r['evaluations_per_family']} |")
    lines += ["", "| task | zero-shot vs per-target FastForward (held-out ppl) | within 1 %? | best per-target method | "
              f"refine {refine} ahead of every per-target method? |", "|---" * 5 + "|"]

    def yes(v: bool | None) -> str:
        return "–" if v is None else ("yes" if v else "no")

    for g in analysis["goals"]:
        delta = "–" if g["zero_shot_vs_fastforward"] is None else f"{100 * g['zero_shot_vs_fastforward']:+.1f} %"
        lines.append(f"| {g['task']} | {delta} | {yes(g['zero_shot_within_1pct'])} | {g['best_per_target'] or '–'} | "
                     f"{yes(g['refine_ahead_of_every_per_target'])} |")
    return "\n".join(lines) + "\n"


REPORT = Report("amortised", amortised_markdown)
"""The protocol's report: ``amortised.json`` and ``amortised.md``."""
