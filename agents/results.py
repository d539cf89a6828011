"""The one reader of search results and bench cells: the field names of today, whatever a file was written with.

A result (``ffprune search --out``, a bench cell ``<out>/cells/<method>/seed<k>.json.gz``) and a bench folder's
``config.json`` are read with :func:`read_result`, never with a bare ``json.load``: files written before a
field was renamed (:data:`FIELD_RENAMES`; the results committed under ``docs/results/`` are such files and are
never rewritten by hand) come back with the new names, so the code that reads results knows one name per
fact. :func:`migrate_result` is the mapping itself (idempotent), :func:`result_env` an in-process env with a
finished result's settings, for scoring its allocations again.

**Stored results** (the cells of benches, suites, claims, tunes and studies) are written gzip-compressed, compact JSON
(``seed<k>.json.gz``, :func:`ffenv.io.atomic_write_json`) with the history by columns (:func:`pack_history`: format 3;
the reader gives the rows back bit for bit, :func:`unpack_history`); a folder written before holds ``seed<k>.json``
or histories of rows, which are read and resumed as they are (:func:`seed_file`, :func:`seed_files`);
:func:`compact_results` rewrites such a folder in today's storage, checking each file reads back equal.

**A file says what it is.** Every result is written by :func:`write_result` with a ``kind`` (:data:`RESULT_KIND`) and
a ``format`` (:data:`RESULT_FORMAT`) first, its fields declared once (:class:`SearchResult`); a cell folder's settings
manifest carries ``kind`` :data:`FOLDER_KIND`. Files written before kinds were recorded (format 1: every cell committed
until then) are told apart by their fields (:func:`result_kind`); a file of a newer format, or of another kind than the
reader expects, is a one-line :class:`FFPruneError`.

**Surrogate results** (a search on ``gym.make(id, surrogate=True)``, :mod:`ffenv.surrogate`) carry a top-level
``"surrogate": {"fingerprint": ..., "data": ...}`` label (and ``env_kwargs.surrogate: true``); their perplexities are
predictions. Wherever real results are expected (the core suite's cells and reports, ``ffprune claim``, ``amortised``,
``tune``, ``export``) they are read with ``real=True``: a surrogate result is then a one-line :class:`FFPruneError`
(:func:`surrogate_of` tells one apart, :func:`check_real` refuses it, :func:`refuse_surrogate_settings` refuses
``surrogate=True`` among a study's env settings before any work).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import gymnasium as gym
import numpy as np

from ffenv.config import RENAMED_FIELDS
from ffenv.envs.measurement import describe_measurement
from ffenv.errors import FFPruneError
from ffenv.io import COMPRESSED_JSON, atomic_write_json, read_json
from ffenv.vector.ray_workers import WORKER_FIELDS

RESULT_KIND = "ffprune.search-result"
"""The ``kind`` of a search's result: ``ffprune search --out``, a bench, suite, claim, tune or study cell, an allocation."""
FOLDER_KIND = "ffprune.cell-folder"
"""The ``kind`` of a cell folder's settings manifest (``config.json``: :class:`~ffprune.agents.experiments.engine.CellStore`)."""
TUNE_KIND = "ffprune.tune-folder"
"""The ``kind`` of a tune folder's settings (``config.json`` of ``ffprune tune``)."""
KINDS = (RESULT_KIND, FOLDER_KIND, TUNE_KIND)
RESULT_FORMAT = 3
"""The format written today (1: files written before ``kind`` / ``format`` were recorded; 2: a ``kind`` and a
``format``, the history as a list of rows; 3: the history stored by columns, :func:`pack_history`). Every format is
read as it is."""
HEADER = ("kind", "format")
"""The fields :func:`with_header` puts first: what a file is, and in which format."""
FOLDER_FIELDS = {"env_id", "budget", "target", "env_kwargs", "weights_fingerprint", "weights", "surrogate"}
"""The fields of a cell folder's manifest (``weights``: its name before ``weights_fingerprint``)."""
TUNE_FIELDS = {"method", "budget", "env_kwargs", "suite"}
"""The fields of a tune folder's settings."""


