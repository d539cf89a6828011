"""The one reader of search results and bench cells: the field names of today, whatever a file was written with.

A result (``ffprune search --out``, a bench cell ``<out>/cells/<method>/seed<k>.json``) and a bench folder's
``config.json`` are read with :func:`read_result`, never with a bare ``json.load``: files written before a
field was renamed (:data:`FIELD_RENAMES`; the results committed under ``docs/results/`` are such files and are
never rewritten by hand) come back with the new names, so the code that reads results knows one name per
fact. :func:`migrate_result` is the mapping itself (idempotent), :func:`result_env` an in-process env with a
finished result's settings, for scoring its allocations again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym

from ffenv.config import RENAMED_FIELDS
from ffenv.errors import FFPruneError
from ffenv.io import read_json
from ffenv.vector.ray_workers import WORKER_FIELDS

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

    Applies :data:`FIELD_RENAMES`, and gives a finished result written before results recorded their unit
    names a ``unit_names`` list (from ``env_kwargs.mode`` and the number of units of ``best.layer_sparsity``).
    Idempotent: a migrated result comes back equal. A file holding both an old and a new name with different
    values is an :class:`FFPruneError`.
    """
    if not isinstance(result, dict):
        raise FFPruneError(f"result must be a JSON object (a dict), got {type(result).__name__}")
    out = dict(result)
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


def read_result(result: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A result file (or an already-parsed result) with the field names of today (:func:`migrate_result`).

    A missing file or one that is not JSON is an :class:`FFPruneError` naming it.
    """
    if isinstance(result, dict):
        return migrate_result(result)
    return migrate_result(read_json(result, "result"))


def read_result_if_any(path: str | Path) -> dict[str, Any] | None:
    """:func:`read_result` of ``path``, or ``None`` when there is no such file yet (a cell not run)."""
    return read_result(path) if Path(path).exists() else None


def result_env(result: dict[str, Any]) -> gym.Env:
    """An in-process env with a finished search's settings (``env_id`` + ``env_kwargs``), for scoring its
    allocations again: the population workers (:data:`~ffenv.vector.ray_workers.WORKER_FIELDS`) are left out."""
    result = migrate_result(result)
    kwargs = {k: v for k, v in result["env_kwargs"].items() if k not in WORKER_FIELDS}
    return gym.make(result["env_id"], **kwargs)
