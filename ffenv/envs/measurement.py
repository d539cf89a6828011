"""How an environment measures an allocation: the real model, or the surrogate fitted on its measurements.

:class:`~ffenv.envs.prune_env.FFPruneEnv` asks one :class:`Measurement` for everything that depends on what is
measured — the units and their static features, the rounding of keep ratios to whole units, the dense
perplexities, the reward of an allocation, its held-out perplexity, the cost axes an evaluation adds to and the
identity written into results and checkpoints — and branches on none of it. Two implement it:

* :class:`RealMeasurement`: the model (its shared :class:`~ffenv.envs.backend.Backend`): an evaluation is one forward
  of the reward tokens through the pruned model; it counts ``evaluations`` and ``tokens``.
* :class:`SurrogateMeasurement` (``surrogate=True``): the (model, mode)'s fitted surrogate (:mod:`ffenv.surrogate`);
  rewards and held-out ppls are predictions (the info says ``surrogate: True`` and gives the ensemble spread); an
  evaluation counts ``surrogate_evaluations``. It loads no model: asking it for one (:attr:`Measurement.backend`:
  ``env.model``, ``env.pruned_model``, ``env.windows``, ...) is a one-line error naming what to build instead; what
  reads the weights without measuring (a heuristic's allocation) asks for them by name, ``env.real_backend()``.

:func:`measurement_of` picks one for a configuration; :func:`describe_measurement` says in words what a result or
checkpoint was measured on (from its :attr:`Measurement.identity`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from ffenv.config import EnvConfig
from ffenv.envs.backend import Backend, get_backend
from ffenv.envs.features import UNIT_FEATURES
from ffenv.errors import FFPruneError, positive_int
from ffenv.lm.data import check_split, window_bos
from ffenv.pruning.engines import Unit
from ffenv.surrogate.model import Surrogate, load_surrogate

__all__ = ["REAL_AXES", "SURROGATE_AXES", "Measurement", "RealMeasurement", "Rounding", "SurrogateMeasurement",
           "describe_measurement", "measurement_of"]

REAL_AXES = ("evaluations", "tokens")
"""What one evaluation on the real model costs: one forward of its reward tokens."""
SURROGATE_AXES = ("surrogate_evaluations",)
"""What one prediction of a surrogate costs (no forward runs: ``evaluations`` and ``tokens`` stay 0)."""


class Rounding(Protocol):
    """Rounds keep ratios to whole units (heads, KV groups, neurons, rows): the pruning engine, or its recorded copy."""

    def to_unit_sparsity(self, keep: np.ndarray, target_keep_params: float) -> np.ndarray: ...

    def kept_params(self, unit_sparsity: np.ndarray) -> np.ndarray: ...


class Measurement(Protocol):
    """What an environment asks of whatever measures its allocations (see the module docstring)."""

    axes: tuple[str, ...]
    """The cost axes one evaluation adds to; the first counts evaluations."""
    identity: str | None
    """What results and checkpoints record as the measurement (``None``: the real model)."""
    units: Sequence[Unit]
    features: np.ndarray
    """``[n_units, len(UNIT_FEATURES)]`` static unit features."""
    rounding: Rounding
    setup_seconds: float
    window_bos: int | None
    """The BOS every token window starts with (:func:`~ffenv.lm.data.window_bos`; ``None``: none)."""

    @property
    def backend(self) -> Backend:
        """The model and everything precomputed on it (a surrogate refuses: it measures no model)."""
        ...

    def real_backend(self) -> Backend:
        """The real model's backend, loaded on request even under a surrogate (what reads the weights — a heuristic's
        allocation — asks for it by name; nothing that measures does)."""
        ...

    def windows(self, split: str, n_windows: int | None) -> torch.Tensor:
        """The token windows of a split (default ``n_windows``: ``eval_samples``, else all of the split; a surrogate
        refuses: it holds no tokens)."""
        ...

    def check_windows(self, n: int) -> None:
        """Refuse a number of reward windows this measurement cannot score (``n`` already in range)."""
        ...

    def dense_ppl(self, split: str, n_windows: int | None) -> float:
        """The dense model's ppl on the first ``n_windows`` windows of ``split`` (``"reward"``: the reward windows)."""
        ...

    def reward(self, unit_sparsity: np.ndarray, layer_sparsity: np.ndarray, target: float, windows: int,
               dense_ppl: float) -> tuple[float, float, dict[str, int], dict[str, Any]]:
        """``(reward, ppl, cost, extra info)`` of an allocation on the first ``windows`` reward windows."""
        ...

    def held_out(self, unit_sparsity: np.ndarray, layer_sparsity: np.ndarray, target: float, split: str,
                 n_windows: int | None, calib_alpha: float | None) -> dict[str, Any]:
        """``{"ppl", "dense_ppl", "tokens", ...}`` of an allocation on ``split`` (Calib's penalty ``calib_alpha``,
        ``None``: no Calib); not search cost."""
        ...

    def check_held_out(self, split: str, n_windows: int | None, calib_alpha: float | None) -> None:
        """Refuse a held-out measurement this measurement cannot make, before any work."""
        ...


