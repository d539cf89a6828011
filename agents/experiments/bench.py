"""``ffprune bench``: every RL agent and every baseline on one env, side by side, resumable.

    ffprune bench --env FFPrune-Llama-v0 --budget 200 --seeds 3 --out bench/llama-0.3

What a bench is (the env, budget, seeds, methods, env settings, target and Calib column) is a :class:`BenchSpec`;
:func:`run_bench` takes one (or its fields by keyword) with the folder it writes, the
:class:`~ffprune.agents.experiments.engine.Runner` its cells run on and whether it shows progress.

Each (method, seed) cell is one :func:`ffprune.agents.experiments.search.run_search` with the same budget,
written to ``<out>/cells/<method>/seed<k>.json.gz`` (gzip-compressed JSON; its TensorBoard run under
``<out>/tb/<env>/<method>/seed<k>``); a finished cell is never recomputed, an interrupted one resumes from its
checkpoint, and cells written by an older ffprune are read with today's field names
(:func:`ffprune.agents.results.read_result`). With ``calibrate`` (structured envs) each cell's best allocation is also
scored on the held-out split after post-pruning calibration (:mod:`ffenv.pruning.calib`), stored in the cell as
``best.eval_ppl_after_calib``. Cells are :class:`~ffprune.agents.experiments.engine.CellSpec` jobs on the engine's
runner (:func:`~ffprune.agents.experiments.engine.run_jobs`: in this process or as Ray tasks); a cell that raises is
recorded in ``<out>/failures.json`` and the others finish; then the folder gets the tables and plots of
:func:`ffprune.agents.experiments.reports.write_outputs` (of the finished cells).

Methods (``--methods``): any name of the registry :mod:`ffprune.agents.methods.registry` (or any SB3 algorithm);
by default every registered method whose ``modes`` include the env's mode. A suite's variant label (a method with
other settings, a :class:`~ffprune.agents.experiments.engine.CellSpec`'s ``variant``) has cells of its own in
``<out>/cells/<label>/``.

On a surrogate (``env_kwargs={"surrogate": True, ...}``, ``ffprune bench --surrogate``) the folder's ``config.json``
records the surrogate's label (``"surrogate": {"fingerprint", "data"}``): a folder of real cells refuses surrogate
ones and back, and a folder of another surrogate's cells is refused too; the calibrated column is left out (a
surrogate predicts the held-out ppl without Calib), and the tables say "surrogate" and count surrogate evaluations.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from ffenv.errors import FFPruneError, positive_int
from ffenv.io import as_json
from ffenv.registration import formulation_of, resolve_config
from ffprune.agents.experiments.engine import (
    IN_PROCESS,
    CellFailure,
    CellSpec,
    CellStore,
    Runner,
    run_jobs,
    save_failures,
)
from ffprune.agents.experiments.reports import write_outputs
from ffprune.agents.experiments.search import (
    SearchSpec,
    calibrated_eval_ppl,
    model_fingerprint,
    run_search,
    surrogate_label,
)
from ffprune.agents.methods.registry import get_method, methods_for
from ffprune.agents.results import read_result, result_env, seed_files, write_result
from ffprune.agents.tools.specs import spec_with

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """What a bench (or a suite) changes for every cell's env and score, by keyword: env settings, the target, the
    Calib column. :class:`BenchSpec` is these plus what the bench is; :class:`BenchOverrides` these plus progress."""

    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Env settings on top of each env's (an :class:`~ffenv.config.EnvConfig` field each; tests use small windows)."""
    target: float | None = None
    """Target sparsity (default: the env's)."""
    calibrate: bool = True
    """Also score each cell's best allocation after Calib (structured, real envs only)."""
    calib_alpha: float | None = None
    """Calib's ridge penalty (default: the env's ``calib_alpha``)."""


@dataclass(frozen=True, kw_only=True)
class BenchOverrides(BenchSettings):
    """What a bench (or a suite, a claim, a study) changes for every cell (:class:`BenchSettings`), and whether its
    cells show progress bars."""

    progress: bool = True


def cell_path(out: Path, method: str, seed: int) -> Path:
    """Where one (method, seed) result lives: ``<out>/cells/<method>/seed<k>.json.gz`` (an older folder's
    ``seed<k>.json`` where it holds one: :func:`~ffprune.agents.results.seed_file`)."""
    return CellStore(out).path(method, seed)


def method_seeds(method: str, seeds: int) -> range:
    """The seeds a benchmark runs ``method`` with when it asks for ``seeds``: ``0..seeds-1``, or seed 0 alone for a
    deterministic method (a heuristic, a fixed sweep: every seed gives the same result)."""
    return range(seeds) if get_method(method).seeded else range(1)


