"""``FFPruneEnv``: layer-wise sparsity allocation as a single-step gymnasium environment.

One episode is one step. The agent emits one raw score per prunable unit; the environment projects
it onto the budget (:func:`ffenv.project_budget`), rounds to whole heads / neurons, prunes the model,
measures perplexity on the reward split, restores the dense weights and returns
``reward = dense_ppl / pruned_ppl`` (1.0 means no loss; 0.0 if the pruned model's loss is not finite).

Spaces
    * action: ``Box(-1, 1, (D,), float32)``, ``D = 2·L`` in structured mode (attention, FFN per block,
      in block order: ``[attn_0, ffn_0, attn_1, ffn_1, ...]``), ``D = L`` in unstructured mode.
      ``-1`` asks for ``min_keep``, ``+1`` for ``max_keep``; the projector fixes the total.
    * observation: ``Box(0, 1, (1 + D·F,), float32)``: the target sparsity, then for each unit the
      :data:`~ffenv.envs.features.UNIT_FEATURES` (static: computed once from the dense model).

``info`` after a step: ``layer_sparsity`` (per unit, after projection and rounding), ``keep_ratio``
(projected, before rounding), ``sparsity`` (realized global), ``target_sparsity``, ``ppl``,
``dense_ppl``, ``reward_windows`` and ``cost`` (this step's ``{"evaluations", "tokens"}``). Cumulative
search cost, wall seconds included, is ``env.unwrapped.cost``; :meth:`FFPruneEnv.evaluate` measures
held-out perplexity for reporting without touching it.

Everything loaded or precomputed once (model, tokenizer, importance, features, token windows) is the
env's :class:`~ffenv.envs.backend.Backend`, shared per process by environments whose
:class:`~ffenv.config.EnvConfig` agrees on :attr:`~ffenv.config.EnvConfig.BACKEND_FIELDS`;
:func:`~ffenv.envs.backend.clear_cache` frees it (e.g. between models).

Populations (:meth:`FFPruneEnv.score_many`) run in this process (``workers=0``) or through the population
evaluator the layer above hands in (``evaluator_factory``: ``gym.make`` and the vector env pass Ray's,
:func:`ffenv.vector.factory.ray_evaluator`); the env itself knows nothing of Ray.

What measures an allocation is the env's :attr:`FFPruneEnv.measurement` (:mod:`ffenv.envs.measurement`): the real
model, or in surrogate mode (``surrogate=True``, :mod:`ffenv.surrogate`) the (model, mode)'s fitted surrogate. The
env does not branch on it: the same spaces, observations, projection, rounding, reset options and populations;
over a surrogate ``info["ppl"]`` and the reward are predictions, ``info["surrogate"] = True`` (and
``info["surrogate_std"]``, the ensemble spread of the log reward), ``cost`` counts ``surrogate_evaluations``
(``evaluations`` and ``tokens``, the real forwards, stay 0) and :meth:`FFPruneEnv.evaluate` returns the predicted
held-out ppl, labelled ``surrogate: True``. A surrogate env loads the evaluation set and its fit (cached per process
and on disk), never the model: asking it for one (:attr:`FFPruneEnv.backend`, :attr:`FFPruneEnv.model`,
:meth:`FFPruneEnv.pruned_model`, :meth:`FFPruneEnv.windows`, ...) is a one-line error saying to build the real env.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ffenv.config import EnvConfig
from ffenv.envs.backend import Backend, clear_cache
from ffenv.envs.features import UNIT_FEATURES
from ffenv.envs.measurement import Measurement, measurement_of
from ffenv.envs.population import Evaluator, LocalEvaluator, PopulationEnv
from ffenv.errors import FFPruneError, positive_int
from ffenv.lm.forking import check_fork_safety
from ffenv.lm.models import Block, weights_fingerprint
from ffenv.pruning.engines import Pruner, Unit
from ffenv.pruning.projector import check_budget, keep_to_raw, project_budget
from ffenv.surrogate.model import Surrogate

__all__ = ["FFPruneEnv", "RESET_OPTIONS", "UNIT_FEATURES", "clear_cache"]

RESET_OPTIONS = ("target_sparsity", "reward_windows")
EvaluatorFactory = Callable[[EnvConfig], Evaluator]
"""Builds the population evaluator of a configuration with ``workers > 0`` (called once, at the first population)."""


class FFPruneEnv(gym.Env, PopulationEnv):
    """Single-step layer-wise sparsity allocation for a causal LM (FastForward Pruning).

    Args:
        config: the whole configuration (:class:`~ffenv.config.EnvConfig`; default: its defaults).
        evaluator_factory: builds the population evaluator when ``workers > 0`` (``gym.make`` passes
            :func:`ffenv.vector.factory.ray_evaluator`); not needed with ``workers=0``.
        **overrides: any :class:`~ffenv.config.EnvConfig` field, e.g. ``model``, ``mode``,
            ``target_sparsity``, ``reward_windows``, ``device`` (what ``gym.make`` passes).

    Episodes: :meth:`reset` takes ``options={"target_sparsity": σ, "reward_windows": n}`` for that
    episode (the curriculum's knobs); without options an episode runs at the configured target on all
    ``reward_windows`` windows.

    Populations: :meth:`reset_many` / :meth:`step_many` run ``n`` episodes at once (what the
    population searches and :func:`gymnasium.make_vec` use): in this process, or on ``workers`` Ray
    actors. The rewards and infos are those of ``n`` single steps.

    Version history:
        * v0: initial release (structured heads / KV groups + neurons, unstructured per-row; reward
          ``dense_ppl / pruned_ppl`` on the ``reward`` split).
    """

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | None = None, *, evaluator_factory: EvaluatorFactory | None = None,
                 **overrides: Any) -> None:
        super().__init__()
        check_fork_safety()
        if config is not None and not isinstance(config, EnvConfig):
            raise FFPruneError(f"config must be an EnvConfig, got {type(config).__name__}")
        base = config or EnvConfig()
        self.config = base.replace(**overrides) if overrides else base
        self.measurement: Measurement = measurement_of(self.config)
        """What measures allocations: the real model or the surrogate (:mod:`ffenv.envs.measurement`)."""
        self.setup_seconds = self.measurement.setup_seconds
        self.units: list[Unit] = list(self.measurement.units)
        self.sizes = np.array([u.size for u in self.units], dtype=np.float64)
        self.n_units = len(self.units)
        self.n_blocks = len({u.block for u in self.units})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.n_units,), np.float32)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1 + self.n_units * len(UNIT_FEATURES),), np.float32)
        self.cost: dict[str, float] = {"evaluations": 0, "tokens": 0, "seconds": 0.0,
                                       **dict.fromkeys(self.measurement.axes, 0)}
        self.target_sparsity = self.config.target_sparsity  # of the current episode
        self.reward_windows = self.config.reward_windows    # of the current episode
        self.dense_ppl = self._dense_ppl("reward", self.reward_windows)
        self._pending: list[tuple[float, int]] = []          # (target, windows) of the episodes of reset_many
        self._evaluator_factory = evaluator_factory
        self._evaluator: Evaluator | None = None

    # ------------------------------------------------------------------ what the env is made of
    @property
    def backend(self) -> Backend:
        """The shared model, engine, features and windows (:mod:`ffenv.envs.backend`); a surrogate env has none (a
        one-line error: build the env without ``surrogate=True``)."""
        return self.measurement.backend

    def real_backend(self) -> Backend:
        """The real model's backend (model, blocks, calibration tokens and statistics) for what reads the weights
        without measuring anything — a heuristic's allocation: the env's own on a real env; on a surrogate env the model
        is loaded now, because it was asked for by name (its steps and evaluations never load it)."""
        return self.measurement.real_backend()

    @property
    def features(self) -> np.ndarray:
        """The ``[n_units, len(UNIT_FEATURES)]`` static unit features of the observation (:mod:`ffenv.envs.features`)."""
        return self.measurement.features

    @property
    def surrogate(self) -> Surrogate | None:
        """The fitted surrogate in surrogate mode (:mod:`ffenv.surrogate`), else ``None``."""
        return getattr(self.measurement, "surrogate", None)

    @property
    def model(self) -> torch.nn.Module:
        """The (dense, between steps) model. Do not modify it."""
        return self.backend.model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer."""
        return self.backend.tokenizer

    @property
    def blocks(self) -> list[Block]:
        """The model's decoder blocks as family-neutral :class:`~ffenv.lm.models.Block` views."""
        return self.backend.blocks

    @property
    def pruner(self) -> Pruner:
        """The pruning engine (precomputed orderings; :meth:`step` applies and restores it)."""
        return self.backend.pruner

    @property
    def calibration_tokens(self) -> torch.Tensor:
        """The ``[calib_samples, seq_len]`` calibration windows importance (and Calib) were computed on."""
        return self.backend.calib_tokens

    @property
    def input_norms(self) -> dict[tuple[int, str], torch.Tensor]:
        """Per (block index, linear name) the L2 norm of each input feature over :attr:`calibration_tokens`: the
        statistics importance and the features were computed from. Do not modify them."""
        return self.backend.input_norms

    @property
    def reward_tokens(self) -> torch.Tensor:
        """All ``[reward_windows, seq_len]`` reward windows; an episode uses the first :attr:`reward_windows`."""
        return self.backend.reward_tokens

    @property
    def weights_fingerprint(self) -> str | None:
        """Identity of the model's weights (:func:`ffenv.lm.models.weights_fingerprint`), for provenance."""
        return weights_fingerprint(self.config.model)

    @property
    def unit_names(self) -> list[str]:
        """``"attn.3"``, ``"ffn.3"`` or ``"block.3"`` for each action entry."""
        return [f"{u.kind}.{u.block}" for u in self.units]

    def action_from_sparsities(self, sparsities: np.ndarray) -> np.ndarray:
        """The action whose projection is exactly the given per-unit sparsities (when they meet the target).

        Raises :class:`FFPruneError` if a sparsity needs a keep ratio outside ``[min_keep, max_keep]``.
        """
        s = self._check_vector("sparsities", sparsities)
        keep = 1.0 - s
        lo, hi = self.config.min_keep, self.config.max_keep
        if np.any(keep < lo - 1e-9) or np.any(keep > hi + 1e-9):
            raise FFPruneError(f"sparsities must lie in [{1 - hi:.6g}, {1 - lo:.6g}] "
                               f"(the keep bounds), got range [{s.min():.6g}, {s.max():.6g}]")
        return np.clip(keep_to_raw(keep, lo, hi), -1.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------ gymnasium API
    def _obs(self, target: float | None = None) -> np.ndarray:
        target = self.target_sparsity if target is None else target
        return np.concatenate([[target], self.measurement.features.reshape(-1)]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode; ``options`` may set its ``target_sparsity`` and ``reward_windows`` (else the config's)."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise FFPruneError(f"reset options {unknown} are unknown; allowed: {list(RESET_OPTIONS)}")
        target = options.get("target_sparsity", self.config.target_sparsity)
        check_budget(target, self.config.min_keep, self.config.max_keep)
        windows = self._check_windows(options.get("reward_windows", self.config.reward_windows))
        self.target_sparsity, self.reward_windows = float(target), windows
        self.dense_ppl = self._dense_ppl("reward", windows)
        return self._obs(), {"target_sparsity": self.target_sparsity, "dense_ppl": self.dense_ppl,
                             "reward_windows": self.reward_windows}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Project, prune, evaluate on the reward windows, restore; always ``terminated=True``."""
        reward, info = self.score(action)
        return self._obs(), reward, True, False, info

    def score(self, action: np.ndarray, *, target_sparsity: float | None = None,
              reward_windows: int | None = None) -> tuple[float, dict[str, Any]]:
        """The reward and info :meth:`step` gives ``action`` at a target and fidelity (default: the episode's).

        Counted in :attr:`cost` like a step, but it starts no episode and changes no episode state: what
        a search uses to re-score a cheap curriculum episode at the final target on all reward windows.
        In surrogate mode the reward is predicted; at fewer than all reward windows it carries the fidelity
        error, a deterministic function of the allocation, target, env seed and windows (as the real env, the same
        allocation on the same windows gets the same reward; :func:`ffenv.surrogate.model.fidelity_noise`).
        """
        a = self._check_action(action)
        target = self.target_sparsity if target_sparsity is None else target_sparsity
        check_budget(target, self.config.min_keep, self.config.max_keep)
        windows = self.reward_windows if reward_windows is None else self._check_windows(reward_windows)
        dense_ppl = self._dense_ppl("reward", windows)
        t0 = time.perf_counter()
        keep = project_budget(a, target, self.sizes, self.config.min_keep, self.config.max_keep)
        unit_sparsity = self.measurement.rounding.to_unit_sparsity(keep, (1.0 - target) * self.sizes.sum())
        info = self._allocation_info(unit_sparsity)
        reward, ppl, cost, extra = self.measurement.reward(unit_sparsity, info["layer_sparsity"], target, windows,
                                                           dense_ppl)
        for axis in self.measurement.axes:
            self.cost[axis] += cost[axis]
        self.cost["seconds"] += time.perf_counter() - t0
        info.update(keep_ratio=keep.astype(np.float32), target_sparsity=float(target), ppl=float(ppl),
                    dense_ppl=float(dense_ppl), reward_windows=windows, cost=cost, **extra)
        return float(reward), info

    # ------------------------------------------------------------------ population steps
    def reset_many(self, n: int, *, seed: int | None = None,
                   options: dict[str, Any] | list[dict[str, Any] | None] | None = None) -> tuple[np.ndarray, list[dict]]:
        """Start ``n`` episodes at once (``options``: one dict for all, or one per episode); their observations."""
        n = positive_int("n", n)
        per_episode = options if isinstance(options, list) else [options] * n
        if len(per_episode) != n:
            raise FFPruneError(f"options must be one dict or a list of {n} (one per episode), got {len(per_episode)}")
        obs, infos, pending = [], [], []
        for i, opts in enumerate(per_episode):
            o, info = self.reset(seed=seed if i == 0 else None, options=opts)
            obs.append(o)
            infos.append(info)
            pending.append((self.target_sparsity, self.reward_windows))
        self._pending = pending
        return np.stack(obs), infos

    def step_many(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Run the episodes of the last :meth:`reset_many`, one action each (evaluated as a population)."""
        actions = np.asarray(actions)
        if not self._pending or actions.ndim != 2 or len(actions) != len(self._pending):
            raise FFPruneError(f"step_many needs one action per episode of the last reset_many ({len(self._pending)}), "
                               f"shaped ({len(self._pending)}, {self.n_units}); got shape {actions.shape}")
        targets, windows = zip(*self._pending)
        results = self.score_many(actions, list(targets), list(windows))
        self._pending = []
        n = len(results)
        obs = np.stack([self._obs(t) for t in targets])
        return (obs, np.array([r for r, _ in results], np.float64), np.ones(n, bool), np.zeros(n, bool),
                [info for _, info in results])

    def score_many(self, actions: np.ndarray, targets: list[float] | float | None = None,
                   windows: list[int] | int | None = None) -> list[tuple[float, dict[str, Any]]]:
        """:meth:`score` for each action (at its own target and fidelity), in this process or on the workers.

        Counted in :attr:`cost` like as many steps (``seconds``: the wall time of the whole population).
        """
        actions = np.asarray(actions)
        if actions.ndim != 2:
            raise FFPruneError(f"actions must be shaped (n, {self.n_units}), got {actions.shape}")
        n = len(actions)
        targets = targets if isinstance(targets, list) else [self.target_sparsity if targets is None else targets] * n
        windows = windows if isinstance(windows, list) else [self.reward_windows if windows is None else windows] * n
        checked = np.stack([self._check_action(a) for a in actions])  # the whole population before any work
        for t, w in zip(targets, windows):
            check_budget(t, self.config.min_keep, self.config.max_keep)
            self._check_windows(w)
        if self.config.workers == 0:  # LocalEvaluator calls score, which books the cost itself
            return LocalEvaluator(self).score_many(checked, targets, windows)
        t0 = time.perf_counter()
        results = self._population_evaluator().score_many(checked.astype(np.float32), [float(t) for t in targets],
                                                          [int(w) for w in windows])
        for axis in self.measurement.axes:
            self.cost[axis] += sum(int(info["cost"][axis]) for _, info in results)
        self.cost["seconds"] += time.perf_counter() - t0
        return results

    def _population_evaluator(self) -> Evaluator:
        if self._evaluator is None:
            if self._evaluator_factory is None:
                raise FFPruneError(f"workers={self.config.workers} needs a population evaluator: build the env with "
                                   "gym.make / gym.make_vec (they attach Ray's), or pass "
                                   "evaluator_factory=ffenv.vector.factory.ray_evaluator; workers=0 runs in-process")
            self._evaluator = self._evaluator_factory(self.config)
        return self._evaluator

    def close(self) -> None:
        """Release the population workers, if any."""
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None
        super().close()

    # ------------------------------------------------------------------ reporting (not search cost)
    def evaluate(self, action: np.ndarray | None = None, *, sparsities: np.ndarray | None = None,
                 split: str = "eval", n_windows: int | None = None, target_sparsity: float | None = None,
                 calibrate: bool = False, calib_alpha: float | None = None) -> dict[str, Any]:
        """Perplexity of a pruned model on a split (held-out ``eval`` by default), for reporting.

        Give exactly one of ``action`` (projected like :meth:`step`, at ``target_sparsity``, default the
        configured target) or ``sparsities`` (per-unit sparsities used as they are, only rounded to whole
        units). ``n_windows`` limits the split's windows (default: ``eval_samples``, else all).
        ``calibrate=True`` applies the post-pruning ridge compensation (:mod:`ffenv.pruning.calib`,
        penalty ``calib_alpha``, default the config's) fitted on :attr:`calibration_tokens` before measuring (structured
        mode only); the dense weights are restored afterwards either way. Not counted in :attr:`cost`.

        In surrogate mode: the predicted held-out ppl (``split="eval"`` on the windows and with the Calib setting the
        evaluation set measured; anything else is an :class:`FFPruneError`), with ``surrogate: True``,
        ``surrogate_std`` and ``tokens: 0``.
        """
        alpha = self._alpha(calibrate, calib_alpha)
        self.measurement.check_held_out(split, n_windows, alpha)
        unit_sparsity = self._unit_sparsity(action, sparsities, target_sparsity, calibrate)
        out = self._allocation_info(unit_sparsity)
        target = out["sparsity"] if action is None else (
            self.config.target_sparsity if target_sparsity is None else target_sparsity)
        out.update(split=split, **self.measurement.held_out(unit_sparsity, out["layer_sparsity"], target, split,
                                                            n_windows, alpha))
        return out

    def windows(self, split: str = "eval", n_windows: int | None = None) -> torch.Tensor:
        """The ``[N, seq_len]`` token windows :meth:`evaluate` measures on a split (default ``n_windows``:
        ``eval_samples``, else all of the split)."""
        return self.measurement.windows(split, n_windows)

    def allocation(self, action: np.ndarray | None = None, *, sparsities: np.ndarray | None = None,
                   target_sparsity: float | None = None) -> np.ndarray:
        """Per-unit sparsity of an action (projected at ``target_sparsity``, default the configured target, and
        rounded to whole units) or of given sparsities (rounded): what :meth:`step` and :meth:`evaluate` prune,
        without evaluating it (for ``with env.backend.pruned(allocation): ...``)."""
        return self._unit_sparsity(action, sparsities, target_sparsity, False)

    def pruned_model(self, action: np.ndarray | None = None, *, sparsities: np.ndarray | None = None,
                     target_sparsity: float | None = None, calibrate: bool = False,
                     calib_alpha: float | None = None) -> torch.nn.Module:
        """A pruned copy of the model: the one :meth:`evaluate` measures for the same arguments.

        Structured: the removed heads / KV groups and FFN neurons are physically gone (layers of different
        widths; ``calibrate=True`` folds the ridge compensation into the kept weights); an attention with every head
        group removed keeps one with zeroed output columns (as in a step: a module with zero heads cannot run), an FFN
        with every neuron removed has width 0. Unstructured: the same shapes with the pruned weights zeroed. The env's
        own model is left dense (bit-identical).
        """
        unit_sparsity = self._unit_sparsity(action, sparsities, target_sparsity, calibrate)
        return self.backend.pruned_copy(unit_sparsity, self._alpha(calibrate, calib_alpha), self.config.batch_size)

    # ------------------------------------------------------------------ checks and conversions
    def _alpha(self, calibrate: bool, calib_alpha: float | None) -> float | None:
        """Calib's penalty for an evaluation (``None``: no Calib)."""
        if not calibrate:
            return None
        return self.config.calib_alpha if calib_alpha is None else calib_alpha

    def _unit_sparsity(self, action: np.ndarray | None, sparsities: np.ndarray | None, target_sparsity: float | None,
                       calibrate: bool) -> np.ndarray:
        """Per-unit sparsity of an action (projected at ``target_sparsity``) or of given sparsities (rounded)."""
        if calibrate and self.config.mode != "structured":
            raise FFPruneError("calibrate=True needs mode='structured' (Calib compensates removed heads / neurons)")
        if (action is None) == (sparsities is None):
            raise FFPruneError("give exactly one of action or sparsities")
        if action is not None:
            target = self.config.target_sparsity if target_sparsity is None else target_sparsity
            check_budget(target, self.config.min_keep, self.config.max_keep)
            keep = project_budget(self._check_action(action), target, self.sizes, self.config.min_keep,
                                  self.config.max_keep)
            target_params = (1.0 - target) * self.sizes.sum()
        else:
            if target_sparsity is not None:
                raise FFPruneError("target_sparsity applies to an action; sparsities are used as they are")
            s = self._check_vector("sparsities", sparsities)
            if np.any(s < 0) or np.any(s > 1):
                raise FFPruneError(f"sparsities must lie in [0, 1], got range [{s.min():.6g}, {s.max():.6g}]")
            keep = 1.0 - s
            target_params = float(keep @ self.sizes)
        return self.measurement.rounding.to_unit_sparsity(keep, target_params)

    def _check_windows(self, n: Any) -> int:
        n = positive_int("reward_windows", n)
        if n > self.config.reward_windows:
            raise FFPruneError(f"reward_windows must be in [1, {self.config.reward_windows}] (the config's "
                               f"reward_windows), got {n}")
        self.measurement.check_windows(n)
        return n

    def _dense_ppl(self, split: str, n_windows: int | None = None) -> float:
        """The dense ppl on the first ``n_windows`` reward windows (``"reward"``) or on the held-out windows (``"eval"``,
        surrogate mode: the recorded ones)."""
        return self.measurement.dense_ppl(split, n_windows)

    def _check_vector(self, name: str, value: Any) -> np.ndarray:
        arr = np.asarray(value)
        if arr.shape != (self.n_units,):
            raise FFPruneError(f"{name} must have shape ({self.n_units},), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise FFPruneError(f"{name} must be a float array, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise FFPruneError(f"{name} must be finite; got NaN/inf at indices {np.flatnonzero(~np.isfinite(arr)).tolist()}")
        return arr

    def _check_action(self, action: Any) -> np.ndarray:
        a = self._check_vector("action", action)
        if np.any(a < -1.0 - 1e-6) or np.any(a > 1.0 + 1e-6):
            raise FFPruneError(f"action must lie in the action space [-1, 1]; got range [{a.min():.6g}, {a.max():.6g}]")
        return np.clip(a, -1.0, 1.0)  # only float32 rounding noise is clipped here

    def _allocation_info(self, unit_sparsity: np.ndarray) -> dict[str, Any]:
        kept_params = self.measurement.rounding.kept_params(unit_sparsity)
        return {"layer_sparsity": (1.0 - kept_params / self.sizes).astype(np.float32),
                "sparsity": float(1.0 - kept_params.sum() / self.sizes.sum())}
