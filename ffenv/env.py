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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ffenv.compensation import ridge_compensation
from ffenv.data import SPLITS, calibration_windows, evaluation_windows
from ffenv.evaluation import perplexity
from ffenv.importance import block_outlier_ratio, collect_input_norms
from ffenv.models import Block, context_length, decoder_blocks, load_model_cached
from ffenv.projector import check_budget, keep_to_raw, project_budget
from ffenv.pruning import StructuredPruner, Unit, UnstructuredPruner, round_to_units

MODES = ("structured", "unstructured")
UNIT_FEATURES = (
    "depth",            # block index / (L - 1)
    "kind",             # 0 attention, 1 FFN, 0.5 whole block (unstructured)
    "size_share",       # unit parameters / largest unit's parameters
    "importance",       # mean unit importance / largest among units of the same kind
    "importance_spread",  # coefficient of variation c of granule importances, as c / (1 + c)
    "outlier_ratio",    # OWL: share of the block's Wanda scores above 5 × their mean
)


@dataclass
class _Backend:
    """Everything a step needs that does not change between steps (shared per process)."""

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


_BACKENDS: dict[tuple, _Backend] = {}
_NORMS: dict[tuple, dict] = {}


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


def _get_backend(model: str, mode: str, corpus: str, calib_samples: int, reward_samples: int, seq_len: int,
                 device: str, dtype: str, seed: int, criterion: str) -> _Backend:
    key = (model, mode, corpus, calib_samples, reward_samples, seq_len, device, dtype, seed, criterion)
    if key in _BACKENDS:
        return _BACKENDS[key]
    t0 = time.perf_counter()
    net, tok = load_model_cached(model, device, dtype)
    ctx = context_length(net)
    blocks = decoder_blocks(net)
    nkey = (model, corpus, calib_samples, seq_len, device, dtype, seed)
    if nkey not in _NORMS:
        calib = calibration_windows(tok, corpus, "calib", n=calib_samples, seq_len=seq_len, seed=seed,
                                    max_positions=ctx)
        _NORMS[nkey] = (calib, collect_input_norms(net, blocks, calib))
    calib, norms = _NORMS[nkey]
    pruner = StructuredPruner(blocks, norms) if mode == "structured" else UnstructuredPruner(blocks, norms, criterion)
    features = _unit_features(pruner, blocks, norms)
    reward = evaluation_windows(tok, corpus, "calib", seq_len=seq_len, max_positions=ctx)
    if reward_samples > len(reward):
        raise ValueError(f"reward_samples={reward_samples} exceeds the {len(reward)} windows of {seq_len} tokens "
                         f"in the reward split of corpus {corpus!r}; use reward_samples <= {len(reward)}")
    backend = _Backend(net, tok, blocks, pruner, features, reward[:reward_samples], calib, time.perf_counter() - t0)
    _BACKENDS[key] = backend
    return backend


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class FFPruneEnv(gym.Env):
    """Single-step layer-wise sparsity allocation for a causal LM (FastForward Pruning).

    Args:
        model: bundled name (``tiny-llama``, ``tiny-mistral``, ``tiny-opt``), local checkpoint or hub id.
        mode: ``"structured"`` (heads / KV groups + FFN neurons, 2 units per block) or ``"unstructured"``
            (per-block weight sparsity, 1 unit per block).
        target_sparsity: share of the prunable parameters to remove, in ``(0, 1)``.
        min_keep, max_keep: bounds on every unit's keep ratio (``0 <= min_keep <= max_keep <= 1``).
        corpus: corpus name or path (see :mod:`ffenv.data`); calibration and reward use its ``calib``
            split, :meth:`evaluate` its ``eval`` split by default.
        calib_samples: random calibration windows for the importance statistics.
        reward_samples: non-overlapping ``calib`` windows the reward is measured on.
        eval_samples: windows of a split :meth:`evaluate` uses by default (``None``: the whole split).
        seq_len: tokens per window (at most the model's context).
        device, dtype: where and in which precision the model runs (``"auto"`` picks).
        seed: calibration-window seed and the default reset seed.
        criterion: unstructured ranking, ``"wanda"`` or ``"magnitude"``.
        batch_size: windows per forward pass.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        model: str = "tiny-llama",
        mode: str = "structured",
        target_sparsity: float = 0.3,
        min_keep: float = 0.1,
        max_keep: float = 1.0,
        corpus: str = "stdlib",
        calib_samples: int = 32,
        reward_samples: int = 32,
        eval_samples: int | None = None,
        seq_len: int = 256,
        device: str = "cpu",
        dtype: str = "auto",
        seed: int = 0,
        criterion: str = "wanda",
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        check_budget(target_sparsity, min_keep, max_keep)
        if criterion not in ("wanda", "magnitude"):
            raise ValueError(f"criterion must be 'wanda' or 'magnitude', got {criterion!r}")
        for name, value in (("calib_samples", calib_samples), ("reward_samples", reward_samples),
                            ("seq_len", seq_len), ("batch_size", batch_size)):
            _positive_int(name, value)
        if eval_samples is not None:
            _positive_int("eval_samples", eval_samples)
        if not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.spec_kwargs = dict(model=model, mode=mode, target_sparsity=float(target_sparsity),
                                min_keep=float(min_keep), max_keep=float(max_keep), corpus=corpus,
                                calib_samples=int(calib_samples), reward_samples=int(reward_samples),
                                eval_samples=eval_samples, seq_len=int(seq_len), device=str(device),
                                dtype=str(dtype), seed=int(seed),
                                criterion=criterion, batch_size=int(batch_size))
        self.mode = mode
        self.target_sparsity = float(target_sparsity)
        self.min_keep = float(min_keep)
        self.max_keep = float(max_keep)
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.eval_samples = eval_samples
        self.corpus = corpus
        self._seed = int(seed)
        self._b = _get_backend(model, mode, corpus, int(calib_samples), int(reward_samples), int(seq_len),
                               str(device), str(dtype), int(seed), criterion)
        self.units: list[Unit] = list(self._b.pruner.units)
        self.sizes = np.array([u.size for u in self.units], dtype=np.float64)
        self.n_units = len(self.units)
        self.n_blocks = len(self._b.blocks)
        self.reward_windows = len(self._b.reward_tokens)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.n_units,), np.float32)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1 + self.n_units * len(UNIT_FEATURES),), np.float32)
        self.cost: dict[str, float] = {"evaluations": 0, "tokens": 0, "seconds": 0.0}
        self.setup_seconds = self._b.setup_seconds
        self.dense_ppl = self._dense_ppl("calib", self.reward_windows)

    # ------------------------------------------------------------------ public knobs
    @property
    def model(self) -> torch.nn.Module:
        """The (dense, between steps) model. Do not modify it."""
        return self._b.model

    @property
    def calibration_tokens(self) -> torch.Tensor:
        """The ``[calib_samples, seq_len]`` calibration windows importance (and Calib) were computed on."""
        return self._b.calib_tokens

    @property
    def unit_names(self) -> list[str]:
        """``"attn.3"``, ``"ffn.3"`` or ``"block.3"`` for each action entry."""
        return [f"{u.kind}.{u.block}" for u in self.units]

    def set_target_sparsity(self, target_sparsity: float) -> None:
        """Change the budget for the following episodes (validated against the keep bounds)."""
        check_budget(target_sparsity, self.min_keep, self.max_keep)
        self.target_sparsity = float(target_sparsity)

    def set_reward_windows(self, n: int) -> None:
        """Measure the reward on the first ``n`` reward windows only (the fidelity curriculum's knob)."""
        n = _positive_int("n", n)
        if n > len(self._b.reward_tokens):
            raise ValueError(f"n must be in [1, {len(self._b.reward_tokens)}] (reward_samples), got {n}")
        self.reward_windows = n
        self.dense_ppl = self._dense_ppl("calib", n)

    def action_from_sparsities(self, sparsities: np.ndarray) -> np.ndarray:
        """The action whose projection is exactly the given per-unit sparsities (when they meet the target).

        Raises ``ValueError`` if a sparsity needs a keep ratio outside ``[min_keep, max_keep]``.
        """
        s = self._check_vector("sparsities", sparsities)
        keep = 1.0 - s
        if np.any(keep < self.min_keep - 1e-9) or np.any(keep > self.max_keep + 1e-9):
            raise ValueError(f"sparsities must lie in [{1 - self.max_keep:.6g}, {1 - self.min_keep:.6g}] "
                             f"(the keep bounds), got range [{s.min():.6g}, {s.max():.6g}]")
        return np.clip(keep_to_raw(keep, self.min_keep, self.max_keep), -1.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------ gymnasium API
    def _obs(self) -> np.ndarray:
        return np.concatenate([[self.target_sparsity], self._b.features.reshape(-1)]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode. ``options={"target_sparsity": σ}`` changes the budget first."""
        super().reset(seed=seed)
        if options and "target_sparsity" in options:
            self.set_target_sparsity(options["target_sparsity"])
        return self._obs(), {"target_sparsity": self.target_sparsity, "dense_ppl": self.dense_ppl}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Project, prune, evaluate on the reward windows, restore; always ``terminated=True``."""
        a = self._check_action(action)
        t0 = time.perf_counter()
        keep = project_budget(a, self.target_sparsity, self.sizes, self.min_keep, self.max_keep)
        kept = self._round(keep, (1.0 - self.target_sparsity) * self.sizes.sum())
        tokens = self._b.reward_tokens[: self.reward_windows]
        ppl = self._ppl_pruned(kept, tokens)
        reward = self.dense_ppl / ppl if np.isfinite(ppl) and ppl > 0 else 0.0
        n_tokens = int(tokens.numel())
        self.cost["evaluations"] += 1
        self.cost["tokens"] += n_tokens
        self.cost["seconds"] += time.perf_counter() - t0
        info = self._allocation_info(kept)
        info.update(keep_ratio=keep.astype(np.float32), target_sparsity=self.target_sparsity, ppl=float(ppl),
                    dense_ppl=float(self.dense_ppl), reward_windows=self.reward_windows,
                    cost={"evaluations": 1, "tokens": n_tokens})
        return self._obs(), float(reward), True, False, info

    def evaluate(self, action: np.ndarray | None = None, *, sparsities: np.ndarray | None = None,
                 split: str = "eval", n_windows: int | None = None, calibrate: bool = False,
                 calib_alpha: float = 0.9) -> dict[str, Any]:
        """Perplexity of a pruned model on a split (held-out ``eval`` by default), for reporting.

        Give exactly one of ``action`` (projected like :meth:`step`, at the current target) or
        ``sparsities`` (per-unit sparsities used as they are, only rounded to whole units).
        ``calibrate=True`` applies the post-pruning ridge compensation (:mod:`ffenv.compensation`,
        penalty ``calib_alpha``) fitted on :attr:`calibration_tokens` before measuring (structured
        mode only); the dense weights are restored afterwards either way. Not counted in :attr:`cost`.
        """
        if calibrate and self.mode != "structured":
            raise ValueError("calibrate=True needs mode='structured' (Calib compensates removed heads / neurons)")
        if (action is None) == (sparsities is None):
            raise ValueError("give exactly one of action or sparsities")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if action is not None:
            keep = project_budget(self._check_action(action), self.target_sparsity, self.sizes,
                                  self.min_keep, self.max_keep)
            target = (1.0 - self.target_sparsity) * self.sizes.sum()
        else:
            s = self._check_vector("sparsities", sparsities)
            if np.any(s < 0) or np.any(s > 1):
                raise ValueError(f"sparsities must lie in [0, 1], got range [{s.min():.6g}, {s.max():.6g}]")
            keep = 1.0 - s
            target = float(keep @ self.sizes)
        kept = self._round(keep, target)
        tokens = self._split_tokens(split, n_windows)
        if n_windows is None and self.eval_samples is not None:
            tokens = tokens[: self.eval_samples]
        ppl = self._ppl_pruned(kept, tokens, calib_alpha if calibrate else None)
        out = self._allocation_info(kept)
        out.update(split=split, ppl=float(ppl), dense_ppl=self._dense_ppl(split, len(tokens)),
                   tokens=int(tokens.numel()))
        return out

    # ------------------------------------------------------------------ internals
    def _check_vector(self, name: str, value: Any) -> np.ndarray:
        arr = np.asarray(value)
        if arr.shape != (self.n_units,):
            raise ValueError(f"{name} must have shape ({self.n_units},), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name} must be a float array, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite; got NaN/inf at indices {np.flatnonzero(~np.isfinite(arr)).tolist()}")
        return arr

    def _check_action(self, action: Any) -> np.ndarray:
        a = self._check_vector("action", action)
        if np.any(a < -1.0 - 1e-6) or np.any(a > 1.0 + 1e-6):
            raise ValueError(f"action must lie in the action space [-1, 1]; got range [{a.min():.6g}, {a.max():.6g}]")
        return np.clip(a, -1.0, 1.0)  # only float32 rounding noise is clipped here

    def _round(self, keep: np.ndarray, target_keep_params: float) -> np.ndarray:
        """What the pruner applies: whole granules kept per unit (structured) or per-block sparsity."""
        if self.mode == "structured":
            return round_to_units(keep, self.units, target_keep_params)
        return np.clip(1.0 - keep, 0.0, 1.0)

    def _kept_params(self, kept: np.ndarray) -> np.ndarray:
        if self.mode == "structured":
            return kept * np.array([u.granule_params for u in self.units], dtype=np.float64)
        return self._b.pruner.kept_from_sparsity(kept).astype(np.float64)

    def _allocation_info(self, kept: np.ndarray) -> dict[str, Any]:
        kept_params = self._kept_params(kept)
        return {"layer_sparsity": (1.0 - kept_params / self.sizes).astype(np.float32),
                "sparsity": float(1.0 - kept_params.sum() / self.sizes.sum())}

    def _ppl_pruned(self, kept: np.ndarray, tokens: torch.Tensor, calib_alpha: float | None = None) -> float:
        pruner, blocks = self._b.pruner, self._b.blocks
        if calib_alpha is not None:  # Calib folds the removed columns' dense weights into the kept ones
            dense = [(b.attn_out.weight.detach().clone(), b.ffn_out.weight.detach().clone()) for b in blocks]
        pruner.apply(kept)
        try:
            if calib_alpha is None:
                return perplexity(self._b.model, tokens, self.batch_size)
            with ridge_compensation(self._b.model, blocks, pruner.kept_columns(kept), dense, self._b.calib_tokens,
                                    calib_alpha, self.batch_size):
                return perplexity(self._b.model, tokens, self.batch_size)
        finally:
            pruner.restore()

    def _split_tokens(self, split: str, n: int | None) -> torch.Tensor:
        if split == "calib" and n is not None and n <= len(self._b.reward_tokens):
            return self._b.reward_tokens[:n]
        if split not in self._b.eval_tokens:
            self._b.eval_tokens[split] = evaluation_windows(
                self._b.tokenizer, self.corpus, split, seq_len=self.seq_len,
                max_positions=context_length(self._b.model))
        tokens = self._b.eval_tokens[split]
        if n is not None:
            if n <= 0 or n > len(tokens):
                raise ValueError(f"n_windows must be in [1, {len(tokens)}] for split {split!r}, got {n}")
            tokens = tokens[:n]
        return tokens

    def _dense_ppl(self, split: str, n: int) -> float:
        key = (split, n)
        if key not in self._b.dense_ppl_cache:
            self._b.dense_ppl_cache[key] = perplexity(self._b.model, self._split_tokens(split, n), self.batch_size)
        return self._b.dense_ppl_cache[key]
