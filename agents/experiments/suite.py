"""``ffprune suite run core``: benchmark suites as data, their normalised score and aggregate statistics.

A suite is a value (:class:`Suite`: tasks, methods, budget, seeds, variants): the registered ones (:data:`SUITES`,
``core`` and ``real``) or a user's TOML / JSON file (:func:`load_suite`). Its cells are
:class:`~ffprune.agents.experiments.engine.CellSpec` jobs on the engine (:func:`suite_specs`, :func:`run_suite`).

The ``core`` suite is 9 tasks, {tiny-llama, tiny-mistral, tiny-opt} × {structured 30 %, structured 50 %,
unstructured 70 %}, each a registered id (``FFPrune-<Family>-v0``, ``FFPrune-<Family>-Structured50-v0``,
``FFPrune-<Family>-Unstructured-v0``) run with a fixed budget and seeds under the bench's held-out protocol
(the search sees only the reward split; the best allocation is scored once on ``eval``). Every
(task, method, seed) cell is one bench cell in ``<out>/<task>/cells`` (resumable; Ray tasks with
``--cell-workers``), each task folder gets the bench's tables and plots, and the suite folder gets
(:data:`ffprune.agents.experiments.reports.SUITE_REPORT`)

* ``suite.md`` / ``scores.csv``: the normalised score of every cell and the per-task table;
* per method, the interquartile mean (IQM) of the normalised scores over tasks × seeds with a 95 %
  stratified-bootstrap interval (also with Calib, over the structured tasks); probability of improvement of
  FastForward over every other method; the evaluations FastForward needed to reach each searching method's best;
* ``aggregate.png`` (IQM with intervals) and ``profiles.png`` (performance profiles);
* the rank agreement of the reward split and the held-out split over the allocations one FastForward
  search visited per task (Spearman ρ).

**The suite goes on.** A cell that raises is recorded with its error (in ``<out>/<task>/failures.json``: a
rerun retries it), the other cells finish, the analysis covers the cells that finished and lists the
failures (``analysis["failures"]``, and at the end of ``suite.md``). :func:`report_suite` redoes the
analysis and every table from the cells on disk without running a search. Either way the report covers every
method with cells in the folder: a run restricted to some methods adds its rows to the others.

**Variants.** A suite's ``variants`` (``suite.but(variants={label: SuiteVariant(method, agent_kwargs,
curriculum_kwargs, name, source)})``, or ``[variants.<label>]`` in a suite file) run a method with other settings as a
row of its own (``fastforward-tuned``: ``ffprune suite run core --tuned DIR`` makes one from the variant ``ffprune
tune`` selected on the reward split; the command composes the two, this module does not know about tunes). Its cells
are ``<out>/<task>/cells/<label>/seed<k>.json.gz`` on the tasks the method supports, each recording its
``"variant"``; the analysis lists them under ``analysis["variants"]`` and ``suite.md`` says what each ran.

**Normalised score** of a cell, on held-out perplexity: the share of the gap between the uniform allocation
and the dense model that the method's allocation closes,

    score = (ppl_uniform − ppl_method) / (ppl_uniform − ppl_dense)

(1: dense quality; 0: no better than uniform; negative: worse). Uniform is the allocation every method can
fall back on and the one the heuristics and searches claim to improve, so "share of the uniform → dense gap
closed" means the same on every model and sparsity, and tasks can be aggregated. With Calib the reference
is uniform + Calib (same formula on the calibrated perplexities).

**On a surrogate** (``env_kwargs={"surrogate": True, ...}``; ``ffprune suite run core --surrogate``, default
``--out docs/results/core-surrogate``) every cell runs on its task's surrogate (:mod:`ffenv.surrogate`; calibrated
scores are left out), each task folder's ``config.json`` records the surrogate's label, and the analysis
(``analysis["surrogate"]``: the evaluation set's fingerprint per task), ``suite.md`` and the plots are labelled
"surrogate". The two never mix: the real suite (:func:`run_suite` without ``surrogate``, :func:`report_suite` with
``surrogate=False``) refuses a surrogate cell or folder with a one-line :class:`FFPruneError`, a surrogate suite
refuses real cells and cells of another evaluation set, and a surrogate suite's results are never written into the
docs' generated sections.

**Generated doc sections.** A markdown file holds the suite's full section (``<!-- suite:core ... -->`` …
``<!-- /suite:core -->``: ``suite.md`` and the plots) and/or its headline (``<!-- suite:core:headline ... -->``
… ``<!-- /suite:core:headline -->``: the aggregate table and a link to the full page);
:func:`update_sections` rewrites them from the results.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ffenv.errors import FFPruneError, positive_int
from ffenv.io import atomic_write_json, atomic_write_text, read_json
from ffenv.registration import (
    FAMILY_IDS,
    MODE_SUFFIX,
    REAL_FAMILIES,
    REAL_TASKS,
    family_of,
    formulation_of,
    resolve_config,
)
from ffprune.agents.defaults import SUITE_BUDGET, SUITE_SEEDS
from ffprune.agents.experiments.bench import (
    BenchOverrides,
    cell_path,
    cell_specs,
    check_variant_cell,
    method_seeds,
    run_cell,
    variant_settings,
)
from ffprune.agents.experiments.engine import CellSpec, CellStore, Runner, run_jobs, save_failures
from ffprune.agents.experiments.reports import AGENT, SUITE_REPORT, cost_to_reach, evaluation_axis, write_outputs
from ffprune.agents.experiments.rlstats import (
    iqm,
    performance_profile,
    probability_of_improvement,
    spearman,
    stratified_bootstrap_ci,
)
from ffprune.agents.experiments.search import check_curriculum_kwargs
from ffprune.agents.methods.registry import METHODS, get_method, methods_for
from ffprune.agents.results import check_real, describe_surrogate, read_result, result_env, surrogate_of

log = logging.getLogger(__name__)
REFERENCE = "uniform"
"""The method every cell's normalised score is measured against (always run)."""
Cells = dict[str, dict[str, list[dict[str, Any]]]]
"""Finished cells: ``{task: {method or variant label: [cell, ...]}}``."""
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
"""What a variant's label may be: letters, digits, ``. _ + -`` (it names a folder and a row)."""


@dataclass(frozen=True)
class SuiteTask:
    """One task of a suite: a name (its folder and its rows), a registered env id and, where the task is not the id as
    registered, its own env settings (``{"target_sparsity": 0.4}``)."""

    name: str
    env_id: str
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)


def task_fields(task: SuiteTask) -> dict[str, Any]:
    """A task as the analysis records it: name and env id, and its env settings where it has any."""
    return {"name": task.name, "env_id": task.env_id, **({"env_kwargs": dict(task.env_kwargs)} if task.env_kwargs else {})}


