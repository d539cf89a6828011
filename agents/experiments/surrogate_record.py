"""``ffprune surrogate record``: the evaluation set of each (model, mode) a surrogate is fitted on, resumably.

One file per (family, mode), ``<out>/<model>-<mode>.npz`` (default ``out``: the bundled ``ffenv/surrogate/data/``;
the layout is :mod:`ffenv.surrogate.records`'), holding the rows of every env seed asked for (default 0, 1, 2; an
env seed is a pruning instance: it picks the calibration windows behind the importance). Per seed, in order, each
row labelled with its ``source``:

* ``suite:<method>`` — the histories of the family's suite (``core`` for the bundled families, ``real`` for SmolLM2;
  ``<suite_out>/<task>/cells/<method>/seed<k>.json.gz``): the cells whose env (``env_kwargs``) is this one, env seed
  included, whatever their search seed ``k`` (the committed suites ran every cell on env seed 0: they all feed seed
  0); a bundled family's structured set: the 0.3 and the 0.5 tasks both. No evaluation: the
  realised allocation of each recorded ``action`` at its recorded ``target`` is re-derived by projecting it
  (:func:`realised_sparsity`: ``ffenv.project_budget`` and the env's public ``pruner``, what a step computes before
  it measures), kept with the recorded ``windows``, ``reward`` and ``ppl``; a cell's best allocation also brings its
  held-out ppl (the suite's ``best.eval_ppl``, full ``eval`` split). Before they are kept, ``verify`` of those rows
  (full fidelity) and one best's held-out ppl are measured again, and every best's recorded ``layer_sparsity`` must
  equal its re-derived one: rewards and ppls that differ by more than :data:`VERIFY_RTOL` (relative) drop the seed's
  suite rows (a warning; the check is in the file's ``meta``).
* ``random:uniform``, ``random:<s>`` — raw actions uniform in ``[-1, 1]``, or ``N(0, s)`` clipped to it.
* ``heuristic:<name>`` — the baselines' allocations (:mod:`ffprune.baselines.heuristics`: uniform, OWL, AlphaPruning,
  FLAP (structured), DLP, ATP at ``atp_trials`` common differences) at every target, as actions
  (``env.action_from_sparsities``).
* ``perturb`` — the ``perturb_parents`` best allocations of the seed so far at a target (every source, full fidelity),
  their action plus ``N(0, σ)`` noise, ``σ`` among ``perturb_sigmas``.
* ``fidelity`` — fresh allocations measured on all reward windows and on each of ``fidelity_windows`` (the
  curriculum's reduced fidelities: it runs ``ceil(f · W)`` windows, ``f`` rising from 5 %; the bundled ``W`` is 32),
  the pairs the surrogate's fidelity model is fitted on.

Targets (every source but the suite's): :data:`TARGETS` per mode up to 0.1 above the family's highest suite target
(:meth:`RecordSettings.targets_of`), the suite tasks' targets (``family_targets``) ``task_weight`` times as often,
drawn stratified (each chunk cycles through them in a seeded order). A share
``held_out`` of the random, heuristic and perturbed rows (spread evenly over each chunk's targets) also gets the
held-out ppl on the env's ``eval`` windows (all of the split unless ``eval_samples`` is set; :func:`held_out_cost`
reward evaluations each: 6.5 on the bundled models, 4 on SmolLM2).

**Resumable.** Work is done in chunks (at most ``chunk`` evaluations, or one target's heuristics); after each the
file is saved atomically with its progress in ``meta["recorder"]`` (chunks and rows done per seed, the settings): a
rerun of the same command continues at the next chunk, Ctrl-C loses at most the chunk in progress, and a resumed
file equals one recorded in one go (every chunk's draws come from ``(seed, env seed, chunk)``; perturbations read
only rows of earlier chunks). A file recorded with other settings is refused. (family, mode) sets run one after the
other in this process or as Ray tasks (a :class:`~ffprune.agents.experiments.engine.Runner`), the seeds of a set in
order inside its task. What is recorded (families, modes, env seeds, :class:`RecordSettings`, env settings) is a
:class:`RecordSpec`.

**Cost** (:func:`plan_record`, ``ffprune surrogate record --dry-run``): with the defaults one (family, mode, seed) is
≈ 900 evaluation-equivalents, ≈ 11 min structured and ≈ 15 min unstructured on one CPU core, counting
:data:`SECONDS_PER_EVALUATION` per reward evaluation on all 32 windows. A real family reuses its suite's ≈ 3,000
rows per task for free, so it records fewer new ones (the command in docs/environment.md): SmolLM2 takes ≈ 3.5-3.9 s
per evaluation on this 2-core machine (:data:`SECONDS_PER_EVALUATION_REAL`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ffenv import FFPruneEnv, project_budget
from ffenv.config import EnvConfig
from ffenv.errors import FFPruneError, non_negative_int, positive_int
from ffenv.io import as_json, check_writable
from ffenv.lm.models import weights_fingerprint
from ffenv.pruning.projector import check_budget
from ffenv.registration import (
    FAMILY_MODELS,
    FAMILY_NAMES,
    MODE_SUFFIX,
    family_env_id,
    family_of,
    formulation_of,
    resolve_config,
)
from ffenv.surrogate import EvaluationSet, Rows, record
from ffenv.surrogate.records import ARRAYS, CONFIG_FIELDS, DATA_DIR, data_name, describe
from ffprune.agents.defaults import RECORD, RECORD_HEURISTICS
from ffprune.agents.experiments.bench import cell_path
from ffprune.agents.experiments.engine import IN_PROCESS, Runner, keyword_jobs, raise_failures, run_jobs
from ffprune.agents.experiments.suite import family_suite, family_targets, get_suite
from ffprune.agents.results import read_result_if_any, seed_files
from ffprune.agents.tools.specs import spec_with
from ffprune.baselines.allocators import atp_betas
from ffprune.baselines.heuristics import (
    alphapruning_allocation,
    atp_allocation,
    atp_beta_range,
    dlp_allocation,
    flap_allocation,
    owl_allocation,
    uniform_allocation,
    within_keep_bounds,
)

log = logging.getLogger(__name__)

TARGETS = {"structured": (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6),
           "unstructured": (0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)}
"""Targets of the new rows: the suite's, the amortised protocol's (structured 0.2-0.6, unstructured 0.5-0.8) and
what the curriculum ramps through below them (from 0.05; lower targets are in the suite's curriculum episodes)."""
CALIBRATION_PASSES = ("flap", "dlp")
"""Heuristics that run one calibration pass per target (≈ one reward evaluation each)."""
SECONDS_PER_EVALUATION = {"structured": 0.7, "unstructured": 1.0}
"""One reward evaluation on all 32 windows of a bundled model, on one CPU core (one torch thread): the ``core`` suite's
random-search cells, which ran two cells side by side on 2 cores, spent 0.56-0.79 s (structured) and 0.93-1.11 s
(unstructured) per evaluation."""
SECONDS_PER_EVALUATION_REAL = {"smollm2-135m": {"structured": 3.5, "unstructured": 3.9}}
"""One reward evaluation (8 windows x 256 tokens) of a real model on this 2-core machine (two torch threads): the
``real`` suite's CMA-ES cells spent 3.50 s (structured 20 %) and 3.90 s (unstructured 70 %) per evaluation."""
HELD_OUT_COST = 6.5
"""A held-out ppl in reward evaluations on a bundled model: the bundled corpus's 207 ``eval`` windows vs 32 reward
windows (an env with ``eval_samples`` set: those windows over its reward windows, :func:`held_out_cost`)."""
VERIFY_RTOL = 1e-6
"""Largest relative difference between a suite row's recorded reward / ppl and the same evaluation now. (Measured
here: ≤ 1.2e-7, float32 rounding of the forward's sums; the stored rewards are float32.)"""
MAX_SEED = int(np.iinfo(ARRAYS["seed"]).max)
RESERVED_OVERRIDES = ("model", "mode", "seed", "target_sparsity", "surrogate", "surrogate_data", "workers",
                      "ray_address")
"""Env settings the recorder sets itself (``env_kwargs`` may not)."""
IGNORED_CELL_FIELDS = ("target_sparsity", "eval_samples", "workers", "ray_address")
"""Config fields in which a suite cell may differ from the recorder's env (its reward rows stay valid; its held-out
ppl is used only when ``eval_samples`` agrees too)."""


def _fidelity_cost(windows: int, full: int) -> float:
    """A reward evaluation on ``windows`` of ``full`` windows, in full evaluations (a fixed part for the pruning)."""
    return 0.1 + 0.9 * windows / full


@dataclass(frozen=True)
class RecordSettings:
    """What one (family, mode)'s evaluation set samples per env seed (see the module docstring); stored in the file."""

    random: int = RECORD["random"]
    """Rows per random spread."""
    spreads: tuple[str | float, ...] = RECORD["spreads"]
    """``"uniform"`` (actions uniform in ``[-1, 1]``) or ``s > 0`` (``N(0, s)`` clipped)."""
    heuristics: tuple[str, ...] = RECORD["heuristics"]
    """Heuristics at every target (FLAP only in structured mode)."""
    atp_trials: int = RECORD["atp_trials"]
    """ATP's common differences per target (evenly spaced over its feasible range)."""
    perturb: int = RECORD["perturb"]
    """Perturbed rows."""
    perturb_parents: int = RECORD["perturb_parents"]
    """The best allocations at a target a perturbation starts from."""
    perturb_sigmas: tuple[float, ...] = RECORD["perturb_sigmas"]
    """Noise scales of the perturbations (on the raw action)."""
    fidelity: int = RECORD["fidelity"]
    """Allocations measured at full and at every reduced fidelity."""
    fidelity_windows: tuple[int, ...] = RECORD["fidelity_windows"]
    """The reduced fidelities (those below the env's ``reward_windows``)."""
    held_out: float = RECORD["held_out"]
    """Share of the random, heuristic and perturbed rows that also get the held-out ppl."""
    targets: tuple[float, ...] | None = None
    """Targets of the new rows (``None``: :data:`TARGETS` of the mode)."""
    task_weight: int = RECORD["task_weight"]
    """How many times as often the suite tasks' targets are drawn."""
    chunk: int = RECORD["chunk"]
    """Most evaluations between two saves."""
    verify: int = RECORD["verify"]
    """Suite rows measured again before the suite's rows are kept (0: trust them unchecked)."""
    suite: bool = True
    """Read the suite's histories."""
    seed: int = 0
    """Seed of every draw."""

    def __post_init__(self) -> None:
        for name in ("random", "atp_trials", "perturb", "fidelity", "verify", "seed"):
            non_negative_int(name, getattr(self, name))
        for name in ("perturb_parents", "task_weight", "chunk"):
            positive_int(name, getattr(self, name))
        if isinstance(self.held_out, bool) or not isinstance(self.held_out, (int, float)) or not 0 <= self.held_out <= 1:
            raise FFPruneError(f"held_out must be a share in [0, 1], got {self.held_out!r}")
        if not self.spreads:
            raise FFPruneError("spreads needs at least one spread ('uniform' or a number)")
        for s in self.spreads:
            if s != "uniform" and (isinstance(s, (bool, str)) or not isinstance(s, (int, float)) or not 0 < s <= 10):
                raise FFPruneError(f"spreads must be 'uniform' or numbers in (0, 10], got {s!r}")
        for s in self.perturb_sigmas:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 2:
                raise FFPruneError(f"perturb_sigmas must be numbers in (0, 2], got {s!r}")
        if not self.perturb_sigmas:
            raise FFPruneError("perturb_sigmas needs at least one noise scale")
        unknown = [h for h in self.heuristics if h not in RECORD_HEURISTICS]
        if unknown:
            raise FFPruneError(f"heuristics must be among {list(RECORD_HEURISTICS)}, got {unknown}")
        for w in self.fidelity_windows:
            positive_int("fidelity_windows", w)
        if self.targets is not None:
            if not self.targets:
                raise FFPruneError("targets needs at least one target sparsity")
            for t in self.targets:
                if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
                    raise FFPruneError(f"targets must be sparsities in (0, 1), got {t!r}")

    def targets_of(self, mode: str, family: str) -> tuple[float, ...]:
        """The targets of the new rows of ``family`` in ``mode``: ``targets``, or by default :data:`TARGETS` up to 0.1
        above the family's highest suite target in the mode (bundled families: all of them; SmolLM2 structured,
        whose task is at 0.2: 0.1-0.3)."""
        if self.targets is not None:
            return tuple(float(t) for t in self.targets)
        top = max(family_targets(family, mode), default=max(TARGETS[mode]))
        return tuple(float(t) for t in TARGETS[mode] if t <= top + 0.1 + 1e-9)

    def heuristics_of(self, mode: str) -> tuple[str, ...]:
        """The heuristics run in ``mode`` (FLAP needs heads and neurons)."""
        return tuple(h for h in self.heuristics if mode == "structured" or h != "flap")

    def as_meta(self, mode: str, family: str) -> dict[str, Any]:
        """The settings as the file stores them (targets resolved for ``family`` in ``mode``); JSON values only."""
        out = as_json(dataclasses.asdict(self))
        out["targets"] = list(self.targets_of(mode, family))
        return out


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Chunk:
    """One unit of work of a seed: what it samples, its nominal rows, held-out rows and cost (evaluations)."""

    index: int
    kind: str
    """``suite``, ``random``, ``heuristics``, ``perturb`` or ``fidelity``."""
    source: str
    """Its rows' label (``heuristic:*`` and ``suite:*`` chunks hold several)."""
    rows: int
    held_out: int
    evaluations: float
    spread: str | float | None = None
    target: float | None = None


def seed_plan(settings: RecordSettings, family: str, mode: str, full_windows: int, suite_rows: int = 0,
              suite_held_out: int = 0, held_out_evaluations: float = HELD_OUT_COST) -> list[Chunk]:
    """The chunks of one env seed of ``family`` in ``mode``, in order (the same for every seed: draws differ by seed,
    sizes do not).

    ``suite_rows`` and ``suite_held_out`` (rows with the suite's held-out ppl) only size the suite chunk for
    :func:`plan_record` (the chunk reads what the cells hold); ``held_out_evaluations`` is what one held-out ppl costs
    (:func:`held_out_cost`)."""
    s = settings
    chunks: list[Chunk] = []
    quota = {"before": 0}

    def held(rows: int) -> int:  # an even share of the eligible rows, cumulated over the seed's chunks
        before = quota["before"]
        quota["before"] += rows
        return math.floor(s.held_out * (before + rows) + 0.5) - math.floor(s.held_out * before + 0.5)

    def add(kind: str, source: str, rows: int, evaluations: float, **kw: Any) -> None:
        ho = held(rows) if kind in ("random", "heuristics", "perturb") else 0
        chunks.append(Chunk(len(chunks), kind, source, rows, ho, evaluations + ho * held_out_evaluations, **kw))

    if s.suite:  # its held-out ppls were measured by the suite: only the checks cost evaluations here
        chunks.append(Chunk(0, "suite", "suite", suite_rows, suite_held_out,
                            s.verify + (held_out_evaluations if s.verify else 0.0)))
    for spread in s.spreads:
        for start in range(0, s.random, s.chunk):
            n = min(s.chunk, s.random - start)
            add("random", f"random:{spread}", n, n, spread=spread)
    heuristics = s.heuristics_of(mode)
    per_target = sum(s.atp_trials if h == "atp" else 1 for h in heuristics)
    passes = sum(h in CALIBRATION_PASSES for h in heuristics)
    if per_target:
        for t in s.targets_of(mode, family):
            add("heuristics", "heuristic", per_target, per_target + passes, target=t)
    for start in range(0, s.perturb, s.chunk):
        n = min(s.chunk, s.perturb - start)
        add("perturb", "perturb", n, n)
    reduced = fidelity_windows(settings, full_windows)
    if reduced:
        per_alloc = 1 + sum(_fidelity_cost(w, full_windows) for w in reduced)
        size = max(1, s.chunk // (1 + len(reduced)))
        for start in range(0, s.fidelity, size):
            n = min(size, s.fidelity - start)
            add("fidelity", "fidelity", n * (1 + len(reduced)), n * per_alloc)
    return chunks


def fidelity_windows(settings: RecordSettings, full_windows: int) -> tuple[int, ...]:
    """The reduced fidelities recorded for an env with ``full_windows`` reward windows."""
    return tuple(sorted({int(w) for w in settings.fidelity_windows if w < full_windows}))


# ----------------------------------------------------------------------------- checks
def check_request(families: Sequence[str], modes: Sequence[str], seeds: Sequence[int],
                  env_kwargs: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The (family, mode) pairs asked for; an unknown family or mode, a seed outside ``[0, 32767]`` or a reserved
    env setting is a one-line :class:`FFPruneError`."""
    pairs = check_families_modes(families, modes)
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
            raise FFPruneError(f"seeds must be env seeds in [0, {MAX_SEED}] (the set's int16 seed column), got {seed!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise FFPruneError(f"seeds must be distinct and at least one, got {list(seeds)}")
    reserved = sorted(set(env_kwargs or {}) & set(RESERVED_OVERRIDES))
    if reserved:
        raise FFPruneError(f"env settings {reserved} are set by the recorder (families, modes, seeds, targets); "
                           f"reserved: {list(RESERVED_OVERRIDES)}")
    return pairs


def check_families_modes(families: Sequence[str], modes: Sequence[str]) -> list[tuple[str, str]]:
    """The (family, mode) pairs asked for, each once; an unknown or no family or mode is a one-line
    :class:`FFPruneError`."""
    unknown = [f for f in families if f not in FAMILY_NAMES]
    if unknown or not families:
        raise FFPruneError(f"families must be among {sorted(FAMILY_NAMES)} (bundled, and real models fetched on "
                           f"first use), got {list(families)}")
    bad = [m for m in modes if m not in MODE_SUFFIX]
    if bad or not modes:
        raise FFPruneError(f"modes must be among {list(MODE_SUFFIX)}, got {list(modes)}")
    return [(f, m) for f in dict.fromkeys(families) for m in dict.fromkeys(modes)]


def env_config(family: str, mode: str, seed: int, env_kwargs: dict[str, Any] | None = None) -> EnvConfig:
    """The configuration of the env one seed of a set is recorded on (the registered id of the family and mode)."""
    return resolve_config(family_env_id(family, mode), {**(env_kwargs or {}), "seed": seed})


def held_out_cost(config: EnvConfig) -> float:
    """One held-out ppl in reward evaluations: ``eval_samples`` over the reward windows (SmolLM2: 32 / 8 = 4), or
    :data:`HELD_OUT_COST` where the whole ``eval`` split is scored (the bundled models)."""
    return HELD_OUT_COST if config.eval_samples is None else config.eval_samples / config.reward_windows


def seconds_per_evaluation(config: EnvConfig) -> float:
    """What one reward evaluation on all windows costs here (:data:`SECONDS_PER_EVALUATION`, one core, for the bundled
    models; :data:`SECONDS_PER_EVALUATION_REAL`, two threads, for a real one)."""
    return SECONDS_PER_EVALUATION_REAL.get(config.model, SECONDS_PER_EVALUATION)[config.mode]


def default_suite_out(family: str, suite_out: str | Path | None = None, suites: str | Path | None = None) -> Path:
    """Where the family's suite histories are read: ``suite_out`` when given, else its suite's folder in ``suites`` (the
    folder of suite folders: ``<suites>/core`` for the bundled families, ``<suites>/real`` for SmolLM2; the command
    line's default is the repository's ``docs/results``); neither is a one-line :class:`FFPruneError`."""
    if suite_out is not None:
        return Path(suite_out)
    if suites is None:
        raise FFPruneError(f"where are {family}'s suite cells? give suite_out (its suite's folder) or suites (the folder "
                           f"holding {family_suite(family)}/)")
    return Path(suites) / family_suite(family)



def _check_targets(settings: RecordSettings, family: str, mode: str, config: EnvConfig) -> None:
    for t in settings.targets_of(mode, family):
        check_budget(t, config.min_keep, config.max_keep)


def set_path(out: str | Path | None, family: str, mode: str) -> Path:
    """Where a (family, mode)'s set is written: ``<out>/<model>-<mode>.npz`` (``out`` default: the bundled data)."""
    return (DATA_DIR if out is None else Path(out)) / data_name(family_of(family)[1], mode)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _resume_state(path: Path, settings: RecordSettings, family: str, mode: str,
                  config: EnvConfig) -> EvaluationSet | None:
    """The set recorded so far at ``path`` (``None``: none yet), refused if it was recorded otherwise."""
    if not path.exists():
        return None
    data = EvaluationSet.load(path)
    recorder = data.meta.get("recorder")
    if not isinstance(recorder, dict):
        raise FFPruneError(f"{str(path)!r} holds evaluations not recorded by `ffprune surrogate record`; use another "
                           "--out (or delete it)")
    wanted = settings.as_meta(mode, family)
    if _canonical(recorder.get("settings")) != _canonical(wanted):
        differ = sorted(k for k in wanted if _canonical(recorder["settings"].get(k)) != _canonical(wanted[k]))
        raise FFPruneError(f"{str(path)!r} was recorded with other settings ({', '.join(differ)}: "
                           f"{[recorder['settings'].get(k) for k in differ]}, now {[wanted[k] for k in differ]}); "
                           "rerun with its settings to resume, or use another --out")
    for name in ("model", "mode", *CONFIG_FIELDS):
        if data.meta.get(name) != getattr(config, name):
            raise FFPruneError(f"{str(path)!r} was recorded with {name}={data.meta.get(name)!r}, not "
                               f"{getattr(config, name)!r}; use the same env settings to resume, or another --out")
    for seed, done in recorder.get("progress", {}).items():
        rows = int((data.arrays["seed"] == int(seed)).sum())
        if rows != done["rows"]:
            raise FFPruneError(f"{str(path)!r} holds {rows} rows of seed {seed} but its progress says {done['rows']} "
                               "(altered?); delete it and record it again")
    return data


# ----------------------------------------------------------------------------- the suite's histories
def realised_sparsity(env: Any, action: Sequence[float], target: float) -> np.ndarray:
    """The per-unit sparsity a step of ``env`` realises for ``action`` at ``target`` (``info["layer_sparsity"]``),
    without measuring it: the budget projection (``ffenv.project_budget``), the engine's rounding to whole heads /
    neurons (``env.unwrapped.pruner``) and the kept parameters, as :meth:`~ffenv.FFPruneEnv.score` computes them."""
    base = env.unwrapped
    cfg = base.config
    a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
    keep = project_budget(a, float(target), base.sizes, cfg.min_keep, cfg.max_keep)
    unit = base.pruner.to_unit_sparsity(keep, (1.0 - float(target)) * base.sizes.sum())
    return (1.0 - base.pruner.kept_params(unit) / base.sizes).astype(np.float32)


@dataclass
class SuiteCell:
    """A suite cell whose rows a set can use: where it is, its method and its result."""

    task: str
    method: str
    cell_seed: int
    """The search's seed (the env seed is the cell's ``env_kwargs["seed"]``: the suite runs every cell on env seed 0)."""
    path: Path
    result: dict[str, Any]
    eval_ok: bool
    """Its best's held-out ppl was measured on the recorder's ``eval`` windows."""


def suite_cells(suite_out: str | Path, config: EnvConfig, weights: str | None) -> list[SuiteCell]:
    """The finished cells of the suite that runs ``config``'s model (``core`` or ``real``; any search seed; none for a
    model no suite runs) recorded on its model, mode and env seed with its settings (every
    :class:`~ffenv.config.EnvConfig` field but :data:`IGNORED_CELL_FIELDS`) and weights; tasks in suite order, then
    methods and search seeds sorted. Surrogate results never qualify."""
    suite_out = Path(suite_out)
    names = [f.name for f in dataclasses.fields(EnvConfig) if f.name not in IGNORED_CELL_FIELDS]
    out = []
    families = [name for name, (_fid, model) in FAMILY_NAMES.items() if model == config.model]
    tasks = get_suite(family_suite(families[0])).tasks if families else ()
    for task in tasks:
        task_config = resolve_config(task.env_id)
        if (task_config.model, task_config.mode) != (config.model, config.mode):
            continue
        folder = suite_out / task.name
        cells = [(m.name, seed) for m in sorted((folder / "cells").glob("*")) for seed, _p in seed_files(m)]
        for method, cell_seed in sorted(cells):
            path = cell_path(folder, method, cell_seed)
            result = read_result_if_any(path)
            if result is None or not result.get("complete"):
                continue
            try:
                if formulation_of(result["env_id"]) != "single-step":  # a sequential cell's action is not projected
                    continue
                cell = EnvConfig.from_kwargs(**result["env_kwargs"])
            except (FFPruneError, TypeError, KeyError):  # an id or a setting this ffprune does not know: not this env
                continue
            if any(getattr(cell, n) != getattr(config, n) for n in names) or result.get("weights_fingerprint") != weights:
                continue
            out.append(SuiteCell(task.name, method, cell_seed, path, result, cell.eval_samples == config.eval_samples))
    return out


def _eval_key(config: EnvConfig) -> str:
    return "eval_ppl_after_calib" if config.reward == "calibrated" else "eval_ppl"


def _cell_points(cell: SuiteCell, config: EnvConfig) -> list[dict[str, Any]]:
    """The rows of a cell: its history points (``action``, ``target``, ``windows``, ``reward``, ``ppl``, ``eval_ppl``),
    its best's held-out ppl on the history point that measured it, or as a row of its own (a re-scoring at the final
    target on all windows, which the history does not hold)."""
    result = cell.result
    points = [{"action": p["action"], "target": float(p["target"]), "windows": int(p["windows"]),
               "reward": float(p["reward"]), "ppl": float(p["ppl"]), "eval_ppl": math.nan} for p in result["history"]]
    best = result.get("best")
    if not best:
        return points
    final = float(result["env_kwargs"]["target_sparsity"])
    eval_ppl = best.get(_eval_key(config)) if cell.eval_ok else None
    eval_ppl = math.nan if eval_ppl is None else float(eval_ppl)
    episode = int(best.get("episode", 0))
    same = points[episode - 1] if 1 <= episode <= len(points) else None
    if (same is not None and same["windows"] == config.reward_windows and same["target"] == final
            and same["reward"] == float(best["reward"])):
        same["eval_ppl"] = eval_ppl
        same["best"] = best
    else:
        points.append({"action": best["action"], "target": final, "windows": config.reward_windows,
                       "reward": float(best["reward"]), "ppl": float(best["ppl"]), "eval_ppl": eval_ppl, "best": best})
    return points


def suite_row_count(suite_out: str | Path, config: EnvConfig) -> tuple[int, int]:
    """How many rows the suite's cells give a seed, and how many of them hold a held-out ppl (no model is loaded)."""
    cells = suite_cells(suite_out, config, weights_fingerprint(config.model))
    points = [p for c in cells for p in _cell_points(c, config)]
    return len(points), sum(np.isfinite(p["eval_ppl"]) for p in points)


def suite_rows(env: FFPruneEnv, suite_out: str | Path, settings: RecordSettings,
               rng: np.random.Generator) -> tuple[Rows | None, dict[str, Any]]:
    """The suite's rows of ``env``'s seed, checked (see the module docstring), and the check's record."""
    config = env.config
    cells = suite_cells(suite_out, config, env.weights_fingerprint)
    points = [(c, p) for c in cells for p in _cell_points(c, config)]
    check: dict[str, Any] = {"cells": len(cells), "rows": len(points), "passed": True}
    if not points:
        return None, check
    sparsity = np.stack([realised_sparsity(env, p["action"], p["target"]) for _c, p in points])
    bests = [(i, p["best"]) for i, (_c, p) in enumerate(points) if "best" in p]
    moved = [points[i][0].method for i, b in bests if not np.array_equal(sparsity[i], np.asarray(b["layer_sparsity"],
                                                                                                   np.float32))]
    check["best_allocations_equal"] = not moved
    full = [i for i, (_c, p) in enumerate(points) if p["windows"] == config.reward_windows]
    picked = sorted(rng.choice(full, size=min(settings.verify, len(full)), replace=False).tolist()) if full else []
    diffs = []
    for i in picked:
        p = points[i][1]
        reward, info = env.score(np.asarray(p["action"], np.float32), target_sparsity=p["target"],
                                 reward_windows=p["windows"])
        diffs += [_rel(reward, p["reward"]), _rel(info["ppl"], p["ppl"])]
    check["verified_rows"] = len(picked)
    check["max_rel_diff"] = max(diffs, default=0.0)
    held = [i for i, (_c, p) in enumerate(points) if np.isfinite(p["eval_ppl"])]
    if settings.verify and held:
        i = held[int(rng.integers(len(held)))]
        p = points[i][1]
        measured = env.evaluate(np.asarray(p["action"], np.float32), target_sparsity=p["target"],
                                calibrate=config.reward == "calibrated")["ppl"]
        check["max_rel_diff_eval_ppl"] = _rel(measured, p["eval_ppl"])
    check["passed"] = bool(not moved and check["max_rel_diff"] <= VERIFY_RTOL
                           and check.get("max_rel_diff_eval_ppl", 0.0) <= VERIFY_RTOL)
    if not check["passed"]:
        log.warning("[surrogate] the suite's rows of %s %s seed %d are NOT used: they do not reproduce here (%s)",
                    config.model, config.mode, config.seed, {k: v for k, v in check.items() if k != "passed"})
        return None, check
    sources = list(dict.fromkeys(f"suite:{c.method}" for c, _p in points))
    arrays = {"unit_sparsity": sparsity, "target": np.array([p["target"] for _c, p in points]),
              "seed": np.full(len(points), config.seed), "windows": np.array([p["windows"] for _c, p in points]),
              "reward": np.array([p["reward"] for _c, p in points]), "ppl": np.array([p["ppl"] for _c, p in points]),
              "eval_ppl": np.array([p["eval_ppl"] for _c, p in points], np.float64),
              "source": np.array([sources.index(f"suite:{c.method}") for c, _p in points])}
    return Rows({k: v.astype(ARRAYS[k]) for k, v in arrays.items()}, sources, describe(env)), check


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if not (np.isfinite(a) and np.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(b), 1e-12)


# ----------------------------------------------------------------------------- new samples
def _stratified(rng: np.random.Generator, targets: Sequence[float], favoured: Sequence[float], weight: int,
                n: int) -> np.ndarray:
    """``n`` targets cycling through ``targets`` (the ``favoured`` ones ``weight`` times) in seeded orders."""
    pool = np.array([t for t in targets for _ in range(weight if any(abs(t - f) < 1e-9 for f in favoured) else 1)])
    reps = -(-n // len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:n]


def _held_mask(targets: np.ndarray, k: int) -> np.ndarray:
    """``k`` of the rows, evenly spread over the rows sorted by target."""
    n = len(targets)
    mask = np.zeros(n, bool)
    k = min(k, n)
    if k:
        order = np.argsort(targets, kind="stable")
        mask[order[[int((j + 0.5) * n / k) for j in range(k)]]] = True
    return mask


def _random_actions(rng: np.random.Generator, spread: str | float, shape: tuple[int, int]) -> np.ndarray:
    if spread == "uniform":
        return rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    return np.clip(rng.normal(0.0, float(spread), shape), -1.0, 1.0).astype(np.float32)


def _heuristic_actions(env: FFPruneEnv, target: float, settings: RecordSettings) -> list[tuple[str, np.ndarray]]:
    """``(source, action)`` of each heuristic at ``target`` (computed on an env configured at that target, as the
    heuristics read it; one that cannot allocate there is left out)."""
    at = FFPruneEnv(env.config.replace(target_sparsity=target))
    out: list[tuple[str, np.ndarray]] = []
    for name in settings.heuristics_of(env.config.mode):
        try:
            if name == "atp":
                beta_max = atp_beta_range(at)
                found = [atp_allocation(at, float(b)) for b in atp_betas(beta_max, settings.atp_trials)] \
                    if beta_max > 0 and settings.atp_trials else []
            else:
                allocate = {"uniform": uniform_allocation, "owl": owl_allocation, "alphapruning": alphapruning_allocation,
                            "flap": flap_allocation, "dlp": dlp_allocation}[name]
                got = allocate(at)
                found = [got[0] if isinstance(got, tuple) else got]
            out += [(f"heuristic:{name}", at.action_from_sparsities(within_keep_bounds(at, s))) for s in found]
        except FFPruneError as err:
            log.debug("[surrogate] heuristic %s at target %s left out: %s", name, target, err)
    return out


def _parents(data: EvaluationSet | None, seed: int, target: float, full: int, k: int) -> list[np.ndarray]:
    """The ``k`` best distinct allocations of ``seed`` at ``target`` on all reward windows so far (best first)."""
    if data is None or not len(data):
        return []
    a = data.arrays
    rows = np.flatnonzero((a["seed"] == seed) & (a["windows"] == full) & (np.abs(a["target"] - target) < 1e-6)
                          & np.isfinite(a["reward"]) & (a["reward"] > 0))
    rows = rows[np.argsort(-a["reward"][rows], kind="stable")]
    out, seen = [], set()
    for i in rows:
        key = a["unit_sparsity"][i].tobytes()
        if key not in seen:
            seen.add(key)
            out.append(a["unit_sparsity"][i].astype(np.float64))
        if len(out) == k:
            break
    return out


@dataclass
class _Request:
    actions: np.ndarray
    targets: np.ndarray
    windows: list[int] | None
    held_out: np.ndarray
    sources: list[str]


def _chunk_requests(chunk: Chunk, env: FFPruneEnv, data: EvaluationSet | None, settings: RecordSettings,
                    rng: np.random.Generator, family: str) -> _Request | None:
    """The evaluations of a chunk (not the suite's): actions, targets, windows, held-out rows, sources."""
    cfg = env.config
    mode, full, d = cfg.mode, cfg.reward_windows, env.n_units
    targets = settings.targets_of(mode, family)
    favoured = family_targets(family, mode)
    if chunk.kind == "random":
        t = _stratified(rng, targets, favoured, settings.task_weight, chunk.rows)
        actions = _random_actions(rng, chunk.spread, (chunk.rows, d))
        return _Request(actions, t, None, _held_mask(t, chunk.held_out), [chunk.source] * chunk.rows)
    if chunk.kind == "heuristics":
        found = _heuristic_actions(env, float(chunk.target), settings)
        if not found:
            return None
        t = np.full(len(found), float(chunk.target))
        held = np.zeros(len(found), bool)
        held[np.linspace(0, len(found), min(chunk.held_out, len(found)), endpoint=False).astype(int)] = True
        return _Request(np.stack([a for _s, a in found]), t, None, held, [s for s, _a in found])
    if chunk.kind == "perturb":
        t = _stratified(rng, targets, favoured, settings.task_weight, chunk.rows)
        lo, hi = 1.0 - cfg.max_keep, 1.0 - cfg.min_keep
        parents = {x: _parents(data, cfg.seed, x, full, settings.perturb_parents) for x in np.unique(t)}
        actions = []
        for x in t:
            found = parents[x]
            base = (env.action_from_sparsities(np.clip(found[int(rng.integers(len(found)))], lo, hi)) if found
                    else np.zeros(d, np.float32))
            sigma = settings.perturb_sigmas[int(rng.integers(len(settings.perturb_sigmas)))]
            actions.append(np.clip(base + rng.normal(0.0, sigma, d), -1.0, 1.0))
        return _Request(np.array(actions, np.float32), t, None, _held_mask(t, chunk.held_out), [chunk.source] * chunk.rows)
    if chunk.kind == "fidelity":
        reduced = fidelity_windows(settings, full)
        n = chunk.rows // (1 + len(reduced))
        t = _stratified(rng, targets, favoured, settings.task_weight, n)
        spreads = [settings.spreads[int(rng.integers(len(settings.spreads)))] for _ in range(n)]
        actions = np.concatenate([_random_actions(rng, s, (1, d)) for s in spreads])
        repeat = 1 + len(reduced)
        return _Request(np.repeat(actions, repeat, axis=0), np.repeat(t, repeat), [full, *reduced] * n,
                        np.zeros(n * repeat, bool), [chunk.source] * (n * repeat))
    raise FFPruneError(f"unknown chunk kind {chunk.kind!r}")


def _measure(env: FFPruneEnv, req: _Request) -> list[Rows]:
    """:func:`~ffenv.surrogate.record` of a request: one call per (source, held out or not), rows in request order
    within each."""
    out = []
    for source in dict.fromkeys(req.sources):
        for held in (True, False):
            rows = np.flatnonzero((np.array(req.sources) == source) & (req.held_out == held))
            if len(rows):
                windows = None if req.windows is None else [req.windows[i] for i in rows]
                out.append(record(env, req.actions[rows], req.targets[rows].tolist(), windows=windows, held_out=held,
                                  source=source))
    return out


# ----------------------------------------------------------------------------- one set
def record_set(family: str, mode: str, spec: RecordSpec | None = None, *, out: str | Path | None = None,
               suite_out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Record (or resume) the evaluation set of one (family, mode) into ``out`` (default: the bundled data) with the
    seeds, sampling settings and env settings of ``spec`` (its ``families`` and ``modes`` are :func:`run_record`'s, not
    read here); its summary (rows per source and seed, the suite check per seed, the path). ``suite_out``: the family's
    suite results (default :func:`default_suite_out`). See the module docstring."""
    spec = spec or RecordSpec()
    seeds, settings = list(spec.seeds), spec.settings
    env_kwargs = dict(spec.env_kwargs) if spec.env_kwargs is not None else None
    check_request([family], [mode], seeds, env_kwargs)
    path = set_path(out, family, mode)
    check_writable(path)
    configs = [env_config(family, mode, s, env_kwargs) for s in seeds]
    for config in configs:
        _check_targets(settings, family, mode, config)
    data = _resume_state(path, settings, family, mode, configs[0])
    suite_out = default_suite_out(family, suite_out) if settings.suite else None
    plans = {c.seed: seed_plan(settings, family, mode, c.reward_windows, held_out_evaluations=held_out_cost(c))
             for c in configs}
    done = {c.seed: _progress(data, c.seed)["chunks"] for c in configs}
    total = sum(ch.evaluations for s, plan in plans.items() for ch in plan)
    spent = sum(ch.evaluations for s, plan in plans.items() for ch in plan[: done[s]])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=round(total), initial=round(spent), desc=f"{family_of(family)[1]} {mode}", unit="eval",
                   dynamic_ncols=True)
    try:
        for config in configs:
            plan = plans[config.seed]
            if done[config.seed] >= len(plan):
                continue
            log.info("[surrogate] %s %s seed %d: chunk %d of %d", config.model, mode, config.seed, done[config.seed] + 1,
                     len(plan))
            env = FFPruneEnv(config)
            for chunk in plan[done[config.seed]:]:
                data = _run_chunk(chunk, env, data, settings, path, suite_out, family)
                if bar is not None:
                    bar.update(round(chunk.evaluations))
            env.close()
    finally:
        if bar is not None:
            bar.close()
    return summarise(path)


def _progress(data: EvaluationSet | None, seed: int) -> dict[str, int]:
    if data is None:
        return {"chunks": 0, "rows": 0}
    return dict(data.meta["recorder"]["progress"].get(str(seed), {"chunks": 0, "rows": 0}))


def _run_chunk(chunk: Chunk, env: FFPruneEnv, data: EvaluationSet | None, settings: RecordSettings, path: Path,
               suite_out: str | Path, family: str) -> EvaluationSet:
    """Run one chunk, add its rows, save the set with the chunk marked done (atomically); the set."""
    seed = env.config.seed
    rng = np.random.default_rng([settings.seed, seed, chunk.index])
    check = None
    if chunk.kind == "suite":
        rows, check = suite_rows(env, suite_out, settings, rng)
        batches = [rows] if rows is not None else []
    else:
        req = _chunk_requests(chunk, env, data, settings, rng, family)
        batches = _measure(env, req) if req is not None else []
    if data is None:
        first = batches.pop(0) if batches else _empty_rows(env)
        data = EvaluationSet.from_rows(first)
    for rows in batches:
        data.append(rows)
    recorder = as_json(data.meta.get("recorder") or {"settings": settings.as_meta(env.config.mode, family),
                                                  "progress": {}, "verification": {}})
    recorder["progress"][str(seed)] = {"chunks": chunk.index + 1, "rows": int((data.arrays["seed"] == seed).sum())}
    if check is not None:
        recorder["verification"][str(seed)] = check
    data.meta = {**data.meta, "recorder": recorder}
    data.save(path)
    return data


def _empty_rows(env: FFPruneEnv) -> Rows:
    arrays = {k: np.zeros((0, env.n_units) if k == "unit_sparsity" else (0,), dtype) for k, dtype in ARRAYS.items()}
    return Rows(arrays, [], describe(env))


def summarise(path: str | Path) -> dict[str, Any]:
    """What a recorded set holds: rows per seed and source, held-out and reduced-fidelity rows, the suite checks."""
    data = EvaluationSet.load(path)
    a = data.arrays
    full = int(data.meta["reward_windows"])
    sources = data.sources
    per_source = {}
    for i, name in enumerate(sources):
        mine = a["source"] == i
        per_source[name] = {"rows": int(mine.sum()), "held_out": int((mine & data.measured).sum()),
                            "reduced_fidelity": int((mine & (a["windows"] < full)).sum())}
    recorder = data.meta.get("recorder", {})
    return {"path": str(path), "model": data.meta["model"], "mode": data.meta["mode"], "rows": len(data),
            "seeds": {str(s): int((a["seed"] == s).sum()) for s in sorted(set(a["seed"].tolist()))},
            "sources": per_source, "splits": {k: int(v.sum()) for k, v in data.split().items()},
            "progress": recorder.get("progress", {}), "verification": recorder.get("verification", {}),
            "fingerprint": data.fingerprint}


# ----------------------------------------------------------------------------- every set, and the plan
@dataclass(frozen=True)
class RecordSpec:
    """What a recording is: the sets of some (family, mode) pairs, their env seeds and how each samples (where they are
    written, where the suites' histories are, where the sets are recorded and whether progress shows are
    :func:`run_record`'s own arguments). The mapping is never mutated."""

    families: Sequence[str] = tuple(FAMILY_MODELS)
    """Families: bundled (``llama``, ``mistral``, ``opt``) or real (``smollm2``: fetched on first use)."""
    modes: Sequence[str] = tuple(MODE_SUFFIX)
    """Modes of each family."""
    seeds: Sequence[int] = (0,)
    """Env seeds (pruning instances), in ``[0, 32767]``, distinct."""
    settings: RecordSettings = RecordSettings()
    """What each set samples per env seed (stored in the file)."""
    env_kwargs: Mapping[str, Any] | None = None
    """Env settings on top of each family's (not the reserved :data:`RESERVED_OVERRIDES`)."""


def _prepare(spec: RecordSpec, out: str | Path | None) -> list[tuple[str, str, Path, list[EnvConfig]]]:
    """Every check before any work: the request, each set's path (writable), env settings, targets, and a file to
    resume recorded with these settings."""
    seeds, settings = list(spec.seeds), spec.settings
    env_kwargs = dict(spec.env_kwargs) if spec.env_kwargs is not None else None
    pairs = check_request(spec.families, spec.modes, seeds, env_kwargs)
    out_sets = []
    for family, mode in pairs:
        path = set_path(out, family, mode)
        configs = [env_config(family, mode, s, env_kwargs) for s in seeds]
        for config in configs:
            _check_targets(settings, family, mode, config)
        if not seed_plan(settings, family, mode, configs[0].reward_windows):
            raise FFPruneError("nothing to record: no suite rows (--no-suite), no random, heuristic, perturbed or "
                               "reduced-fidelity rows asked for")
        check_writable(path)
        _resume_state(path, settings, family, mode, configs[0])
        out_sets.append((family, mode, path, configs))
    return out_sets


def run_record(spec: RecordSpec | None = None, *, out: str | Path | None = None, suite_out: str | Path | None = None,
               suites: str | Path | None = None, runner: Runner = IN_PROCESS, progress: bool = True,
               **fields: Any) -> list[dict[str, Any]]:
    """Record (or resume) the set of every (family, mode) of ``spec`` (``fields``: :class:`RecordSpec` fields by
    keyword, replacing its own) into ``out`` (default: the bundled data): one after the other, or as Ray tasks on
    ``runner``; their summaries (:func:`summarise`). ``suite_out`` / ``suites``: where the suite's histories are (a
    suite's folder, or the folder of suite folders: :func:`default_suite_out`). Bad input is a one-line
    :class:`FFPruneError` before any evaluation."""
    spec = spec_with(RecordSpec, spec, fields, "run_record", "recording")
    sets = _prepare(spec, out)
    jobs = [{"family": family, "mode": mode, "spec": spec, "out": path.parent.resolve(),
             "suite_out": default_suite_out(family, suite_out, suites).resolve() if spec.settings.suite else None,
             "progress": progress}
            for family, mode, path, _c in sets]
    if runner.workers:
        jobs = [{**job, "progress": False} for job in jobs]
    done = run_jobs(keyword_jobs(record_set), jobs, runner)
    raise_failures("ffprune surrogate record", done)  # the finished sets are kept; a rerun resumes the others
    return done


def plan_record(spec: RecordSpec | None = None, *, out: str | Path | None = None, suite_out: str | Path | None = None,
                suites: str | Path | None = None, **fields: Any) -> dict[str, Any]:
    """What :func:`run_record` would do with the same arguments, without loading a model: per set and seed, rows,
    held-out rows and evaluations per source (suite rows: what the cells hold; heuristics: at most, one may not fit a
    target), the chunks already done, and the time at :func:`seconds_per_evaluation` (plus the setup: dense ppls at
    every fidelity and on the held-out split)."""
    spec = spec_with(RecordSpec, spec, fields, "plan_record", "recording")
    settings = spec.settings
    sets = []
    for family, mode, path, configs in _prepare(spec, out):
        data = EvaluationSet.load(path) if path.exists() else None
        seconds = seconds_per_evaluation(configs[0])
        where = default_suite_out(family, suite_out, suites) if settings.suite else None
        per_seed = []
        for config in configs:
            count = suite_row_count(where, config) if where is not None else (0, 0)
            plan = seed_plan(settings, family, mode, config.reward_windows, *count,
                             held_out_evaluations=held_out_cost(config))
            sources: dict[str, dict[str, float]] = {}
            for ch in plan:
                name = ch.source if ch.kind != "heuristics" else "heuristic:" + "/".join(settings.heuristics_of(mode))
                entry = sources.setdefault(name, {"rows": 0, "held_out": 0, "evaluations": 0.0})
                entry["rows"] += ch.rows
                entry["held_out"] += ch.held_out
                entry["evaluations"] += ch.evaluations
            setup = (config.reward_windows + 1) / 2 + held_out_cost(config)
            evaluations = sum(ch.evaluations for ch in plan) + setup
            per_seed.append({"seed": config.seed, "sources": sources, "setup_evaluations": setup,
                             "evaluations": evaluations, "minutes": evaluations * seconds / 60,
                             "chunks": len(plan), "done": _progress(data, config.seed)["chunks"]})
        sets.append({"family": family, "model": family_of(family)[1], "mode": mode, "path": str(path),
                     "seconds_per_evaluation": seconds, "per_seed": per_seed,
                     "minutes": sum(s["minutes"] for s in per_seed)})
    return {"settings": dataclasses.asdict(settings), "suite_out": None if suite_out is None else str(suite_out),
            "sets": sets,
            "minutes": sum(s["minutes"] for s in sets)}


def plan_markdown(plan: dict[str, Any]) -> str:
    """The plan of :func:`plan_record` as text: one table per set."""
    lines = []
    for s in plan["sets"]:
        seeds = s["per_seed"]
        done = ", ".join(f"seed {p['seed']}: {p['done']}/{p['chunks']}" for p in seeds)
        lines += [f"{s['model']} {s['mode']} -> {s['path']} (chunks done: {done})", "",
                  "| source | rows per seed | held-out ppl per seed | evaluations per seed |", "|---|---|---|---|"]
        for name in seeds[0]["sources"]:
            cols = [" / ".join(_num(p["sources"][name][k]) for p in seeds) if len({_num(p["sources"][name][k])
                                                                                   for p in seeds}) > 1
                    else _num(seeds[0]["sources"][name][k]) for k in ("rows", "held_out", "evaluations")]
            lines.append(f"| {name} | {' | '.join(cols)} |")
        lines.append(f"| setup (dense ppls) | – | – | {_num(seeds[0]['setup_evaluations'])} |")
        per = " / ".join(f"{p['minutes']:.1f}" for p in seeds)
        lines += [f"| **total** | {' / '.join(str(sum(int(v['rows']) for v in p['sources'].values())) for p in seeds)} | "
                  f"{' / '.join(str(sum(int(v['held_out']) for v in p['sources'].values())) for p in seeds)} | "
                  f"{' / '.join(_num(p['evaluations']) for p in seeds)} |", "",
                  f"≈ {per} min per seed at {s['seconds_per_evaluation']} s per reward evaluation "
                  f"({'two threads' if s['model'] in SECONDS_PER_EVALUATION_REAL else 'one core'}); "
                  f"{s['minutes']:.0f} min for the set", ""]
    lines.append(f"In all ≈ {plan['minutes']:.0f} min (bundled sets run side by side with --cell-workers N).")
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def summary_markdown(summaries: Sequence[dict[str, Any]]) -> str:
    """What :func:`run_record` wrote: per set, rows per source (held-out, reduced fidelity), splits, the suite check."""
    lines = []
    for s in summaries:
        lines += [f"{s['model']} {s['mode']}: {s['rows']} rows in {s['path']} (env seeds "
                  f"{', '.join(f'{k}: {v}' for k, v in s['seeds'].items())}; train / validation / test "
                  f"{s['splits']['train']} / {s['splits']['validation']} / {s['splits']['test']})", "",
                  "| source | rows | with held-out ppl | reduced fidelity |", "|---|---|---|---|"]
        lines += [f"| {name} | {v['rows']} | {v['held_out']} | {v['reduced_fidelity']} |" for name, v in s["sources"].items()]
        for seed, check in s["verification"].items():
            verdict = "kept" if check["passed"] else "NOT kept (they do not reproduce here)"
            lines.append(f"\nsuite rows of seed {seed}: {check['rows']} from {check['cells']} cells, {verdict}; "
                         f"{check.get('verified_rows', 0)} re-measured, largest relative difference "
                         f"{check.get('max_rel_diff', 0.0):.2g} (held-out ppl {check.get('max_rel_diff_eval_ppl', 0.0):.2g})")
        lines.append("")
    return "\n".join(lines)
