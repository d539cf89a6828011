"""``RayEvaluator``: an :class:`~ffenv.envs.population.Evaluator` that scores a population on Ray actors.

The environment does not know Ray: :func:`ffenv.vector.factory.make_env` (the registered ``gym.make``
entry point) and the vector env hand :func:`ffenv.vector.factory.ray_evaluator` to the env, which calls it
at its first population when ``workers > 0``.

What runs where
    The driver (this process) holds no model: it starts or joins Ray, creates ``workers`` actors and
    hands out evaluations. Each actor is its own process holding one :class:`~ffenv.envs.prune_env.FFPruneEnv`
    (one model replica, built once from the evaluator's :class:`~ffenv.config.EnvConfig` with
    ``workers=0`` and no ``ray_address``, so an actor never starts workers of its own) and runs
    :meth:`~ffenv.envs.prune_env.FFPruneEnv.score` for the evaluations it is given. A batch is handed out as a
    work queue (one evaluation in flight per actor, the next one to whichever actor finishes first), so
    cheap low-fidelity and expensive full-fidelity evaluations balance themselves; the results come
    back in input order. The actors' environments count their own cost; each result's ``info["cost"]``
    is what that evaluation cost.

Ray
    ``address=None``: reuse Ray if this process already initialised it, else start a private local
    instance sized for the workers (``num_cpus=workers``, a small object store, no dashboard, worker
    logs kept out of this process's output), shut down again by :meth:`RayEvaluator.close`.
    ``address="auto"``, ``"host:port"`` or ``"ray://host:10001"`` joins an existing cluster (whose
    Python must have ``ffprune`` installed; a ``host:port`` nobody listens on is an error at once, not
    Ray's minutes of retries); a cluster this evaluator did not start is never shut down.
    Ray is an optional dependency (``pip install 'ffprune[ray]'``); it is imported only when an
    evaluator is built, so importing this module costs nothing without it.

Determinism
    Every evaluation is deterministic given its action, target sparsity and reward windows, and each
    actor runs torch with one thread (``torch.set_num_threads(1)``; Ray also sets ``OMP_NUM_THREADS=1``),
    so a batch gives bit-identical rewards and infos whatever the number of workers and however the
    queue happens to distribute it (an in-process :class:`~ffenv.envs.population.LocalEvaluator` with one
    torch thread agrees too).

GPUs
    With a CUDA ``device`` (``"cuda"``, ``"cuda:N"``, or ``"auto"`` on a cluster with GPUs) every actor
    reserves ``num_gpus=1`` and holds one model replica on its own GPU: Ray sets each actor's
    ``CUDA_VISIBLE_DEVICES``, so the actor's environment uses ``device="cuda"`` (a ``cuda:N`` index
    refers to the driver's numbering and is not passed on). ``workers`` is then at most the number of
    GPUs; a local instance with fewer is an immediate error, a cluster that cannot place the actors
    within ``start_timeout`` seconds is an error naming its resources.

Failures
    An evaluation that raises in the environment (e.g. an :class:`~ffenv.errors.FFPruneError` for a bad
    action), or a configuration the actors' environments reject, is raised here as that exception. A
    worker that dies (its process killed, out of memory, its node lost) loses the one evaluation it was
    running: the dead actor is replaced by a fresh one (a new process that builds its environment
    again) and the lost evaluation is retried there, at most ``retries`` times per evaluation (default
    1). If it is lost again, :meth:`RayEvaluator.score_many` raises :class:`~ffenv.errors.WorkerLostError`
    (not bad input: one line naming the worker, how many evaluations were lost, and that the search can
    continue with ``--resume``) and returns nothing: a batch never comes back partly scored. A slot whose
    actor stayed dead is refilled at the next batch. A worker that dies while building its environment is
    a :class:`~ffenv.errors.WorkerLostError` too.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ffenv.config import EnvConfig
from ffenv.envs.prune_env import FFPruneEnv
from ffenv.errors import FFPruneError, WorkerLostError, non_negative_int, positive_int

RAY_MISSING = "workers / ray_address need Ray: pip install 'ffprune[ray]'"
WORKER_FIELDS = ("workers", "ray_address")
"""EnvConfig fields that configure the evaluator itself and are left out of an actor's environment."""
OBJECT_STORE_BYTES = 256 * 2**20
"""Object store of a local instance: only actions and infos (a few KiB each) travel through it."""