@dataclass(frozen=True)
class Suite:
    """A benchmark suite as a value: its tasks, the budget and seeds every method gets, the methods it runs (``None``:
    every registered method that fits a task) and its variants (label → :class:`SuiteVariant`: a method with other
    settings as a row of its own). The registered ones are in :data:`SUITES`; a user writes their own as a TOML or JSON
    file (:func:`load_suite`, ``ffprune suite run FILE``)."""

    name: str
    tasks: tuple[SuiteTask, ...]
    budget: int = SUITE_BUDGET
    """Episodes every search method gets per cell (heuristics: one evaluation)."""
    seeds: int = SUITE_SEEDS
    """Seeds per search method (deterministic methods run once)."""
    description: str = ""
    methods: tuple[str, ...] | None = None
    variants: Mapping[str, SuiteVariant] = field(default_factory=dict)

    def but(self, budget: int | None = None, seeds: int | None = None, methods: Sequence[str] | None = None,
            variants: Mapping[str, SuiteVariant] | None = None) -> Suite:
        """The suite with the given fields replaced (``None``: kept), checked: budget and seeds positive integers,
        methods known (:func:`~ffprune.agents.methods.registry.get_method`), variants by :func:`check_variants`."""
        changes: dict[str, Any] = {}
        if budget is not None:
            changes["budget"] = positive_int("budget", budget)
        if seeds is not None:
            changes["seeds"] = positive_int("seeds", seeds)
        if methods is not None:
            changes["methods"] = tuple(get_method(m).name for m in methods)
        if variants is not None:
            changes["variants"] = check_variants(variants)
        return dataclasses.replace(self, **changes)


def task_name(family: str, mode: str, target: float) -> str:
    """The ``core`` suite task of a family, mode and target (``llama-s0.3``, ``opt-u0.7``)."""
    return f"{family}-{'s' if mode == 'structured' else 'u'}{target:g}"


def _core_tasks() -> tuple[SuiteTask, ...]:
    tasks = []
    for family, fid in FAMILY_IDS.items():
        tasks += [SuiteTask(task_name(family, "structured", 0.3), f"FFPrune-{fid}-v0"),
                  SuiteTask(task_name(family, "structured", 0.5), f"FFPrune-{fid}-Structured50-v0"),
                  SuiteTask(task_name(family, "unstructured", 0.7), f"FFPrune-{fid}{MODE_SUFFIX['unstructured']}-v0")]
    return tuple(tasks)


def _real_tasks(family: str = "SmolLM2", modes: tuple[str, ...] = ("structured", "unstructured")) -> tuple[SuiteTask, ...]:
    return tuple(SuiteTask(task_name(family.lower(), mode, target), f"FFPrune-{family}{suffix}-v0")
                 for suffix, mode, target in REAL_TASKS[family] if mode in modes)


SUITES: dict[str, Suite] = {
    "core": Suite("core", _core_tasks(),
                  description="3 bundled families x {structured 0.3, structured 0.5, unstructured 0.7}"),
    "real": Suite("real", _real_tasks(),
                  description="SmolLM2-135M (a real pretrained LLM, fetched on first use) on WikiText-2 x "
                              "{structured 0.2, unstructured 0.7}"),
    "gemma3": Suite("gemma3", _real_tasks("Gemma3", ("structured",)), seeds=1,
                    methods=("fastforward", "uniform", "owl", "alphapruning", "dlp", "flap"),
                    description="Gemma-3-270M (a second real LLM: GeGLU, q/k-norms, one KV head, a 262k vocabulary) on "
                                "WikiText-2, structured: FastForward and the heuristics, one seed"),
}


@dataclass(frozen=True)
class SuiteVariant:
    """A method run with other settings than its own, as a row of its own: the ``variants`` of :func:`run_suite` map
    a label (``fastforward-tuned``: not a method's name) to one. ``ffprune bench --suite core --tuned <tune folder>``
    makes one from the variant ``ffprune tune`` selected on the reward split (``name``; ``source``: its ``tune.json``).
    """

    method: str
    """The registered method (or SB3 algorithm) that runs; the variant runs on the tasks whose mode it supports."""
    agent_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """The method's settings that differ from its defaults."""
    curriculum_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """The curriculum's settings that differ (:data:`~ffprune.agents.experiments.search.CURRICULUM_SETTINGS`)."""
    name: str = ""
    """The variant's name where its settings come from (a tune's grid)."""
    source: str = ""
    """Where its settings come from, in words or as a path (a tune's ``tune.json``)."""

    def record(self, label: str) -> dict[str, Any]:
        """The ``"variant"`` record every cell of the label holds (:func:`~ffprune.agents.experiments.bench.run_cell`)."""
        return {"label": label, "method": self.method, "name": self.name, "agent_kwargs": dict(self.agent_kwargs),
                "curriculum_kwargs": dict(self.curriculum_kwargs), "source": self.source}


def _is_method(name: str) -> bool:
    """Whether ``name`` is a method :func:`~ffprune.agents.methods.registry.get_method` knows (registered or SB3)."""
    try:
        get_method(name)
    except FFPruneError:
        return False
    return True


def check_variants(variants: Mapping[str, SuiteVariant] | None) -> dict[str, SuiteVariant]:
    """The variants with their methods' canonical names; a label that is not letters, digits, ``. _ + -``, that is a
    method's name (registered or SB3) or another label's in other case, a variant that sets nothing (it would be the
    method's own row), an unknown method and a setting its method does not have (its settings schema:
    :meth:`~ffprune.agents.methods.registry.SearchMethod.check_settings`) are each a one-line :class:`FFPruneError`."""
    checked: dict[str, SuiteVariant] = {}
    for label, variant in (variants or {}).items():
        if not isinstance(label, str) or not LABEL.match(label):
            raise FFPruneError(f"variant labels are letters, digits, . _ + - (a folder and a row), got {label!r}")
        if not isinstance(variant, SuiteVariant):
            raise FFPruneError(f"variant {label!r} must be a SuiteVariant, got {type(variant).__name__}")
        if _is_method(label):
            raise FFPruneError(f"variant label {label!r} is a method's name: its cells would mix with the method's; "
                               f"use another label (e.g. {variant.method}-tuned)")
        taken = [other for other in checked if other.lower() == label.lower()]
        if taken:
            raise FFPruneError(f"variant labels {taken[0]!r} and {label!r} collide (a folder each, case-insensitive)")
        if not variant.agent_kwargs and not variant.curriculum_kwargs:
            raise FFPruneError(f"variant {label!r} sets nothing: {variant.method}'s own settings are its own row")
        method = get_method(variant.method)
        method.check_settings(dict(variant.agent_kwargs), f"variant {label!r}: ")  # its settings schema, before any work
        try:
            check_curriculum_kwargs(dict(variant.curriculum_kwargs), method.curriculum)  # as the search will
        except FFPruneError as err:
            raise FFPruneError(f"variant {label!r}: {err}") from None
        checked[label] = dataclasses.replace(variant, method=method.name)
    return checked