class SearchResult(TypedDict, total=False):
    """The fields of a search's result, declared once: the writer (:func:`ffprune.agents.experiments.search.run_search`)
    fills them, :data:`RESULT_KEYS` lists them, and a caller's ``record`` (a suite's ``"variant"``) may add others."""

    kind: str
    format: int
    complete: bool
    """Whether the search finished (an unfinished one is resumed, never read as a result)."""
    surrogate: dict[str, Any]
    """On a surrogate only: ``{"fingerprint", "data"}`` of its evaluation set."""
    env_id: str
    env_kwargs: dict[str, Any]
    weights_fingerprint: str
    unit_names: list[str]
    window_bos: int
    """Where every window starts with the model's BOS (:func:`ffenv.lm.data.window_bos`): its token id (absent: the
    windows are cut from the token stream as they are)."""
    agent: str
    seed: int
    budget: int
    curriculum: bool
    warmup_fraction: float
    warm_start: str | None
    train_targets: list[float]
    curriculum_kwargs: dict[str, Any]
    best: dict[str, Any]
    """The best allocation (``action``, ``layer_sparsity``, ``reward``, ``eval_ppl``, ...) and its scores."""
    best_by_target: dict[str, Any]
    cost: dict[str, Any]
    """Evaluations, tokens and seconds (the three cost axes), and the evaluations to the best."""
    history: list[dict[str, Any]]
    logdir: str | None
    versions: dict[str, str]
    policy_file: str
    agent_config: dict[str, Any]
    agent_stats: dict[str, Any]
    refine: int
    """An allocation's (``ffprune allocate``): refinement episodes (0: zero-shot)."""
    policy: dict[str, Any]
    training_cost: dict[str, Any] | None


RESULT_KEYS = tuple(SearchResult.__annotations__)
"""The top-level keys a result holds on its own (``run_search(extra_keys=)`` may not set them)."""


def result_kind(data: dict[str, Any]) -> str | None:
    """What a stored JSON file is: its ``kind``, or for a file written before kinds were recorded, what its fields say
    (a result has ``best`` and ``env_id``; a cell folder's manifest has ``env_id`` and ``budget`` and nothing but
    :data:`FOLDER_FIELDS`; a tune folder's ``method``, ``budget``, ``env_kwargs`` and nothing but :data:`TUNE_FIELDS`);
    ``None`` for anything else (an analysis, a cache, a learning curve)."""
    if "kind" in data:
        return str(data["kind"])
    if "best" in data and "env_id" in data:
        return RESULT_KIND
    if {"env_id", "budget"} <= set(data) <= FOLDER_FIELDS:
        return FOLDER_KIND
    if {"method", "budget", "env_kwargs"} <= set(data) <= TUNE_FIELDS:
        return TUNE_KIND
    return None