def measurement_of(config: EnvConfig) -> Measurement:
    """The measurement a configuration asks for: its surrogate with ``surrogate=True``, else the real model."""
    return SurrogateMeasurement(config) if config.surrogate else RealMeasurement(config)


def describe_measurement(identity: str | None) -> str:
    """A measurement's :attr:`~Measurement.identity` in words: ``"the real env"`` or ``"the surrogate fitted on
    sha256:…"``."""
    return f"the surrogate fitted on {identity[:19]}" if identity else "the real env"


class RealMeasurement:
    """Measures allocations on the model: prune, forward the reward (or held-out) tokens, restore.

    Args:
        config: the environment's configuration; its :class:`~ffenv.envs.backend.Backend` is built (or shared).
    """

    axes = REAL_AXES
    identity = None

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self._backend = get_backend(config)
        self.units = self._backend.pruner.units
        self.features = self._backend.features
        self.rounding: Rounding = self._backend.pruner
        self.setup_seconds = self._backend.setup_seconds
        self.window_bos = window_bos(self._backend.tokenizer)

    @property
    def backend(self) -> Backend:
        return self._backend

    def real_backend(self) -> Backend:
        return self._backend

    def check_windows(self, n: int) -> None:
        pass  # every number of reward windows up to the config's is measured

    def dense_ppl(self, split: str, n_windows: int | None) -> float:
        return self._backend.dense_ppl(split, n_windows, self.config.batch_size)

    def reward(self, unit_sparsity: np.ndarray, layer_sparsity: np.ndarray, target: float, windows: int,
               dense_ppl: float) -> tuple[float, float, dict[str, int], dict[str, Any]]:
        tokens = self._backend.reward_tokens[:windows]
        alpha = self.config.calib_alpha if self.config.reward == "calibrated" else None
        ppl = self._backend.pruned_ppl(unit_sparsity, tokens, self.config.batch_size, alpha)
        reward = dense_ppl / ppl if np.isfinite(ppl) and ppl > 0 else 0.0
        return reward, ppl, {"evaluations": 1, "tokens": int(tokens.numel())}, {}

    def windows(self, split: str, n_windows: int | None) -> torch.Tensor:
        self.check_held_out(split, n_windows, None)
        tokens = self._backend.split_tokens(split, n_windows)
        if n_windows is None and self.config.eval_samples is not None:
            tokens = tokens[: self.config.eval_samples]
        return tokens

    def check_held_out(self, split: str, n_windows: int | None, calib_alpha: float | None) -> None:
        check_split(split)

    def held_out(self, unit_sparsity: np.ndarray, layer_sparsity: np.ndarray, target: float, split: str,
                 n_windows: int | None, calib_alpha: float | None) -> dict[str, Any]:
        tokens = self.windows(split, n_windows)
        batch = self.config.batch_size
        ppl = self._backend.pruned_ppl(unit_sparsity, tokens, batch, calib_alpha)
        return {"ppl": float(ppl), "dense_ppl": self._backend.dense_ppl(split, len(tokens), batch),
                "tokens": int(tokens.numel())}


