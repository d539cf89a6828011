"""Environments in worker processes started by ``fork`` (the default of ``gymnasium.vector.AsyncVectorEnv`` on Linux).

What goes wrong: torch's CPU kernels (``at::parallel_for``) and MKL run on a GNU OpenMP (libgomp) thread
pool, started by the first parallel kernel and kept alive afterwards. ``fork`` copies only the calling
thread, but libgomp still believes its pool exists: the child's first parallel kernel waits forever at
the team barrier for threads that live in the parent (``gomp_team_end`` → ``gomp_team_barrier_wait_end``,
e.g. under ``index_select`` in :meth:`StructuredPruner.prune`). ``AsyncVectorEnv`` builds one env in the
parent to read the spaces (model load, dense perplexity: the pool is running), then forks, so its
workers hang at their first step. CUDA is worse: torch refuses it in a child forked after the parent
initialised CUDA.

What ffprune does: importing this module registers an ``os.fork`` hook that counts the parent's OS
threads. In a child forked from a multi-threaded parent (the OpenMP pool may be among its threads),
:func:`check_fork_safety`, the first thing :class:`~ffenv.envs.prune_env.FFPruneEnv` does, sets
``torch.set_num_threads(1)``: ``at::parallel_for`` and MKL then run on the calling thread and never
touch the dead pool (verified: the workers step normally, with the same rewards), and it warns once
that spawned workers keep all threads. If CUDA was initialised before the fork it raises
:class:`~ffenv.errors.FFPruneError` naming the spawn fix (a worker that dies building its env makes the
vector env's constructor fail at once; the message is in the worker's traceback on stderr). Spawned
and forkserver workers start with a fresh torch and are left alone.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings

import torch

from ffenv.errors import FFPruneError

SPAWN_FIX = ("gymnasium.vector.AsyncVectorEnv(env_fns, context='spawn', autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP)"
             " or stable_baselines3 SubprocVecEnv(env_fns, start_method='spawn')")

_threads_at_fork: int | None = None   # OS threads of the process at its latest os.fork (None: unknown)
_forked_unsafely: bool | None = None  # None: this process has not been forked since ffenv was imported
_warned = False


def _os_threads() -> int | None:
    """The number of OS threads of this process (Linux ``/proc``), ``None`` where it cannot be read."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _before_fork() -> None:
    global _threads_at_fork
    _threads_at_fork = _os_threads()


def _after_fork_in_child() -> None:
    global _forked_unsafely
    _forked_unsafely = _threads_at_fork != 1


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def forked_unsafely() -> bool:
    """Whether this process was forked from one whose torch thread pool may have been running.

    A parent with more than one thread counts (conservatively: its extra threads may be the OpenMP
    pool). If ffenv was first imported after the fork, a ``multiprocessing`` worker started by ``fork``
    counts.
    """
    if _forked_unsafely is not None:
        return _forked_unsafely
    return getattr(type(multiprocessing.current_process()), "_start_method", None) == "fork"


def check_fork_safety() -> None:
    """Make torch usable in a forked worker (1 thread) or raise :class:`FFPruneError` if it cannot be (CUDA).

    Called first thing by every :class:`~ffenv.envs.prune_env.FFPruneEnv`; a no-op in a process that was not forked.
    """
    global _warned
    if torch.cuda._is_in_bad_fork():
        raise FFPruneError(f"this process was forked after its parent initialised CUDA, which torch cannot use here; "
                           f"start the workers with spawn: {SPAWN_FIX}")
    if forked_unsafely() and torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        if not _warned:
            _warned = True
            warnings.warn("ffprune: this worker was forked from a multi-threaded process and torch's OpenMP thread pool "
                          "does not survive fork, so torch here runs on 1 thread (more could deadlock). "
                          f"For full-speed workers: {SPAWN_FIX}", RuntimeWarning, stacklevel=2)
