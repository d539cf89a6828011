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
      :data:`UNIT_FEATURES` (static: computed once from the dense model).

``info`` after a step: ``layer_sparsity`` (per unit, after projection and rounding), ``keep_ratio``
(projected, before rounding), ``sparsity`` (realized global), ``target_sparsity``, ``ppl``,
``dense_ppl``, ``reward_windows`` and ``cost`` (this step's ``{"evaluations", "tokens"}``). Cumulative
search cost, wall seconds included, is ``env.unwrapped.cost``; :meth:`FFPruneEnv.evaluate` measures
held-out perplexity for reporting without touching it.

Everything loaded or precomputed once (model, tokenizer, importance, features, token windows) lives
in a per-process cache shared by environments whose :class:`~ffenv.config.EnvConfig` agrees on
:attr:`~ffenv.config.EnvConfig.BACKEND_FIELDS`; :func:`clear_cache` frees it (e.g. between models).
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ffenv.config import EnvConfig
from ffenv.envs.population import Evaluator, LocalEvaluator, PopulationEnv
from ffenv.errors import FFPruneError, positive_int
from ffenv.lm.data import SPLITS, calibration_windows, evaluation_windows
from ffenv.lm.forking import check_fork_safety
from ffenv.lm.models import Block, context_length, decoder_blocks, load_model_cached, weights_fingerprint
from ffenv.lm.perplexity import perplexity
from ffenv.pruning.calib import ridge_compensation
from ffenv.pruning.engines import StructuredPruner, Unit, UnstructuredPruner
from ffenv.pruning.importance import block_outlier_ratio, collect_input_norms
from ffenv.pruning.projector import check_budget, keep_to_raw, project_budget
from ffenv.vector.ray_workers import RayEvaluator

RESET_OPTIONS = ("target_sparsity", "reward_windows")
UNIT_FEATURES = (
    "depth",            # block index / (L - 1)
    "kind",             # 0 attention, 1 FFN, 0.5 whole block (unstructured)
    "size_share",       # unit parameters / largest unit's parameters
    "importance",       # mean unit importance / largest among units of the same kind
    "importance_spread",  # coefficient of variation c of granule importances, as c / (1 + c)
    "outlier_ratio",    # OWL: share of the block's Wanda scores above 5 × their mean
)


@dataclass
class Backend:
    """Everything a step needs that does not change between steps (shared per process, see :func:`clear_cache`)."""

    model: torch.nn.Module
    tokenizer: Any
    blocks: list[Block]
    pruner: StructuredPruner | UnstructuredPruner
    features: np.ndarray
    reward_tokens: torch.Tensor
    calib_tokens: torch.Tensor
    setup_seconds: float
    dense_ppl_cache: dict[tuple[str, int], float] = field(default_factory=dict)
    eval_tokens: dict[str, torch.Tensor] = field(default_factory=dict)


_BACKENDS: dict[tuple, Backend] = {}
_NORMS: dict[tuple, tuple[torch.Tensor, dict]] = {}  # calibration windows and input norms, shared by both modes


def clear_cache() -> None:
    """Free every cached backend (models, statistics, token windows) of this process.

    Environments built before keep working on their own backend; new ones load again. Use it between
    models in one process (e.g. a notebook comparing checkpoints), so only one copy stays in memory.
    """
    _BACKENDS.clear()
    _NORMS.clear()
    load_model_cached.cache_clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _unit_features(pruner: StructuredPruner | UnstructuredPruner, blocks: list[Block], norms: dict) -> np.ndarray:
    units = pruner.units
    n_blocks = len(blocks)
    outliers = [block_outlier_ratio(b, norms) for b in blocks]
    max_size = max(u.size for u in units)
    if isinstance(pruner, StructuredPruner):
        imps = [imp.double() for imp in pruner.importance]
    else:
        imps = []
        for b in blocks:
            col = [(lin.weight.detach().float().abs() * norms[(b.index, name)][None, :]).mean(0).double().cpu()
                   for name, lin in b.linears.items()]
            imps.append(torch.cat(col))
    means = np.array([float(i.mean()) for i in imps])
    kinds = np.array([u.kind for u in units])
    feats = np.zeros((len(units), len(UNIT_FEATURES)), dtype=np.float64)
    for j, (u, imp) in enumerate(zip(units, imps)):
        same = means[kinds == u.kind]
        cv = float(imp.std() / imp.mean()) if imp.numel() > 1 and float(imp.mean()) > 0 else 0.0
        feats[j] = [
            u.block / max(n_blocks - 1, 1),
            {"attn": 0.0, "ffn": 1.0, "block": 0.5}[u.kind],
            u.size / max_size,
            means[j] / same.max() if same.max() > 0 else 0.0,
            cv / (1.0 + cv),
            outliers[u.block],
        ]
    return np.clip(feats, 0.0, 1.0).astype(np.float32)


def _get_backend(cfg: EnvConfig) -> Backend:
    if cfg.backend_key in _BACKENDS:
        return _BACKENDS[cfg.backend_key]
    t0 = time.perf_counter()
    net, tok = load_model_cached(cfg.model, cfg.device, cfg.dtype)
    ctx = context_length(net)
    blocks = decoder_blocks(net)
    norms_key = tuple((k, v) for k, v in cfg.backend_key if k not in ("mode", "criterion", "reward_windows"))
    if norms_key not in _NORMS:
        calib = calibration_windows(tok, cfg.corpus, "calib", n=cfg.calib_samples, seq_len=cfg.seq_len, seed=cfg.seed,
                                    max_positions=ctx)
        _NORMS[norms_key] = (calib, collect_input_norms(net, blocks, calib))
    calib, norms = _NORMS[norms_key]
    pruner = StructuredPruner(blocks, norms) if cfg.mode == "structured" else UnstructuredPruner(blocks, norms, cfg.criterion)
    features = _unit_features(pruner, blocks, norms)
    reward = evaluation_windows(tok, cfg.corpus, "calib", seq_len=cfg.seq_len, max_positions=ctx)
    if cfg.reward_windows > len(reward):
        raise FFPruneError(f"reward_windows={cfg.reward_windows} exceeds the {len(reward)} windows of {cfg.seq_len} "
                           f"tokens in the reward split of corpus {cfg.corpus!r}; use reward_windows <= {len(reward)}")
    backend = Backend(net, tok, blocks, pruner, features, reward[: cfg.reward_windows], calib, time.perf_counter() - t0)
    _BACKENDS[cfg.backend_key] = backend
    return backend


class FFPruneEnv(gym.Env, PopulationEnv):
    """Single-step layer-wise sparsity allocation for a causal LM (FastForward Pruning).

    Args:
        config: the whole configuration (:class:`~ffenv.config.EnvConfig`; default: its defaults).
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
          ``dense_ppl / pruned_ppl`` on the ``calib`` split).
    """

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        check_fork_safety()
        if config is not None and not isinstance(config, EnvConfig):
            raise FFPruneError(f"config must be an EnvConfig, got {type(config).__name__}")
        base = config or EnvConfig()
        self.config = base.replace(**overrides) if overrides else base
        self._backend = _get_backend(self.config)
        self.units: list[Unit] = list(self._backend.pruner.units)
        self.sizes = np.array([u.size for u in self.units], dtype=np.float64)
        self.n_units = len(self.units)
        self.n_blocks = len(self._backend.blocks)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.n_units,), np.float32)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1 + self.n_units * len(UNIT_FEATURES),), np.float32)
        self.cost: dict[str, float] = {"evaluations": 0, "tokens": 0, "seconds": 0.0}
        self.setup_seconds = self._backend.setup_seconds
        self.target_sparsity = self.config.target_sparsity  # of the current episode
        self.reward_windows = self.config.reward_windows    # of the current episode
        self.dense_ppl = self._dense_ppl("calib", self.reward_windows)
        self._pending: list[tuple[float, int]] = []          # (target, windows) of the episodes of reset_many
        self._evaluator: Evaluator | None = None

    # ------------------------------------------------------------------ public knobs
    @property
    def model(self) -> torch.nn.Module:
        """The (dense, between steps) model. Do not modify it."""
        return self._backend.model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer."""
        return self._backend.tokenizer

    @property
    def blocks(self) -> list[Block]:
        """The model's decoder blocks as family-neutral :class:`~ffenv.lm.models.Block` views."""
        return self._backend.blocks

    @property
    def pruner(self) -> StructuredPruner | UnstructuredPruner:
        """The pruning engine (precomputed orderings; :meth:`step` applies and restores it)."""
        return self._backend.pruner

    @property
    def calibration_tokens(self) -> torch.Tensor:
        """The ``[calib_samples, seq_len]`` calibration windows importance (and Calib) were computed on."""
        return self._backend.calib_tokens

    @property
    def reward_tokens(self) -> torch.Tensor:
        """All ``[reward_windows, seq_len]`` reward windows; an episode uses the first :attr:`reward_windows`."""
        return self._backend.reward_tokens

    @property
    def weights(self) -> str | None:
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
    def _obs(self) -> np.ndarray:
        return self._obs_at(self.target_sparsity)

    def _obs_at(self, target: float) -> np.ndarray:
        return np.concatenate([[target], self._backend.features.reshape(-1)]).astype(np.float32)

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
        self.dense_ppl = self._dense_ppl("calib", windows)
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
        """
        a = self._check_action(action)
        target = self.target_sparsity if target_sparsity is None else target_sparsity
        check_budget(target, self.config.min_keep, self.config.max_keep)
        windows = self.reward_windows if reward_windows is None else self._check_windows(reward_windows)
        dense_ppl = self._dense_ppl("calib", windows)
        t0 = time.perf_counter()
        keep = project_budget(a, target, self.sizes, self.config.min_keep, self.config.max_keep)
        unit_sparsity = self.pruner.round(keep, (1.0 - target) * self.sizes.sum())
        tokens = self._backend.reward_tokens[:windows]
        calibrated = self.config.reward == "calibrated"
        ppl = self._ppl_pruned(unit_sparsity, tokens, self.config.calib_alpha if calibrated else None)
        reward = dense_ppl / ppl if np.isfinite(ppl) and ppl > 0 else 0.0
        n_tokens = int(tokens.numel())
        self.cost["evaluations"] += 1
        self.cost["tokens"] += n_tokens
        self.cost["seconds"] += time.perf_counter() - t0
        info = self._allocation_info(unit_sparsity)
        info.update(keep_ratio=keep.astype(np.float32), target_sparsity=float(target), ppl=float(ppl),
                    dense_ppl=float(dense_ppl), reward_windows=windows, cost={"evaluations": 1, "tokens": n_tokens})
        return float(reward), info

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
        obs = np.stack([self._obs_at(t) for t in targets])
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
        if self._evaluator is None:
            self._evaluator = RayEvaluator(self.config, self.config.workers, self.config.ray_address)
        t0 = time.perf_counter()
        results = self._evaluator.score_many(checked.astype(np.float32), [float(t) for t in targets],
                                             [int(w) for w in windows])
        self.cost["evaluations"] += len(results)
        self.cost["tokens"] += sum(int(info["cost"]["tokens"]) for _, info in results)
        self.cost["seconds"] += time.perf_counter() - t0
        return results

    def close(self) -> None:
        """Release the population workers, if any."""
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None
        super().close()

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
        """
        if split not in SPLITS:
            raise FFPruneError(f"split must be one of {SPLITS}, got {split!r}")
        unit_sparsity = self._unit_sparsity(action, sparsities, target_sparsity, calibrate)
        tokens = self.windows(split, n_windows)
        alpha = self.config.calib_alpha if calib_alpha is None else calib_alpha
        ppl = self._ppl_pruned(unit_sparsity, tokens, alpha if calibrate else None)
        out = self._allocation_info(unit_sparsity)
        out.update(split=split, ppl=float(ppl), dense_ppl=self._dense_ppl(split, len(tokens)),
                   tokens=int(tokens.numel()))
        return out

    def windows(self, split: str = "eval", n_windows: int | None = None) -> torch.Tensor:
        """The ``[N, seq_len]`` token windows :meth:`evaluate` measures on a split (default ``n_windows``:
        ``eval_samples``, else all of the split)."""
        if split not in SPLITS:
            raise FFPruneError(f"split must be one of {SPLITS}, got {split!r}")
        tokens = self._split_tokens(split, n_windows)
        if n_windows is None and self.config.eval_samples is not None:
            tokens = tokens[: self.config.eval_samples]
        return tokens

    def pruned_model(self, action: np.ndarray | None = None, *, sparsities: np.ndarray | None = None,
                     target_sparsity: float | None = None, calibrate: bool = False,
                     calib_alpha: float | None = None) -> torch.nn.Module:
        """A pruned copy of the model: the one :meth:`evaluate` measures for the same arguments.

        Structured: the removed heads / KV groups and FFN neurons are physically gone (layers of different
        widths; ``calibrate=True`` folds the ridge compensation into the kept weights). Unstructured: the
        same shapes with the pruned weights zeroed. The env's own model is left dense (bit-identical).
        """
        unit_sparsity = self._unit_sparsity(action, sparsities, target_sparsity, calibrate)
        if self.config.mode == "structured" and np.any(self.pruner.granules_kept(unit_sparsity) < 1):
            empty = [self.unit_names[i] for i in np.flatnonzero(self.pruner.granules_kept(unit_sparsity) < 1)]
            raise FFPruneError(f"a pruned model needs at least one head group and one neuron per layer; this allocation "
                               f"empties {empty} (raise min_keep above 0)")
        alpha = self.config.calib_alpha if calib_alpha is None else calib_alpha
        with self._pruned(unit_sparsity, alpha if calibrate else None):
            return copy.deepcopy(self.model)

    # ------------------------------------------------------------------ internals
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
        return self.pruner.round(keep, target_params)

    def _check_windows(self, n: Any) -> int:
        n = positive_int("reward_windows", n)
        if n > self.config.reward_windows:
            raise FFPruneError(f"reward_windows must be in [1, {self.config.reward_windows}] (reward_windows), got {n}")
        return n

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
        kept_params = self.pruner.kept_params(unit_sparsity)
        return {"layer_sparsity": (1.0 - kept_params / self.sizes).astype(np.float32),
                "sparsity": float(1.0 - kept_params.sum() / self.sizes.sum())}

    def _ppl_pruned(self, unit_sparsity: np.ndarray, tokens: torch.Tensor, calib_alpha: float | None = None) -> float:
        with self._pruned(unit_sparsity, calib_alpha):
            return perplexity(self.model, tokens, self.config.batch_size)

    @contextmanager
    def _pruned(self, unit_sparsity: np.ndarray, calib_alpha: float | None = None) -> Iterator[None]:
        """The model pruned to ``unit_sparsity`` (and compensated by Calib with penalty ``calib_alpha``) inside the
        ``with``; dense (bit-identical) again after it."""
        pruner, blocks = self.pruner, self.blocks
        if calib_alpha is None:
            pruner.prune(unit_sparsity)  # structured: physically smaller modules, so the forward costs less
            try:
                yield
            finally:
                pruner.restore()
            return
        # Calib folds the removed columns' dense weights into the kept ones: they must still be computed
        dense = [(b.attn_out.weight.detach().clone(), b.ffn_out.weight.detach().clone()) for b in blocks]
        pruner.apply(unit_sparsity)
        try:
            with ridge_compensation(self.model, blocks, pruner.kept_columns(unit_sparsity), dense,
                                    self.calibration_tokens, calib_alpha, self.config.batch_size):
                pruner.slice(unit_sparsity)  # removed columns are zero now: run the smaller model
                try:
                    yield
                finally:
                    pruner.unslice()
        finally:
            pruner.restore()

    def _split_tokens(self, split: str, n: int | None) -> torch.Tensor:
        if split == "calib" and n is not None and n <= len(self._backend.reward_tokens):
            return self._backend.reward_tokens[:n]
        if split not in self._backend.eval_tokens:
            self._backend.eval_tokens[split] = evaluation_windows(
                self._backend.tokenizer, self.config.corpus, split, seq_len=self.config.seq_len,
                max_positions=context_length(self.model))
        tokens = self._backend.eval_tokens[split]
        if n is not None:
            if n <= 0 or n > len(tokens):
                raise FFPruneError(f"n_windows must be in [1, {len(tokens)}] for split {split!r}, got {n}")
            tokens = tokens[:n]
        return tokens

    def _dense_ppl(self, split: str, n: int) -> float:
        key = (split, n)
        if key not in self._backend.dense_ppl_cache:
            self._backend.dense_ppl_cache[key] = perplexity(self.model, self._split_tokens(split, n),
                                                            self.config.batch_size)
        return self._backend.dense_ppl_cache[key]