def without_header(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` less its :data:`HEADER` (what two settings records are compared on)."""
    return {k: v for k, v in data.items() if k not in HEADER}


def with_header(data: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """``data`` with its ``kind`` and today's ``format`` first (a header the reader checks)."""
    return {"kind": kind, "format": RESULT_FORMAT, **without_header(data)}


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    """The one writer of results: ``result`` with its header (:func:`with_header`) and its history by columns
    (:func:`pack_history`), atomically (gzip-compressed for a ``.json.gz`` path)."""
    atomic_write_json(path, with_header(_packed(result), RESULT_KIND))


def _packed(result: Mapping[str, Any]) -> dict[str, Any]:
    history = result.get("history")
    return {**result, "history": pack_history(history)} if isinstance(history, list) else dict(result)


def pack_history(rows: list[dict[str, Any]]) -> dict[str, Any] | list[dict[str, Any]]:
    """A search's history (one dict per episode) stored by columns, the way :func:`unpack_history` reads it back equal.

    ``{"rows": n, "columns": {key: [values of the rows that hold key]}}``, keys in the rows' order, plus
    ``"absent": {key: [row indices without it]}`` where some rows lack a key (a warm-up episode's ``action``) and
    ``"float32": [keys]`` for the columns whose every number is a float32 value widened to float64 (an action): those
    are written with float32's shortest decimals (``-0.11111111`` for ``-0.1111111119389534``) and widened again on
    reading. A cell's history is about two thirds of its bytes; by columns it gzips to about 60 %. Lossless by
    construction and checked here: a history the columns would not give back equal (rows whose keys come in different
    orders) is returned as the rows it is, and a column that would not read back equal keeps its float64 text.
    """
    keys: list[str] = []
    for row in rows:
        for key in row:
            if key not in keys:
                keys.append(key)
    columns = {key: [row[key] for row in rows if key in row] for key in keys}
    absent = {key: [i for i, row in enumerate(rows) if key not in row] for key in keys}
    plain: dict[str, Any] = {"rows": len(rows), "columns": columns}
    if any(absent.values()):
        plain["absent"] = {key: idx for key, idx in absent.items() if idx}
    narrow = [key for key, values in columns.items() if _all_float32(values)]
    candidates = [plain]
    if narrow:
        shortened = {key: _shortest32(values) if key in narrow else values for key, values in columns.items()}
        candidates.insert(0, {**plain, "columns": shortened, "float32": narrow})
    want = _canonical(rows)
    return next((packed for packed in candidates if _canonical(unpack_history(packed)) == want), rows)


def unpack_history(packed: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of a history stored by :func:`pack_history` (a list of rows, a format-2 file's, comes back as it is).
    A packed history whose columns do not add up to its rows is an :class:`FFPruneError`."""
    if isinstance(packed, list):
        return packed
    try:
        n, columns = int(packed["rows"]), dict(packed["columns"])
        absent = {key: set(idx) for key, idx in packed.get("absent", {}).items()}
        narrow = set(packed.get("float32", ()))
        values = {key: iter(_widen32(col) if key in narrow else col) for key, col in columns.items()}
        rows = [{key: next(values[key]) for key in columns if i not in absent.get(key, ())} for i in range(n)]
        if any(next(it, _END) is not _END for it in values.values()):
            raise ValueError("more values than rows")
    except (KeyError, TypeError, ValueError, StopIteration) as err:
        raise FFPruneError(f"history: not a packed history ({type(err).__name__}: {err}); the file was edited or "
                           "truncated: rerun its cell") from None
    return rows


_END = object()


def _leaves(values: list[Any]) -> list[Any]:
    return [x for v in values for x in (v if isinstance(v, list) else (v,))]


def _all_float32(values: list[Any]) -> bool:
    leaves = _leaves(values)
    if not leaves or not all(type(x) is float for x in leaves):
        return False
    wide = np.asarray(leaves, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.array_equal(wide.astype(np.float32).astype(np.float64), wide, equal_nan=True))


def _shortest32(values: list[Any]) -> list[Any]:
    def short(x: float) -> float:
        return x if not math.isfinite(x) else float(str(np.float32(x)))
    return [[short(x) for x in v] if isinstance(v, list) else short(v) for v in values]


def _widen32(values: list[Any]) -> list[Any]:
    return [np.asarray(v, dtype=np.float32).astype(np.float64).tolist() if isinstance(v, list)
            else float(np.float32(v)) for v in values]


def check_kind(data: dict[str, Any], name: str, kinds: tuple[str, ...] = KINDS) -> str:
    """The kind of ``data`` (:func:`result_kind`) if a reader of ``kinds`` can read it; a file of a newer format or of
    another kind is a one-line :class:`FFPruneError` naming it."""
    fmt = data.get("format", 1)
    if not isinstance(fmt, int) or fmt > RESULT_FORMAT:
        raise FFPruneError(f"{name} has format {fmt!r}, newer than this ffprune reads ({RESULT_FORMAT}): upgrade ffprune")
    kind = result_kind(data)
    if kind not in kinds:
        raise FFPruneError(f"{name} is {'a ' + kind if kind else 'not a result'} (expected {' or '.join(kinds)})")
    return kind


FIELD_RENAMES: dict[str, str] = {
    "weights": "weights_fingerprint",
    "best.calib_ppl": "best.reward_ppl",
    "best.dense_calib_ppl": "best.dense_reward_ppl",
    "best.eval_ppl_calib": "best.eval_ppl_after_calib",
    **{f"env_kwargs.{old}": f"env_kwargs.{new}" for old, new in RENAMED_FIELDS.items()},
}
"""Old dotted field path -> new one, in a result, a bench cell or a bench folder's ``config.json``:
``weights`` held a fingerprint, ``best.calib_ppl`` the ppl on the reward (``calib``) split *before* Calib,
``best.eval_ppl_calib`` the held-out ppl *after* Calib, ``env_kwargs.reward_samples`` the reward's window count."""


def _unit_names(mode: str, units: int) -> list[str]:
    """``attn.b`` / ``ffn.b`` per block (structured, two units per block) or ``block.b`` (unstructured), in
    action order, as :attr:`ffenv.envs.prune_env.FFPruneEnv.unit_names` names them."""
    if mode == "structured":
        return [f"{kind}.{b}" for b in range(units // 2) for kind in ("attn", "ffn")]
    return [f"block.{b}" for b in range(units)]


def migrate_result(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the field names of today (a new dict; the argument is left as it is).

    Applies :data:`FIELD_RENAMES`, gives a history stored by columns (format 3) back as rows (:func:`unpack_history`),
    and gives a finished result written before results recorded their unit names a ``unit_names`` list (from
    ``env_kwargs.mode`` and the number of units of ``best.layer_sparsity``).
    Idempotent: a migrated result comes back equal. A file holding both an old and a new name with different
    values is an :class:`FFPruneError`.
    """
    if not isinstance(result, dict):
        raise FFPruneError(f"result must be a JSON object (a dict), got {type(result).__name__}")
    out = dict(result)
    if isinstance(out.get("history"), dict):
        out["history"] = unpack_history(out["history"])
    for section in {old.split(".")[0] for old in FIELD_RENAMES if "." in old}:
        if isinstance(out.get(section), dict):
            out[section] = dict(out[section])  # copied before renaming inside it
    for old, new in FIELD_RENAMES.items():
        *parent, old_key = old.split(".")
        new_key = new.split(".")[-1]
        holder = out.get(parent[0]) if parent else out
        if not isinstance(holder, dict) or old_key not in holder:
            continue
        value = holder.pop(old_key)
        if new_key in holder and holder[new_key] != value:
            raise FFPruneError(f"result holds both {old!r} ({value!r}) and its new name {new!r} ({holder[new_key]!r}); "
                               "it was edited by hand: keep one")
        holder[new_key] = value
    best, env_kwargs = out.get("best"), out.get("env_kwargs")
    if "unit_names" not in out and isinstance(best, dict) and "layer_sparsity" in best and isinstance(env_kwargs, dict):
        out["unit_names"] = _unit_names(env_kwargs.get("mode", "structured"), len(best["layer_sparsity"]))
    return out


SURROGATE_HINT = "`ffprune search --surrogate` and `ffprune bench --suite core --surrogate` keep surrogate results apart"


def surrogate_of(result: dict[str, Any]) -> dict[str, Any] | None:
    """The surrogate label of a result, a bench folder's ``config.json`` or a suite analysis (``{"fingerprint": ...,
    "data": ...}``), or ``None`` for a real one. A result whose ``env_kwargs`` say ``surrogate: true`` is a surrogate
    result even without the label (``{"fingerprint": None, "data": None}``)."""
    label = result.get("surrogate") if isinstance(result, dict) else None
    if isinstance(label, dict):
        return label
    env_kwargs = result.get("env_kwargs") if isinstance(result, dict) else None
    if label or (isinstance(env_kwargs, dict) and env_kwargs.get("surrogate")):
        return {"fingerprint": None, "data": None}
    return None


def same_surrogate(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two surrogate labels (:func:`surrogate_of`; ``None``: real) name the same env: both real, or both the
    surrogate fitted on the same evaluation set."""
    return (a is None) == (b is None) and (a or {}).get("fingerprint") == (b or {}).get("fingerprint")


def describe_surrogate(label: dict[str, Any] | None) -> str:
    """A label in words: ``"the real env"`` or ``"the surrogate fitted on sha256:…"``
    (:func:`ffenv.envs.measurement.describe_measurement` of its fingerprint; ``"a surrogate"`` without one)."""
    if label is not None and not label.get("fingerprint"):
        return "a surrogate"
    return describe_measurement(None if label is None else str(label["fingerprint"]))


def check_real(result: dict[str, Any], name: str = "result", what: str = "this reader") -> dict[str, Any]:
    """``result`` itself if it is a real one; a surrogate result (:func:`surrogate_of`) is a one-line
    :class:`FFPruneError` naming ``name`` (the file) and ``what`` expects real results."""
    label = surrogate_of(result)
    if label is not None:
        fitted = f", surrogate {str(label['fingerprint'])[:19]}" if label.get("fingerprint") else ""
        raise FFPruneError(f"{name} is a surrogate result (predicted, not measured{fitted}): {what} expects real "
                           f"results; {SURROGATE_HINT}")
    return result


def refuse_surrogate_settings(env_kwargs: dict[str, Any] | None, what: str) -> None:
    """A one-line :class:`FFPruneError` when ``env_kwargs`` ask for a surrogate env: ``what`` (a study over the real
    suite's results) runs and reads real searches only."""
    if (env_kwargs or {}).get("surrogate"):
        raise FFPruneError(f"{what} runs and reads real searches only (its results sit beside the real core suite's): "
                           f"surrogate=True is refused; {SURROGATE_HINT}")


def read_result(result: str | Path | dict[str, Any], *, real: bool = False, what: str = "this reader") -> dict[str, Any]:
    """The one reader: a result file or a cell folder's manifest (or one already parsed) with the field names of today
    (:func:`migrate_result`), its kind checked (:func:`check_kind`).

    A missing file, one that is not JSON, one of a newer format and one that is neither a result nor a manifest are
    each an :class:`FFPruneError` naming it. With ``real=True`` a surrogate result is one too (:func:`check_real`;
    ``what`` names the reader that expects real results).
    """
    name = "result" if isinstance(result, dict) else str(result)
    done = migrate_result(result if isinstance(result, dict) else read_json(result, "result"))
    check_kind(done, name)
    if real:
        check_real(done, name, what)
    return done


def read_result_if_any(path: str | Path, *, real: bool = False, what: str = "this reader") -> dict[str, Any] | None:
    """:func:`read_result` of ``path``, or ``None`` when there is no such file yet (a cell not run)."""
    return read_result(path, real=real, what=what) if Path(path).exists() else None


def result_env(result: dict[str, Any]) -> gym.Env:
    """An in-process env with a finished search's settings (``env_id`` + ``env_kwargs``), for scoring its
    allocations again: the population workers (:data:`~ffenv.vector.ray_workers.WORKER_FIELDS`) are left out."""
    result = migrate_result(result)
    kwargs = {k: v for k, v in result["env_kwargs"].items() if k not in WORKER_FIELDS}
    return gym.make(result["env_id"], **kwargs)


SEED_FILE = re.compile(r"^seed(\d+)\.json(\.gz)?$")
"""The name of a stored result of one seed: ``seed<k>.json.gz`` (or an older folder's ``seed<k>.json``)."""


def seed_file(folder: str | Path, seed: int) -> Path:
    """Where the result of ``seed`` is stored in ``folder``: ``seed<k>.json.gz``, or ``seed<k>.json`` where an older
    folder holds one (read and resumed as it is)."""
    legacy = Path(folder) / f"seed{seed}.json"
    return legacy if legacy.exists() else Path(folder) / f"seed{seed}{COMPRESSED_JSON}"


def seed_files(folder: str | Path) -> list[tuple[int, Path]]:
    """The stored results in ``folder`` as (seed, path), by seed (:func:`seed_file`'s choice where both exist)."""
    folder = Path(folder)
    seeds = sorted({int(m.group(1)) for p in folder.glob("seed*") if (m := SEED_FILE.match(p.name))})
    return [(seed, seed_file(folder, seed)) for seed in seeds]


def compact_results(root: str | Path) -> tuple[int, int, int]:
    """Rewrite every stored result under ``root`` in today's storage: a ``seed<k>.json`` as ``seed<k>.json.gz``, and a
    result whose history is a list of rows (format 1 or 2) with its history by columns (:func:`pack_history`, format
    3); (files rewritten, bytes before, bytes after). Each new file is read back with :func:`read_result` and compared
    with the old one's reading (NaN included) before the old one goes; a file that reads back different is an
    :class:`FFPruneError` and is kept. Files already in today's storage are left as they are (a second call rewrites
    nothing)."""
    files, before, after = 0, 0, 0
    for path in sorted(Path(root).rglob("seed*.json*")):
        if not SEED_FILE.match(path.name):
            continue
        data = read_json(path, "result")
        is_result = isinstance(data, dict) and result_kind(data) == RESULT_KIND
        if path.name.endswith(COMPRESSED_JSON) and not (is_result and isinstance(data.get("history"), list)):
            continue
        target = path if path.name.endswith(COMPRESSED_JSON) else path.with_name(path.name + ".gz")
        size = path.stat().st_size
        old = without_header(read_result(data, what="compact_results")) if is_result else data
        fresh = target.with_name(f".compacting-{target.name}")  # same ending: written the same way
        if is_result:
            write_result(fresh, data)
        else:
            atomic_write_json(fresh, data)
        new = without_header(read_result(fresh)) if is_result else read_json(fresh, "result")
        if _canonical(new) != _canonical(old):  # NaN != NaN: compare the texts
            fresh.unlink()
            raise FFPruneError(f"{str(path)!r} does not read back equal once compacted; left as it is")
        fresh.replace(target)
        if target != path:
            path.unlink()
        files, before, after = files + 1, before + size, after + target.stat().st_size
    return files, before, after


def _canonical(data: Any) -> str:
    return json.dumps(data)
