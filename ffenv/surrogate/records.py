"""Evaluation sets: the recorded evaluations of one (model, mode) a surrogate is fitted on.

An :class:`EvaluationSet` is one compressed ``.npz`` (``ffenv/surrogate/data/<model>-<mode>.npz`` when bundled,
see :func:`data_path`) with one row per evaluation:

============== ============ =========================================================================
array          dtype, shape what it holds
============== ============ =========================================================================
unit_sparsity  float16 [N,D] the realised per-unit sparsity (``info["layer_sparsity"]``: projected, rounded)
target         float32 [N]   the target sparsity of the evaluation
seed           int16 [N]     the env seed (``EnvConfig.seed``: the calibration windows, so the instance)
windows        int16 [N]     the reward windows it was measured on (the full count or fewer: a fidelity)
reward         float32 [N]   ``dense_ppl / ppl`` on those windows (0 when the ppl was not finite)
ppl            float32 [N]   the reward-split perplexity
eval_ppl       float32 [N]   the held-out (``eval`` split) perplexity, NaN where not measured
source         int16 [N]     index into ``meta["sources"]`` (``"suite:fastforward"``, ``"random:0.3"``, ...)
============== ============ =========================================================================

plus ``meta``, a JSON string: the format version, what the evaluations depend on (model, mode, corpus,
``seq_len``, ``calib_samples``, ``reward_windows``, reward kind, weights fingerprint), the units (names, granule
counts and sizes; linear shapes in unstructured mode), per env seed the observation's unit features and the
dense perplexities (reward split at every fidelity, held-out split), the sources, the ffprune version, and
``fingerprint``: SHA-256 over the arrays (names, dtypes, shapes, bytes) and the rest of ``meta``, checked on load.
What :class:`EnvDescription` reads from ``meta`` is enough to build the environment's spaces, observations and
allocation rounding without loading the model.

Rows are split by allocation, never by row order: :func:`split_of` hashes the float16 bytes of a row's
``unit_sparsity`` into train / validation / test (≈ 70 / 15 / 15 %), so a repeated allocation always lands in
the same split. :func:`record` measures allocations through an environment's public API
(:meth:`~ffenv.envs.prune_env.FFPruneEnv.score_many`, :meth:`~ffenv.envs.prune_env.FFPruneEnv.evaluate`)::

    rows = record(env, actions, targets=0.3, held_out=True, source="random:0.3")
    data = EvaluationSet.load(path) if path.exists() else EvaluationSet.from_rows(rows)  # or data.append(rows)
    data.save(path)                                                                     # atomic
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ffenv.config import EnvConfig
from ffenv.errors import FFPruneError, positive_int
from ffenv.io import atomic_write, versions
from ffenv.pruning.engines import Unit, round_to_units, unstructured_kept_params

FORMAT = 1
"""Version of the file layout (bumped when it changes; an other version is refused on load)."""
STORED_REWARD_SPLIT = "calib"
"""The key an evaluation set stores the reward split's dense ppls under (the split's name when format 1 was fixed)."""
ARRAYS: dict[str, np.dtype] = {
    "unit_sparsity": np.dtype(np.float16), "target": np.dtype(np.float32), "seed": np.dtype(np.int16),
    "windows": np.dtype(np.int16), "reward": np.dtype(np.float32), "ppl": np.dtype(np.float32),
    "eval_ppl": np.dtype(np.float32), "source": np.dtype(np.int16)}
"""The arrays of an evaluation set and their dtypes (one row per evaluation)."""
SPLITS = ("train", "validation", "test")
SPLIT_PERMILLE = (700, 850)
"""A row whose allocation hashes to ``h mod 1000`` is train below 700, validation below 850, test above."""
DATA_DIR = Path(__file__).resolve().parent / "data"
"""The bundled evaluation sets (package data)."""
RECORD_COMMAND = "ffprune surrogate record"
"""The command that records (more of) an evaluation set."""
COMMON_FIELDS = ("model", "mode", "corpus", "seq_len", "calib_samples", "reward_windows", "reward", "calib_alpha",
                 "criterion", "weights_fingerprint", "unit_names", "units", "linear_shapes", "eval")
"""The ``meta`` fields every row of a set shares (appending rows of an env that differs in one is refused)."""
CONFIG_FIELDS = ("corpus", "seq_len", "calib_samples", "reward_windows", "reward")
"""The :class:`~ffenv.config.EnvConfig` fields a surrogate env must share with its evaluation set."""


# ----------------------------------------------------------------------------- where the data lives
def data_name(model: str, mode: str) -> str:
    """The file name of a (model, mode)'s evaluation set: ``tiny-llama-structured.npz`` (other characters than
    letters, digits, ``.``, ``_`` and ``-`` in a hub id or a path become ``--``)."""
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '--', model).strip('-')}-{mode}.npz"


def available(folder: str | Path = DATA_DIR) -> list[str]:
    """The evaluation sets (file names) in a folder, sorted (``[]`` when it does not exist)."""
    folder = Path(folder)
    return sorted(p.name for p in folder.glob("*.npz")) if folder.is_dir() else []


def data_path(model: str, mode: str, data: str | Path | None = None) -> Path:
    """The evaluation set of a (model, mode): ``data`` if it is a file, ``data/<name>`` if it is a folder, else the
    bundled one. A missing one is an :class:`FFPruneError` naming what exists and the command that records it."""
    folder = DATA_DIR if data is None else Path(data)
    if data is not None and not folder.is_dir():
        if folder.is_file():
            return folder
        raise FFPruneError(f"surrogate_data={str(data)!r} does not exist; give an .npz evaluation set or a folder "
                           f"of them (record one with `{RECORD_COMMAND}`)")
    path = folder / data_name(model, mode)
    if not path.is_file():
        where = "ffenv/surrogate/data/" if data is None else str(folder)
        raise FFPruneError(f"no surrogate evaluation set for model={model!r} mode={mode!r}: {where} holds "
                           f"{available(folder) or 'none'}; record it with `{RECORD_COMMAND}` (or pass "
                           "surrogate_data=PATH)")
    return path


# ----------------------------------------------------------------------------- the split
def _allocation_hashes(unit_sparsity: np.ndarray, person: bytes = b"") -> np.ndarray:
    """A 64-bit hash of each allocation's float16 bytes (``[N, D]`` or one ``[D]``; -0.0 and 0.0 are one allocation),
    keyed by ``person`` (another key, independent hashes)."""
    rows = np.ascontiguousarray(np.atleast_2d(np.asarray(unit_sparsity, np.float16)) + np.float16(0))
    return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8, person=person).digest(), "little")
                     for r in rows], dtype=np.uint64)


def split_of(unit_sparsity: np.ndarray) -> np.ndarray | str:
    """The split (``"train"``, ``"validation"``, ``"test"``) of each allocation: a hash of its float16 bytes.

    A 1-D allocation gives one name, a ``[N, D]`` array ``N`` names. The same allocation always lands in the
    same split, whatever else the row holds and wherever it is in the file.
    """
    codes = (_allocation_hashes(unit_sparsity) % np.uint64(1000)).astype(np.int64)
    names = np.array(SPLITS)[np.searchsorted(SPLIT_PERMILLE, codes, side="right")]
    return str(names[0]) if np.ndim(unit_sparsity) == 1 else names


def fold_of(unit_sparsity: np.ndarray, folds: int) -> np.ndarray:
    """The cross-validation fold ``0..folds-1`` of each allocation of ``[N, D]`` ``unit_sparsity``: like
    :func:`split_of` a hash of its float16 bytes (another one, independent of the split), so the same allocation is
    always in the same fold."""
    folds = positive_int("folds", folds)
    return (_allocation_hashes(unit_sparsity, b"ffprune-fold") % np.uint64(folds)).astype(np.int64)


# ----------------------------------------------------------------------------- the env without its model
class EnvDescription:
    """What an environment is made of that never changes between steps, as an evaluation set recorded it.

    Units, features per env seed and dense perplexities, and the allocation rounding of the pruning engine
    (:meth:`to_unit_sparsity`, :meth:`kept_params`, :meth:`granules_kept`: the same functions the engines use), so
    a surrogate env has the real env's spaces, observations and ``info["layer_sparsity"]`` without the model.
    """

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.mode: str = meta["mode"]
        self.units = [Unit(int(b), str(k), int(c), int(g)) for b, k, c, g in meta["units"]]
        self._counts = np.array([u.count for u in self.units], dtype=np.float64)
        self._granule_params = np.array([u.granule_params for u in self.units], dtype=np.float64)
        self._shapes = [[(int(i), int(o)) for i, o in block] for block in meta.get("linear_shapes") or []]
        self._features: dict[int, np.ndarray] = {}

    @property
    def seeds(self) -> list[int]:
        """The env seeds with recorded evaluations."""
        return sorted(int(s) for s in self.meta["seeds"])

    def _seed(self, seed: int) -> dict[str, Any]:
        entry = self.meta["seeds"].get(str(int(seed)))
        if entry is None:
            raise FFPruneError(f"the surrogate of model={self.meta['model']!r} mode={self.mode!r} has no evaluations "
                               f"for seed={seed} (recorded seeds: {self.seeds}); record them with `{RECORD_COMMAND}`")
        return entry

    def features(self, seed: int) -> np.ndarray:
        """The observation's ``[n_units, n_features]`` unit features of an env seed (float32, as the env computed)."""
        if seed not in self._features:
            self._features[seed] = np.array(self._seed(seed)["features"], dtype=np.float32)
        return self._features[seed]

    def dense_ppl(self, seed: int, split: str, windows: int | None = None) -> float:
        """The dense model's perplexity of an env seed: on the first ``windows`` reward windows (``split="reward"``)
        or on the held-out windows the set measured (``split="eval"``)."""
        dense = self._seed(seed)["dense_ppl"]
        return float(dense["eval"] if split == "eval" else dense[STORED_REWARD_SPLIT][int(windows) - 1])

    def to_unit_sparsity(self, keep: np.ndarray, target_keep_params: float) -> np.ndarray:
        """The per-unit sparsity the engine realises for projected keep ratios (whole granules in structured mode)."""
        if self.mode == "structured":
            return 1.0 - round_to_units(keep, self.units, target_keep_params) / self._counts
        return np.clip(1.0 - np.asarray(keep, np.float64), 0.0, 1.0)

    def granules_kept(self, unit_sparsity: np.ndarray) -> np.ndarray:
        """Whole granules kept per unit (structured mode)."""
        return np.rint((1.0 - np.asarray(unit_sparsity, np.float64)) * self._counts).astype(np.int64)

    def kept_params(self, unit_sparsity: np.ndarray) -> np.ndarray:
        """Parameters kept per unit (exact, as the engine counts them)."""
        if self.mode == "structured":
            return self.granules_kept(unit_sparsity) * self._granule_params
        return unstructured_kept_params(unit_sparsity, self._shapes)

    def check_config(self, config: EnvConfig) -> None:
        """:class:`FFPruneError` unless ``config`` asks for what was recorded (the :data:`CONFIG_FIELDS`, Calib's
        penalty with the calibrated reward, the criterion in unstructured mode, and its seed)."""
        fields = [*CONFIG_FIELDS, *(("calib_alpha",) if config.reward == "calibrated" else ()),
                  *(("criterion",) if config.mode == "unstructured" else ())]
        for name in fields:
            if getattr(config, name) != self.meta[name]:
                raise FFPruneError(f"the surrogate of model={config.model!r} mode={config.mode!r} was recorded with "
                                   f"{name}={self.meta[name]!r}, not {getattr(config, name)!r}: use {name}="
                                   f"{self.meta[name]!r} or record a set with `{RECORD_COMMAND}`")
        self._seed(config.seed)


