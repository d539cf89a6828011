"""From a search result to a pruned checkpoint: ``ffprune export RESULT.json --out DIR [--calibrate]``.

The result (read through :func:`ffprune.agents.results.read_result`, which accepts the field names of older
results) has its best allocation pruned on the same env (same model, weights fingerprint, target and
settings), written with :func:`ffprune.agents.tools.hf_folder.save_pruned`, loaded back from the written folder and measured
on the held-out split before the folder is put in place: it must give the perplexity that
``env.evaluate(best_action, split="eval", calibrate=...)`` reports (relative 1e-4), or nothing is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffenv.envs.sequential_env import single_step_env
from ffenv.errors import FFPruneError
from ffenv.io import beside, check_new_dir, versions
from ffenv.lm.models import load_pruned, read_export, resolve_dtype, stored_dtype
from ffenv.lm.perplexity import perplexity
from ffprune.agents.results import read_result, result_env
from ffprune.agents.tools.hf_folder import forward_tokens_per_second, layer_widths, matmul_params, save_pruned

#: relative perplexity agreement required between the reloaded export and ``env.evaluate``
RELOAD_RTOL = 1e-4
#: ... when the storage dtype rounds weights (e.g. calibrated float32 weights stored as float16)
LOSSY_RTOL = 1e-2
#: windows of the speed measurement (one batch at the env's ``seq_len``)
SPEED_BATCH = 16
SPEED_REPEATS = 9


def _read_result(path: Path) -> dict[str, Any]:
    """The finished search result at ``path``, with today's field names (:func:`ffprune.agents.results.read_result`)."""
    if not path.exists():
        ckpt = beside(path, ".ckpt")
        if ckpt.exists():
            raise FFPruneError(f"{str(path)!r} does not exist but {str(ckpt)!r} does: the search is unfinished; finish it "
                               "with the same `ffprune search` command and --resume, then export")
        raise FFPruneError(f"result {str(path)!r} does not exist (write one with `ffprune search ... --out {path}`)")
    result = read_result(path, real=True, what="ffprune export (it prunes and measures the real model)")
    if not isinstance(result, dict) or "best" not in result or "env_id" not in result:
        raise FFPruneError(f"{str(path)!r} is not an ffprune search result (no env_id / best)")
    if not result.get("complete"):
        raise FFPruneError(f"{str(path)!r} is an unfinished search; finish it with `ffprune search ... --resume` first")
    return result


def _storage_dtype(model: torch.nn.Module, dtype: str | None, source: torch.dtype) -> tuple[torch.dtype, bool]:
    """The storage dtype and whether it keeps every weight exactly: ``dtype`` if given; else the source
    checkpoint's dtype when it is exact (pruning alone only drops weights), else the dtype the model was
    computed in (Calib's folded weights)."""
    compute = next(model.parameters()).dtype

    def exact(dt: torch.dtype) -> bool:
        return dt == compute or all(torch.equal(p, p.to(dt).to(compute)) for p in model.parameters())

    if dtype is not None:
        chosen = resolve_dtype(dtype, torch.device("cpu"))
        return chosen, exact(chosen)
    return (source, True) if exact(source) else (compute, True)


def export_result(result_path: str | Path, out: str | Path, *, calibrate: bool = False, calib_alpha: float | None = None,
                  force: bool = False, speed: bool = True, dtype: str | None = None) -> dict[str, Any]:
    """Export the best allocation of a finished search as a pruned Hugging Face folder; returns its facts.

    Refused (:class:`ffenv.FFPruneError`, nothing written): a missing or unfinished result, a surrogate result (its
    allocation was chosen on predicted rewards; :mod:`ffenv.surrogate`), a model that cannot
    be loaded, weights that differ from the ones the search ran on (fingerprint), a non-empty ``out``
    without ``force``, ``calibrate`` on an unstructured env, and a reloaded model that does not reproduce
    the env's held-out perplexity (relative ``RELOAD_RTOL``; ``LOSSY_RTOL`` when ``dtype`` rounds weights).
    The result is read with :func:`ffprune.agents.results.read_result` (old field names accepted) and its env
    built with :func:`ffprune.agents.results.result_env`.

    Args:
        calib_alpha: Calib's ridge α when ``calibrate``; ``None``: the result's env config's
            (:data:`ffenv.pruning.calib.CALIB_ALPHA` unless the search set another).
        speed: measure forward tokens/s of the dense and the pruned model
            (:func:`ffprune.agents.tools.hf_folder.forward_tokens_per_second`).
        dtype: storage dtype (default: see :func:`_storage_dtype`).
    """
    result_path = Path(result_path)
    result = _read_result(result_path)
    out = check_new_dir(out, force)
    env = result_env(result)
    try:
        _export(single_step_env(env), result, result_path, out, ExportOptions(calibrate, calib_alpha, force, speed, dtype))
    finally:
        env.close()
    return read_export(out)


