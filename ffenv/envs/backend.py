"""The backend of an environment: everything loaded or precomputed once, shared per process.

A :class:`Backend` holds the model and tokenizer, the family-neutral blocks, the pruning engine (its
orderings precomputed from the calibration statistics), the unit features, the reward and calibration
windows, and caches of dense perplexities and evaluation windows. It prunes the model to an allocation
inside a ``with`` (:meth:`Backend.pruned`, optionally compensated by Calib) and measures perplexity.

Environments whose :class:`~ffenv.config.EnvConfig` agree on
:attr:`~ffenv.config.EnvConfig.BACKEND_FIELDS` share one backend (:func:`get_backend`); the
calibration windows and input norms are shared further, by the two modes of one model.
:func:`clear_cache` frees everything.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ffenv.config import EnvConfig
from ffenv.envs.features import UNIT_FEATURES, unit_features
from ffenv.errors import FFPruneError
from ffenv.lm.data import calibration_windows, disk_cached, evaluation_windows
from ffenv.lm.models import Block, context_length, decoder_blocks, load_model_cached, weights_fingerprint
from ffenv.lm.perplexity import perplexity
from ffenv.pruning.calib import ridge_compensation
from ffenv.pruning.engines import Pruner, StructuredPruner, UnstructuredPruner, unstructured_ranks
from ffenv.pruning.importance import collect_input_norms
from ffenv.surrogate.model import clear_surrogate_cache


@dataclass
class Backend:
    """Everything a step needs that does not change between steps (see the module docstring)."""

    model: torch.nn.Module
    tokenizer: Any
    blocks: list[Block]
    pruner: Pruner
    features: np.ndarray
    reward_tokens: torch.Tensor
    calib_tokens: torch.Tensor
    corpus: str
    seq_len: int
    setup_seconds: float
    fingerprint: str | None = None
    """The weights' identity (:func:`~ffenv.lm.models.weights_fingerprint`): keys the statistics cached on disk."""
    input_norms: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    """Per (block index, linear name): the L2 norm of each input feature over the calibration tokens (importance's and
    the features' statistics)."""
    dense_ppl_cache: dict[tuple[str, int], float] = field(default_factory=dict)
    eval_tokens: dict[str, torch.Tensor] = field(default_factory=dict)

    @contextmanager
    def pruned(self, unit_sparsity: np.ndarray, calib_alpha: float | None = None, batch_size: int = 16) -> Iterator[None]:
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
        assert isinstance(pruner, StructuredPruner)  # EnvConfig refuses Calib in unstructured mode
        # Calib folds the removed columns' dense weights into the kept ones: they must still be computed
        dense = [(b.attn_out.weight.detach().clone(), b.ffn_out.weight.detach().clone()) for b in blocks]
        pruner.apply(unit_sparsity)
        try:
            with ridge_compensation(self.model, blocks, pruner.kept_columns(unit_sparsity), dense, self.calib_tokens,
                                    calib_alpha, batch_size):
                pruner.slice(unit_sparsity)  # removed columns are zero now: run the smaller model
                try:
                    yield
                finally:
                    pruner.unslice()
        finally:
            pruner.restore()

    def pruned_ppl(self, unit_sparsity: np.ndarray, tokens: torch.Tensor, batch_size: int,
                   calib_alpha: float | None = None) -> float:
        """Perplexity of the pruned (and, with ``calib_alpha``, calibrated) model on ``tokens``."""
        with self.pruned(unit_sparsity, calib_alpha, batch_size):
            return perplexity(self.model, tokens, batch_size)

    def pruned_copy(self, unit_sparsity: np.ndarray, calib_alpha: float | None = None, batch_size: int = 16) -> torch.nn.Module:
        """A deep copy of the pruned model (the backend's own model stays dense)."""
        with self.pruned(unit_sparsity, calib_alpha, batch_size):
            return copy.deepcopy(self.model)

    def split_tokens(self, split: str, n: int | None) -> torch.Tensor:
        """The first ``n`` (all: ``None``) windows of a split; the reward windows when they suffice for ``reward``."""
        if split == "reward" and n is not None and n <= len(self.reward_tokens):
            return self.reward_tokens[:n]
        if split not in self.eval_tokens:
            self.eval_tokens[split] = evaluation_windows(self.tokenizer, self.corpus, split, seq_len=self.seq_len,
                                                         max_positions=context_length(self.model))
        tokens = self.eval_tokens[split]
        if n is not None:
            if n <= 0 or n > len(tokens):
                raise FFPruneError(f"n_windows must be in [1, {len(tokens)}] for split {split!r}, got {n}")
            tokens = tokens[:n]
        return tokens

    def dense_ppl(self, split: str, n: int, batch_size: int) -> float:
        """Perplexity of the dense model on the first ``n`` windows of a split (cached)."""
        key = (split, n)
        if key not in self.dense_ppl_cache:
            tokens = self.split_tokens(split, n)
            self.dense_ppl_cache[key] = float(disk_cached(
                stats_key("dense_ppl", self.fingerprint, self.model, tokens, batch_size=batch_size),
                lambda: torch.tensor(perplexity(self.model, tokens, batch_size), dtype=torch.float64), "stats"))
        return self.dense_ppl_cache[key]


