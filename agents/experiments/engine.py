"""The experiment engine: what every experiment (bench, suite, claim, tune, surrogate study) is made of.

An experiment supplies its jobs, its analysis and its rendering; the engine supplies the rest:

- :class:`CellSpec` — one search cell, frozen and typed: the task (env id + env overrides), the method (+ its settings
  and the label its row goes by), the seed, the budget, and the folder its result lives in;
- :class:`CellStore` — a folder of cells: its layout (``<folder>/cells/<label>/seed<k>.json.gz``, TensorBoard under
  ``<folder>/tb``), its settings manifest (``config.json``: a folder holding other settings is refused in one line),
  and its one failure list (``failures.json``);
- :class:`Runner` — where an experiment's jobs run (here or on Ray), apart from what the experiment is: each experiment's
  settings are a frozen spec (``SearchSpec``, ``BenchSpec``, ``StudySpec``...), built or updated from keywords by
  :func:`~ffprune.agents.tools.specs.spec_with`;
- :class:`Report` — the one report writer: the analysis as JSON, its markdown, its figures and tables, each atomic;
- :func:`run_jobs` — the one job runner, in this process or as Ray tasks, with the one failure policy: a job that raises
  is recorded (its slot holds a :class:`CellFailure`), the other jobs finish, and the caller lists the failures and
  exits 1 (:func:`failure_lines`). Ctrl-C and :class:`~ffenv.errors.SearchInterrupted` stop the run; a finished cell is
  never lost and an interrupted one resumes from its checkpoint.

A cell's run (:func:`ffprune.agents.experiments.bench.run_cell`) is the search plus, optionally, its calibrated score;
the engine does not know what a job does, only how to run many and what to do when one fails.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from ffenv.errors import FFPruneError, SearchInterrupted
from ffenv.io import as_json, atomic_write_json, atomic_write_text, check_writable, read_json
from ffprune.agents.experiments.ray_tasks import run_on_ray
from ffprune.agents.results import (
    FOLDER_KIND,
    describe_surrogate,
    read_result,
    result_kind,
    same_surrogate,
    seed_file,
    seed_files,
    surrogate_of,
    with_header,
    without_header,
)

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")

MANIFEST = "config.json"
"""A cell folder's settings manifest (:meth:`CellStore.claim`)."""
FAILURES = "failures.json"
"""A cell folder's failure list (:meth:`CellStore.save_failures`)."""


@dataclass(frozen=True)
class CellSpec:
    """One search cell: what runs, with which settings and seed, and where its result lives.

    ``env_kwargs`` override the env's settings (an :class:`~ffenv.config.EnvConfig` field each); ``agent_kwargs`` and
    ``curriculum_kwargs`` the method's and its curriculum's. ``variant`` (a suite's labelled variant, its settings:
    ``{"label", "method", "name", "agent_kwargs", "curriculum_kwargs", "source"}``) files the cell under its label and
    is recorded in the result. ``calibrate`` also scores the best allocation after Calib (ridge ``calib_alpha``; default
    the env's). The mappings are never mutated.
    """

    env_id: str
    method: str
    seed: int
    budget: int
    folder: Path
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    target: float | None = None
    agent_kwargs: Mapping[str, Any] = field(default_factory=dict)
    curriculum_kwargs: Mapping[str, Any] = field(default_factory=dict)
    variant: Mapping[str, Any] | None = None
    calibrate: bool = False
    calib_alpha: float | None = None
    progress: bool = True

    @property
    def label(self) -> str:
        """The row the cell belongs to (and its folder's name): its variant's label, else its method."""
        return self.method if self.variant is None else str(self.variant["label"])

    @property
    def task(self) -> str:
        """The name of the cell's task folder."""
        return self.folder.name

    @property
    def path(self) -> Path:
        """The result file: ``<folder>/cells/<label>/seed<k>.json.gz`` (an older folder's ``seed<k>.json`` if it holds
        one)."""
        return CellStore(self.folder).path(self.label, self.seed)

    @property
    def logdir(self) -> Path:
        """The TensorBoard root of the cell (``<folder>/tb``; a variant's ``<folder>/tb/<label>``)."""
        return self.folder / "tb" if self.variant is None else self.folder / "tb" / self.label

    def quiet(self) -> CellSpec:
        """The same cell without a progress bar (a Ray task's)."""
        return replace(self, progress=False)

    def describe(self) -> str:
        """``<task> <label> seed <k>`` for log lines and failures."""
        return f"{self.task} {self.label} seed {self.seed}"