class SurrogateMeasurement:
    """Predicts allocations' rewards and held-out ppls with the (model, mode)'s fitted surrogate; loads no model.

    Args:
        config: the environment's configuration (``surrogate=True``): its evaluation set is loaded and fitted
            (cached per process and on disk, :func:`~ffenv.surrogate.model.load_surrogate`).
    """

    axes = SURROGATE_AXES

    def __init__(self, config: EnvConfig) -> None:
        t0 = time.perf_counter()
        self.config = config
        self.surrogate: Surrogate = load_surrogate(config)
        description = self.surrogate.description
        self.identity: str | None = self.surrogate.fingerprint
        self.units = description.units
        self.rounding: Rounding = description  # the engine's rounding, recorded without the model
        self.window_bos: int | None = description.meta.get("window_bos")  # sets recorded before it: models without
        self.features = description.features(config.seed)
        if self.features.shape != (len(description.units), len(UNIT_FEATURES)):
            raise FFPruneError(f"the surrogate's evaluation set was recorded with other unit features "
                               f"({self.features.shape[1]}, now {len(UNIT_FEATURES)}): record it again")
        self.setup_seconds = time.perf_counter() - t0

    @property
    def backend(self) -> Backend:
        raise FFPruneError(f"a surrogate env (model={self.config.model!r}, surrogate=True) measures no model: build "
                           "the env without surrogate=True for its model, tokenizer, windows or pruned copies (the "
                           "allocation found on the surrogate applies there unchanged)")

    def real_backend(self) -> Backend:
        return get_backend(self.config)  # shared per process with the real envs of this configuration

    def windows(self, split: str, n_windows: int | None) -> torch.Tensor:
        return self.backend.windows(split, n_windows)  # the one-line refusal

    def check_windows(self, n: int) -> None:
        self.surrogate.fidelity.at(n)  # a surrogate without reduced-fidelity data refuses fewer windows

    def dense_ppl(self, split: str, n_windows: int | None) -> float:
        return self.surrogate.description.dense_ppl(self.config.seed, split, n_windows)

    def reward(self, unit_sparsity: np.ndarray, layer_sparsity: np.ndarray, target: float, windows: int,
               dense_ppl: float) -> tuple[float, float, dict[str, int], dict[str, Any]]:
        reward, spread = self.surrogate.predict_reward(layer_sparsity, target, self.config.seed, windows)
        return (reward, dense_ppl / reward, {"evaluations": 0, "tokens": 0, "surrogate_evaluations": 1},
                {"surrogate": True, "surrogate_std": spread})

    def check_held_out(self, split: str, n_windows: int | None, calib_alpha: float | None) -> None:
        if split == "reward":  # the full-fidelity reward prediction, as a ppl
            full = self.config.reward_windows
            if n_windows not in (None, full) or calib_alpha is not None:
                raise FFPruneError(f"a surrogate predicts the reward split's ppl on all {full} reward windows without "
                                   f"Calib only; got n_windows={n_windows}, calib_alpha={calib_alpha}")
            return
        recorded = self.surrogate.description.meta["eval"]
        if split != "eval":
            raise FFPruneError(f"a surrogate predicts the held-out ppl and the reward split's: split must be 'eval' "
                               f"or 'reward' in surrogate mode, got {split!r}")
        if n_windows is not None:
            positive_int("n_windows", n_windows)
        wanted = n_windows or self.config.eval_samples or recorded["split_windows"]
        if min(wanted, recorded["split_windows"]) != recorded["windows"]:
            raise FFPruneError(f"the surrogate predicts the held-out ppl on the first {recorded['windows']} eval "
                               f"windows (of {recorded['split_windows']}): use n_windows={recorded['windows']} "
                               f"(or eval_samples), got {wanted}")
        calibrated = calib_alpha is not None
        if calibrated != recorded["calibrated"] or (calibrated and calib_alpha != self.config.calib_alpha):
            raise FFPruneError(f"the surrogate's held-out ppl was recorded with calibrate={recorded['calibrated']} "
                               f"(at the config's calib_alpha); got calibrate={calibrated}, calib_alpha={calib_alpha}")

    def held_out(self, unit_sparsity: np.ndarray, layer_sparsity: np.ndarray, target: float, split: str,
                 n_windows: int | None, calib_alpha: float | None) -> dict[str, Any]:
        self.check_held_out(split, n_windows, calib_alpha)
        if split == "reward":  # the reward split's ppl: the full-fidelity reward's, as a step gives it
            full = self.config.reward_windows
            dense = self.dense_ppl("reward", full)
            _reward, ppl, _cost, extra = self.reward(unit_sparsity, layer_sparsity, target, full, dense)
            spread = extra["surrogate_std"]
        else:
            dense = self.dense_ppl("eval", None)
            ppl, spread = self.surrogate.predict_eval_ppl(layer_sparsity, target, self.config.seed)
        return {"ppl": ppl, "dense_ppl": dense, "tokens": 0, "surrogate": True, "surrogate_std": spread}
