"""``ffprune bench``: every RL agent and every baseline on one env, side by side, resumable.

    ffprune bench --env FFPrune-Llama-v0 --budget 200 --seeds 3 --out bench/llama-0.3

Each (method, seed) cell is one :func:`ffprune.agents.experiments.search.run_search` with the same budget,
written to ``<out>/cells/<method>/seed<k>.json.gz`` (gzip-compressed JSON; its TensorBoard run under
``<out>/tb/<env>/<method>/seed<k>``); a finished cell is never recomputed, an interrupted one resumes from its
checkpoint, and cells written by an older ffprune are read with today's field names
(:func:`ffprune.agents.results.read_result`). With ``calibrate`` (structured envs) each cell's best allocation is also
scored on the held-out split after post-pruning calibration (:mod:`ffenv.pruning.calib`), stored in the cell as
``best.eval_ppl_after_calib``. Cells run in this process or as Ray tasks (:mod:`ffprune.agents.experiments.ray_tasks`);
then the folder gets the tables and plots of :func:`ffprune.agents.experiments.reports.write_outputs`.

Methods (``--methods``): any name of the registry :mod:`ffprune.agents.methods.registry` (or any SB3 algorithm);
by default every registered method whose ``modes`` include the env's mode. A suite's variant label (a method with
other settings, :func:`run_cell`'s ``variant``) has cells of its own in ``<out>/cells/<label>/``.

On a surrogate (``env_kwargs={"surrogate": True, ...}``, ``ffprune bench --surrogate``) the folder's ``config.json``
records the surrogate's label (``"surrogate": {"fingerprint", "data"}``): a folder of real cells refuses surrogate
ones and back, and a folder of another surrogate's cells is refused too; the calibrated column is left out (a
surrogate predicts the held-out ppl without Calib), and the tables say "surrogate" and count surrogate evaluations.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ffenv.errors import FFPruneError, SearchInterrupted, positive_int
from ffenv.io import as_json, atomic_write_json
from ffenv.registration import formulation_of, resolve_config
from ffprune.agents.experiments.ray_tasks import run_on_ray
from ffprune.agents.experiments.reports import write_outputs
from ffprune.agents.experiments.search import calibrated_eval_ppl, model_fingerprint, run_search, surrogate_label
from ffprune.agents.methods.registry import get_method, methods_for
from ffprune.agents.results import (
    describe_surrogate,
    read_result,
    result_env,
    same_surrogate,
    seed_file,
    seed_files,
    surrogate_of,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellFailure:
    """A cell that raised instead of finishing: which one, and its exception's type and message."""

    env_id: str
    method: str
    seed: int
    error: str
    """The exception's type name (``FFPruneError``, ``WorkerLostError``, ``RuntimeError``...)."""
    message: str
    traceback: str = ""
    """The formatted traceback where one was available (in-process cells)."""

    @classmethod
    def of(cls, job: dict[str, Any], err: BaseException) -> CellFailure:
        """The failure of the cell ``job`` (a :func:`cell_jobs` entry) that raised ``err``."""
        trace = "".join(traceback.format_exception(err)) if err.__traceback__ is not None else ""
        return cls(job["env_id"], job["method"], job["seed"], type(err).__name__, str(err), trace)

    def as_dict(self) -> dict[str, Any]:
        """The failure as JSON-ready fields."""
        return asdict(self)


def cell_path(out: Path, method: str, seed: int) -> Path:
    """Where one (method, seed) result lives: ``<out>/cells/<method>/seed<k>.json.gz`` (an older folder's
    ``seed<k>.json`` where it holds one: :func:`~ffprune.agents.results.seed_file`)."""
    return seed_file(out / "cells" / method, seed)


def method_seeds(method: str, seeds: int) -> range:
    """The seeds a benchmark runs ``method`` with when it asks for ``seeds``: ``0..seeds-1``, or seed 0 alone for a
    deterministic method (a heuristic, a fixed sweep: every seed gives the same result)."""
    return range(seeds) if get_method(method).seeded else range(1)