@dataclass(frozen=True)
class CellFailure:
    """A job that raised instead of finishing: which cell, and its exception's type and message."""

    task: str
    env_id: str
    method: str
    """The cell's row: its method, or its variant's label."""
    seed: int
    error: str
    """The exception's type name (``FFPruneError``, ``WorkerLostError``, ``RuntimeError``...)."""
    message: str
    traceback: str = ""
    """The formatted traceback where one was available (in-process jobs)."""

    @classmethod
    def of(cls, spec: CellSpec, err: BaseException) -> CellFailure:
        """The failure of the cell ``spec`` that raised ``err``."""
        trace = "".join(traceback.format_exception(err)) if err.__traceback__ is not None else ""
        return cls(spec.task, spec.env_id, spec.label, spec.seed, type(err).__name__, str(err), trace)

    def as_dict(self, trace: bool = True) -> dict[str, Any]:
        """The failure as JSON-ready fields (without the traceback unless ``trace``)."""
        fields = asdict(self)
        if not trace:
            fields.pop("traceback")
        return fields

    def line(self) -> str:
        """One line: ``<task> <method> seed <k>: <error>: <message>`` (:func:`failure_line`)."""
        return failure_line(self.as_dict(trace=False))


def failure_line(failure: Mapping[str, Any]) -> str:
    """A recorded failure (a :class:`CellFailure`'s fields, as ``failures.json`` holds them) in one line:
    ``<task> <method> seed <k>: <error>: <message>``."""
    detail = f"{failure['error']}: {failure['message']}" if failure.get("message") else failure["error"]
    return f"{failure.get('task', '?')} {failure['method']} seed {failure['seed']}: {detail}"