def _calibrated(cell: dict[str, Any], path: Path, alpha: float | None) -> dict[str, Any]:
    """Add ``best.eval_ppl_after_calib`` (held-out ppl after post-pruning calibration with ridge ``alpha``, default
    the cell env's) to a finished cell, unless it has it for that ``alpha``."""
    best = cell["best"]
    alpha = cell["env_kwargs"]["calib_alpha"] if alpha is None else float(alpha)
    if "eval_ppl_after_calib" in best and best.get("calib_alpha") == alpha:
        return cell
    others = [p for method in sorted(path.parents[1].iterdir()) if method.is_dir() for _s, p in seed_files(method)]
    for other in others:  # a deterministic heuristic gives the same allocation for every seed: measured once
        done = read_result(other)
        if (other != path and done.get("env_kwargs") == cell["env_kwargs"] and done["best"].get("calib_alpha") == alpha
                and done["best"]["action"] == best["action"] and "eval_ppl_after_calib" in done["best"]):
            best["eval_ppl_after_calib"], best["calib_alpha"] = done["best"]["eval_ppl_after_calib"], alpha
            write_result(path, cell)
            return cell
    env = result_env(cell)  # in-process: one evaluation needs no population workers
    try:
        best["eval_ppl_after_calib"] = calibrated_eval_ppl(env, best["action"], cell["env_kwargs"]["target_sparsity"], alpha)
    finally:
        env.close()
    best["calib_alpha"] = alpha
    write_result(path, cell)
    return cell


def cell_specs(env_id: str, budget: int, seeds: int, methods: Sequence[str] | None = None, out: str | Path = "bench",
               overrides: BenchOverrides | None = None) -> list[CellSpec]:
    """The (method, seed) cells of one bench folder (settings checked, the folder's manifest claimed: a folder holding
    other settings is a one-line :class:`FFPruneError` before any work)."""
    out, o = Path(out), overrides or BenchOverrides()
    positive_int("seeds", seeds)
    positive_int("budget", budget)
    env_kwargs = dict(o.env_kwargs)
    merged = {**env_kwargs, **({} if o.target is None else {"target_sparsity": o.target})}
    mode = resolve_config(env_id, merged).mode  # unknown ids and bad settings fail here, before any work
    formulation = formulation_of(env_id)
    methods = list(methods) if methods else methods_for(mode, formulation)
    bad = [m for m in methods if mode not in get_method(m).modes or formulation not in get_method(m).formulations]
    if bad:
        raise FFPruneError(f"methods {bad} do not support {formulation} {mode} envs ({env_id}); methods for it: "
                           f"{methods_for(mode, formulation)}")
    label = surrogate_label(env_id, merged)
    # Calib compensates removed heads / neurons: structured only; a surrogate predicts no Calib
    calibrate = o.calibrate and mode == "structured" and label is None
    CellStore(out).claim({"env_id": env_id, "budget": budget, "target": o.target, "env_kwargs": env_kwargs,
                          "weights_fingerprint": model_fingerprint(env_id, env_kwargs or None),
                          **({"surrogate": label} if label is not None else {})})
    return [CellSpec(env_id, method, seed, budget, out, env_kwargs, o.target, calibrate=calibrate,
                     calib_alpha=o.calib_alpha, progress=o.progress)
            for method in methods for seed in method_seeds(method, seeds)]


VARIANT_KEYS = ("method", "agent_kwargs", "curriculum_kwargs")
"""The fields of a cell's ``variant`` record that say what ran (its ``label``, ``name`` and ``source`` only say where the
settings came from)."""


def variant_settings(record: dict[str, Any]) -> dict[str, Any]:
    """What a ``variant`` record (:func:`run_cell`) ran: its :data:`VARIANT_KEYS`, as JSON gives them back."""
    return as_json({k: record.get(k) or ({} if k != "method" else None) for k in VARIANT_KEYS})


def check_variant_settings(folder: Path, held: Any, variant: dict[str, Any], what: str = "cells") -> None:
    """Refuse (one line) to go on in ``folder`` as ``variant`` when a file there holds the ``variant`` field ``held`` of
    other settings, or none (not a variant's file at all); ``what`` names the files in the message."""
    old = variant_settings(held) if isinstance(held, dict) else None
    if old != variant_settings(variant):
        raise FFPruneError(f"{str(folder)!r} holds {what} of other settings ({old or 'not a variant'}, now "
                           f"{variant_settings(variant)}): use another label or --out folder")


def check_variant_cell(path: Path, record: dict[str, Any]) -> None:
    """Refuse (one line) to resume the finished cell at ``path`` as the variant ``record`` when the cell ran other
    settings, or is not a variant's cell at all (:func:`check_variant_settings`)."""
    if path.exists():
        check_variant_settings(path.parent, read_result(path).get("variant"), record)