def describe(env: Any) -> dict[str, Any]:
    """The ``meta`` an environment's evaluations are recorded under (its public API only; see the module docstring).

    Measures the dense perplexity at every fidelity ``1..reward_windows`` once per process (the backend caches it).
    """
    config: EnvConfig = env.config
    batch = config.batch_size
    calibrated = config.reward == "calibrated"
    full = config.reward_windows
    eval_windows = env.windows("eval")
    split_windows = len(env.backend.split_tokens("eval", None))
    seed_entry = {"features": np.asarray(env.features, np.float32).tolist(),
                  "dense_ppl": {STORED_REWARD_SPLIT: [env.backend.dense_ppl("reward", w, batch) for w in range(1, full + 1)],
                                "eval": env.backend.dense_ppl("eval", len(eval_windows), batch)}}
    return {
        "format": FORMAT, "model": config.model, "mode": config.mode, "corpus": config.corpus,
        "seq_len": config.seq_len, "calib_samples": config.calib_samples, "reward_windows": full,
        "reward": config.reward, "calib_alpha": config.calib_alpha if calibrated else None,
        "criterion": config.criterion if config.mode == "unstructured" else None,
        "weights_fingerprint": env.weights_fingerprint, "unit_names": env.unit_names,
        **({"window_bos": env.measurement.window_bos} if env.measurement.window_bos is not None else {}),
        "units": [[u.block, u.kind, u.count, u.granule_params] for u in env.units],
        "linear_shapes": ([[[lin.in_features, lin.out_features] for lin in b.linears.values()] for b in env.blocks]
                          if config.mode == "unstructured" else None),
        "eval": {"windows": len(eval_windows), "split_windows": split_windows, "calibrated": calibrated},
        "seeds": {str(config.seed): seed_entry}, "sources": [], "ffprune_version": versions()["ffprune"]}