def get_suite(name: str) -> Suite:
    """A registered suite; :class:`FFPruneError` listing the names otherwise."""
    if name not in SUITES:
        raise FFPruneError(f"suite must be one of {sorted(SUITES)}, got {name!r}")
    return SUITES[name]


SUITE_KEYS = {"name", "description", "budget", "seeds", "methods", "tasks", "variants"}
"""The keys of a suite file (:func:`load_suite`)."""
TASK_KEYS = {"name", "env_id", "env_kwargs"}
VARIANT_FILE_KEYS = {"method", "agent_kwargs", "curriculum_kwargs", "name", "source"}


def load_suite(source: Suite | str | Path) -> Suite:
    """A suite: ``source`` itself (a :class:`Suite`), a registered one by name (:data:`SUITES`), or a suite file.

    A suite file (``.toml`` on Python ≥ 3.11, or ``.json``) declares a suite for one's own tasks::

        name = "llama-targets"          # default: the file's name
        description = "tiny-llama at three structured targets"
        budget = 50                     # default 100
        seeds = 2                       # default 3
        methods = ["uniform", "owl", "fastforward", "cmaes"]   # default: every method that fits a task

        [[tasks]]
        name = "llama-s0.4"             # letters, digits, . _ + - (its folder)
        env_id = "FFPrune-Llama-v0"
        env_kwargs = { target_sparsity = 0.4 }

        [variants.fastforward-lr3]      # a method with other settings, as a row of its own
        method = "fastforward"
        agent_kwargs = { lr = 0.003 }

    Every field is checked before any work (unknown keys, env ids and settings, methods, variants): one line naming
    the file and the field.
    """
    if isinstance(source, Suite):
        return source
    if str(source) in SUITES:
        return SUITES[str(source)]
    path = Path(source)
    if path.suffix not in (".toml", ".json"):
        raise FFPruneError(f"suite must be one of {sorted(SUITES)} or a .toml / .json suite file, got {str(source)!r}")
    if not path.is_file():
        raise FFPruneError(f"suite file {str(path)!r} does not exist (suites: {sorted(SUITES)}, or a .toml / .json file)")
    try:
        if path.suffix == ".json":
            import json

            data = json.loads(path.read_text())
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise FFPruneError(f"suite file {str(path)!r}: TOML needs Python >= 3.11; write it as JSON") from None
            data = tomllib.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise FFPruneError(f"suite file {str(path)!r} is not valid {path.suffix[1:].upper()}: {err}") from None
    return suite_from_dict(data, path.stem, str(path))


