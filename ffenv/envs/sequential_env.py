"""``FFPruneSequentialEnv``: the multi-step (AMC-style) twin of :class:`~ffenv.envs.prune_env.FFPruneEnv`.

One unit per step, in network order (``attn_0, ffn_0, attn_1, ...`` structured; one block per step
unstructured), the budget enforced during the episode or deferred to the end, and the model evaluated once,
after the last unit. Same model, importance, pruning engines, reward and cost accounting as the single-step
env: the sequential env holds one (:attr:`FFPruneSequentialEnv.single`) and scores the final allocation with
its :meth:`~ffenv.envs.prune_env.FFPruneEnv.score`, so the last reward is *exactly* the single-step reward of
that allocation and an episode counts one evaluation.

Spaces
    * action: ``Box(-1, 1, (1,), float32)``: the current unit's raw keep score, as one entry of the
      single-step action (``-1`` asks for ``min_keep``, ``+1`` for ``max_keep``).
    * observation: ``Box(low, high, (F + 4,), float32)``: the unit's static
      :data:`~ffenv.envs.features.UNIT_FEATURES` (``F`` = 6, each in ``[0, 1]``), then the target sparsity
      ``σ`` (``[0, 1]``), the share of all prunable parameters already removed by the earlier units (``[0, 1]``),
      the share still to remove, ``σ`` minus that (``[-1, 1]``; negative when the earlier units already removed
      more than the budget, possible only with ``projection="deferred"``), and the previous step's action
      (``[-1, 1]``; ``0`` at the first unit).

Budget (``projection``)
    * ``"deferred"``: the raw actions are collected and the single-step projector is applied at the end; the
      two formulations differ only in credit assignment. The "removed" entries of the observation use the
      raw keep ratios (``raw_to_keep``), before the projection.
    * ``"interval"`` (AMC / NNI style): each action's keep ratio is clipped into the interval that keeps the
      rest of the budget feasible with the per-unit bounds — ``[max(min_keep, (K − A − max_keep·S_rest) / s),
      min(max_keep, (K − A − min_keep·S_rest) / s)]`` with ``K`` the kept-parameter target, ``A`` what the earlier
      units keep, ``s`` this unit's size and ``S_rest`` the later units' — so the last unit meets the target
      exactly and no final projection moves anything. ``info["executed_action"]`` is the action that keep ratio
      corresponds to (what an off-policy agent should store).

Reward: ``0`` before the last unit; at the last unit, the single-step reward of the final allocation (its info
is the single-step info, plus ``executed_actions`` and ``raw_actions`` for the whole episode). ``terminated`` is
``True`` at the last unit only. Cost: :attr:`cost` holds the single-step env's ``evaluations`` / ``tokens`` /
``seconds`` (one evaluation per episode) and ``env_steps`` on its own axis.

Reset options: ``target_sparsity`` and ``reward_windows``, as in the single-step env. A step after the last unit
(without a reset), an action of the wrong shape or outside ``[-1, 1]``, an unknown ``projection`` and an
infeasible target are one-line :class:`~ffenv.errors.FFPruneError` s; nothing is evaluated.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from ffenv.config import EnvConfig
from ffenv.envs.features import UNIT_FEATURES
from ffenv.envs.prune_env import EvaluatorFactory, FFPruneEnv
from ffenv.errors import FFPruneError
from ffenv.pruning.projector import keep_to_raw, raw_to_keep

PROJECTIONS = ("deferred", "interval")
EPISODE_FEATURES = ("target_sparsity", "removed_share", "to_remove_share", "previous_action")


def single_step_env(env: gym.Env) -> FFPruneEnv:
    """The single-step env behind ``env.unwrapped``: itself, or a sequential env's :attr:`~FFPruneSequentialEnv.single`
    (what wrappers read the configuration, the weights fingerprint and re-scoring from)."""
    base = env.unwrapped
    if isinstance(base, FFPruneSequentialEnv):
        return base.single
    if isinstance(base, FFPruneEnv):
        return base
    raise FFPruneError(f"an FFPrune environment (single-step or sequential) is needed, got {type(base).__name__}")


class FFPruneSequentialEnv(gym.Env):
    """Layer-wise sparsity allocation as a multi-step episode: one unit per step (see the module docstring).

    Args:
        config: the configuration of the single-step env inside (:class:`~ffenv.config.EnvConfig`).
        projection: ``"deferred"`` (the single-step projector at the end) or ``"interval"`` (each step clipped into
            its feasible interval, AMC / NNI style).
        evaluator_factory: passed to the single-step env (populations are not used here).
        **overrides: :class:`~ffenv.config.EnvConfig` fields.

    Version history:
        * v0: initial release.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | None = None, *, projection: str = "interval",
                 evaluator_factory: EvaluatorFactory | None = None, **overrides: Any) -> None:
        super().__init__()
        if projection not in PROJECTIONS:
            raise FFPruneError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.projection = projection
        self.single = FFPruneEnv(config, evaluator_factory=evaluator_factory, **overrides)
        """The single-step env whose model, engines and reward this env uses."""
        self.config = self.single.config
        self.n_units = self.single.n_units
        self.sizes = self.single.sizes
        self._features = self.single.features
        n_feat = len(UNIT_FEATURES)
        low = np.concatenate([np.zeros(n_feat), [0.0, 0.0, -1.0, -1.0]]).astype(np.float32)
        high = np.ones(n_feat + len(EPISODE_FEATURES), np.float32)
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.env_steps = 0
        self.target_sparsity = self.config.target_sparsity
        self.reward_windows = self.config.reward_windows
        self._unit = self.n_units  # no episode yet: stepping needs a reset
        self._raw = np.zeros(self.n_units)
        self._executed = np.zeros(self.n_units)
        self._keep = np.zeros(self.n_units)

    @property
    def cost(self) -> dict[str, float]:
        """The single-step env's ``evaluations`` / ``tokens`` / ``seconds``, plus ``env_steps`` (its own axis)."""
        return {**self.single.cost, "env_steps": self.env_steps}

    @property
    def unit_names(self) -> list[str]:
        """The units in step order (``"attn.0"``, ``"ffn.0"``, ... or ``"block.0"``, ...)."""
        return self.single.unit_names

    @property
    def weights_fingerprint(self) -> str | None:
        """The model's weights fingerprint (the single-step env's)."""
        return self.single.weights_fingerprint

    @property
    def episode_started(self) -> bool:
        """Whether a step now would continue an episode (``False``: it starts one, at the first unit)."""
        return 0 < self._unit < self.n_units

    @property
    def unit(self) -> int:
        """Index of the unit the next step decides (``n_units`` once the episode is over)."""
        return self._unit

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode at the first unit; ``options`` as in :meth:`FFPruneEnv.reset`."""
        super().reset(seed=seed)
        _obs, info = self.single.reset(seed=seed, options=options)
        self.target_sparsity, self.reward_windows = self.single.target_sparsity, self.single.reward_windows
        self._unit = 0
        self._raw[:] = 0.0
        self._executed[:] = 0.0
        self._keep[:] = 0.0
        return self._obs(), {**info, "unit": self.unit_names[0], "projection": self.projection}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decide the current unit's keep ratio; evaluate the allocation after the last unit."""
        if self._unit >= self.n_units:
            raise FFPruneError(f"step after the last unit ({self.n_units} units): the episode is over; call reset()")
        a = self._check_action(action)
        j = self._unit
        lo, hi = self.config.min_keep, self.config.max_keep
        keep = float(raw_to_keep(np.array([a]), lo, hi)[0])
        if self.projection == "interval":
            keep = float(np.clip(keep, *self.feasible_interval()))
        executed = float(keep_to_raw(np.array([keep]), lo, hi)[0]) if self.projection == "interval" else a
        self._raw[j], self._executed[j], self._keep[j] = a, executed, keep
        self._unit += 1
        self.env_steps += 1
        info: dict[str, Any] = {"unit": self.unit_names[j], "executed_action": np.float32(executed)}
        if self._unit < self.n_units:
            return self._obs(), 0.0, False, False, info
        reward, final = self.single.score(self._final_action(), target_sparsity=self.target_sparsity,
                                          reward_windows=self.reward_windows)
        final.update(info, raw_actions=self._raw.astype(np.float32), executed_actions=self._executed.astype(np.float32),
                     projection=self.projection)
        return self._obs(), reward, True, False, final

    def close(self) -> None:
        self.single.close()
        super().close()

    # ------------------------------------------------------------------ the budget during an episode
    def feasible_interval(self) -> tuple[float, float]:
        """The keep ratios of the current unit that leave the rest of the budget feasible (``"interval"`` mode)."""
        j = self._unit
        lo, hi = self.config.min_keep, self.config.max_keep
        target = (1.0 - self.target_sparsity) * self.sizes.sum()
        assigned = float(self._keep[:j] @ self.sizes[:j])
        rest = float(self.sizes[j + 1:].sum())
        size = float(self.sizes[j])
        low = max(lo, (target - assigned - hi * rest) / size)
        high = min(hi, (target - assigned - lo * rest) / size)
        if low > high + 1e-9:  # cannot happen from a feasible start: the earlier steps kept it feasible
            raise FFPruneError(f"target_sparsity={self.target_sparsity} cannot be met from unit {self.unit_names[j]} "
                               f"on with keep ratios in [{lo}, {hi}]")
        return low, max(low, high)

    def final_allocation(self) -> np.ndarray:
        """The action the single-step env scores for this episode's decisions (the raw actions when deferred; when
        interval, the action whose projection is the executed keep ratios)."""
        if self._unit < self.n_units:
            raise FFPruneError(f"the allocation is complete after all {self.n_units} units; {self._unit} decided so far")
        return self._final_action()

    def _final_action(self) -> np.ndarray:
        if self.projection == "deferred":
            return self._raw.astype(np.float32)
        return self.single.action_from_sparsities(1.0 - self._keep)

    def _obs(self) -> np.ndarray:
        j = min(self._unit, self.n_units - 1)
        done = self._unit
        total = self.sizes.sum()
        removed = float((1.0 - self._keep[:done]) @ self.sizes[:done]) / total
        previous = self._executed[done - 1] if done > 0 else 0.0
        episode = [self.target_sparsity, removed, self.target_sparsity - removed, previous]
        return np.concatenate([self._features[j], episode]).astype(np.float32)

    def _check_action(self, action: Any) -> float:
        arr = np.asarray(action)
        if arr.shape not in ((1,), ()):
            raise FFPruneError(f"action must have shape (1,) (one unit per step), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise FFPruneError(f"action must be a float array, got dtype {arr.dtype}")
        a = float(arr.reshape(-1)[0])
        if not np.isfinite(a) or not -1.0 - 1e-6 <= a <= 1.0 + 1e-6:
            raise FFPruneError(f"action must lie in the action space [-1, 1], got {a!r}")
        return float(np.clip(a, -1.0, 1.0))  # only float32 rounding noise is clipped here