def _check_config(out: Path, config: dict[str, Any]) -> None:
    """A bench folder holds one setting: refuse to mix results of different envs / budgets / targets / weights."""
    path = out / "config.json"
    if path.exists():
        old = read_result(path)  # an older folder's field names are today's
        held, label = surrogate_of(old), surrogate_of(config)
        if not same_surrogate(held, label):
            raise FFPruneError(f"out={str(out)!r} holds cells of {describe_surrogate(held)}; this bench runs on "
                               f"{describe_surrogate(label)}: use another --out folder (surrogate and real results never "
                               "mix)")
        diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
        if diff:
            raise FFPruneError(f"out={str(out)!r} holds a bench with other settings {diff} (old, new); "
                               "use another --out folder")
    atomic_write_json(path, config)


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
            atomic_write_json(path, cell)
            return cell
    env = result_env(cell)  # in-process: one evaluation needs no population workers
    try:
        best["eval_ppl_after_calib"] = calibrated_eval_ppl(env, best["action"], cell["env_kwargs"]["target_sparsity"], alpha)
    finally:
        env.close()
    best["calib_alpha"] = alpha
    atomic_write_json(path, cell)
    return cell


def cell_jobs(env_id: str, budget: int, seeds: int, methods: list[str] | None = None, out: str | Path = "bench",
              target: float | None = None, env_kwargs: dict[str, Any] | None = None, calibrate: bool = True,
              calib_alpha: float | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """The (method, seed) cells of one bench folder as :func:`run_cell` keyword arguments (settings checked,
    ``<out>/config.json`` written)."""
    out = Path(out)
    positive_int("seeds", seeds)
    positive_int("budget", budget)
    overrides = {**(env_kwargs or {}), **({} if target is None else {"target_sparsity": target})}
    mode = resolve_config(env_id, overrides).mode  # unknown ids and bad settings fail here, before any work
    formulation = formulation_of(env_id)
    methods = list(methods) if methods else methods_for(mode, formulation)
    bad = [m for m in methods if mode not in get_method(m).modes or formulation not in get_method(m).formulations]
    if bad:
        raise FFPruneError(f"methods {bad} do not support {formulation} {mode} envs ({env_id}); methods for it: "
                           f"{methods_for(mode, formulation)}")
    label = surrogate_label(env_id, overrides)
    if calibrate and (mode != "structured" or label is not None):
        calibrate = False  # Calib compensates removed heads / neurons: structured only; a surrogate predicts no Calib
    _check_config(out, {"env_id": env_id, "budget": budget, "target": target, "env_kwargs": env_kwargs or {},
                        "weights_fingerprint": model_fingerprint(env_id, env_kwargs),
                        **({"surrogate": label} if label is not None else {})})
    return [{"env_id": env_id, "method": method, "seed": seed, "budget": budget, "out": out, "target": target,
             "env_kwargs": env_kwargs, "calibrate": calibrate, "calib_alpha": calib_alpha, "progress": progress}
            for method in methods for seed in method_seeds(method, seeds)]


VARIANT_KEYS = ("method", "agent_kwargs", "curriculum_kwargs")
"""The fields of a cell's ``variant`` record that say what ran (its ``label``, ``name`` and ``source`` only say where the
settings came from)."""


def variant_settings(record: dict[str, Any]) -> dict[str, Any]:
    """What a ``variant`` record (:func:`run_cell`) ran: its :data:`VARIANT_KEYS`, as JSON gives them back."""
    return as_json({k: record.get(k) or ({} if k != "method" else None) for k in VARIANT_KEYS})


def check_variant_record(folder: Path, held: Any, record: dict[str, Any], what: str = "cells") -> None:
    """Refuse (one line) to go on in ``folder`` as the variant ``record`` when a file there holds the ``variant`` record
    ``held`` of other settings, or none (not a variant's file at all); ``what`` names the files in the message."""
    old = variant_settings(held) if isinstance(held, dict) else None
    if old != variant_settings(record):
        raise FFPruneError(f"{str(folder)!r} holds {what} of other settings ({old or 'not a variant'}, now "
                           f"{variant_settings(record)}): use another label or --out folder")


def check_variant_cell(path: Path, record: dict[str, Any]) -> None:
    """Refuse (one line) to resume the finished cell at ``path`` as the variant ``record`` when the cell ran other
    settings, or is not a variant's cell at all (:func:`check_variant_record`)."""
    if path.exists():
        check_variant_record(path.parent, read_result(path).get("variant"), record)


def run_cell(env_id: str, method: str, seed: int, budget: int, out: Path, target: float | None,
             env_kwargs: dict[str, Any] | None, calibrate: bool, calib_alpha: float | None,
             progress: bool, agent_kwargs: dict[str, Any] | None = None,
             curriculum_kwargs: dict[str, Any] | None = None, variant: dict[str, Any] | None = None) -> dict[str, Any]:
    """One (method, seed) cell: the search (resumed if interrupted) and, optionally, its calibrated score.
    ``agent_kwargs`` and ``curriculum_kwargs`` override the method's and the curriculum's settings (``ffprune tune``'s
    variants; the bench runs the defaults).

    ``variant`` (a suite's labelled variant: ``{"label", "method", "name", "agent_kwargs", "curriculum_kwargs",
    "source"}``) puts the cell in ``<out>/cells/<label>/seed<k>.json`` (TensorBoard under ``<out>/tb/<label>``) and
    records it as the cell's top-level ``"variant"``; the caller checks a finished cell there against the variant
    before any work (:func:`check_variant_cell`, as :func:`~ffprune.agents.experiments.suite.variant_jobs` does)."""
    if variant is not None:
        path, logdir = cell_path(out, variant["label"], seed), out / "tb" / variant["label"]
    else:
        path, logdir = cell_path(out, method, seed), out / "tb"
    log.info("[bench] %s %s seed %d", env_id, method if variant is None else variant["label"], seed)
    cell = run_search(env_id, agent=method, budget=budget, seed=seed, logdir=logdir, out=path,
                      target=target, resume=True, env_kwargs=env_kwargs, progress=progress, agent_kwargs=agent_kwargs,
                      curriculum_kwargs=curriculum_kwargs, record={"variant": variant} if variant is not None else None)
    return _calibrated(cell, path, calib_alpha) if calibrate else cell


def _run_here(job: dict[str, Any], keep_going: bool) -> dict[str, Any] | CellFailure:
    """:func:`run_cell` in this process; with ``keep_going`` an exception becomes a :class:`CellFailure` (Ctrl-C and
    :class:`SearchInterrupted` still stop everything)."""
    if not keep_going:
        return run_cell(**job)
    try:
        return run_cell(**job)
    except SearchInterrupted:
        raise
    except Exception as err:  # one cell's failure must not stop the others: recorded, reported at the end
        log.warning("[bench] %s %s seed %d failed: %s: %s", job["env_id"], job["method"], job["seed"],
                    type(err).__name__, err)
        return CellFailure.of(job, err)


def run_jobs(jobs: list[dict[str, Any]], workers: int = 0, ray_address: str | None = None,
             keep_going: bool = False) -> list[dict[str, Any] | CellFailure]:
    """Run (or resume) cells, results in job order: in this process, or as Ray tasks (one CPU each, one GPU each on
    CUDA) on a local Ray instance with ``workers`` CPUs or on the cluster at ``ray_address``; a task whose worker
    dies is retried once and resumes from its checkpoint (twice: :class:`~ffenv.errors.WorkerLostError`).

    By default the first failing cell stops the run; with ``keep_going`` every cell runs and a failed one's slot
    holds its :class:`CellFailure`.
    """
    if not workers:
        return [_run_here(job, keep_going) for job in jobs]
    on_gpu = any(str((job["env_kwargs"] or {}).get("device", "cpu")).startswith("cuda") for job in jobs)
    quiet = [{**job, "progress": False} for job in jobs]
    done = run_on_ray(run_cell, quiet, workers, ray_address, gpus_per_job=1 if on_gpu else 0, keep_going=keep_going)
    return [CellFailure.of(job, r) if isinstance(r, BaseException) else r for job, r in zip(jobs, done)]


def run_cells(env_id: str, budget: int, seeds: int, methods: list[str] | None = None, out: str | Path = "bench",
              target: float | None = None, env_kwargs: dict[str, Any] | None = None, calibrate: bool = True,
              calib_alpha: float | None = None, progress: bool = True, workers: int = 0,
              ray_address: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Run (or resume) every (method, seed) cell (:func:`run_jobs`); returns the finished cells per method."""
    jobs = cell_jobs(env_id, budget, seeds, methods, out, target, env_kwargs, calibrate, calib_alpha, progress)
    cells: dict[str, list[dict[str, Any]]] = {}
    for job, cell in zip(jobs, run_jobs(jobs, workers, ray_address)):
        cells.setdefault(job["method"], []).append(cell)
    return cells


def run_bench(env_id: str, budget: int, seeds: int = 3, methods: list[str] | None = None, out: str | Path = "bench",
              target: float | None = None, env_kwargs: dict[str, Any] | None = None, calibrate: bool = True,
              calib_alpha: float | None = None, progress: bool = True, workers: int = 0,
              ray_address: str | None = None) -> list[dict[str, Any]]:
    """Run/resume all cells (as Ray tasks with ``workers``), then write the tables and plots; returns the summary rows."""
    cells = run_cells(env_id, budget, seeds, methods, out, target, env_kwargs, calibrate, calib_alpha, progress,
                      workers, ray_address)
    return write_outputs(Path(out), cells, env_id, budget, seeds)