def suite_from_dict(data: Any, default_name: str, where: str) -> Suite:
    """A :class:`Suite` from its declared fields (:func:`load_suite`'s file format); ``where`` names it in errors."""
    def bad(what: str) -> FFPruneError:
        return FFPruneError(f"suite {where}: {what}")

    if not isinstance(data, dict):
        raise bad(f"must be a table of {sorted(SUITE_KEYS)}, got {type(data).__name__}")
    unknown = sorted(set(data) - SUITE_KEYS)
    if unknown:
        raise bad(f"unknown keys {unknown}; a suite has {sorted(SUITE_KEYS)}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not LABEL.match(name):
        raise bad(f"name must be letters, digits, . _ + -, got {name!r}")
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise bad("tasks must be a non-empty list of {name, env_id, env_kwargs}")
    checked = []
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or set(task) - TASK_KEYS or not {"name", "env_id"} <= set(task):
            raise bad(f"tasks[{i}] must have name and env_id (and optionally env_kwargs), got {task!r}")
        if not isinstance(task["name"], str) or not LABEL.match(task["name"]):
            raise bad(f"tasks[{i}].name must be letters, digits, . _ + - (a folder), got {task['name']!r}")
        kwargs = task.get("env_kwargs", {})
        if not isinstance(kwargs, dict):
            raise bad(f"tasks[{i}].env_kwargs must be a table of env settings, got {kwargs!r}")
        try:
            resolve_config(str(task["env_id"]), kwargs)  # an unknown id or a bad setting: before any work
        except FFPruneError as err:
            raise bad(f"tasks[{i}] ({task['name']}): {err}") from None
        checked.append(SuiteTask(task["name"], str(task["env_id"]), dict(kwargs)))
    names = [t.name for t in checked]
    if len({n.lower() for n in names}) != len(names):
        raise bad(f"task names must be distinct (a folder each, case-insensitive), got {names}")
    variants = data.get("variants", {})
    if not isinstance(variants, dict):
        raise bad("variants must be a table of label -> {method, agent_kwargs, curriculum_kwargs}")
    declared = {}
    for label, v in variants.items():
        if not isinstance(v, dict) or set(v) - VARIANT_FILE_KEYS or "method" not in v:
            raise bad(f"variants.{label} must have a method (and agent_kwargs, curriculum_kwargs, name, source), got {v!r}")
        declared[label] = SuiteVariant(v["method"], dict(v.get("agent_kwargs", {})), dict(v.get("curriculum_kwargs", {})),
                                       name=str(v.get("name", "")), source=str(v.get("source", f"suite file {where}")))
    methods = data.get("methods")
    if methods is not None and (not isinstance(methods, list) or not all(isinstance(m, str) for m in methods)):
        raise bad(f"methods must be a list of method names, got {methods!r}")
    try:
        default = Suite(name, tuple(checked), description=str(data.get("description", "")))
        return default.but(data.get("budget", default.budget), data.get("seeds", default.seeds), methods, declared)
    except FFPruneError as err:
        raise bad(str(err)) from None


def family_suite(family: str) -> str:
    """The suite whose tasks a family runs: ``core`` (bundled families), ``real`` (``smollm2``) or the real family's
    own (``gemma3``); an unknown family is a one-line error (:func:`ffenv.registration.family_of`)."""
    fid = family_of(family)[0]
    if fid not in REAL_FAMILIES:
        return "core"
    return "real" if fid == "SmolLM2" else family


def family_targets(family: str, mode: str) -> tuple[float, ...]:
    """The targets of the tasks ``family`` runs in ``mode`` in its suite (llama structured: 0.3 and 0.5; smollm2
    structured: 0.2), ascending."""
    model = family_of(family)[1]
    targets = set()
    for task in get_suite(family_suite(family)).tasks:
        config = resolve_config(task.env_id)
        if (config.model, config.mode) == (model, mode):
            targets.add(float(config.target_sparsity))
    return tuple(sorted(targets))


def select_tasks(suite: Suite, tasks: Sequence[str] | None) -> Suite:
    """``suite`` restricted to ``tasks`` (names of its tasks, in the suite's order; ``None``: all of them); an unknown
    or repeated name is a one-line :class:`FFPruneError` listing the suite's tasks."""
    names = [t.name for t in suite.tasks]
    if tasks is None:
        return suite
    unknown = [t for t in tasks if t not in names]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise FFPruneError(f"tasks must be distinct tasks of suite {suite.name!r} {names}, got {list(tasks)}")
    return dataclasses.replace(suite, tasks=tuple(t for t in suite.tasks if t.name in tasks))


def task_methods(task: SuiteTask, methods: Sequence[str] | None = None,
                 env_kwargs: dict[str, Any] | None = None) -> list[str]:
    """The methods a task runs: ``methods`` (default: every registered one) that support the task env's mode, with
    :data:`REFERENCE` always first when methods are given."""
    mode = resolve_config(task.env_id, env_kwargs).mode
    if methods is None:
        return methods_for(mode)
    return [m for m in dict.fromkeys([REFERENCE, *methods]) if mode in get_method(m).modes]


def method_fits(env_id: str, method: str, env_kwargs: dict[str, Any] | None = None) -> bool:
    """Whether ``method`` can search the env ``env_id`` (its mode and formulation)."""
    m = get_method(method)
    return resolve_config(env_id, env_kwargs).mode in m.modes and formulation_of(env_id) in m.formulations


def variant_specs(task: SuiteTask, folder: Path, label: str, variant: SuiteVariant, budget: int, seeds: int,
                  overrides: BenchOverrides) -> list[CellSpec]:
    """A variant's cells on one task (in ``<folder>/cells/<label>``); a finished cell there that ran other settings is a
    one-line :class:`FFPruneError` before any work."""
    record = variant.record(label)
    for _seed, path in CellStore(folder).seeds(label):
        check_variant_cell(path, record)
    return [dataclasses.replace(spec, agent_kwargs=dict(variant.agent_kwargs), variant=record,
                                curriculum_kwargs=dict(variant.curriculum_kwargs))
            for spec in cell_specs(task.env_id, budget, seeds, [variant.method], folder, overrides)]


# ---------------------------------------------------------------------------- running and reporting a suite
@dataclass(frozen=True)
class SuiteReport:
    """What a suite's report measures beyond the cells."""

    agreement_points: int = 24
    """Allocations per task of the reward / held-out agreement (0: none; :func:`reward_heldout_agreement`)."""
    reps: int = 2000
    """Bootstrap resamples of the intervals."""
    full_split: tuple[str, ...] = ()
    """Rows whose representative allocations are also scored on the whole test split (minutes each on a CPU; once)."""


def task_overrides(task: SuiteTask, overrides: BenchOverrides) -> BenchOverrides:
    """The run's overrides on one task: the task's own env settings under the run's (a run's setting wins)."""
    return dataclasses.replace(overrides, env_kwargs={**task.env_kwargs, **overrides.env_kwargs})


def suite_specs(suite: Suite, out: Path, overrides: BenchOverrides) -> list[CellSpec]:
    """Every cell of ``suite`` in ``out`` (``<out>/<task>``): each task's methods (the suite's that fit it; ``uniform``
    always) and each variant on the tasks its method fits; settings checked and every task folder's manifest claimed
    before any work."""
    specs: list[CellSpec] = []
    for task in suite.tasks:
        mine = task_overrides(task, overrides)
        kwargs = dict(mine.env_kwargs)
        chosen = task_methods(task, suite.methods, kwargs)
        specs += cell_specs(task.env_id, suite.budget, suite.seeds, chosen, out / task.name, mine)
        for label, variant in suite.variants.items():
            if method_fits(task.env_id, variant.method, kwargs):
                specs += variant_specs(task, out / task.name, label, variant, suite.budget, suite.seeds, mine)
    return specs


def run_suite(suite: Suite | str | Path, out: str | Path, overrides: BenchOverrides | None = None,
              runner: Runner | None = None, report: SuiteReport | None = None) -> dict[str, Any]:
    """Run (or resume) every cell of a suite (a :class:`Suite`, a registered name or a suite file: :func:`load_suite`),
    then write the per-task outputs and the suite's analysis.

    The suite's ``methods`` (``None``: every method that fits each task's mode; ``uniform`` is always run: it is the
    score's reference) and ``variants`` run, each variant as a row of its own (cells ``<out>/<task>/cells/<label>``, on
    the tasks its method supports, each recording its ``"variant"``; a label folder whose finished cells ran other
    settings is refused before any work). ``overrides`` change every task's env (tests use small windows;
    ``env_kwargs={"surrogate": True}`` runs the suite on the tasks' surrogates: module docstring, use another ``out``)
    and the Calib column; ``runner`` runs the cells here or as Ray tasks. A cell that raises does not stop the others:
    it is recorded in ``<out>/<task>/failures.json`` and the returned analysis (also ``<out>/suite.json``) covers the
    finished cells and lists the failed ones under ``"failures"`` (task, method, seed, error type, message).

    The report covers **every** method and variant label with finished cells in ``out``, not only the ones this call
    ran (a run restricted to some methods adds its rows to the others: :func:`read_suite_cells`); the failures of
    cells this call did not retry stay listed until their cells finish. ``report.full_split`` rows (methods or this
    run's variant labels) are also scored on the whole test split (:func:`full_split_scores`).
    """
    suite, overrides = load_suite(suite), overrides or BenchOverrides()
    runner, report = runner or Runner(), report or SuiteReport()
    surrogate = bool(overrides.env_kwargs.get("surrogate"))
    unknown = [r for r in report.full_split if not _is_method(r) and r not in suite.variants]
    if unknown:
        raise FFPruneError(f"full_split rows must be methods or variant labels of this run, got {unknown}")
    out = Path(out)
    specs = suite_specs(suite, out, overrides)
    save_failures(specs, run_jobs(run_cell, specs, runner))
    cells, failures = read_suite_cells(dataclasses.replace(suite, methods=None), out, surrogate)
    return _report(suite, out, cells, failures, report, measure=True, surrogate=surrogate)


def report_suite(suite: Suite | str | Path, out: str | Path, surrogate: bool = False,
                 report: SuiteReport | None = None) -> dict[str, Any]:
    """The analysis and every table and plot of a suite again, from the cells already in ``out``: no search and no
    evaluation (the reward / held-out agreement is read from its ``agreement.json`` caches; a task without a
    matching cache is left out of that table, with a warning).

    The suite's budget and seeds are the ones its cells ran with (each task's ``config.json`` must agree on the
    budget); its ``methods`` pick the rows (``None``: every method and variant label with cells in ``out``:
    :func:`read_suite_cells`). Missing cells are left out; the failures :func:`run_suite` saved are listed.
    ``surrogate`` says which suite ``out`` must hold: a real one (a surrogate folder or cell is then a one-line
    :class:`FFPruneError`) or one run on the surrogates.
    """
    suite, report = load_suite(suite), report or SuiteReport()
    if suite.methods is not None:  # its variants are rows too
        suite = dataclasses.replace(suite, methods=tuple(dict.fromkeys([*suite.methods, *suite.variants])))
    out = Path(out)
    cells, failures = read_suite_cells(suite, out, surrogate)
    return _report(suite, out, cells, failures, dataclasses.replace(report, full_split=()), measure=False,
                   surrogate=surrogate)


def read_suite_cells(suite: Suite, out: str | Path, surrogate: bool = False) -> tuple[Cells, list[dict[str, Any]]]:
    """The finished cells of every task of ``suite`` in ``out`` (``<out>/<task>/cells``, seeds ``0..seeds-1`` of the
    suite's; missing cells left out) and the failures :func:`run_suite` recorded; reads only.

    The suite's ``methods`` (``None``: all) pick the rows, in registration order either way (a run, which reads every
    row, and a report of the suite's methods write the same tables): by default every registered method that fits a
    task's mode, then every other method (an SB3 algorithm) and every variant label (:class:`SuiteVariant`:
    a folder whose cells record a ``"variant"``) with cells in the task folder, by name; given, ``uniform`` and those
    names (a name that is not a method must be a label with cells in some task). A task folder without
    ``config.json``, a folder of another env id or budget, a folder or cell of the other kind than ``surrogate`` asks
    for, a label whose cells ran different settings and an unknown name in ``methods`` are each a one-line
    :class:`FFPruneError` (as in :func:`report_suite`)."""
    out, budget, seeds, methods = Path(out), suite.budget, suite.seeds, suite.methods
    cells: Cells = {}
    failures: list[dict[str, Any]] = []
    names = None if methods is None else [m for m in methods if _is_method(m)]
    labels = None if methods is None else [m for m in methods if m not in names]
    found_labels: set[str] = set()
    for task in suite.tasks:
        folder = out / task.name
        config = read_result(folder / "config.json")
        if surrogate and surrogate_of(config) is None:
            raise FFPruneError(f"{str(folder)!r} holds real cells, not a suite run on the surrogate: drop --surrogate, "
                               "or give the surrogate suite's --out")
        if not surrogate:
            check_real(config, str(folder / "config.json"), f"the real {suite.name} suite")
        if config.get("env_id") != task.env_id or config.get("budget") != budget:
            raise FFPruneError(f"{str(folder)!r} holds {config.get('env_id')} at budget {config.get('budget')}, not "
                               f"{task.env_id} at budget {budget}: pass the budget it was run with")
        cells[task.name] = {}
        task_kwargs = config.get("env_kwargs") or None
        canonical = {m: i for i, m in enumerate(task_methods(task, None, task_kwargs))}  # registration order
        rows = sorted(task_methods(task, names, task_kwargs), key=lambda m: canonical.get(m, len(canonical)))
        on_disk = sorted(p.name for p in (folder / "cells").glob("*") if p.is_dir() and p.name not in rows)
        if names is None:  # every other method with cells here (an SB3 algorithm a run named)
            rows += [m for m in on_disk if _is_method(m) and method_fits(task.env_id, m, task_kwargs)]
        def read_row(row: str, folder: Path = folder) -> list[dict[str, Any]]:
            found = [read_result(p, real=not surrogate, what=f"the real {suite.name} suite")
                     for seed in range(seeds) if (p := cell_path(folder, row, seed)).exists()]
            if not found:
                return found
            ran = method_seeds(base_method(row, found), seeds)  # a deterministic method counts once (seed 0)
            return [c for c in found if c["seed"] in ran]

        for method in rows:
            if found := read_row(method):
                cells[task.name][method] = found
        for label in ([n for n in on_disk if n not in rows] if labels is None else labels):
            found = read_row(label)
            if found and any("variant" in c for c in found):
                _check_label(folder / "cells" / label, found)
                cells[task.name][label] = found
                found_labels.add(label)
        failures += CellStore(folder).failures()
    unknown = [m for m in labels or () if m not in found_labels]
    if unknown:
        raise FFPruneError(f"methods {unknown} are neither methods nor variant labels with cells in {str(out)!r}")
    return cells, failures


def _check_label(folder: Path, found: list[dict[str, Any]]) -> None:
    """Every cell of a variant label's folder records the same settings (one-line :class:`FFPruneError` otherwise)."""
    held = [variant_settings(c["variant"]) if isinstance(c.get("variant"), dict) else None for c in found]
    if any(h != held[0] for h in held):
        other = next(h for h in held if h != held[0])
        raise FFPruneError(f"{str(folder)!r} holds cells of different settings ({held[0]} and {other}): a label's "
                           "cells must all be one variant's")


def suite_surrogates(suite: Suite, cells: Cells, surrogate: bool) -> dict[str, str] | None:
    """The fingerprint of each task's surrogate (``None`` for a real suite), checked over every cell: a real suite
    refuses a surrogate cell, a surrogate suite a real one and, within a task, cells of two evaluation sets (one-line
    :class:`FFPruneError`)."""
    labels: dict[str, str] = {}
    for task in suite.tasks:
        for method, runs in cells[task.name].items():
            for cell in runs:
                name = f"cell {task.name}/{method}/seed{cell.get('seed')}"
                if not surrogate:
                    check_real(cell, name, f"the real {suite.name} suite")
                    continue
                label = surrogate_of(cell)
                if label is None:
                    raise FFPruneError(f"{name} is a real result in a suite run on the surrogate: surrogate and real "
                                       "results never mix; use another --out folder")
                seen = labels.setdefault(task.name, str(label.get("fingerprint")))
                if seen != str(label.get("fingerprint")):
                    raise FFPruneError(f"{name} is a result of {describe_surrogate(label)}, the task's other cells of "
                                       f"{describe_surrogate({'fingerprint': seen})}: use another --out folder")
    return labels if surrogate else None


def _report(suite: Suite, out: Path, cells: Cells, failures: list[dict[str, Any]], report: SuiteReport,
            measure: bool, surrogate: bool = False) -> dict[str, Any]:
    """Per-task tables and plots, the analysis (``suite.json``) and the suite's report of the finished ``cells``
    (labelled when they ran on the surrogates); ``measure``: evaluate what the caches lack (else read them only)."""
    budget, seeds, reps = suite.budget, suite.seeds, report.reps
    labels = suite_surrogates(suite, cells, surrogate)
    for task in suite.tasks:
        if cells[task.name]:
            write_outputs(out / task.name, cells[task.name], task.env_id, budget, seeds)
    tokens = equal_token_picks(suite, cells, out, measure=measure)
    analysis = analyse(suite, cells, reps=reps, failures=failures, equal_tokens=tokens)
    if labels is not None:
        analysis["surrogate"] = labels
    full = full_split_scores(suite, cells, out, report.full_split if measure and report.full_split else None)
    if full:
        analysis["full_split"] = full
    analysis["agreement"] = reward_heldout_agreement(suite, cells, out, report.agreement_points, measure=measure)
    return SUITE_REPORT.write(out, analysis)


# ---------------------------------------------------------------------------- the analysis
def normalised(ppl: float | None, uniform: float | None, dense: float) -> float | None:
    """Share of the uniform → dense held-out perplexity gap closed (see the module docstring)."""
    if ppl is None or uniform is None or not np.isfinite(ppl) or uniform == dense:
        return None
    return float((uniform - ppl) / (uniform - dense))


def _score_rows(suite: Suite, cells: Cells, failures: Sequence[dict[str, Any]],
                equal_tokens: Mapping[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per finished cell: its perplexities, normalised scores and cost, and its held-out ppl and score at equal
    tokens (``equal_tokens``: :func:`equal_token_picks`; ``None`` where its task or its pick has none). A task whose
    reference cells failed has no scores (left out, with a warning); one that never had them is an
    :class:`FFPruneError`."""
    rows = []
    for task in suite.tasks:
        by_method = cells[task.name]
        if REFERENCE not in by_method:
            if any(f["task"] == task.name and f["method"] == REFERENCE for f in failures) or not by_method:
                log.warning("task %s has no finished %r cells: its cells have no normalised score", task.name, REFERENCE)
                continue
            raise FFPruneError(f"task {task.name!r} has no {REFERENCE!r} cells: the normalised score needs them")
        ref = by_method[REFERENCE][0]["best"]
        for method, runs in by_method.items():
            for cell in sorted(runs, key=lambda c: c["seed"]):
                best = cell["best"]
                rows.append({"task": task.name, "method": method, "seed": cell["seed"], "eval_ppl": best["eval_ppl"],
                             "eval_ppl_after_calib": best.get("eval_ppl_after_calib"),
                             "dense_eval_ppl": best["dense_eval_ppl"],
                             "score": normalised(best["eval_ppl"], ref["eval_ppl"], best["dense_eval_ppl"]),
                             "score_calib": normalised(best.get("eval_ppl_after_calib"), ref.get("eval_ppl_after_calib"),
                                                       best["dense_eval_ppl"]),
                             "reward_ppl": best["reward_ppl"],
                             "evaluations": cell["cost"][evaluation_axis(cell)], "seconds": cell["cost"]["seconds"],
                             "tokens": cell["cost"]["tokens"], **_at_equal_tokens(equal_tokens, task.name, method, cell,
                                                                                    ref["eval_ppl"])})
    return rows


def _at_equal_tokens(picks: Mapping[str, dict[str, Any]] | None, task: str, row: str, cell: dict[str, Any],
                     uniform: float) -> dict[str, Any]:
    """A cell's ``eval_ppl_equal_tokens`` and ``score_equal_tokens``: its own result when it spent no more than the
    task's equal-token budget, the held-out ppl of its best allocation within that budget otherwise (``None`` where the
    task has no budget or the pick was not measured)."""
    task_picks = (picks or {}).get(task)
    ppl = None
    if task_picks is not None:
        if cell["cost"]["tokens"] <= task_picks["tokens"]:
            ppl = cell["best"]["eval_ppl"]
        else:
            ppl = (task_picks["cells"].get(f"{row}/seed{cell['seed']}") or {}).get("eval_ppl")
    return {"eval_ppl_equal_tokens": ppl,
            "score_equal_tokens": normalised(ppl, uniform, cell["best"]["dense_eval_ppl"])}


SCORE_KINDS = {"plain": "score", "calib": "score_calib", "equal_tokens": "score_equal_tokens"}
"""The aggregates of a suite → the row field each aggregates: held-out ppl of the best allocation, after Calib, and of
the best allocation within the curriculum's token spend (:func:`equal_token_picks`)."""


def analyse(suite: Suite, cells: Cells, *, reps: int = 2000, failures: Sequence[dict[str, Any]] = (),
            equal_tokens: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Normalised scores of every finished cell of ``suite`` (at its budget and seeds) and the aggregate statistics
    (module docstring); ``failures`` (the cells that raised) are listed in the result; ``equal_tokens``
    (:func:`equal_token_picks`) adds the aggregate at equal tokens."""
    budget, seeds = suite.budget, suite.seeds
    rows = _score_rows(suite, cells, failures, equal_tokens)
    scores: dict[str, dict[str, dict[str, list[float]]]] = {kind: {} for kind in SCORE_KINDS}
    unmeasured = {row["method"] for row in rows if row["score"] is not None and row["score_equal_tokens"] is None}
    for row in rows:
        for kind, key in SCORE_KINDS.items():
            if row[key] is not None:
                scores[kind].setdefault(row["method"], {}).setdefault(row["task"], []).append(row[key])
    for method in unmeasured:  # a pick not measured yet (--report-only): no aggregate, not a partial one
        scores["equal_tokens"].pop(method, None)
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
    analysis = {"suite": suite.name, "budget": budget, "seeds": seeds, "tasks": [task_fields(t) for t in suite.tasks],
                "rows": rows, "agreement_across_cells": across, "aggregate": aggregate, "improvement": improvement,
                "profiles": profiles, "reach": _reach(suite, cells), "bootstrap_reps": reps,
                "equal_tokens": {t: p["tokens"] for t, p in (equal_tokens or {}).items()},
                "failures": [{k: f[k] for k in ("task", "method", "seed", "error", "message")} for f in failures]}
    variants = suite_variants(cells)
    if variants:
        analysis["variants"] = variants
    return analysis


def suite_variants(cells: Cells) -> dict[str, dict[str, Any]]:
    """The variant labels among ``cells`` (cells that record a ``"variant"``: :class:`SuiteVariant`) → their record
    (method, name, settings, source), in order of appearance."""
    found: dict[str, dict[str, Any]] = {}
    for by_method in cells.values():
        for label, runs in by_method.items():
            record = runs[0].get("variant") if runs else None
            if isinstance(record, dict) and label not in found:
                found[label] = {k: v for k, v in record.items() if k != "label"}
    return found


def base_method(label: str, runs: Sequence[dict[str, Any]]) -> str:
    """The method a row's cells ran: a variant label's method (its cells' ``"variant"`` record), else the row's name."""
    record = runs[0].get("variant") if runs else None
    return record["method"] if isinstance(record, dict) and record.get("method") else label


def _matrix(by_task: dict[str, list[float]]) -> np.ndarray:
    """``[runs, tasks]`` from per-task lists (deterministic methods have identical runs; lists are cut to the
    shortest so every task has the same number of runs)."""
    n = min(len(v) for v in by_task.values())
    return np.array([by_task[t][:n] for t in sorted(by_task)], np.float64).T


def _reach(suite: Suite, cells: Cells) -> list[dict[str, Any]]:
    """Per task, row that searched (every row but FastForward's own whose method is not a heuristic, variant labels
    included) and seed: its best reward, its evaluations to best, FastForward's evaluations to reach it."""
    out = []
    for task in suite.tasks:
        by_method = cells[task.name]
        ff = {c["seed"]: c for c in by_method.get(AGENT, [])}
        for method, runs in by_method.items():
            base = base_method(method, runs)
            if method == AGENT or (base in METHODS and METHODS[base].heuristic):
                continue
            for cell in runs:
                mine = ff.get(cell["seed"])
                reward = cell["best"]["reward"]
                out.append({"task": task.name, "method": method, "seed": cell["seed"], "best_reward": reward,
                            "evaluations_to_best": cell["best"][evaluation_axis(cell["best"])],
                            "fastforward_to_reach": cost_to_reach(mine["history"], reward) if mine else None})
    return out


def equal_token_budget(by_method: dict[str, list[dict[str, Any]]]) -> int | None:
    """A task's budget in tokens at equal tokens: the fewest tokens any of its curriculum cells spent (the
    curriculum's early evaluations are cheap, so its methods spend fewer tokens than the same number of full
    evaluations); ``None`` without curriculum cells or where no tokens were spent (a surrogate's cells: its evaluations
    run no model, so every method costs the same, counted in surrogate evaluations)."""
    spent = [c["cost"]["tokens"] for row, runs in by_method.items() for c in runs
             if (m := METHODS.get(base_method(row, runs))) is not None and m.curriculum]
    return min(spent) if spent and min(spent) > 0 else None


def best_within(history: Sequence[dict[str, Any]], tokens: int, target: float, windows: int) -> dict[str, Any] | None:
    """The best-rewarded evaluation of the final task (``target``, all ``windows``) a search had made when it had spent
    ``tokens`` (the first of equals), or ``None``."""
    best = None
    for h in history:
        if h["tokens"] > tokens:
            break
        if "action" in h and h["target"] == target and h.get("windows") == windows:
            if best is None or h["reward"] > best["reward"]:
                best = h
    return best


def equal_token_picks(suite: Suite, cells: Cells, out: Path, measure: bool = True) -> dict[str, dict[str, Any]]:
    """Per task with curriculum cells: its :func:`equal_token_budget` and, for every cell that spent more, the best
    allocation it had found within that budget (:func:`best_within`) with that allocation's held-out ppl (the cell's
    own when it is its final best; else measured once, not counted in any search's cost, and cached in
    ``<out>/<task>/equal_tokens.json``). ``measure=False`` only reads the cache (an unmeasured pick has no ppl, with a
    warning)."""
    result: dict[str, dict[str, Any]] = {}
    for task in suite.tasks:
        by_method = cells[task.name]
        tokens = equal_token_budget(by_method)
        if tokens is None:
            continue
        path = out / task.name / "equal_tokens.json"
        cached = read_json(path, "equal-token cache") if path.exists() else {}
        cached = cached.get("cells", {}) if cached.get("tokens") == tokens else {}
        picks: dict[str, dict[str, Any]] = {}
        todo: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        for row, runs in by_method.items():
            for cell in runs:
                if cell["cost"]["tokens"] <= tokens:
                    continue
                key = f"{row}/seed{cell['seed']}"
                pick = best_within(cell["history"], tokens, cell["env_kwargs"]["target_sparsity"],
                                   cell["env_kwargs"]["reward_windows"])
                if pick is None:
                    continue
                entry = {"episode": pick["episode"], "tokens": pick["tokens"], "reward": pick["reward"]}
                if pick["action"] == cell["best"]["action"]:
                    picks[key] = {**entry, "eval_ppl": cell["best"]["eval_ppl"]}
                elif ({k: cached.get(key, {}).get(k) for k in entry} == entry
                      and cached[key].get("eval_ppl") is not None):
                    picks[key] = cached[key]
                else:
                    picks[key] = entry
                    todo.append((key, cell, pick))
        if todo and measure:
            env = result_env(todo[0][1])
            try:
                for key, _cell, pick in todo:
                    picks[key]["eval_ppl"] = env.unwrapped.evaluate(np.asarray(pick["action"], np.float32),
                                                                    split="eval")["ppl"]
                    atomic_write_json(path, {"tokens": tokens, "cells": picks})  # each measurement kept at once
            finally:
                env.close()
        elif todo:
            log.warning("task %s: %d allocation(s) at equal tokens have no held-out ppl in %s; left out (run the suite "
                        "to measure them)", task.name, len(todo), path)
        if picks:
            atomic_write_json(path, {"tokens": tokens, "cells": picks})
        result[task.name] = {"tokens": tokens, "cells": picks}
    return result


def representative(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The cell of a row whose held-out ppl is the median of its seeds' (the higher middle one of an even count)."""
    return sorted(runs, key=lambda c: (c["best"]["eval_ppl"], c["seed"]))[len(runs) // 2]


def whole_split(env: Any, action: np.ndarray) -> dict[str, Any]:
    """:meth:`~ffenv.envs.prune_env.FFPruneEnv.evaluate` of ``action`` on every window of the env's held-out split
    (``ppl``, and the dense model's ``dense_ppl``, disk-cached)."""
    u = env.unwrapped
    return u.evaluate(action, split="eval", n_windows=len(u.backend.split_tokens("eval", None)))


def full_split_scores(suite: Suite, cells: Cells, out: Path, rows: Sequence[str] | None = None) -> dict[str, Any]:
    """The **whole** test split's ppl (every ``seq_len``-token window, not the task's fixed held-out subset) of the
    headline allocations: per task, the dense model and, for each of ``rows`` with cells there, its
    :func:`representative` cell's best allocation. Minutes per allocation on a CPU, so measured only when asked
    (``rows``), once, and cached in ``<out>/<task>/full_split.json``; ``rows=None`` reads the caches alone (an entry
    whose cell changed since is dropped)."""
    result: dict[str, Any] = {}
    for task in suite.tasks:
        by_method = cells[task.name]
        path = out / task.name / "full_split.json"
        cached = read_json(path, "full-split cache") if path.exists() else {"rows": {}}
        entries = {}
        for row, entry in cached.get("rows", {}).items():
            runs = by_method.get(row)
            cell = next((c for c in runs or [] if c["seed"] == entry["seed"]), None)
            if cell is not None and cell["best"]["action"] == entry["action"]:
                entries[row] = entry
        todo = [r for r in rows or [] if r in by_method and r not in entries]
        if todo:
            first = by_method[todo[0]][0]
            env = result_env(first)
            try:
                cached["windows"] = list(env.unwrapped.backend.split_tokens("eval", None).shape)
                for row in todo:
                    cell = representative(by_method[row])
                    measured = whole_split(env, np.asarray(cell["best"]["action"], np.float32))
                    cached["dense"] = measured["dense_ppl"]
                    entries[row] = {"seed": cell["seed"], "action": cell["best"]["action"],
                                    "subset_ppl": cell["best"]["eval_ppl"], "full_ppl": measured["ppl"]}
                    atomic_write_json(path, {**cached, "rows": entries})  # each allocation kept at once
            finally:
                env.close()
        if entries and "dense" in cached:
            result[task.name] = {"windows": cached["windows"], "dense": cached["dense"],
                                 "rows": {r: {k: v for k, v in e.items() if k != "action"} for r, e in entries.items()}}
    return result


def reward_heldout_agreement(suite: Suite, cells: Cells, out: Path, points: int = 24,
                             measure: bool = True) -> dict[str, Any]:
    """Spearman ρ between the reward (held-in ``reward`` split) and the held-out perplexity over ``points``
    allocations one FastForward search (lowest seed) visited at the final target on all reward windows, per
    task; measured once and cached in ``<out>/<task>/agreement.json``. Not counted in any search's cost.
    ``measure=False`` only reads the caches (a task without a matching one is left out, with a warning)."""
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
        if not measure:
            log.warning("task %s: no agreement cache for these allocations in %s; left out (run the suite to measure it)",
                        task.name, path)
            continue
        env = result_env(cell)
        try:
            held_out = [env.unwrapped.evaluate(np.asarray(h["action"], np.float32), split="eval")["ppl"] for h in picks]
        finally:
            env.close()
        rho = spearman(np.array([h["reward"] for h in picks]), -np.array(held_out))
        result[task.name] = {"spearman": rho, "points": len(picks), "seed": cell["seed"],
                             "reward": [h["reward"] for h in picks], "eval_ppl": held_out}
        atomic_write_json(path, {"key": key, "result": result[task.name]})
    return result


# ---------------------------------------------------------------------------- generated doc sections
SECTIONS = ("full", "headline")
"""The generated sections a markdown file may hold: the full results, or only the headline table."""


def _tag(suite: str, kind: str) -> str:
    return f"suite:{suite}" if kind == "full" else f"suite:{suite}:{kind}"


def _section_pattern(suite: str, kind: str) -> re.Pattern[str]:
    tag = re.escape(_tag(suite, kind))
    return re.compile(rf"<!-- {tag}(?![\w:-]).*?<!-- /{tag} -->", re.S)


def check_sections(files: Sequence[str | Path], suite: str = "core") -> dict[Path, list[str]]:
    """The generated sections (:data:`SECTIONS`) each file holds; an :class:`FFPruneError` names a file that is
    missing, holds none of ``<!-- suite:<name> -->`` / ``<!-- suite:<name>:headline -->`` … ``<!-- /… -->``, or
    holds one twice."""
    get_suite(suite)
    if not files:
        raise FFPruneError("files must name at least one markdown file to write the suite's sections into")
    found = {}
    for file in map(Path, files):
        if not file.is_file():
            raise FFPruneError(f"docs file {str(file)!r} is not a file")
        text = file.read_text()
        counts = {kind: len(_section_pattern(suite, kind).findall(text)) for kind in SECTIONS}
        if any(n > 1 for n in counts.values()) or not any(counts.values()):
            raise FFPruneError(f"docs file {str(file)!r} needs one section '<!-- {_tag(suite, 'full')} -->' ... "
                               f"'<!-- /{_tag(suite, 'full')} -->' and/or one '<!-- {_tag(suite, 'headline')} -->' ... "
                               f"'<!-- /{_tag(suite, 'headline')} -->' to replace (found {counts})")
        found[file] = [kind for kind in SECTIONS if counts[kind]]
    return found


def _link(target: Path, file: Path) -> str:
    return Path(os.path.relpath(target.resolve(), file.resolve().parent)).as_posix()


def section_block(out: str | Path, file: str | Path, suite: str = "core", kind: str = "full",
                  full_page: str | Path | None = None) -> str:
    """One generated section for ``file`` from ``<out>/suite.md``, between its markers: ``"full"`` (``suite.md`` and
    the plots) or ``"headline"`` (only the aggregate table, what its variant rows ran if any, the failures' count if
    any, and a link to ``full_page``, default ``suite.md``). Links are relative to ``file``."""
    if kind not in SECTIONS:
        raise FFPruneError(f"kind must be one of {SECTIONS}, got {kind!r}")
    out, file = Path(out), Path(file)
    table = out / "suite.md"
    if not table.exists():
        raise FFPruneError(f"{str(table)!r} does not exist: run `ffprune suite run {suite}` first")
    if (out / "suite.json").exists():
        check_real(read_json(out / "suite.json", "suite analysis"), str(out / "suite.json"),
                   f"the docs' generated suite:{suite} sections")
    body = table.read_text().rstrip("\n")
    if kind == "full":
        rel = _link(out, file)
        body += (f"\n\n![IQM normalised scores per method]({rel}/aggregate.png)\n"
                 f"![performance profiles]({rel}/profiles.png)")
    else:
        blocks = body.split("\n\n")
        headline = [b for b in blocks if b.startswith("At equal tokens")]  # what the last column measures
        headline += [next(b for b in blocks if b.startswith("|"))]  # the aggregate table comes first
        headline += [b for b in blocks if b.startswith("Variants:")]  # what a tuned row ran
        headline += [b.split("\n")[0] for b in blocks if b.startswith("Failures:")]
        rel = _link(Path(full_page) if full_page is not None else table, file)
        body = "\n\n".join([*headline, f"Full results (per task, agreement, plots): [{rel}]({rel})"])
    tag = _tag(suite, kind)
    return (f"<!-- {tag} (generated by `ffprune bench --suite {suite} --docs FILE`; do not edit) -->\n"
            f"{body}\n<!-- /{tag} -->")


def render_sections(files: Sequence[str | Path], out: str | Path, suite: str = "core") -> dict[Path, str]:
    """Each file's text with its generated sections (:func:`check_sections`) rewritten from the results in ``out``.
    A headline links to the first given file holding the full section (to ``suite.md`` if none, or if it is that file)."""
    found = check_sections(files, suite)
    full_page = next((f for f, kinds in found.items() if "full" in kinds), None)
    texts = {}
    for file, kinds in found.items():
        text = file.read_text()
        for kind in kinds:
            page = full_page if full_page is not None and full_page.resolve() != file.resolve() else None
            block = section_block(out, file, suite, kind, page)
            text = _section_pattern(suite, kind).sub(lambda _m, b=block: b, text)
        texts[file] = text
    return texts


def update_sections(files: Sequence[str | Path], out: str | Path, suite: str = "core") -> list[Path]:
    """Rewrite the generated suite sections of ``files`` (:func:`render_sections`, atomically); the files changed."""
    changed = []
    for file, text in render_sections(files, out, suite).items():
        if text != file.read_text():
            atomic_write_text(file, text)
            changed.append(file)
    return changed
