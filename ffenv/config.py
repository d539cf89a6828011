"""``EnvConfig``: the whole configuration of an :class:`~ffenv.envs.prune_env.FFPruneEnv`, as one frozen, typed value.

It is validated once (bad values are an :class:`~ffenv.errors.FFPruneError` naming the field and the
allowed range), it is what ``gym.make`` keyword arguments override, what a result file records, and
the fields in :attr:`EnvConfig.BACKEND_FIELDS` key the per-process cache of loaded models and
precomputed statistics (:func:`ffenv.clear_cache` frees it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from os import PathLike, fspath
from typing import Any, ClassVar

import numpy as np

from ffenv.errors import FFPruneError, non_negative_int, positive_int
from ffenv.pruning.calib import CALIB_ALPHA
from ffenv.pruning.projector import check_budget

MODES = ("structured", "unstructured")
CRITERIA = ("wanda", "magnitude")
REWARDS = ("plain", "calibrated")
RENAMED_FIELDS = {"reward_samples": "reward_windows"}
"""Old field name -> new one (results written before the rename record the old names; see
:func:`ffprune.agents.results.read_result`)."""


@dataclass(frozen=True)
class EnvConfig:
    """Configuration of one FFPrune environment (every field is a ``gym.make`` keyword argument)."""

    model: str = "tiny-llama"
    """Bundled name (``tiny-llama``, ``tiny-mistral``, ``tiny-opt``), local checkpoint folder or hub id."""
    mode: str = "structured"
    """``"structured"`` (heads / KV groups + FFN neurons, 2 units per block) or ``"unstructured"`` (1 per block)."""
    target_sparsity: float = 0.3
    """Share of the prunable parameters to remove, in ``(0, 1)``: the final target of a search."""
    min_keep: float = 0.1
    """Lower bound on every unit's keep ratio."""
    max_keep: float = 1.0
    """Upper bound on every unit's keep ratio (``0 <= min_keep <= max_keep <= 1``)."""
    corpus: str = "stdlib"
    """Corpus name or path (:mod:`ffenv.lm.data`); calibration and reward use its ``reward`` split."""
    calib_samples: int = 32
    """Random calibration windows for the importance statistics (and Calib)."""
    reward_windows: int = 32
    """Non-overlapping ``reward`` windows the reward is measured on at full fidelity (an episode may use fewer:
    ``reset(options={"reward_windows": n})``, the curriculum's fidelity)."""
    eval_samples: int | None = None
    """Windows of a split :meth:`~ffenv.envs.prune_env.FFPruneEnv.evaluate` uses by default (``None``: all)."""
    seq_len: int = 256
    """Tokens per window (at most the model's context)."""
    device: str = "cpu"
    """Where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``)."""
    dtype: str = "auto"
    """Precision (``"auto"``: float32 on CPU, bfloat16 on CUDA; ``"float32"``, ``"bfloat16"``, ``"float16"``)."""
    seed: int = 0
    """Seed of the calibration windows, and the default reset seed."""
    criterion: str = "wanda"
    """Unstructured ranking within each row: ``"wanda"`` or ``"magnitude"``."""
    batch_size: int = 16
    """Windows per forward pass."""
    reward: str = "plain"
    """``"plain"``: ``dense_ppl / pruned_ppl``; ``"calibrated"``: the same after post-pruning calibration (Calib,
    the quality the paper reports; structured mode only; costs ≈ 2-3 plain evaluations)."""
    calib_alpha: float = CALIB_ALPHA
    """Ridge penalty of Calib (for ``reward="calibrated"`` and :meth:`~ffenv.envs.prune_env.FFPruneEnv.evaluate`)."""
    workers: int = 0
    """Population evaluations (:meth:`~ffenv.envs.prune_env.FFPruneEnv.step_many`) in this process (``0``) or on this many
    Ray actors, one model replica each (one GPU each with a CUDA ``device``); needs ``pip install 'ffprune[ray]'``."""
    ray_address: str | None = None
    """An existing Ray cluster (``"auto"``, ``"ray://host:10001"``) for the workers; ``None``: a local Ray instance."""
    surrogate: bool = False
    """``True``: rewards and perplexities are predicted by the task's surrogate (:mod:`ffenv.surrogate`, fitted on
    recorded evaluations; microseconds per step, no model forward) instead of measured; results are labelled so."""
    surrogate_data: str | None = None
    """The evaluation set of the surrogate: a ``.npz`` file or a folder holding ``<model>-<mode>.npz``
    (``None``: the one bundled in ``ffenv/surrogate/data/``). Only with ``surrogate=True``."""

    BACKEND_FIELDS: ClassVar[tuple[str, ...]] = ("model", "mode", "corpus", "calib_samples", "reward_windows",
                                                 "seq_len", "device", "dtype", "seed", "criterion")
    """The fields that shape what is loaded and precomputed once (the backend cache key)."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise FFPruneError(f"model must be a bundled name, a local checkpoint folder or a hub id, got {self.model!r}")
        if self.mode not in MODES:
            raise FFPruneError(f"mode must be one of {MODES}, got {self.mode!r}")
        check_budget(self.target_sparsity, self.min_keep, self.max_keep)
        if self.criterion not in CRITERIA:
            raise FFPruneError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.reward not in REWARDS:
            raise FFPruneError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        if self.reward == "calibrated" and self.mode != "structured":
            raise FFPruneError("reward='calibrated' needs mode='structured' (Calib compensates removed heads / neurons)")
        if isinstance(self.calib_alpha, bool) or not isinstance(self.calib_alpha, (int, float)) or not self.calib_alpha >= 0:
            raise FFPruneError(f"calib_alpha must be a number >= 0, got {self.calib_alpha!r}")
        non_negative_int("workers (0: in-process)", self.workers)
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address):
            raise FFPruneError(f"ray_address must be a Ray address such as 'auto' or 'ray://host:10001', "
                               f"got {self.ray_address!r}")
        if not isinstance(self.surrogate, (bool, np.bool_)):
            raise FFPruneError(f"surrogate must be True or False, got {self.surrogate!r}")
        if self.surrogate_data is not None:
            if not isinstance(self.surrogate_data, (str, PathLike)) or not str(self.surrogate_data):
                raise FFPruneError(f"surrogate_data must be a path (an .npz evaluation set or a folder of them), "
                                   f"got {self.surrogate_data!r}")
            if not self.surrogate:
                raise FFPruneError("surrogate_data needs surrogate=True (it names the surrogate's evaluation set)")
            object.__setattr__(self, "surrogate_data", fspath(self.surrogate_data))
        if self.surrogate and self.workers:
            raise FFPruneError(f"surrogate=True evaluates in this process (microseconds per step): use workers=0, "
                               f"got workers={self.workers}")
        object.__setattr__(self, "surrogate", bool(self.surrogate))
        if not isinstance(self.corpus, str) or not self.corpus:
            raise FFPruneError(f"corpus must be a corpus name or a path, got {self.corpus!r}")
        for name in ("calib_samples", "reward_windows", "seq_len", "batch_size"):
            positive_int(name, getattr(self, name))
        if self.eval_samples is not None:
            positive_int("eval_samples", self.eval_samples)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise FFPruneError(f"seed must be an integer, got {self.seed!r}")
        for name in ("device", "dtype"):
            if not isinstance(getattr(self, name), str):
                raise FFPruneError(f"{name} must be a string, got {getattr(self, name)!r}")
        # normalise number types so equal configurations compare (and hash) equal
        for name in ("target_sparsity", "min_keep", "max_keep", "calib_alpha"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("calib_samples", "reward_windows", "seq_len", "batch_size", "seed", "workers"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.eval_samples is not None:
            object.__setattr__(self, "eval_samples", int(self.eval_samples))

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EnvConfig:
        """A config from keyword arguments; an unknown name is an :class:`FFPruneError` listing the known ones."""
        renamed = sorted(k for k in kwargs if k in RENAMED_FIELDS)
        if renamed:
            raise FFPruneError(f"env argument(s) {renamed} were renamed: use "
                               f"{', '.join(f'{RENAMED_FIELDS[k]}=' for k in renamed)} instead")
        unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise FFPruneError(f"unknown env argument(s) {unknown}; known: {[f.name for f in dataclasses.fields(cls)]}")
        return cls(**kwargs)

    def replace(self, **changes: Any) -> EnvConfig:
        """A validated copy with some fields changed."""
        return self.from_kwargs(**{**self.as_kwargs(), **changes})

    def as_kwargs(self) -> dict[str, Any]:
        """Every field as ``gym.make`` keyword arguments (what a result file records)."""
        return dataclasses.asdict(self)

    @property
    def backend_key(self) -> tuple[tuple[str, Any], ...]:
        """The :attr:`BACKEND_FIELDS` with their values: environments that agree on them share one backend."""
        return tuple((name, getattr(self, name)) for name in self.BACKEND_FIELDS)