STATS_FORMAT = 1
"""Bumped when what the statistics cache holds changes (old entries are then never read)."""


def stats_key(what: str, fingerprint: str | None, model: torch.nn.Module, tokens: torch.Tensor,
              **extra: Any) -> dict[str, Any] | None:
    """The disk-cache key (:func:`~ffenv.lm.data.disk_cached`, folder ``stats``) of a statistic of the dense model over
    ``tokens``: the weights' fingerprint, the tokens' bytes, the dtype and device type (``None``, no disk cache, when
    the weights have no fingerprint). What the first reset of a model costs once, later resets read."""
    if fingerprint is None:
        return None
    param = next(model.parameters())
    digest = hashlib.sha256(tokens.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:24]
    return {"what": what, "format": STATS_FORMAT, "weights": fingerprint, "tokens": [digest, list(tokens.shape)],
            "dtype": str(param.dtype), "device": param.device.type, **extra}


_BACKENDS: dict[tuple, Backend] = {}
_NORMS: dict[tuple, tuple[torch.Tensor, dict]] = {}  # calibration windows and input norms, shared by both modes


def clear_cache() -> None:
    """Free every cached backend (models, statistics, token windows) and fitted surrogate of this process.

    Environments built before keep working on their own backend; new ones load again. Use it between
    models in one process (e.g. a notebook comparing checkpoints), so only one copy stays in memory.
    """
    _BACKENDS.clear()
    _NORMS.clear()
    clear_surrogate_cache()
    load_model_cached.cache_clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def get_backend(cfg: EnvConfig) -> Backend:
    """The backend of a configuration: built once per process and :attr:`~EnvConfig.backend_key`."""
    if cfg.backend_key in _BACKENDS:
        return _BACKENDS[cfg.backend_key]
    t0 = time.perf_counter()
    net, tok = load_model_cached(cfg.model, cfg.device, cfg.dtype)
    ctx = context_length(net)
    blocks = decoder_blocks(net)
    fingerprint = weights_fingerprint(cfg.model)
    norms_key = tuple((k, v) for k, v in cfg.backend_key if k not in ("mode", "criterion", "reward_windows"))
    if norms_key not in _NORMS:
        calib = calibration_windows(tok, cfg.corpus, "reward", n=cfg.calib_samples, seq_len=cfg.seq_len, seed=cfg.seed,
                                    max_positions=ctx)
        device = next(net.parameters()).device
        norms = disk_cached(stats_key("input_norms", fingerprint, net, calib),
                            lambda: {"/".join(map(str, k)): v.cpu() for k, v in collect_input_norms(net, blocks, calib).items()},
                            "stats")
        _NORMS[norms_key] = (calib, {(int(k.split("/")[0]), k.split("/")[1]): v.to(device) for k, v in norms.items()})
    calib, norms = _NORMS[norms_key]
    if cfg.mode == "structured":
        pruner: Pruner = StructuredPruner(blocks, norms)
    else:  # the per-row ranks of 100 M weights: seconds to sort, a fraction of that to read back
        ranks = disk_cached(stats_key("unstructured_ranks", fingerprint, net, calib, criterion=cfg.criterion),
                            lambda: unstructured_ranks(blocks, norms, cfg.criterion), "stats")
        pruner = UnstructuredPruner(blocks, norms, cfg.criterion, ranks)
    features = disk_cached(stats_key("unit_features", fingerprint, net, calib, mode=cfg.mode, criterion=cfg.criterion,
                                     features=list(UNIT_FEATURES)),
                           lambda: torch.from_numpy(unit_features(pruner, blocks, norms)), "stats").numpy()
    reward = evaluation_windows(tok, cfg.corpus, "reward", seq_len=cfg.seq_len, max_positions=ctx)
    if cfg.reward_windows > len(reward):
        raise FFPruneError(f"reward_windows={cfg.reward_windows} exceeds the {len(reward)} windows of {cfg.seq_len} "
                           f"tokens in the reward split of corpus {cfg.corpus!r}; use reward_windows <= {len(reward)}")
    backend = Backend(net, tok, blocks, pruner, features, reward[: cfg.reward_windows], calib, cfg.corpus, cfg.seq_len,
                      time.perf_counter() - t0, fingerprint, norms)
    _BACKENDS[cfg.backend_key] = backend
    return backend