# ----------------------------------------------------------------------------- rows and sets
@dataclass
class Rows:
    """Evaluations of one environment, not yet in a set: the :data:`ARRAYS` (``source`` indexes ``sources``) and the
    env's :func:`describe` ``meta``."""

    arrays: dict[str, np.ndarray]
    sources: list[str]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.arrays["reward"])


def record(env: Any, actions: np.ndarray, targets: float | Sequence[float] | None = None, *,
           windows: int | Sequence[int] | None = None, held_out: bool = False, source: str = "manual") -> Rows:
    """Measure allocations on a real environment and return them as :class:`Rows`.

    Args:
        env: an ``FFPrune-*`` single-step env (possibly wrapped; not in surrogate mode).
        actions: ``[n, n_units]`` raw actions, projected and rounded like a step.
        targets: one target sparsity for all, one per action, or ``None`` (the env's configured target).
        windows: reward windows of each evaluation (one for all or one per action; ``None``: all of them).
        held_out: also measure the held-out ppl (:meth:`~ffenv.envs.prune_env.FFPruneEnv.evaluate`, calibrated
            when the env's reward is; ≈ 6 reward evaluations each); else ``eval_ppl`` is NaN.
        source: the label of these rows (``"random:0.3"``, ``"heuristic:owl"``, ``"suite:fastforward"``, ...).

    The evaluations count in the env's ``cost`` as search steps do (population steps run on its workers, if any).
    """
    base = env.unwrapped
    if not hasattr(base, "score_many") or not hasattr(base, "config"):
        raise FFPruneError(f"record needs a single-step FFPrune env, got {type(base).__name__}")
    if base.config.surrogate:
        raise FFPruneError("record measures real evaluations: build the env without surrogate=True")
    if not isinstance(source, str) or not source:
        raise FFPruneError(f"source must be a non-empty label such as 'random:0.3', got {source!r}")
    actions = np.asarray(actions, np.float32)
    if actions.ndim != 2 or actions.shape[1] != base.n_units or len(actions) == 0:
        raise FFPruneError(f"actions must be shaped (n >= 1, {base.n_units}), got {actions.shape}")
    n = len(actions)
    targets = _per_row("targets", base.config.target_sparsity if targets is None else targets, n, float)
    windows = _per_row("windows", base.config.reward_windows if windows is None else windows, n, int)
    results = base.score_many(actions, targets, windows)
    calibrate = base.config.reward == "calibrated"
    eval_ppl = [base.evaluate(a, target_sparsity=t, calibrate=calibrate)["ppl"] if held_out else np.nan
                for a, t in zip(actions, targets)]
    arrays = {"unit_sparsity": np.stack([info["layer_sparsity"] for _, info in results]),
              "target": np.array(targets), "seed": np.full(n, base.config.seed), "windows": np.array(windows),
              "reward": np.array([r for r, _ in results]), "ppl": np.array([info["ppl"] for _, info in results]),
              "eval_ppl": np.array(eval_ppl, dtype=np.float64), "source": np.zeros(n)}
    return Rows({k: v.astype(ARRAYS[k]) for k, v in arrays.items()}, [source], describe(base))


