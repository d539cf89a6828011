"""The decoupled budget projector: any raw action → keep ratios that meet the budget exactly.

FastForward Pruning separates *what the policy wants* from *what the budget allows*. The policy emits
a raw score per unit; this module, not the policy, turns it into keep ratios ``k`` with

* ``min_keep <= k_i <= max_keep`` for every unit, and
* ``Σ k_i · size_i = (1 - target_sparsity) · Σ size_i`` (to float precision).

Steps (following the authors' description):

1. **Map and clip.** ``k⁰_i = clip(min_keep + (max_keep - min_keep) · (raw_i + 1) / 2, min_keep, max_keep)``:
   the action space ``[-1, 1]`` spans the whole allowed range; larger raw means *keep more*.
2. **Redistribute.** The parameter deficit (or excess) ``Δ = (1 - σ)·Σ size - Σ k⁰·size`` is shared in
   proportion to each unit's headroom × parameter count: with ``Δ > 0``,
   ``k_i = k⁰_i + α (max_keep - k⁰_i)`` where ``α = Δ / Σ (max_keep - k⁰_j) size_j``; with ``Δ < 0``,
   ``k_i = k⁰_i - α (k⁰_i - min_keep)`` likewise. ``0 <= α <= 1`` whenever the target is feasible, so one
   step is exact and the bounds hold.

The result is deterministic and monotone: raising ``raw_i`` never lowers ``k_i`` and never raises any
other ``k_j``. A constant action gives the uniform allocation. Rounding to whole heads / neurons is the
pruning engine's job (:func:`round_to_units`).
"""

from __future__ import annotations

import numpy as np

from ffenv.errors import FFPruneError


def check_budget(target_sparsity: float, min_keep: float, max_keep: float) -> None:
    """Raise ``ValueError`` unless ``0 < target < 1``, ``0 <= min_keep <= max_keep <= 1`` and the target is feasible."""
    for name, value in (("target_sparsity", target_sparsity), ("min_keep", min_keep), ("max_keep", max_keep)):
        if not isinstance(value, (int, float, np.floating, np.integer)) or not np.isfinite(value):
            raise FFPruneError(f"{name} must be a finite number, got {value!r}")
    if not 0.0 < target_sparsity < 1.0:
        raise FFPruneError(f"target_sparsity must be in the open interval (0, 1), got {target_sparsity}")
    if not 0.0 <= min_keep <= 1.0 or not 0.0 <= max_keep <= 1.0:
        raise FFPruneError(f"min_keep and max_keep must be in [0, 1], got min_keep={min_keep}, max_keep={max_keep}")
    if min_keep > max_keep:
        raise FFPruneError(f"min_keep ({min_keep}) must not exceed max_keep ({max_keep})")
    keep = 1.0 - target_sparsity
    if not min_keep - 1e-12 <= keep <= max_keep + 1e-12:
        raise FFPruneError(
            f"target_sparsity={target_sparsity} is infeasible for min_keep={min_keep}, max_keep={max_keep}: "
            f"it must lie in [{1.0 - max_keep:.6g}, {1.0 - min_keep:.6g}]"
        )


def raw_to_keep(raw: np.ndarray, min_keep: float, max_keep: float) -> np.ndarray:
    """Step 1: map raw scores (``[-1, 1]`` spans the range) to keep ratios, clipped to the bounds."""
    return np.clip(min_keep + (max_keep - min_keep) * (np.asarray(raw, np.float64) + 1.0) / 2.0, min_keep, max_keep)


def keep_to_raw(keep: np.ndarray, min_keep: float, max_keep: float) -> np.ndarray:
    """Inverse of :func:`raw_to_keep` on ``[min_keep, max_keep]`` (for allocators that think in ratios)."""
    keep = np.asarray(keep, np.float64)
    if max_keep == min_keep:
        return np.zeros_like(keep)
    return 2.0 * (keep - min_keep) / (max_keep - min_keep) - 1.0


def project_budget(
    raw: np.ndarray,
    target_sparsity: float,
    sizes: np.ndarray,
    min_keep: float = 0.1,
    max_keep: float = 1.0,
) -> np.ndarray:
    """Keep ratios within ``[min_keep, max_keep]`` whose size-weighted sum meets the target exactly.

    Args:
        raw: one real score per unit (finite); larger means keep more. ``[-1, 1]`` spans the range.
        target_sparsity: fraction of the total prunable parameters to remove, in ``(0, 1)``.
        sizes: prunable parameter count of each unit (positive).
        min_keep: lower bound on every unit's keep ratio.
        max_keep: upper bound on every unit's keep ratio.

    Returns:
        ``float64`` keep ratios, same shape as ``raw``.

    Raises:
        FFPruneError: shape mismatch, non-finite ``raw``, non-positive sizes, or an infeasible target.
    """
    check_budget(target_sparsity, min_keep, max_keep)
    raw = np.asarray(raw, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    if raw.ndim != 1 or raw.shape != sizes.shape:
        raise FFPruneError(f"raw must be a 1-D vector shaped like sizes {sizes.shape}, got {raw.shape}")
    if not np.all(np.isfinite(raw)):
        raise FFPruneError("raw must be finite (no NaN or inf entries)")
    if not np.all(sizes > 0):
        raise FFPruneError("sizes must all be positive parameter counts")
    keep0 = raw_to_keep(raw, min_keep, max_keep)
    total = sizes.sum()
    deficit = (1.0 - target_sparsity) * total - float(keep0 @ sizes)
    room = (max_keep - keep0) if deficit > 0 else (keep0 - min_keep)
    capacity = float(room @ sizes)
    keep = keep0
    if deficit != 0 and capacity > 0:  # capacity is 0 only when every unit already sits on the bound
        alpha = min(abs(deficit) / capacity, 1.0)
        keep = keep0 + np.sign(deficit) * alpha * room
    return np.clip(keep, min_keep, max_keep)