@dataclass(frozen=True)
class ExportOptions:
    """:func:`export_result`'s keywords, as one value."""

    calibrate: bool = False
    calib_alpha: float | None = None
    force: bool = False
    speed: bool = True
    dtype: str | None = None


def _export(base: Any, result: dict[str, Any], result_path: Path, out: Path, options: ExportOptions) -> None:
    """:func:`export_result` on the env ``base`` built from the result's settings."""
    calibrate, calib_alpha, force, speed, dtype = (options.calibrate, options.calib_alpha, options.force, options.speed,
                                                  options.dtype)
    fingerprint = base.weights_fingerprint
    if fingerprint != result.get("weights_fingerprint"):
        raise FFPruneError(f"{str(result_path)!r} was searched on other weights of {base.config.model!r} "
                           f"({result.get('weights_fingerprint')}, now {fingerprint}); search again on these weights")
    if calibrate and base.config.mode != "structured":
        raise FFPruneError(f"--calibrate needs a structured env; {result['env_id']} is {base.config.mode}")
    alpha = base.config.calib_alpha if calib_alpha is None else calib_alpha
    action = np.asarray(result["best"]["action"], np.float32)
    expected = base.evaluate(action, split="eval", calibrate=calibrate, calib_alpha=alpha)
    model = base.pruned_model(action, calibrate=calibrate, calib_alpha=alpha)
    compute_dtype = next(model.parameters()).dtype
    storage, lossless = _storage_dtype(model, dtype, stored_dtype(base.config.model) or compute_dtype)
    rtol = RELOAD_RTOL if lossless else LOSSY_RTOL
    storage_bytes = torch.empty((), dtype=storage).element_size()
    tokens = base.windows("eval")  # the windows evaluate() measured
    dense_params = sum(p.numel() for p in base.model.parameters())
    figures: dict[str, Any] = {
        "params": {"dense": dense_params, "pruned": sum(p.numel() for p in model.parameters())},
        "matmul_params": {"dense": matmul_params(base.model), "pruned": matmul_params(model)},
        "weights_bytes": {"dense": dense_params * storage_bytes, "pruned": None},  # pruned: measured on the written file
        "eval_ppl": {"dense": expected["dense_ppl"], "pruned": expected["ppl"]},
    }
    if speed:
        batch = tokens[:SPEED_BATCH]
        dense_tps, pruned_tps = (forward_tokens_per_second(m, batch, repeats=SPEED_REPEATS) for m in (base.model, model))
        figures["tokens_per_s"] = {"dense": round(dense_tps, 1), "pruned": round(pruned_tps, 1)}
        figures["speed_setup"] = (f"one forward of {batch.shape[0]} x {batch.shape[1]} tokens (logits included), "
                                  f"median of {SPEED_REPEATS}, "
                                  f"{base.model.device}, {torch.get_num_threads()} threads, measured at export")
    model.to(storage)  # after the timing, which runs in the compute dtype
    structured = base.config.mode == "structured"
    allocation = {"sparsity": expected["sparsity"], "units": base.unit_names,
                  "unit_sparsity": [float(s) for s in expected["layer_sparsity"]]}
    if structured:
        allocation.update(layers=layer_widths(model), dense_layers=layer_widths(base.model))
    info = {
        "mode": base.config.mode, "base_model": base.config.model, "base_weights_fingerprint": fingerprint,
        "calibrated": calibrate, "calib_alpha": alpha if calibrate else None, "allocation": allocation,
        "action": action.tolist(), "figures": figures, "storage_dtype": str(storage).split(".")[-1],
        "lossless_storage": lossless,
        "search": {"result": str(result_path), "env_id": result["env_id"], "agent": result["agent"], "seed": result["seed"],
                   "budget": result["budget"], "target_sparsity": base.config.target_sparsity,
                   "evaluations": result["cost"]["evaluations"], "best_reward": result["best"]["reward"]},
        "eval_windows": len(tokens), "versions": versions(),
    }

    def check(folder: Path) -> dict[str, Any]:
        reloaded, _tok = load_pruned(folder, device=str(base.model.device), dtype=str(compute_dtype).split(".")[-1])
        ppl = perplexity(reloaded, tokens, base.config.batch_size)
        if not math.isclose(ppl, expected["ppl"], rel_tol=rtol):
            raise FFPruneError(f"the reloaded export gives held-out ppl {ppl:.6f}, the env {expected['ppl']:.6f} "
                               f"(relative tolerance {rtol}, storage {storage}); nothing was written")
        return {"eval_ppl": ppl, "relative_difference": abs(ppl / expected["ppl"] - 1)}

    save_pruned(model, base.tokenizer, out, info, force=force, check=check)