def _per_row(name: str, value: Any, n: int, kind: type) -> list:
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * n
    if len(values) != n:
        raise FFPruneError(f"{name} must be one value or one per action ({n}), got {len(values)}")
    return [kind(v) for v in values]


class EvaluationSet:
    """The recorded evaluations of one (model, mode) (see the module docstring for the layout).

    Build one with :meth:`from_rows`, grow it with :meth:`append`, write it with :meth:`save` (atomic) and read it
    with :meth:`load` (fingerprint checked). :attr:`description` is the env it was recorded on, without the model.
    """

    def __init__(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        missing = sorted(set(ARRAYS) - set(arrays))
        if missing:
            raise FFPruneError(f"an evaluation set needs the arrays {list(ARRAYS)}; {missing} missing")
        self.arrays = {k: np.ascontiguousarray(np.asarray(arrays[k]).astype(dtype, copy=False))
                       for k, dtype in ARRAYS.items()}
        n = len(self.arrays["reward"])
        d = len(meta["units"])
        bad = [k for k, a in self.arrays.items() if a.shape != ((n, d) if k == "unit_sparsity" else (n,))]
        if bad:
            raise FFPruneError(f"evaluation set arrays {bad} are not shaped for {n} rows of {d} units")
        self.meta = meta
        self._description: EnvDescription | None = None

    def __len__(self) -> int:
        return len(self.arrays["reward"])

    @property
    def description(self) -> EnvDescription:
        """The environment the rows were recorded on, without its model."""
        if self._description is None:
            self._description = EnvDescription(self.meta)
        return self._description

    @property
    def sources(self) -> list[str]:
        """The source labels ``arrays["source"]`` indexes."""
        return list(self.meta["sources"])

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the arrays (names, dtypes, shapes, bytes) and the rest of ``meta``: the set's identity."""
        digest = hashlib.sha256()
        for name in ARRAYS:
            a = self.arrays[name]
            digest.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            digest.update(a.tobytes())
        digest.update(json.dumps({k: v for k, v in self.meta.items() if k != "fingerprint"}, sort_keys=True).encode())
        return "sha256:" + digest.hexdigest()

    @property
    def measured(self) -> np.ndarray:
        """Boolean mask of the rows with a held-out ppl (finite and positive; the others record none)."""
        ppl = self.arrays["eval_ppl"]
        return np.isfinite(ppl) & (ppl > 0)

    def split(self) -> dict[str, np.ndarray]:
        """Boolean masks ``{"train", "validation", "test"}`` over the rows, by allocation (:func:`split_of`)."""
        names = split_of(self.arrays["unit_sparsity"]) if len(self) else np.array([], dtype=str)
        return {name: names == name for name in SPLITS}

    @classmethod
    def from_rows(cls, rows: Rows) -> EvaluationSet:
        """A new set holding ``rows``."""
        meta = {**rows.meta, "sources": list(rows.sources)}
        return cls(meta, rows.arrays)

    def append(self, rows: Rows) -> None:
        """Add the rows of an env that agrees with the set on every :data:`COMMON_FIELDS` (a new env seed adds its
        features and dense perplexities; a known one must match them)."""
        differ = [k for k in COMMON_FIELDS if _canonical(rows.meta.get(k)) != _canonical(self.meta.get(k))]
        if differ:
            raise FFPruneError(f"these rows were recorded on another env than the set ({', '.join(differ)} differ: "
                               f"{[rows.meta.get(k) for k in differ]} vs {[self.meta.get(k) for k in differ]})")
        seeds = dict(self.meta["seeds"])
        for seed, entry in rows.meta["seeds"].items():
            if seed in seeds and _canonical(seeds[seed]) != _canonical(entry):
                raise FFPruneError(f"the env of seed {seed} has other features or dense perplexities than the set "
                                   "recorded (other weights, corpus or code?): record a new set")
            seeds[seed] = entry
        sources = list(self.meta["sources"])
        sources += [s for s in dict.fromkeys(rows.sources) if s not in sources]
        remap = np.array([sources.index(s) for s in rows.sources], dtype=np.int64)
        arrays = {k: np.concatenate([self.arrays[k], remap[rows.arrays[k].astype(np.int64)] if k == "source"
                                     else rows.arrays[k]]) for k in ARRAYS}
        self.meta = {**self.meta, "seeds": seeds, "sources": sources, "ffprune_version": rows.meta["ffprune_version"]}
        self.arrays = {k: a.astype(ARRAYS[k]) for k, a in arrays.items()}
        self._description = None

    def save(self, path: str | Path) -> Path:
        """Write the set to ``path`` (``.npz``, compressed) atomically, with its fingerprint in ``meta``."""
        meta = {**self.meta, "fingerprint": self.fingerprint}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, meta=np.array(json.dumps(meta, sort_keys=True)), **self.arrays)

        out = atomic_write(path, write)
        self.meta = meta
        return out

    @classmethod
    def load(cls, path: str | Path) -> EvaluationSet:
        """Read a set written by :meth:`save`; a missing, corrupt or altered file is a one-line :class:`FFPruneError`."""
        path = Path(path)
        fix = f"delete it and record it again with `{RECORD_COMMAND}`"
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"][()]))
                arrays = {k: npz[k] for k in ARRAYS}
        except FileNotFoundError as err:
            raise FFPruneError(f"surrogate evaluation set {str(path)!r} does not exist") from err
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise FFPruneError(f"surrogate evaluation set {str(path)!r} is corrupt or not an evaluation set "
                               f"({type(err).__name__}); {fix}") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise FFPruneError(f"surrogate evaluation set {str(path)!r} has format {found!r}, this ffprune reads "
                               f"format {FORMAT}; {fix}")
        try:
            out = cls(meta, arrays)
        except (KeyError, TypeError) as err:  # a meta without the fields the arrays are checked against
            raise FFPruneError(f"surrogate evaluation set {str(path)!r} has an incomplete meta ({type(err).__name__}: "
                               f"{err}); {fix}") from err
        if meta.get("fingerprint") != out.fingerprint:
            raise FFPruneError(f"surrogate evaluation set {str(path)!r} does not match its fingerprint (altered or "
                               f"damaged); {fix}")
        return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