class CellStore:
    """A folder of cells: where each lives, which settings the folder holds, which cells failed.

    Layout: ``<folder>/config.json`` (the settings every cell shares), ``<folder>/cells/<label>/seed<k>.json.gz`` (one
    result each), ``<folder>/tb`` (TensorBoard) and, while some cells failed, ``<folder>/failures.json``.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, label: str, seed: int) -> Path:
        """The result file of the (``label``, ``seed``) cell."""
        return seed_file(self.folder / "cells" / label, seed)

    def seeds(self, label: str) -> list[tuple[int, Path]]:
        """The (seed, file) of each cell of ``label`` on disk, by seed."""
        return seed_files(self.folder / "cells" / label)

    def claim(self, settings: Mapping[str, Any], what: str = "a bench") -> None:
        """Make ``settings`` the folder's manifest (``kind`` :data:`~ffprune.agents.results.FOLDER_KIND`), refusing (one
        line) a folder whose manifest holds other settings:
        cells of different envs, budgets, targets, weights or surrogates never share a folder (a surrogate's label,
        ``settings["surrogate"]``, is compared first, with its own message)."""
        path = self.folder / MANIFEST
        settings = as_json(without_header(settings))
        if path.exists():
            old = read_result(path)  # an older folder's field names are today's
            if result_kind(old) != FOLDER_KIND:
                raise FFPruneError(f"{str(path)!r} is not a cell folder's manifest ({result_kind(old)}): use another "
                                   "--out folder")
            old = without_header(old)
            held, label = surrogate_of(old), surrogate_of(settings)
            if not same_surrogate(held, label):
                raise FFPruneError(f"out={str(self.folder)!r} holds cells of {describe_surrogate(held)}; these cells run on "
                                   f"{describe_surrogate(label)}: use another --out folder (surrogate and real results "
                                   "never mix)")
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            if diff:
                raise FFPruneError(f"out={str(self.folder)!r} holds {what} with other settings {diff} (old, new); use "
                                   "another --out folder")
            return  # the same settings: the manifest stays as written (an older one is read with today's names)
        atomic_write_json(path, with_header(settings, FOLDER_KIND))

    def failures(self) -> list[dict[str, Any]]:
        """The failure list (empty when no cell failed)."""
        path = self.folder / FAILURES
        return list(read_json(path, "failure list")) if path.exists() else []

    def save_failures(self, failures: Iterable[CellFailure], attempted: Iterable[tuple[str, int]]) -> list[dict[str, Any]]:
        """Write the failure list: this run's ``failures`` (of this folder) and the earlier ones of cells this run did
        not attempt (``attempted``: (label, seed) pairs) and that are still unfinished; no file when there are none.
        Returns the list."""
        attempted = set(attempted)
        earlier = [f for f in self.failures() if (f["method"], f["seed"]) not in attempted
                   and not self.path(f["method"], f["seed"]).exists()]
        listed = earlier + [f.as_dict() for f in failures]
        path = self.folder / FAILURES
        if listed:
            atomic_write_json(path, listed)
        elif path.exists():
            path.unlink()
        return listed


def save_failures(specs: Sequence[CellSpec], outcomes: Sequence[Any]) -> list[dict[str, Any]]:
    """Each folder's failure list after a run of ``specs`` (their ``outcomes``, :func:`run_jobs`'s): written by
    :meth:`CellStore.save_failures`; returns every folder's list, in folder order."""
    folders = list(dict.fromkeys(spec.folder for spec in specs))
    listed: list[dict[str, Any]] = []
    for folder in folders:
        mine = [(s, o) for s, o in zip(specs, outcomes) if s.folder == folder]
        failed = [o for _s, o in mine if isinstance(o, CellFailure)]
        listed += CellStore(folder).save_failures(failed, [(s.label, s.seed) for s, _o in mine])
    return listed


@dataclass(frozen=True)
class Runner:
    """Where jobs run: in this process (``workers=0``), or as Ray tasks on a local instance with ``workers`` CPUs or on
    the cluster at ``address`` (:func:`run_jobs`)."""

    workers: int = 0
    address: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise FFPruneError(f"workers must be an integer >= 0 (0: run the jobs here), got {self.workers!r}")


IN_PROCESS = Runner()
"""Every job in this process, one after the other: the experiments' default :class:`Runner`."""


