"""Jobs as Ray tasks: ``[fn(job) for job in jobs]`` on a local Ray instance or a cluster, results in order (the Ray side of
:func:`ffprune.agents.experiments.engine.run_jobs`).

Each job is one Ray task with one CPU and one torch thread (plus ``gpus_per_job`` GPUs), so a cell's numbers
do not depend on how many run side by side. The work must be resumable (a bench cell resumes from what it
wrote): a task whose worker dies (killed, out of memory, its node lost) is retried once; if it dies again
the job is lost and :class:`~ffenv.errors.WorkerLostError` says so. Ray is started (or joined) with
:func:`ffenv.vector.ray_workers.init_ray` and imported only here, when tasks run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ffenv.errors import FFPruneError, WorkerLostError, positive_int
from ffenv.vector.ray_workers import RAY_MISSING, init_ray

log = logging.getLogger(__name__)


def _one_thread_task(fn: Callable[[Any], Any], job: Any) -> Any:
    torch.set_num_threads(1)
    return fn(job)


def run_on_ray(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int, address: str | None = None,
               gpus_per_job: int = 0) -> list[Any]:
    """``[fn(job) for job in jobs]`` as Ray tasks on ``workers`` CPUs of a local instance (or the cluster at
    ``address``), results in job order; one INFO log line per finished job.

    Every job runs: a failed job's slot holds its exception instead of a result — the one raised by ``fn`` (an
    :class:`FFPruneError` as a plain one-line one), or a :class:`WorkerLostError` for a job whose worker died twice.
    """
    try:
        import ray
    except ImportError:
        raise FFPruneError(RAY_MISSING) from None
    started = init_ray(ray, positive_int("workers", workers), address)
    lost_errors = tuple(getattr(ray.exceptions, name) for name in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")
                        if hasattr(ray.exceptions, name))
    try:
        task = ray.remote(num_cpus=1, num_gpus=gpus_per_job, max_retries=1, retry_exceptions=False)(_one_thread_task)
        refs = [task.remote(fn, job) for job in jobs]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = index[done[0]]
            try:
                results[i] = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                cause = err.cause if isinstance(err.cause, Exception) else err
                if isinstance(cause, FFPruneError):  # bad input found in the task: one line, as in-process
                    cause = FFPruneError(*cause.args)
                results[i] = cause
            except lost_errors as err:
                results[i] = WorkerLostError(f"a Ray worker died twice running job {i} ({type(err).__name__}); finished "
                                             "jobs are kept: run the same command again to resume")
            log.info("[ray] %d/%d done", len(refs) - len(pending), len(refs))
        return results
    finally:
        if started:
            ray.shutdown()