def actor_env_kwargs(config: EnvConfig, device: str) -> dict[str, Any]:
    """The keyword arguments of an actor's environment: ``config`` without :data:`WORKER_FIELDS` (an actor never
    starts workers of its own), on ``device``."""
    kwargs = {k: v for k, v in config.as_kwargs().items() if k not in WORKER_FIELDS}
    kwargs["device"] = device
    return kwargs


def actor_device(device: str, cluster_gpus: float) -> tuple[str, int]:
    """An actor's ``device`` and GPUs for a configured ``device``: CUDA (``"auto"`` on a cluster with GPUs) is
    ``("cuda", 1)``, one GPU of its own that Ray makes the actor's ``cuda:0``; anything else runs on ``(device, 0)``."""
    if device == "auto":
        device = "cuda" if cluster_gpus > 0 else "cpu"
    if device.startswith("cuda"):
        return "cuda", 1
    return device, 0


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Raise :class:`ConnectionError` at once if nothing accepts TCP connections at a ``host:port`` address."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return  # "auto", "local" or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"nothing listens at {host}:{port}: {err}") from None


def _copy_info(value: Any) -> Any:
    """A writable deep copy of an info (arrays from Ray's object store are read-only views)."""
    if isinstance(value, np.ndarray):
        return np.array(value, copy=True)
    if isinstance(value, dict):
        return {k: _copy_info(v) for k, v in value.items()}
    return value


class EnvWorker:
    """The body of one Ray actor: one :class:`~ffenv.envs.prune_env.FFPruneEnv` scoring the evaluations it is sent.

    Built in two steps so that placing the actor (:meth:`ready`, bounded by the evaluator's
    ``start_timeout``) is told apart from building the environment (:meth:`setup`, as long as the model
    takes to load).
    """

    def __init__(self) -> None:
        torch.set_num_threads(1)  # results must not depend on how many workers share a machine
        self.env: Any = None
        self.setup_error: Exception | None = None

    def ready(self) -> dict[str, Any]:
        """Where this actor runs: ``pid``, ``node`` (IP), ``cuda_visible_devices``, ``threads``."""
        import ray  # the actor process runs under Ray: it is installed there

        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": torch.get_num_threads()}

    def setup(self, env_kwargs: dict[str, Any]) -> float:
        """Build the environment; returns the seconds it took."""
        t0 = time.perf_counter()
        try:
            self.env = FFPruneEnv(EnvConfig(**env_kwargs))
        except Exception as err:
            self.setup_error = err  # what this actor's every evaluation raises
            raise
        return time.perf_counter() - t0

    def score(self, action: np.ndarray, target: float | None, windows: int | None) -> tuple[float, dict[str, Any]]:
        """:meth:`~ffenv.envs.prune_env.FFPruneEnv.score` of one evaluation."""
        if self.env is None:
            raise self.setup_error or FFPruneError("Ray worker has no environment: its setup did not run")
        return self.env.score(action, target_sparsity=target, reward_windows=windows)


def init_ray(ray: Any, cpus: int, address: str | None) -> bool:
    """Join or start Ray (see the module docstring); ``True`` if a local instance was started here."""
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
    try:
        if address is None:  # "local": a new instance even when RAY_ADDRESS points elsewhere
            ray.init(address="local", num_cpus=cpus, object_store_memory=OBJECT_STORE_BYTES, **quiet)
            return True
        quiet.pop("include_dashboard")  # a setting of the cluster, not of a client joining it
        _check_reachable(address)  # Ray itself retries an address nobody listens on for minutes
        ray.init(address=address, **quiet)
    except ConnectionError as err:
        raise FFPruneError(f"cannot reach the Ray cluster at {address!r} ({err}); start one with "
                           "'ray start --head' or leave ray_address unset for a local instance") from None
    return False