@dataclass(frozen=True)
class Report:
    """An experiment's report in its folder: ``<name>.json`` (the analysis), ``<name>.md`` (``render(analysis)``) and
    its other files — figures, tables (file name → ``write(path, analysis)``, each writing atomically) — written in that
    order by :meth:`write`; :meth:`check` is the same list of files, checked writable before any work."""

    name: str
    render: Callable[[dict[str, Any]], str]
    extras: Mapping[str, Callable[[Path, dict[str, Any]], None]] = field(default_factory=dict)

    def files(self) -> list[str]:
        """The report's file names, in the order :meth:`write` writes them."""
        return [f"{self.name}.json", f"{self.name}.md", *self.extras]

    def check(self, out: str | Path) -> None:
        """A one-line :class:`FFPruneError` now if a file of the report could not be written into ``out`` later."""
        for name in self.files():
            check_writable(Path(out) / name)

    def write(self, out: str | Path, analysis: dict[str, Any]) -> dict[str, Any]:
        """Write the report of ``analysis`` into ``out`` (created) and return ``analysis``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / f"{self.name}.json", analysis)
        atomic_write_text(out / f"{self.name}.md", self.render(analysis))
        for name, write in self.extras.items():
            write(out / name, analysis)
        return analysis


@dataclass(frozen=True)
class Job(Generic[J]):
    """A job for :func:`run_jobs` that is not a bare :class:`CellSpec`: the cell it runs and what else it needs."""

    spec: CellSpec
    extra: J


def _spec_of(job: Any) -> CellSpec | None:
    return job if isinstance(job, CellSpec) else job.spec if isinstance(job, Job) else None


def _failure(job: Any, err: BaseException) -> CellFailure | BaseException:
    spec = _spec_of(job)
    return CellFailure.of(spec, err) if spec is not None else err


def _quiet(job: Any) -> Any:
    spec = _spec_of(job)
    if spec is None:
        return job
    return spec.quiet() if isinstance(job, CellSpec) else replace(job, spec=spec.quiet())


def _run_here(fn: Callable[[Any], Any], job: Any) -> Any:
    try:
        return fn(job)
    except SearchInterrupted:
        raise
    except Exception as err:  # one job's failure must not stop the others: recorded, listed at the end
        spec = _spec_of(job)
        log.warning("[engine] %s failed: %s: %s", spec.describe() if spec else "job", type(err).__name__, err)
        return _failure(job, err)


def run_jobs(fn: Callable[[Any], R], jobs: Sequence[Any], runner: Runner = IN_PROCESS,
             gpus_per_job: int | None = None) -> list[R | CellFailure | BaseException]:
    """``[fn(job) for job in jobs]``, results in job order, with the one failure policy: a job that raises does not stop
    the others; its slot holds a :class:`CellFailure` (a job that is a :class:`CellSpec` or a :class:`Job`) or the
    exception itself (any other job). Ctrl-C and :class:`~ffenv.errors.SearchInterrupted` stop the run.

    Where ``runner`` says: in this process (``workers=0``), or as Ray tasks (one CPU and one torch thread each; one GPU
    each where a cell's env runs on CUDA, or ``gpus_per_job``) on a local Ray instance with ``runner.workers`` CPUs or
    the cluster at ``runner.address``; a task whose worker dies is retried once and resumes from its checkpoint (twice:
    :class:`~ffenv.errors.WorkerLostError` in its slot). Progress bars are off on Ray.
    """
    if not runner.workers:
        return [_run_here(fn, job) for job in jobs]
    if gpus_per_job is None:
        specs = [s for s in map(_spec_of, jobs) if s is not None]
        gpus_per_job = int(any(str(s.env_kwargs.get("device", "cpu")).startswith("cuda") for s in specs))
    done = run_on_ray(fn, [_quiet(job) for job in jobs], runner.workers, runner.address, gpus_per_job=gpus_per_job)
    return [_failure(job, r) if isinstance(r, BaseException) else r for job, r in zip(jobs, done)]


def _call_with(fn: Callable[..., R], job: Mapping[str, Any]) -> R:
    return fn(**job)


def keyword_jobs(fn: Callable[..., R]) -> Callable[[Mapping[str, Any]], R]:
    """``fn`` as a :func:`run_jobs` function of one job, a dict of its keyword arguments (picklable for Ray)."""
    return functools.partial(_call_with, fn)


def failures_of(outcomes: Sequence[Any]) -> list[CellFailure | BaseException]:
    """The failed slots of :func:`run_jobs`'s outcomes."""
    return [o for o in outcomes if isinstance(o, (CellFailure, BaseException))]


def failure_lines(failures: Iterable[Mapping[str, Any] | CellFailure | BaseException]) -> list[str]:
    """One line per failure (a :class:`CellFailure`, its dict, or a bare exception) for the end of a command."""
    return [f.line() if isinstance(f, CellFailure) else f"{type(f).__name__}: {f}" if isinstance(f, BaseException)
            else failure_line(f) for f in failures]


def raise_failures(what: str, outcomes: Sequence[Any]) -> None:
    """After every job finished: one :class:`FFPruneError` listing the failed ones, if any (for experiments whose later
    steps need every job: the finished jobs' files are kept, and the same command resumes)."""
    failed = failures_of(outcomes)
    if failed:
        raise FFPruneError(f"{what}: {len(failed)} of {len(outcomes)} jobs failed ({'; '.join(failure_lines(failed))}); "
                           "the finished ones are kept: run the same command again to retry")
