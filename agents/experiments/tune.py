"""``ffprune tune``: an honest tuning of one method's settings (FastForward's, or SB3 PPO's) on the reward split.

A method's defaults were chosen on the benchmark's own runs; to compare methods fairly, each gets the same small grid
of settings, tuned the same way, **on the search's own signal only**:

* a grid of named **variants** (agent kwargs; :data:`GRIDS` has one for ``fastforward`` and one for ``ppo``, ``default``
  being the method's own settings) and any custom ones (``NAME:key=value,key=value``, :func:`parse_variant`);
* run on some tasks of the ``core`` suite (default: the three structured 50 % ones) at the suite's budget (100
  evaluations), with seeds that are **not** the suite's (default 10, 11, 12: the suite's seeds 0–2 belong to the
  held-out protocol, and a seed in 0–2 is refused);
* **selected on the reward split only**: each cell's ``best.reward`` (the best allocation's reward the search itself
  saw). The held-out ``eval`` perplexity that every search result also records is never read, and the report shows
  no held-out number, so the selected setting can be run on the suite's seeds without having seen its test.

The settings (method, variants, tasks, seeds, budget, env settings, suite) are a :class:`TuneSpec`. Every (variant,
task, seed) cell is a resumable bench cell (:func:`ffprune.agents.experiments.bench.run_cell` with the variant's
``agent_kwargs``), written to ``<out>/<variant>/<task>/cells/<method>/seed<k>.json.gz`` (TensorBoard in
``<out>/<variant>/<task>/tb``); cells run in this process or as Ray tasks (a
:class:`~ffprune.agents.experiments.engine.Runner`). ``<out>/config.json`` holds the method, budget and env settings
and ``<out>/<variant>/variant.json`` the variant's settings: a folder holding other settings is refused, so a resumed
cell is always the variant's. A cell that raises does not stop the others: it is listed in ``<out>/failures.json`` and
in the report until a rerun finishes it. Tuning runs on the real tasks: surrogate settings are refused, and a surrogate
cell in ``<out>`` is a one-line error when the report reads it.

The report (``tune.md``, ``tune.json``; :func:`report_tune` rewrites them from the cells on disk, byte for byte):
per variant, the mean best reward over seeds on every task, the mean over tasks, its difference from ``default``
(mean ± std of the per-(task, seed) paired differences, and a 95 % bootstrap interval of the mean difference,
resampling seeds within tasks), how many (task, seed) pairs it beat ``default`` on, and the **selected** variant: the
highest mean best reward among the variants with every cell finished (ties go to ``default``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ffenv.errors import FFPruneError, positive_int
from ffenv.io import as_json, atomic_write_json, json_or_text, read_json
from ffprune.agents.defaults import TUNE_SEEDS, TUNE_TASKS
from ffprune.agents.experiments.bench import cell_path, run_cell
from ffprune.agents.experiments.claim import late_reward
from ffprune.agents.experiments.engine import IN_PROCESS, CellFailure, CellSpec, Report, Runner, run_jobs
from ffprune.agents.experiments.rlstats import stratified_bootstrap_ci
from ffprune.agents.experiments.search import CURRICULUM_SETTINGS
from ffprune.agents.experiments.suite import get_suite, method_fits
from ffprune.agents.methods.registry import get_method
from ffprune.agents.results import TUNE_KIND, read_result, refuse_surrogate_settings, with_header, without_header
from ffprune.agents.tools.specs import spec_with

log = logging.getLogger(__name__)

DEFAULT_VARIANT = "default"
"""The variant every other is compared with: the method's own settings (no overrides); not the suite's reference
method (:data:`ffprune.agents.experiments.suite.REFERENCE`, uniform)."""
GRIDS: dict[str, dict[str, dict[str, Any]]] = {
    "fastforward": {DEFAULT_VARIANT: {}, "batch4": {"batch_episodes": 4}, "squash": {"squash": True},
                    "clip0.3": {"clip_coef": 0.3}, "mean": {"mean_episode": True}, "lr3e-4": {"learning_rate": 3e-4},
                    "full32": {"curriculum.fidelity_schedule": "none"}},
    "ppo": {DEFAULT_VARIANT: {}, "n_steps8": {"n_steps": 8, "batch_size": 8}, "clip0.3": {"clip_range": 0.3},
            "ent0": {"ent_coef": 0.0}, "lr1e-3": {"learning_rate": 1e-3}, "epochs4": {"n_epochs": 4},
            "full32": {"curriculum.fidelity_schedule": "none"}},
    # the heuristics' settings chosen on 7 B-class LLaMA models, over the ranges their authors searched or published
    "owl": {DEFAULT_VARIANT: {}, **{f"lam{lam:g}-m{m:g}": {"lam": lam, "m": m} for lam in (0.02, 0.05, 0.08, 0.1, 0.2)
                              for m in (3.0, 5.0, 7.0, 10.0) if (lam, m) != (0.08, 5.0)}},
    "alphapruning": {DEFAULT_VARIANT: {}, **{f"eps{eps:g}": {"eps": eps} for eps in (0.1, 0.2, 0.4, 0.5, 0.6)}},
    "dlp": {DEFAULT_VARIANT: {}, **{f"alpha{a:g}": {"alpha": a} for a in (0.05, 0.1, 0.2, 0.25)}},
}
"""The built-in grids: method → variant name → settings (``default`` first: the method's own settings). A setting is
the agent's keyword, or ``curriculum.<setting>`` for the curriculum's (:data:`CURRICULUM_PREFIX`; ``full32``: every
episode on all 32 reward windows, the sparsity ramp kept). The heuristics' grids are their authors' ranges: OWL's
``λ ∈ {0.02, 0.05, 0.08, 0.1, 0.2}`` × ``M ∈ {3, 5, 7, 10}`` (defaults 0.08 and 5, chosen on LLaMA-7B), AlphaPruning's
``ε`` (default 0.3; the authors choose it per model, larger ones are cut to what fits the target), DLP's ``α``
(default 0.15)."""
CURRICULUM_PREFIX = "curriculum."
"""A variant's settings with this prefix go to the curriculum (``curriculum_kwargs`` of the search), not the agent."""
DEFAULT_TASKS = TUNE_TASKS
"""The ``core`` suite's tasks a tune runs on by default (another suite's: all its tasks)."""
DEFAULT_SEEDS = TUNE_SEEDS
BOOTSTRAP_REPS = 2000
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_PAIR_SEPARATOR = re.compile(r",(?=\s*[A-Za-z_][\w.]*\s*=)")  # a comma that starts the next key=value


# ---------------------------------------------------------------------------- the variants, checked before any work
def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``"NAME:key=value,key=value"`` → ``(NAME, {key: value, ...})``; values are JSON when they are JSON (numbers,
    ``true``, lists such as ``hidden=[64,64]``), else strings; a key is a setting of the agent or
    ``curriculum.<setting>``. A missing name or ``:``, or no ``key=value``, is a
    one-line :class:`FFPruneError`."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not sep or not VARIANT_NAME.match(name):
        raise FFPruneError(f"--variant expects NAME:key=value,key=value (NAME of letters, digits, . _ + -), got {text!r}")
    kwargs: dict[str, Any] = {}
    for pair in _PAIR_SEPARATOR.split(rest):
        key, eq, value = pair.partition("=")
        if not eq or not key.strip().removeprefix(CURRICULUM_PREFIX).isidentifier():
            raise FFPruneError(f"--variant {name}: expects key=value pairs separated by commas, got {rest!r}")
        kwargs[key.strip()] = json_or_text(value)
    return name, kwargs


def tune_variants(method: str, names: Sequence[str] | None = None,
                  custom: Mapping[str, Mapping[str, Any]] | Sequence[tuple[str, Mapping[str, Any]]] = ()
                  ) -> dict[str, dict[str, Any]]:
    """The variants to run: ``default``, then the method's :data:`GRIDS` entries (``names`` of them, default all),
    then the ``custom`` ones (name → agent kwargs); every variant's settings are checked (:func:`check_agent_kwargs`).

    A method without a grid needs ``custom`` variants; an unknown grid name, a custom name that is taken (``default``
    or a grid name in use) or given twice, and a setting the method does not have are one-line :class:`FFPruneError`.
    """
    method = get_method(method).name
    pairs = list(custom.items()) if isinstance(custom, Mapping) else list(custom)
    grid = GRIDS.get(method)
    if grid is None and not pairs:
        raise FFPruneError(f"method {method!r} has no built-in grid (grids: {sorted(GRIDS)}); give its variants with "
                           "--variant NAME:key=value,key=value")
    grid = grid or {DEFAULT_VARIANT: {}}
    if names is not None:
        unknown = [n for n in names if n not in grid]
        if unknown:
            raise FFPruneError(f"variants {unknown} are not in the {method} grid {list(grid)}")
    chosen = {n: dict(k) for n, k in grid.items() if n == DEFAULT_VARIANT or names is None or n in names}
    for name, kwargs in pairs:
        if not VARIANT_NAME.match(name):
            raise FFPruneError(f"variant names are letters, digits, . _ + -, got {name!r}")
        if name in chosen:
            raise FFPruneError(f"variant {name!r} is already defined ({chosen[name]}); give the custom variant another name")
        if not kwargs:
            raise FFPruneError(f"variant {name!r} sets nothing: the method's own settings are the {DEFAULT_VARIANT!r} variant")
        chosen[name] = dict(kwargs)
    for name, kwargs in chosen.items():
        check_agent_kwargs(method, kwargs, name)
    return chosen


def split_settings(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A variant's settings as ``(agent_kwargs, curriculum_kwargs)``: ``curriculum.<setting>`` keys, prefix dropped, go
    to the second."""
    agent = {k: v for k, v in kwargs.items() if not k.startswith(CURRICULUM_PREFIX)}
    curriculum = {k[len(CURRICULUM_PREFIX):]: v for k, v in kwargs.items() if k.startswith(CURRICULUM_PREFIX)}
    return agent, curriculum


def check_agent_kwargs(method: str, kwargs: Mapping[str, Any], variant: str = "") -> None:
    """Refuse (one line) settings a method does not have, before any search: ``curriculum.<setting>`` must be one of
    :data:`~ffprune.agents.experiments.search.CURRICULUM_SETTINGS` for a method that learns under the curriculum (its
    value is checked when the env is built); the method's own through its settings schema
    (:meth:`~ffprune.agents.methods.registry.SearchMethod.check_settings`: FastForward's config with its ranges, an SB3
    agent's constructor, a heuristic's keywords; a method without a schema checks its settings when its first cell
    runs)."""
    where = f"variant {variant!r}: " if variant else ""
    kwargs, schedule = split_settings(kwargs)
    unknown = sorted(set(schedule) - set(CURRICULUM_SETTINGS))
    if unknown:
        raise FFPruneError(f"{where}{[CURRICULUM_PREFIX + k for k in unknown]} are not curriculum settings; settings: "
                           f"{[CURRICULUM_PREFIX + k for k in CURRICULUM_SETTINGS]}")
    if schedule and not get_method(method).curriculum:
        raise FFPruneError(f"{where}{method!r} does not search under the curriculum: curriculum.* settings do not apply")
    get_method(method).check_settings(kwargs, where)


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds as a list of distinct integers ``>= 0`` none of which is one of the ``core`` suite's (0–2: the held-out
    protocol's); anything else is a one-line :class:`FFPruneError`."""
    held_out = range(get_suite("core").seeds)
    checked = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise FFPruneError(f"seeds must be integers >= 0, got {s!r}")
        checked.append(int(s))
    if not checked or len(set(checked)) != len(checked):
        raise FFPruneError(f"seeds must be distinct and at least one, got {list(seeds)}")
    taken = [s for s in checked if s in held_out]
    if taken:
        raise FFPruneError(f"seeds must not be the core suite's {held_out.start}-{held_out.stop - 1} (the held-out "
                           f"protocol's seeds; tune on seeds >= 10), got {taken}")
    return checked


def default_tasks(suite: str = "core") -> tuple[str, ...]:
    """The tasks a tune runs on by default: :data:`DEFAULT_TASKS` on ``core``, every task of another suite."""
    return DEFAULT_TASKS if suite == "core" else tuple(t.name for t in get_suite(suite).tasks)


def tune_seeds(method: str, seeds: Sequence[int]) -> list[int]:
    """The seeds a tune runs: ``seeds`` checked (:func:`check_seeds`), only the first for a deterministic method (a
    heuristic gives the same allocation for every seed)."""
    seeds = check_seeds(seeds)
    return seeds if get_method(method).seeded else seeds[:1]


def _task_ids(method: str, tasks: Sequence[str], suite: str = "core") -> dict[str, str]:
    """Task name → env id for tasks of ``suite`` the method can search (one-line error otherwise)."""
    by_name = {t.name: t.env_id for t in get_suite(suite).tasks}
    unknown = [t for t in tasks if t not in by_name]
    if unknown or not tasks:
        raise FFPruneError(f"tasks must be {suite} suite tasks {list(by_name)}, got {list(tasks)}")
    for name in tasks:
        if not method_fits(by_name[name], method):
            raise FFPruneError(f"method {get_method(method).name!r} cannot search task {name!r} ({by_name[name]})")
    return {name: by_name[name] for name in tasks}


# ---------------------------------------------------------------------------- running the cells
def _keep_settings_file(path: Path, record: dict[str, Any], what: str, kind: str | None = None) -> None:
    """Write ``record`` to ``path`` (with a header of ``kind``: :func:`~ffprune.agents.results.with_header`), refusing
    one that holds other settings (a resumed cell must be this one's); the same settings are left as written."""
    record = as_json(record)
    if path.exists():
        old = without_header(read_json(path, what))
        if old != record:
            raise FFPruneError(f"{str(path.parent)!r} holds a {what} with other settings ({old}, now {record}); use "
                               "another --out folder or variant name")
        return
    atomic_write_json(path, with_header(record, kind) if kind else record)


def _config(method: str, budget: int, env_kwargs: dict[str, Any] | None, suite: str) -> dict[str, Any]:
    """A tune folder's ``config.json`` (``suite`` recorded when it is not ``core``: older folders stay readable)."""
    return {"method": method, "budget": budget, "env_kwargs": env_kwargs or {}, **({"suite": suite} if suite != "core" else {})}


@dataclass(frozen=True)
class TuneSpec:
    """What a tune is (where it writes, where its cells run and whether it shows progress are :func:`run_tune`'s own
    arguments). The mappings are never mutated."""

    method: str = "fastforward"
    """The method tuned (any registered name)."""
    variants: Mapping[str, Mapping[str, Any]] | None = None
    """Variant name → its settings (agent keywords and ``curriculum.<setting>``; :data:`DEFAULT_VARIANT` must be one, with
    none); default the method's whole grid (:func:`tune_variants`)."""
    tasks: Sequence[str] | None = None
    """Tasks of ``suite`` (default: :func:`default_tasks`)."""
    seeds: Sequence[int] = DEFAULT_SEEDS
    """Search seeds, never the suite's 0–2 (a deterministic method runs the first only: :func:`tune_seeds`)."""
    budget: int | None = None
    """Evaluations per search (default: the suite's)."""
    env_kwargs: Mapping[str, Any] | None = None
    """Env settings of every task (tests use small windows; the suite runs without any)."""
    suite: str = "core"
    """The suite whose tasks the variants are compared on."""

    def resolved(self) -> TuneSpec:
        """The spec with its defaults filled in and checked (one-line :class:`FFPruneError` for bad input): the method's
        registered name, the tasks, every variant (settings checked; ``default`` required), the seeds a tune runs, the
        budget."""
        method = get_method(self.method).name
        tasks = default_tasks(self.suite) if self.tasks is None else self.tasks
        variants = tune_variants(method) if self.variants is None else {n: dict(k) for n, k in self.variants.items()}
        if DEFAULT_VARIANT not in variants:
            raise FFPruneError(f"variants must include {DEFAULT_VARIANT!r} (the method's own settings: the reference)")
        for name, kwargs in variants.items():
            check_agent_kwargs(method, kwargs, name)
        seeds = tune_seeds(method, self.seeds)
        budget = positive_int("budget", get_suite(self.suite).budget if self.budget is None else self.budget)
        return replace(self, method=method, tasks=tasks, variants=variants, seeds=seeds, budget=budget)


def tune_specs(spec: TuneSpec, out: str | Path, progress: bool = True) -> list[tuple[str, CellSpec]]:
    """The (variant, task, seed) cells of ``spec`` (:meth:`TuneSpec.resolved`), each with its variant's name (its folder:
    ``<out>/<variant>/<task>``); the folder's records are checked and written first."""
    out, spec = Path(out), spec.resolved()
    method, variants, budget, env_kwargs = spec.method, spec.variants or {}, spec.budget, spec.env_kwargs
    ids = _task_ids(method, spec.tasks or (), spec.suite)
    _keep_settings_file(out / "config.json", _config(method, budget, env_kwargs, spec.suite), "tune", TUNE_KIND)
    specs = []
    for variant, kwargs in variants.items():
        _keep_settings_file(out / variant / "variant.json", {"agent_kwargs": dict(kwargs)}, "variant")
        agent_kwargs, curriculum_kwargs = split_settings(kwargs)
        for task, env_id in ids.items():
            for seed in spec.seeds:
                specs.append((variant, CellSpec(env_id, method, seed, budget, out / variant / task, dict(env_kwargs or {}),
                                                agent_kwargs=agent_kwargs, curriculum_kwargs=curriculum_kwargs,
                                                progress=progress)))
    return specs


def run_tune(spec: TuneSpec | None = None, *, out: str | Path, runner: Runner = IN_PROCESS, progress: bool = True,
             **settings: Any) -> dict[str, Any]:
    """Run (or resume) every (variant, task, seed) cell of ``spec`` (``settings``: :class:`TuneSpec` fields by keyword,
    replacing its own) in ``out`` on ``runner`` (here or as Ray tasks), then write the report (module docstring);
    returns its analysis.

    Bad input — an unknown method or task, a setting the method does not have, a seed in 0–2 — is a one-line
    :class:`FFPruneError` before any search.
    """
    spec = spec_with(TuneSpec, spec, settings, "run_tune", "tune")
    get_method(spec.method)  # an unknown method first, as ever
    refuse_surrogate_settings(dict(spec.env_kwargs) if spec.env_kwargs is not None else None, "ffprune tune")
    out = Path(out)
    spec = spec.resolved()
    owned = tune_specs(spec, out, progress)
    done = run_jobs(run_cell, [cell for _variant, cell in owned], runner)
    failures = [{"variant": variant, **d.as_dict(trace=False)} for (variant, _cell), d in zip(owned, done)
                if isinstance(d, CellFailure)]
    atomic_write_json(out / "failures.json", failures)  # one record for the tune (its cells' folders are variant/task)
    return report_tune(spec, out=out)


# ---------------------------------------------------------------------------- the report (reward split only)
def _cell_row(variant: str, task: str, seed: int, cell: dict[str, Any]) -> dict[str, Any]:
    """What the report keeps of a cell: reward-split numbers only (never ``eval_ppl`` or any held-out score)."""
    return {"variant": variant, "task": task, "seed": seed, "best_reward": float(cell["best"]["reward"]),
            "late_reward": late_reward(cell["history"]), "evaluations_to_best": cell["cost"]["evaluations_to_best"]}


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _difference(rows: dict[tuple[str, int], float], reference: dict[tuple[str, int], float], tasks: Sequence[str],
                seeds: Sequence[int]) -> dict[str, Any] | None:
    """The paired differences from the reference over the (task, seed) pairs both finished: mean ± std, the wins and,
    when every pair is there, a 95 % bootstrap interval of the mean (seeds resampled within tasks)."""
    pairs = [(t, s) for t in tasks for s in seeds if (t, s) in rows and (t, s) in reference]
    if not pairs:
        return None
    d = np.array([rows[p] - reference[p] for p in pairs])
    diff: dict[str, Any] = {"pairs": len(pairs), "mean": float(d.mean()), "std": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                            "wins": int((d > 0).sum()), "low": None, "high": None}
    if len(pairs) == len(tasks) * len(seeds):
        matrix = d.reshape(len(tasks), len(seeds)).T  # [seeds, tasks]
        _, diff["low"], diff["high"] = stratified_bootstrap_ci(matrix, np.mean, reps=BOOTSTRAP_REPS, seed=0)
    return diff


def report_tune(spec: TuneSpec | None = None, *, out: str | Path, **settings: Any) -> dict[str, Any]:
    """The analysis of the cells of ``spec`` (``settings``: :class:`TuneSpec` fields by keyword; its ``budget`` and
    ``env_kwargs`` are read from ``<out>/config.json``) already on disk (no search, no evaluation): ``tune.md`` and
    ``tune.json`` in ``out``, from each cell's ``best.reward`` alone (module docstring); returns it. The same spec as
    :func:`run_tune`'s gives the same files, byte for byte."""
    spec = spec_with(TuneSpec, spec, settings, "report_tune", "tune")
    method, suite = get_method(spec.method).name, spec.suite
    out = Path(out)
    tasks = default_tasks(suite) if spec.tasks is None else spec.tasks
    variants = tune_variants(method) if spec.variants is None else {n: dict(k) for n, k in spec.variants.items()}
    seeds = tune_seeds(method, spec.seeds)
    _task_ids(method, tasks, suite)
    config = read_json(out / "config.json", "tune config (run ffprune tune without --report-only first)")
    if config.get("method") != method:
        raise FFPruneError(f"{str(out)!r} holds a tune of {config.get('method')!r}, not {method!r}; use its --out")
    if config.get("suite", "core") != suite:
        raise FFPruneError(f"{str(out)!r} holds a tune on suite {config.get('suite', 'core')!r}, not {suite!r}; pass "
                           f"--suite {config.get('suite', 'core')}")
    rows, missing = [], []
    for variant, kwargs in variants.items():
        held = out / variant / "variant.json"
        if held.exists() and read_json(held, "variant settings") != as_json({"agent_kwargs": dict(kwargs)}):
            raise FFPruneError(f"{str(held.parent)!r} holds variant {variant!r} with other settings "
                               f"({read_json(held, 'variant settings')['agent_kwargs']}, now {dict(kwargs)})")
        for task in tasks:
            for seed in seeds:
                path = cell_path(out / variant / task, method, seed)
                cell = read_result(path, real=True, what="ffprune tune") if path.exists() else None
                if cell is not None and cell.get("complete"):
                    rows.append(_cell_row(variant, task, seed, cell))
                else:
                    missing.append({"variant": variant, "task": task, "seed": seed})
    failures_file = out / "failures.json"
    failed = read_json(failures_file, "failures") if failures_file.exists() else []
    open_cells = {(m["variant"], m["task"], m["seed"]) for m in missing}
    failures = [f for f in failed if (f["variant"], f["task"], f["seed"]) in open_cells]
    # a deterministic method refusing its own settings at a task's target (OWL's λ too wide for 20 %) fails the same
    # way every time: that variant cannot allocate there, it is out of the selection, and the selection is final
    infeasible = [f for f in failures if f.get("error") == "FFPruneError" and not get_method(method).seeded]
    out_of_reach = {(f["variant"], f["task"], f["seed"]) for f in infeasible}
    missing = [m for m in missing if (m["variant"], m["task"], m["seed"]) not in out_of_reach]
    failures = [f for f in failures if (f["variant"], f["task"], f["seed"]) not in out_of_reach]
    analysis = _analyse(method, config, variants, tasks, seeds, rows)
    analysis.update(missing=missing, failures=failures)
    if infeasible:
        analysis["infeasible"] = [{k: f[k] for k in ("variant", "task", "seed", "message")} for f in infeasible]
    return REPORT.write(out, analysis)


def _analyse(method: str, config: dict[str, Any], variants: Mapping[str, Mapping[str, Any]], tasks: Sequence[str],
             seeds: Sequence[int], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: per-task means, the mean over tasks, the paired difference from the reference; the selection."""
    rewards = {v: {(r["task"], r["seed"]): r["best_reward"] for r in rows if r["variant"] == v} for v in variants}
    late = {v: [r["late_reward"] for r in rows if r["variant"] == v] for v in variants}
    summary = []
    for variant, kwargs in variants.items():
        mine = rewards[variant]
        task_means = {t: _mean([mine[(t, s)] for s in seeds if (t, s) in mine]) for t in tasks}
        complete = len(mine) == len(tasks) * len(seeds)
        summary.append({"variant": variant, "agent_kwargs": as_json(dict(kwargs)), "cells": len(mine), "complete": complete,
                        "task_means": task_means, "mean": float(np.mean(list(task_means.values()))) if complete else None,
                        "late_reward_mean": _mean(late[variant]),
                        "difference": None if variant == DEFAULT_VARIANT else
                        _difference(mine, rewards[DEFAULT_VARIANT], tasks, seeds)})
    return {"method": method, **({"suite": config["suite"]} if "suite" in config else {}), "budget": config["budget"],
            "env_kwargs": config["env_kwargs"], "tasks": list(tasks),
            "seeds": list(seeds), "reference": DEFAULT_VARIANT, "selection": "highest mean best reward (reward split); ties "
            f"go to {DEFAULT_VARIANT}; only variants with every cell finished", "rows": rows, "summary": summary,
            "selected": select(summary)}


def select(summary: Sequence[Mapping[str, Any]]) -> str | None:
    """The variant with the highest mean best reward among the complete ones; a tie goes to :data:`DEFAULT_VARIANT` (then to
    the first in order). ``None`` until the reference is complete (nothing to compare with)."""
    complete = [s for s in summary if s["complete"]]
    if not any(s["variant"] == DEFAULT_VARIANT for s in complete):
        return None
    best = max(s["mean"] for s in complete)
    tied = [s["variant"] for s in complete if s["mean"] == best]
    return DEFAULT_VARIANT if DEFAULT_VARIANT in tied else tied[0]


class TuneSelection(NamedTuple):
    """What a finished tune selected (:func:`selected_settings`)."""

    method: str
    """The tuned method's registered name."""
    name: str
    """The selected variant's name."""
    settings: dict[str, Any]
    """Its settings as the grid gives them (agent keywords and ``curriculum.<setting>``)."""
    seeds: list[int]
    """The tune's seeds (never the suite's)."""
    budget: int
    """Evaluations per search the variants were compared at."""
    suite: str = "core"
    """The suite whose tasks the variants were compared on."""


def selected_settings(out: str | Path) -> TuneSelection:
    """The variant a finished tune selected, from ``<out>/tune.json``, with the seeds and budget it was selected at; the
    settings as the grid gives them (agent keywords and ``curriculum.<setting>``; :func:`split_settings` splits them)
    and checked again (:func:`check_agent_kwargs`). ``ffprune bench --suite core --tuned <out>`` runs them on the
    suite's seeds as the ``<method>-tuned`` row.

    A one-line :class:`FFPruneError` when there is no ``tune.json``, when the file is not a tune report, when the grid
    has unfinished cells (the selection is not final; ``None`` until ``default`` is finished) and when the selected
    variant is ``default``: the method's own settings, already the suite's row of the method.
    """
    path = Path(out) / "tune.json"
    if not path.is_file():
        raise FFPruneError(f"{str(path)!r} does not exist: run `ffprune tune --out {out}` first (or --report-only)")
    analysis = read_json(path, "tune report")
    try:
        method, selected, missing = analysis["method"], analysis["selected"], analysis["missing"]
        settings = {s["variant"]: s["agent_kwargs"] for s in analysis["summary"]}
        seeds, budget = [int(k) for k in analysis["seeds"]], int(analysis["budget"])
        if not isinstance(method, str):
            raise TypeError(method)
    except (KeyError, TypeError, ValueError):
        raise FFPruneError(f"{str(path)!r} is not a tune report (rewrite it with `ffprune tune --report-only`)") from None
    method = get_method(method).name
    if missing or selected is None:
        so_far = "no variant is selected yet" if selected is None else f"its selection ({selected!r} so far) is not final"
        raise FFPruneError(f"{str(path)!r}: the tune of {method} has {len(missing)} unfinished cell(s), so {so_far}: "
                           f"run `ffprune tune --method {method} --out {out}` again to finish it")
    if selected == DEFAULT_VARIANT:
        raise FFPruneError(f"{str(path)!r}: the tune of {method} selected {DEFAULT_VARIANT!r} (the method's own settings): "
                           f"nothing new to run, the suite's {method!r} row is already it")
    if selected not in settings or not isinstance(settings[selected], dict):
        raise FFPruneError(f"{str(path)!r} selects {selected!r} but has no settings for it: not a tune report")
    check_agent_kwargs(method, settings[selected], selected)
    return TuneSelection(method, selected, dict(settings[selected]), seeds, budget, str(analysis.get("suite", "core")))


def _settings(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in kwargs.items()) or "(the method's own)"


def _num(value: float | None, signed: bool = False) -> str:
    return "–" if value is None else (f"{value:+.4f}" if signed else f"{value:.4f}")


def tune_markdown(analysis: dict[str, Any]) -> str:
    """The readable table of :func:`report_tune` (reward split only)."""
    tasks, seeds = analysis["tasks"], analysis["seeds"]
    pairs = len(tasks) * len(seeds)
    lines = [f"### Tuning {analysis['method']} on the reward split", "",
             f"Budget {analysis['budget']} evaluations per search; seeds {', '.join(map(str, seeds))} (not the "
             f"{analysis.get('suite', 'core')} suite's 0–2, which belong to the held-out protocol); tasks {', '.join(tasks)}"
             + (f"; env settings {_settings(analysis['env_kwargs'])}" if analysis["env_kwargs"] else "") + ". Every number is a "
             "best reward on the reward split (what the search itself saw, higher is better), mean over seeds; no "
             "held-out number is read. Δ = mean ± std of the paired (task, seed) differences from "
             f"`{analysis['reference']}`, with a 95 % bootstrap interval of the mean (seeds resampled within tasks); "
             f"beat = pairs on which the variant's best reward is higher; late = mean reward of each search's last 10 % "
             "of episodes (what its policy plays by then; not used for the selection).", "",
             f"| variant | settings | {' | '.join(tasks)} | mean | Δ vs {analysis['reference']} | 95 % interval | beat | "
             "late |", "|---" * (len(tasks) + 7) + "|"]
    for s in analysis["summary"]:
        d = s["difference"]
        delta = "–" if d is None else f"{d['mean']:+.4f} ± {d['std']:.4f}"
        interval = "–" if d is None or d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
        beat = "–" if d is None else f"{d['wins']} / {d['pairs']}"
        mean = _num(s["mean"]) if s["complete"] else f"incomplete ({s['cells']} / {pairs})"
        per_task = " | ".join(_num(s["task_means"][t]) for t in tasks)
        lines.append(f"| {s['variant']} | {_settings(s['agent_kwargs'])} | {per_task} | {mean} | {delta} | {interval} | "
                     f"{beat} | {_num(s['late_reward_mean'])} |")
    selected = analysis["selected"]
    lines += ["", f"Selected: **{selected}** ({analysis['selection']})." if selected is not None else
              f"Selected: none yet ({analysis['reference']} has unfinished cells; run the command again)."]
    if analysis["missing"]:
        lines += ["", f"Unfinished cells: {len(analysis['missing'])} (run the command again to finish them)."]
    if analysis.get("infeasible"):
        lines += ["", "Settings the method itself refuses at a task's target (deterministic: out of the selection):", ""]
        lines += [f"- {f['variant']} {f['task']}: {f['message']}" for f in analysis["infeasible"]]
    if analysis["failures"]:
        lines += ["", "Failed cells (retried by running the command again):", ""]
        lines += [f"- {f['variant']} {f['task']} seed {f['seed']}: {f['error']}: {f['message']}"
                  for f in analysis["failures"]]
    return "\n".join(lines) + "\n"


REPORT = Report("tune", tune_markdown)
"""The tuning's report: ``tune.json`` and ``tune.md``."""