class RayEvaluator:
    """Scores populations on ``workers`` Ray actors, one model replica each (see the module docstring).

    Args:
        config: the environment every actor builds (its ``workers`` / ``ray_address`` are not passed on).
        workers: number of actors (each 1 CPU, plus 1 GPU with a CUDA ``device``).
        address: ``None`` (reuse this process's Ray, else start a local instance), ``"auto"``,
            ``"host:port"`` or ``"ray://host:10001"`` (join a running cluster).
        retries: how many times an evaluation lost to a dead worker is retried on a fresh actor.
        start_timeout: seconds to wait for Ray to place an actor before giving up with an error.

    Raises :class:`~ffenv.errors.FFPruneError` without Ray, when a cluster cannot be reached or cannot
    place the actors, and for a configuration the environment rejects (raised by the actors' setup).
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, config: EnvConfig, workers: int, address: str | None = None, *, retries: int = 1,
                 start_timeout: float = 120.0) -> None:
        try:
            import ray
        except ImportError:
            raise FFPruneError(RAY_MISSING) from None
        if not isinstance(config, EnvConfig):
            raise FFPruneError(f"config must be an EnvConfig, got {type(config).__name__}")
        self.workers = positive_int("workers", workers)
        non_negative_int("retries", retries)
        if address is not None and (not isinstance(address, str) or not address):
            raise FFPruneError(f"address must be a Ray address such as 'auto' or 'ray://host:10001', got {address!r}")
        self.config = config
        self.retries = int(retries)
        self.start_timeout = float(start_timeout)
        self._ray: Any = ray
        self._actors: list[Any] = []
        self._closed = False
        self.started_ray = init_ray(ray, self.workers, address)  # True: this evaluator started it, and stops it
        try:
            resources = ray.cluster_resources()
            self.device, gpus = actor_device(config.device, resources.get("GPU", 0))
            if gpus and self.started_ray and resources.get("GPU", 0) < self.workers:
                raise FFPruneError(f"device={config.device!r} puts one model replica on each worker's own GPU: "
                                   f"workers={self.workers} needs {self.workers} GPUs, this machine has "
                                   f"{int(resources.get('GPU', 0))}")
            self._actor_cls = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(EnvWorker)
            self._env_kwargs = actor_env_kwargs(config, self.device)
            self.worker_info: list[dict[str, Any]] = [{} for _ in range(self.workers)]
            self._actors = [self._actor_cls.remote() for _ in range(self.workers)]
            self._wait_placed(list(range(self.workers)))
            setups = [actor.setup.remote(self._env_kwargs) for actor in self._actors]
            self.setup_seconds: list[float] = []
            """Seconds each actor took to build its environment."""
            for slot, ref in enumerate(setups):
                try:
                    self.setup_seconds.append(float(self._get([ref])[0]))
                except self._lost_errors():
                    where = self.worker_info[slot]
                    raise WorkerLostError(f"Ray worker {slot} of {self.workers} (pid {where.get('pid', '?')} on "
                                       f"{where.get('node', '?')}) died while building its environment (out of "
                                       "memory? see the Ray session's logs); lower workers or use a larger machine") from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ Ray and the actors
    def _wait_placed(self, slots: list[int]) -> None:
        """Wait until Ray has placed the actors of ``slots`` and record where they run."""
        ray = self._ray
        refs = {self._actors[i].ready.remote(): i for i in slots}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=self.start_timeout)
        if pending:
            need = "1 CPU and 1 GPU" if self.device == "cuda" else "1 CPU"
            have = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
            raise FFPruneError(f"Ray placed {len(ready)} of {len(refs)} workers within {self.start_timeout:g} s "
                               f"(each needs {need}; the cluster has {have} free); lower workers or add resources")
        for ref in ready:
            self.worker_info[refs[ref]] = self._get([ref])[0]

    def _spawn(self, slot: int) -> None:
        """Replace the actor of ``slot`` with a fresh one (new process, environment built again)."""
        old = self._actors[slot]
        if old is not None:
            try:
                self._ray.kill(old, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors[slot] = self._actor_cls.remote()
        self._wait_placed([slot])
        self._actors[slot].setup.remote(self._env_kwargs)  # the slot's next call queues behind it

    def _get(self, refs: list[Any]) -> list[Any]:
        """``ray.get``, raising an exception the environment raised in an actor as itself (one line)."""
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, FFPruneError):
                raise err.cause from None
            raise

    @property
    def actors(self) -> list[Any]:
        """The Ray actor handles, one per worker (for inspection; :meth:`close` kills them)."""
        return list(self._actors)

    def _lost_errors(self) -> tuple[type[BaseException], ...]:
        exc = self._ray.exceptions
        names = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")
        return tuple(getattr(exc, n) for n in names if hasattr(exc, n))

    # ------------------------------------------------------------------ Evaluator
    def score_many(self, actions: np.ndarray, targets: Sequence[float],
                   windows: Sequence[int]) -> list[tuple[float, dict[str, Any]]]:
        """``[(reward, info), ...]`` for ``actions[i]`` at ``targets[i]`` on ``windows[i]`` reward windows, in order.

        Raises :class:`~ffenv.errors.FFPruneError` if a worker dies and its retry is lost too (no partial results).
        """
        if self._closed:
            raise FFPruneError("this RayEvaluator is closed; build a new one")
        n = len(actions)
        if len(targets) != n or len(windows) != n:
            raise FFPruneError(f"actions, targets and windows must have one entry per evaluation, got {n}, "
                               f"{len(targets)} and {len(windows)}")
        if n == 0:
            return []
        ray, lost_errors = self._ray, self._lost_errors()
        for slot, actor in enumerate(self._actors):
            if actor is None:  # died for good in an earlier batch
                self._spawn(slot)
        results: list[tuple[float, dict[str, Any]] | None] = [None] * n
        queue = deque(range(n))
        losses = [0] * n
        in_flight: dict[Any, tuple[int, int]] = {}  # ref -> (slot, evaluation)

        def submit(slot: int) -> None:
            if queue:
                i = queue.popleft()
                ref = self._actors[slot].score.remote(np.asarray(actions[i]), targets[i], windows[i])
                in_flight[ref] = (slot, i)

        for slot in range(self.workers):
            submit(slot)
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            slot, i = in_flight.pop(ref)
            try:
                reward, info = self._get([ref])[0]
            except lost_errors:
                losses[i] += 1
                if losses[i] > self.retries:
                    where = self.worker_info[slot]
                    self._actors[slot] = None
                    tries = f"again after {self.retries} retr{'y' if self.retries == 1 else 'ies'}" if self.retries else \
                        "(retries=0)"
                    raise WorkerLostError(
                        f"Ray worker {slot} of {self.workers} (pid {where.get('pid', '?')} on {where.get('node', '?')}) "
                        f"died {tries}; all {n} evaluations of this batch are lost (no partial results, "
                        f"{sum(r is not None for r in results)} had finished); the search can continue with --resume"
                    ) from None
                queue.appendleft(i)
                self._spawn(slot)
            else:
                results[i] = (float(reward), _copy_info(info))
            submit(slot)
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Kill the actors; shut Ray down if this evaluator started it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for actor in self._actors:
            if actor is not None:
                try:
                    self._ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self._actors = []
        if getattr(self, "started_ray", False) and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> RayEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
