"""Surrogates: a small MLP ensemble fitted on an evaluation set, predicting a step's reward and held-out ppl.

A :class:`Surrogate` is fitted (:func:`fit`) on the train split of an :class:`~ffenv.surrogate.records.EvaluationSet`,
early-stopped on its validation split; the test split is never read (it is what validation tables use).

Inputs
    ``[unit_sparsity (D, rounded to float16 like the set), target, one-hot env seed]``, standardised on the
    training rows. The realised per-unit sparsity is ``info["layer_sparsity"]`` (after projection and rounding);
    the seed picks the pruning instance (its calibration windows, hence the importance orderings).
Outputs
    ``log reward`` at full fidelity (rows measured on all reward windows; a reward of 0, a non-finite ppl, counts as
    :data:`REWARD_FLOOR`) and ``log eval_ppl`` (rows with a held-out ppl), one :class:`Ensemble` each. The held-out
    model reads the reward model's prediction as one more input (:func:`with_reward`): held-out ppls are
    ≈ 50 per suite target where rewards are thousands, and the reward carries most of what ranks the held-out ppl
    (when the model was chosen, 5-fold cross-validated Spearman ρ of the held-out ppl at llama-s0.3, llama-s0.5,
    llama-u0.7 and mistral-u0.7: 0.81–0.91 from the allocation alone, 0.91–0.98 with the predicted reward;
    ``ffprune surrogate validate`` reports the current model's).
Model
    ``members`` MLPs (``depth`` hidden layers of ``hidden`` SiLU units), trained together with torch's AdamW on
    seeded mini-batches drawn with replacement (a bootstrap per member), each member keeping its weights of
    lowest validation loss; fitting is deterministic for a :class:`FitSettings` seed. The ensemble's mean is the
    prediction, its spread (standard deviation of the members' log predictions) the uncertainty. Inference is
    numpy on weights copied out of torch: a step costs microseconds.
Fidelity
    An episode on ``w`` of the ``W`` reward windows (the curriculum's fidelity) gets
    ``exp(pred + b_w + s_w · ε)``: ``b_w`` and ``s_w`` are the mean and standard deviation of
    ``log reward_w - log reward_W`` over the allocations measured at both (:class:`Fidelity`; interpolated in
    ``1/w - 1/W`` between recorded fidelities, the nearest one beyond them), and ``ε`` is a standard normal that is
    a deterministic function of (the allocation's float16 bytes, the target, the env seed, ``w``)
    (:func:`fidelity_noise`): as in the real env, where the first ``w`` windows are fixed, the same allocation on
    the same windows always gets the same reward, whatever the episode or the reset seed; another allocation, another
    ``w`` or another env seed draws another error.

:func:`load_surrogate` is what an environment calls: the evaluation set of its (model, mode), checked against its
configuration, fitted once per process and cached on disk (``<cache_dir>/surrogate/``, keyed by the set's
fingerprint, the settings and the torch version), so a new process loads the fit instead of redoing it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from ffenv.config import EnvConfig
from ffenv.errors import FFPruneError, positive_int
from ffenv.io import atomic_write
from ffenv.lm.data import cache_dir
from ffenv.lm.models import weights_fingerprint
from ffenv.surrogate.records import RECORD_COMMAND, EnvDescription, EvaluationSet, data_path

REWARD_FLOOR = 1e-6
"""The reward a row with reward 0 (a non-finite ppl) is fitted as (in log space)."""
MIN_TRAIN_ROWS = 8
"""Fewest training rows an ensemble is fitted on."""
CACHE_FORMAT = 2
"""Version of the disk cache's layout (the key also hashes this module's source, so a changed fit refits)."""


@dataclass(frozen=True)
class FitSettings:
    """How a surrogate is fitted (part of the on-disk cache key)."""

    members: int = 5
    """MLPs in the ensemble."""
    hidden: int = 64
    """Units per hidden layer."""
    depth: int = 2
    """Hidden layers."""
    steps: int = 4000
    """Most AdamW steps."""
    batch_size: int = 256
    """Rows per step and member (drawn with replacement)."""
    lr: float = 3e-3
    """AdamW's learning rate."""
    weight_decay: float = 1e-4
    """AdamW's decoupled weight decay."""
    eval_every: int = 20
    """Steps between validation losses."""
    patience: int = 400
    """Steps without a member improving on validation before training stops."""
    seed: int = 0
    """Seed of the initialisation and the mini-batches."""

    def __post_init__(self) -> None:
        for name in ("members", "hidden", "depth", "steps", "batch_size", "eval_every", "patience"):
            positive_int(name, getattr(self, name))
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise FFPruneError(f"{name} must be a number >= 0, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise FFPruneError(f"seed must be an integer, got {self.seed!r}")


# ----------------------------------------------------------------------------- the ensemble
def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


class Ensemble:
    """An MLP ensemble in numpy: ``weights[i]`` ``[M, n_in, n_out]``, ``biases[i]`` ``[M, 1, n_out]``, with the input
    and output standardisation it was trained under."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray], x_shift: np.ndarray, x_scale: np.ndarray,
                 y_shift: float, y_scale: float) -> None:
        self.weights, self.biases = weights, biases
        self.x_shift, self.x_scale = x_shift, x_scale
        self.y_shift, self.y_scale = float(y_shift), float(y_scale)

    @property
    def members(self) -> int:
        return len(self.weights[0])

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread (standard deviation over members) of the prediction for ``x`` ``[n, n_in]``."""
        h = (np.atleast_2d(x) - self.x_shift) / self.x_scale
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b  # [n, in] @ [M, in, out] -> [M, n, out]
            if i < last:
                h = _silu(h)
        out = h[..., 0] * self.y_scale + self.y_shift  # [M, n]
        mean = out.mean(0)
        return mean, np.sqrt(((out - mean) ** 2).mean(0))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Its arrays, named ``<prefix>.<what>`` (for the disk cache)."""
        out = {f"{prefix}.w{i}": w for i, w in enumerate(self.weights)}
        out.update({f"{prefix}.b{i}": b for i, b in enumerate(self.biases)})
        out.update({f"{prefix}.x_shift": self.x_shift, f"{prefix}.x_scale": self.x_scale,
                    f"{prefix}.y": np.array([self.y_shift, self.y_scale])})
        return out

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str) -> Ensemble | None:
        """The ensemble :meth:`arrays` wrote (``None`` if there is none under ``prefix``)."""
        if f"{prefix}.w0" not in arrays:
            return None
        n = sum(1 for k in arrays if k.startswith(f"{prefix}.w"))
        y = arrays[f"{prefix}.y"]
        return cls([arrays[f"{prefix}.w{i}"] for i in range(n)], [arrays[f"{prefix}.b{i}"] for i in range(n)],
                   arrays[f"{prefix}.x_shift"], arrays[f"{prefix}.x_scale"], float(y[0]), float(y[1]))


def fit_ensemble(x: np.ndarray, y: np.ndarray, train: np.ndarray, validation: np.ndarray,
                 settings: FitSettings = FitSettings(), seed_offset: int = 0) -> Ensemble:
    """An :class:`Ensemble` fitted on the ``train`` rows of ``(x, y)``, each member early-stopped on the
    ``validation`` rows (none: trained for all ``steps``). Deterministic for ``settings.seed + seed_offset``."""
    s = settings
    xt, yt = x[train].astype(np.float64), y[train].astype(np.float64)
    if len(xt) < MIN_TRAIN_ROWS:
        raise FFPruneError(f"a surrogate needs at least {MIN_TRAIN_ROWS} training rows, the evaluation set has "
                           f"{len(xt)}; record more with `{RECORD_COMMAND}`")
    x_shift = xt.mean(0)
    x_scale = xt.std(0)
    x_scale[x_scale < 1e-8] = 1.0
    y_shift, y_scale = float(yt.mean()), float(yt.std()) or 1.0

    def tensors(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor((x[rows] - x_shift) / x_scale, dtype=torch.float32),
                torch.tensor((y[rows] - y_shift) / y_scale, dtype=torch.float32))

    X, Y = tensors(train)
    Xv, Yv = tensors(validation)
    g = torch.Generator().manual_seed(s.seed + seed_offset)
    sizes = [x.shape[1], *[s.hidden] * s.depth, 1]
    weights, biases = [], []
    for n_in, n_out in zip(sizes, sizes[1:]):  # torch.nn.Linear's default initialisation, per member
        bound = 1.0 / math.sqrt(n_in)
        weights.append(((torch.rand(s.members, n_in, n_out, generator=g) * 2 - 1) * bound).requires_grad_())
        biases.append(((torch.rand(s.members, 1, n_out, generator=g) * 2 - 1) * bound).requires_grad_())
    params = [*weights, *biases]

    def forward(h: torch.Tensor) -> torch.Tensor:
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(weights) - 1:
                h = torch.nn.functional.silu(h)
        return h[..., 0]

    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    n, batch = len(X), min(s.batch_size, len(X))
    best = [p.detach().clone() for p in params]
    best_loss = torch.full((s.members,), math.inf)
    improved_at = 0
    for step in range(1, s.steps + 1):
        idx = torch.randint(n, (s.members, batch), generator=g)
        loss = ((forward(X[idx]) - Y[idx]) ** 2).mean(1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if len(Xv) and (step % s.eval_every == 0 or step == s.steps):
            with torch.no_grad():
                val = ((forward(Xv.expand(s.members, -1, -1)) - Yv) ** 2).mean(1)
                better = val < best_loss
                for kept, p in zip(best, params):
                    kept[better] = p[better]
                best_loss = torch.where(better, val, best_loss)
            if bool(better.any()):
                improved_at = step
            elif step - improved_at >= s.patience:
                break
    final = best if len(Xv) else [p.detach() for p in params]
    arrays = [p.numpy().astype(np.float64) for p in final]
    return Ensemble(arrays[: len(weights)], arrays[len(weights):], x_shift, x_scale, y_shift, y_scale)


# ----------------------------------------------------------------------------- fidelity
@dataclass(frozen=True)
class Fidelity:
    """The reduced-fidelity error ``log reward_w - log reward_W`` per recorded fidelity ``w``: mean ``bias``, standard
    deviation ``spread``, from ``pairs`` allocations measured at both (see the module docstring)."""

    full: int
    windows: np.ndarray
    bias: np.ndarray
    spread: np.ndarray
    pairs: np.ndarray

    def at(self, windows: int) -> tuple[float, float]:
        """``(b_w, s_w)`` at ``windows`` reward windows (``(0, 0)`` at full fidelity)."""
        if windows >= self.full:
            return 0.0, 0.0
        if not len(self.windows):
            raise FFPruneError(f"the surrogate has no reduced-fidelity evaluations (allocations measured on fewer than "
                               f"all {self.full} reward windows and on all of them), so it cannot predict "
                               f"reward_windows={windows}; record some with `{RECORD_COMMAND}` or use full fidelity")
        u = 1.0 / np.asarray(self.windows, np.float64) - 1.0 / self.full  # increasing as windows decrease
        order = np.argsort(u)
        at = 1.0 / windows - 1.0 / self.full
        grid = np.concatenate([[0.0], u[order]])
        return (float(np.interp(at, grid, np.concatenate([[0.0], self.bias[order]]))),
                float(np.interp(at, grid, np.concatenate([[0.0], self.spread[order]]))))


_STANDARD_NORMAL = NormalDist()


def fidelity_noise(layer_sparsity: np.ndarray, target: float, seed: int, windows: int) -> float:
    """The standard normal ``ε`` of a reduced-fidelity reward (module docstring): the inverse normal CDF of a uniform
    taken from a BLAKE2b hash of the allocation (rounded to float16 like the model's inputs; ``-0`` is ``0``), the
    target (float64), the env seed and the reward windows. Deterministic: no generator state, a few microseconds."""
    row = np.ascontiguousarray(np.asarray(layer_sparsity, np.float64).astype(np.float16) + np.float16(0))
    key = row.tobytes() + struct.pack("<dqq", float(target), int(seed), int(windows))
    bits = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 11  # 53 bits
    return _STANDARD_NORMAL.inv_cdf((bits + 0.5) / 2.0 ** 53)


def fit_fidelity(data: EvaluationSet, rows: np.ndarray) -> Fidelity:
    """:class:`Fidelity` from the ``rows`` (a mask) of an evaluation set: every reduced-fidelity row whose allocation
    and seed were also measured at full fidelity gives one difference."""
    a = data.arrays
    full = int(data.meta["reward_windows"])
    log_r = np.log(np.maximum(a["reward"].astype(np.float64), REWARD_FLOOR))
    keys = [a["seed"][i].tobytes() + a["unit_sparsity"][i].tobytes() for i in range(len(data))]
    at_full: dict[bytes, list[float]] = {}
    for i in np.flatnonzero(rows & (a["windows"] == full)):
        at_full.setdefault(keys[i], []).append(log_r[i])
    diffs: dict[int, list[float]] = {}
    for i in np.flatnonzero(rows & (a["windows"] < full)):
        if keys[i] in at_full:
            diffs.setdefault(int(a["windows"][i]), []).append(log_r[i] - float(np.mean(at_full[keys[i]])))
    ws = sorted(diffs)
    return Fidelity(full, np.array(ws, dtype=np.int64), np.array([np.mean(diffs[w]) for w in ws]),
                    np.array([np.std(diffs[w], ddof=1) if len(diffs[w]) > 1 else 0.0 for w in ws]),
                    np.array([len(diffs[w]) for w in ws], dtype=np.int64))


# ----------------------------------------------------------------------------- the surrogate
def model_inputs(layer_sparsity: np.ndarray, target: np.ndarray | float, seed: np.ndarray | int,
                 seeds: list[int]) -> np.ndarray:
    """``[unit_sparsity (rounded to float16), target, one-hot of seed among seeds]`` per allocation: ``[n, D + 1 +
    len(seeds)]`` for ``layer_sparsity`` ``[n, D]`` (or ``[D]``), ``target`` and ``seed`` one per row or one for all."""
    s = np.atleast_2d(np.asarray(layer_sparsity).astype(np.float16).astype(np.float64))
    n = len(s)
    seed = np.broadcast_to(np.asarray(seed, np.int64), (n,))
    onehot = (seed[:, None] == np.array(seeds, np.int64)[None, :]).astype(np.float64)
    return np.concatenate([s, np.broadcast_to(np.asarray(target, np.float64), (n,))[:, None], onehot], axis=1)


class Surrogate:
    """A fitted surrogate of one (model, mode): predicts rewards and held-out perplexities of allocations.

    Attributes:
        fingerprint: the evaluation set's fingerprint (what the surrogate was fitted on).
        description: the recorded environment (:class:`~ffenv.surrogate.records.EnvDescription`).
        reward_model: the ensemble of ``log reward`` at full fidelity.
        eval_model: the ensemble of ``log eval_ppl`` (``None``: no held-out ppl recorded).
        fidelity: the reduced-fidelity error model.
        info: rows used per model, the settings, fit seconds.
    """

    def __init__(self, fingerprint: str, description: EnvDescription, reward_model: Ensemble,
                 eval_model: Ensemble | None, fidelity: Fidelity, info: dict[str, Any]) -> None:
        self.fingerprint = fingerprint
        self.description = description
        self.reward_model, self.eval_model = reward_model, eval_model
        self.fidelity = fidelity
        self.info = info
        self.seeds = description.seeds
        self.n_units = len(description.units)
        self._onehot = {seed: np.eye(len(self.seeds))[i] for i, seed in enumerate(self.seeds)}

    def _row(self, layer_sparsity: np.ndarray, target: float, seed: int) -> np.ndarray:
        """:meth:`inputs` of one allocation, the fast way (a step's path)."""
        onehot = self._onehot.get(seed)
        if onehot is None:
            return self.inputs(layer_sparsity, target, seed)
        x = np.empty((1, self.n_units + 1 + len(onehot)))
        x[0, : self.n_units] = np.asarray(layer_sparsity).astype(np.float16)
        x[0, self.n_units] = target
        x[0, self.n_units + 1:] = onehot
        return x

    def inputs(self, layer_sparsity: np.ndarray, target: np.ndarray | float, seed: np.ndarray | int) -> np.ndarray:
        """The ``[n, D + 1 + n_seeds]`` model inputs of allocations (:func:`model_inputs`); an unrecorded seed is an
        :class:`FFPruneError`."""
        unknown = sorted(set(np.atleast_1d(seed).tolist()) - set(self.seeds))
        if unknown:
            self.description.features(unknown[0])  # the one-line error naming the recorded seeds
        return model_inputs(layer_sparsity, target, seed, self.seeds)

    def predict_reward(self, layer_sparsity: np.ndarray, target: float, seed: int,
                       windows: int | None = None) -> tuple[float, float]:
        """The reward of one allocation on ``windows`` reward windows (default all) and the ensemble spread of its
        log. Fewer windows add the fidelity error ``b_w + s_w · ε`` with ``ε`` = :func:`fidelity_noise` of the
        allocation, target, seed and windows: the same arguments always give the same reward."""
        mean, spread = self.reward_model.predict(self._row(layer_sparsity, target, seed))
        log_r = float(mean[0])
        if windows is not None and windows < self.fidelity.full:
            bias, noise = self.fidelity.at(windows)
            log_r += bias + noise * fidelity_noise(layer_sparsity, target, seed, windows)
        return math.exp(log_r), float(spread[0])

    def predict_eval_ppl(self, layer_sparsity: np.ndarray, target: float, seed: int) -> tuple[float, float]:
        """The held-out perplexity of one allocation and the ensemble spread of its log."""
        if self.eval_model is None:
            raise FFPruneError(f"the surrogate of model={self.description.meta['model']!r} "
                               f"mode={self.description.mode!r} has no held-out perplexities to predict from; record "
                               f"them with `{RECORD_COMMAND}` (held-out evaluations)")
        row = self._row(layer_sparsity, target, seed)
        mean, spread = self.eval_model.predict(with_reward(row, self.reward_model.predict(row)[0]))
        return math.exp(float(mean[0])), float(spread[0])

    def predict_log(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Predicted ``log reward`` (full fidelity) and ``log eval_ppl`` (``None`` without a held-out model) for model
        inputs ``x`` ``[n, n_in]`` (:meth:`inputs`): the batch form of :meth:`predict_reward` and
        :meth:`predict_eval_ppl`."""
        log_reward = self.reward_model.predict(x)[0]
        if self.eval_model is None:
            return log_reward, None
        return log_reward, self.eval_model.predict(with_reward(x, log_reward))[0]

    # ------------------------------------------------------------------ disk cache
    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted state as arrays (the disk cache)."""
        f = self.fidelity
        out = {**self.reward_model.arrays("reward"), **(self.eval_model.arrays("eval") if self.eval_model else {}),
               "fidelity.windows": f.windows, "fidelity.bias": f.bias, "fidelity.spread": f.spread,
               "fidelity.pairs": f.pairs, "info": np.array(json.dumps({**self.info, "fingerprint": self.fingerprint}))}
        return out

    @classmethod
    def from_arrays(cls, arrays: Any, data: EvaluationSet) -> Surrogate:
        """The surrogate :meth:`arrays` wrote for ``data``."""
        info = json.loads(str(arrays["info"][()]))
        if info.pop("fingerprint") != data.fingerprint:
            raise ValueError("cached fit of another evaluation set")
        fidelity = Fidelity(int(data.meta["reward_windows"]), arrays["fidelity.windows"], arrays["fidelity.bias"],
                            arrays["fidelity.spread"], arrays["fidelity.pairs"])
        reward = Ensemble.from_arrays(arrays, "reward")
        if reward is None:
            raise ValueError("cached fit without a reward model")
        return cls(data.fingerprint, data.description, reward, Ensemble.from_arrays(arrays, "eval"), fidelity, info)


def with_reward(x: np.ndarray, log_reward: np.ndarray) -> np.ndarray:
    """The held-out model's inputs: model inputs ``x`` ``[n, n_in]`` with the reward model's predicted log reward
    ``[n]`` as a last column."""
    return np.concatenate([np.atleast_2d(x), np.asarray(log_reward, np.float64).reshape(-1, 1)], axis=1)


def fit(data: EvaluationSet, settings: FitSettings = FitSettings(), exclude: np.ndarray | None = None) -> Surrogate:
    """Fit a surrogate on the train split of ``data`` (validation: early stopping; the test split is not read).

    ``exclude``: a boolean mask of rows the fit must not read either (cross-validation's held-out fold).

    Raises:
        FFPruneError: fewer than :data:`MIN_TRAIN_ROWS` training rows at full fidelity.
    """
    t0 = time.perf_counter()
    a = data.arrays
    desc = data.description
    split = data.split()
    train, val = split["train"], split["validation"]
    if exclude is not None:
        train, val = train & ~exclude, val & ~exclude
    x = model_inputs(a["unit_sparsity"], a["target"], a["seed"], desc.seeds)
    full = a["windows"] == int(data.meta["reward_windows"])
    log_reward = np.log(np.maximum(a["reward"].astype(np.float64), REWARD_FLOOR))
    reward = fit_ensemble(x, log_reward, train & full, val & full, settings, 0)
    measured = data.measured
    eval_model = None
    if (train & measured).sum() >= MIN_TRAIN_ROWS:
        log_eval = np.log(np.where(measured, a["eval_ppl"], 1.0).astype(np.float64))
        eval_model = fit_ensemble(with_reward(x, reward.predict(x)[0]), log_eval, train & measured, val & measured,
                                  settings, 1)
    fidelity = fit_fidelity(data, train | val)
    info = {"rows": {"reward": {"train": int((train & full).sum()), "validation": int((val & full).sum())},
                     "eval_ppl": {"train": int((train & measured).sum()), "validation": int((val & measured).sum())}},
            "settings": dataclasses.asdict(settings), "fit_seconds": round(time.perf_counter() - t0, 3)}
    return Surrogate(data.fingerprint, desc, reward, eval_model, fidelity, info)


_SURROGATES: dict[tuple, Surrogate] = {}


def clear_surrogate_cache() -> None:
    """Forget the surrogates fitted or loaded in this process (the disk cache stays)."""
    _SURROGATES.clear()


def _disk_path(data: EvaluationSet, settings: FitSettings) -> Path:
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    key = json.dumps({"data": data.fingerprint, "settings": dataclasses.asdict(settings), "torch": torch.__version__,
                      "format": CACHE_FORMAT, "code": code}, sort_keys=True)
    name = f"{data.meta['mode']}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
    return cache_dir() / "surrogate" / name


def _fit_cached(data: EvaluationSet, settings: FitSettings) -> Surrogate:
    """The fit of ``data`` from the disk cache, or fitted now and written there (an unwritable cache is skipped)."""
    path = _disk_path(data, settings)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return Surrogate.from_arrays(dict(npz), data)
    except Exception:  # noqa: BLE001 - absent, truncated or stale cache entry: fit again
        pass
    surrogate = fit(data, settings)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **surrogate.arrays())

    try:
        atomic_write(path, write)
    except FFPruneError:  # a read-only cache only costs the next process a fit
        pass
    return surrogate


def load_surrogate(config: EnvConfig, settings: FitSettings = FitSettings()) -> Surrogate:
    """The surrogate of a configuration's (model, mode): its evaluation set (``surrogate_data``, else the bundled
    one), checked against ``config`` (recorded fields, env seed, weights), fitted once per process (disk-cached).

    Raises:
        FFPruneError: no evaluation set, a corrupt one, one recorded with other settings or weights, or for
            other seeds (each names what exists and the command that records more).
    """
    path = data_path(config.model, config.mode, config.surrogate_data)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, settings)
    surrogate = _SURROGATES.get(key)
    if surrogate is None:
        data = EvaluationSet.load(path)
        recorded = (data.meta["model"], data.meta["mode"])
        if recorded != (config.model, config.mode):
            raise FFPruneError(f"surrogate_data {str(path)!r} was recorded for model={recorded[0]!r} "
                               f"mode={recorded[1]!r}, not model={config.model!r} mode={config.mode!r}")
        surrogate = _fit_cached(data, settings)
        _SURROGATES[key] = surrogate
    surrogate.description.check_config(config)
    recorded_weights = surrogate.description.meta["weights_fingerprint"]
    current = weights_fingerprint(config.model)
    if recorded_weights is not None and current is not None and recorded_weights != current:
        raise FFPruneError(f"the surrogate of model={config.model!r} was recorded on other weights ({recorded_weights}, "
                           f"now {current}); record it again with `{RECORD_COMMAND}`")
    return surrogate