def run_cell(spec: CellSpec) -> dict[str, Any]:
    """One cell: the search (resumed if interrupted; a finished one is read back) and, with ``spec.calibrate``, its
    calibrated score. A variant's cell (``spec.variant``) lives under its label and records the variant; the caller
    checks a finished cell there against the variant before any work (:func:`check_variant_cell`, as
    :func:`~ffprune.agents.experiments.suite.variant_specs` does)."""
    log.info("[bench] %s %s seed %d", spec.env_id, spec.label, spec.seed)
    cell = search_cell(spec, spec.logdir)
    return _calibrated(cell, spec.path, spec.calib_alpha) if spec.calibrate else cell


def search_cell(spec: CellSpec, logdir: Path | None) -> dict[str, Any]:
    """The search of one cell, into ``spec.path`` (resumed if interrupted; a finished one is read back), its TensorBoard
    run under ``logdir`` (``None``: none); a variant's result records the variant."""
    search = SearchSpec(spec.env_id, spec.method, spec.budget, spec.seed, target=spec.target,
                        env_kwargs=dict(spec.env_kwargs) or None, agent_kwargs=dict(spec.agent_kwargs) or None,
                        curriculum_kwargs=dict(spec.curriculum_kwargs) or None)
    return run_search(search, out=spec.path, logdir=logdir, resume=True, progress=spec.progress,
                      extra_keys={"variant": dict(spec.variant)} if spec.variant is not None else None)


@dataclass(frozen=True)
class BenchSpec(BenchSettings):
    """What a bench is: every method on one env, at one budget, with seeds ``0..seeds-1``, and the
    :class:`BenchSettings` (by keyword) of its cells (where it is written, where its cells run and whether it shows
    progress are :func:`run_bench`'s own arguments). The mapping is never mutated."""

    named_by: ClassVar[tuple[str, str]] = ("env_id", "an env id")
    """A plain string given as the spec is its ``env_id`` (:func:`~ffprune.agents.tools.specs.spec_with`)."""

    env_id: str = "FFPrune-Llama-v0"
    """The env every cell searches."""
    budget: int = 200
    """Episodes per search (heuristics: one evaluation)."""
    seeds: int = 3
    """Seeds ``0..seeds-1`` per seeded method (a deterministic one runs seed 0 only: :func:`method_seeds`)."""
    methods: Sequence[str] | None = None
    """Registered methods (default: every one whose ``modes`` include the env's mode)."""

    def overrides(self, progress: bool = True) -> BenchOverrides:
        """What the bench changes for every cell (:func:`cell_specs`), with or without progress bars."""
        settings = {f.name: getattr(self, f.name) for f in fields(BenchSettings)}
        return BenchOverrides(**{**settings, "env_kwargs": dict(self.env_kwargs)}, progress=progress)


def run_cells(spec: BenchSpec | str | None = None, *, out: str | Path = "bench", runner: Runner = IN_PROCESS,
              progress: bool = True, **settings: Any) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Run (or resume) every (method, seed) cell of the bench ``spec`` (``settings``: :class:`BenchSpec` fields by
    keyword, replacing the spec's) in ``out`` (:func:`~ffprune.agents.experiments.engine.run_jobs` on ``runner``: in
    process or as Ray tasks); a failing cell is recorded in ``<out>/failures.json`` and the others finish. Returns the
    finished cells per method and the failure list."""
    spec = spec_with(BenchSpec, spec, settings, "run_cells", "bench")
    specs = cell_specs(spec.env_id, spec.budget, spec.seeds, spec.methods, out, spec.overrides(progress))
    outcomes = run_jobs(run_cell, specs, runner)
    cells: dict[str, list[dict[str, Any]]] = {}
    for cell_spec, cell in zip(specs, outcomes):
        if not isinstance(cell, (CellFailure, BaseException)):
            cells.setdefault(cell_spec.method, []).append(cell)
    return cells, save_failures(specs, outcomes)


def run_bench(spec: BenchSpec | str | None = None, *, out: str | Path = "bench", runner: Runner = IN_PROCESS,
              progress: bool = True, **settings: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run/resume all cells of the bench ``spec`` (a :class:`BenchSpec` or an env id) in ``out`` (:func:`run_cells`:
    ``settings`` are :class:`BenchSpec` fields by keyword, as in ``run_bench("FFPrune-OPT-v0", budget=40)``;
    ``runner`` runs the cells here or as Ray tasks), then write the tables and plots of the finished ones; returns
    the summary rows and the failure list (empty when every cell finished)."""
    spec = spec_with(BenchSpec, spec, settings, "run_bench", "bench")
    cells, failures = run_cells(spec, out=out, runner=runner, progress=progress)
    return (write_outputs(Path(out), cells, spec.env_id, spec.budget, spec.seeds) if cells else []), failures
