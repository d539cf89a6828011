"""Layer-wise allocators: uniform, OWL, AlphaPruning, FLAP, DLP and ATP's arithmetic progression.

Pure functions of precomputed statistics. Uniform, OWL and AlphaPruning return per-block sparsities
whose parameter-weighted mean is exactly the target, so they go through
:meth:`ffenv.envs.prune_env.FFPruneEnv.action_from_sparsities` and the env's projector unchanged while they stay
within the env's keep bounds (beyond them, :func:`ffprune.baselines.heuristics.within_keep_bounds` clips them and
lets the env's projector re-balance, as for any action); FLAP returns
per-unit sparsities within half a granule of the target (the projector then meets it exactly).

* **OWL** — Outlier-Weighted Layerwise sparsity (Yin et al., ICML 2024). ``D_l``: the share of block
  ``l``'s Wanda scores above ``M`` × their mean (``M = 5``). Min-max normalise ``D`` to ``[0, 2λ]``
  (``λ = 0.08``); keep ratio ``k_l = 1 - σ + (r_l - r̄)`` with ``r̄`` the size-weighted mean of the
  normalised ``r``; sparsity ``s_l = 1 - k_l``. More outliers → less pruning.
* **AlphaPruning** (Lu et al., NeurIPS 2024). ``α`` of a weight matrix: the power-law exponent of the
  eigenvalue spectrum of ``WᵀW``, by the Hill estimator over the top half of the spectrum
  (``xmin`` = the median eigenvalue): ``α = 1 + k / Σ_{i<k} ln(λ_i / λ_k)``. A block's ``α`` is the mean
  over its matrices; ``s_l = σ · (1 - ε + 2ε (α_l - α_min)/(α_max - α_min))`` (``ε = 0.3``), then rescaled
  so that the size-weighted mean is ``σ``. Heavier tail (smaller ``α``) → less pruning.
* **FLAP** (An et al., AAAI 2024), structured. A channel ``j`` of an output projection's input scores
  its *fluctuation* ``S_j = Var(X_j) · ‖W_{:,j}‖²₂`` (variance over calibration tokens); a head
  (KV group) scores the sum over its channels. Scores are standardised per unit kind across all
  layers, ``z = (S − mean) / std``, and ranked globally: granules are removed lowest ``z`` first
  until the removed parameters reach the target (FLAP's adaptive structure search). FLAP's bias
  compensation is not part of the allocation (ffprune's post-pruning calibration plays that role).
* **DLP** — Dynamic Layerwise Pruning (Chen et al., ICML 2025, arXiv 2505.23807). A block's
  *unimportance* ``U_l`` is the median of the Wanda scores ``|W_ij|·‖X_j‖₂`` of all its linears; its
  importance ``I_l = 1 - U_l / Σ_k U_k``; ``I`` is min-max normalised to ``[0, 2α]`` (``α = 0.15``) and
  ``k_l = 1 - σ + (r_l - r̄)`` as for OWL. A larger median score → more pruning.
* **ATP** (Huang et al., ICML 2025, arXiv 2502.14770, Eq. 10). Sparsity rises along depth as an
  arithmetic progression ``s_l = σ + β (l - c)`` (``l = 0..L-1``); ``c`` is the size-weighted mean layer
  index, ``(L-1)/2`` for blocks of equal size, which is the paper's ``s_i = S - β(L-1)/2 + β(i-1)``. Its one
  parameter, the common difference ``β``, is searched on the reward (:func:`ffprune.baselines.search.atp_search`).
"""

from __future__ import annotations

import numpy as np
import torch

from ffenv.errors import FFPruneError


def _check(target: float, sizes: np.ndarray, values: np.ndarray, name: str) -> None:
    if not 0.0 < target < 1.0:
        raise FFPruneError(f"target must be in (0, 1), got {target}")
    if values.shape != sizes.shape or values.ndim != 1:
        raise FFPruneError(f"{name} and sizes must be 1-D of the same length, got {values.shape} and {sizes.shape}")
    if not np.all(np.isfinite(values)):
        raise FFPruneError(f"{name} must be finite")
    if not np.all(sizes > 0):
        raise FFPruneError("sizes must be positive")


def uniform_sparsities(target: float, n: int) -> np.ndarray:
    """The same sparsity everywhere."""
    if not 0.0 < target < 1.0:
        raise FFPruneError(f"target must be in (0, 1), got {target}")
    return np.full(n, float(target))


def owl_sparsities(outlier_ratios: np.ndarray, target: float, sizes: np.ndarray | None = None,
                   lam: float = 0.08) -> np.ndarray:
    """OWL per-block sparsities from per-block outlier ratios (see module doc)."""
    d = np.asarray(outlier_ratios, np.float64)
    sizes = np.ones_like(d) if sizes is None else np.asarray(sizes, np.float64)
    _check(target, sizes, d, "outlier_ratios")
    if lam < 0:
        raise FFPruneError(f"lam must be >= 0, got {lam}")
    spread = d.max() - d.min()
    r = np.zeros_like(d) if spread == 0 else (d - d.min()) / spread * (2 * lam)
    keep = (1.0 - target) + r - (r @ sizes) / sizes.sum()
    s = 1.0 - keep
    if np.any(s < 0) or np.any(s > 1):
        raise FFPruneError(f"lam={lam} is too large for target={target}: sparsities leave [0, 1]")
    return s


def hill_alpha(weight: torch.Tensor) -> float:
    """Power-law exponent of the eigenvalue spectrum of ``WᵀW`` (Hill estimator, xmin = median eigenvalue)."""
    eig = torch.linalg.svdvals(weight.detach().double()).pow(2).sort(descending=True).values
    k = max(2, len(eig) // 2)
    tail = eig[:k]
    logs = torch.log(tail / tail[-1])
    denom = float(logs[:-1].sum())
    return float("inf") if denom <= 0 else 1.0 + (k - 1) / denom


def alphapruning_sparsities(alphas: np.ndarray, target: float, sizes: np.ndarray | None = None,
                            eps: float = 0.3) -> np.ndarray:
    """AlphaPruning per-block sparsities from per-block mean α (see module doc)."""
    a = np.asarray(alphas, np.float64)
    sizes = np.ones_like(a) if sizes is None else np.asarray(sizes, np.float64)
    _check(target, sizes, a, "alphas")
    if not 0.0 <= eps < 1.0:
        raise FFPruneError(f"eps must be in [0, 1), got {eps}")
    unit = _alpha_unit(a)
    s = target * (1.0 - eps + 2.0 * eps * unit)
    s *= target * sizes.sum() / (s @ sizes)
    if np.any(s > 1):
        raise FFPruneError(f"eps={eps} is too large for target={target}: a sparsity exceeds 1 "
                           f"(the largest that fits is {alphapruning_max_eps(a, target, sizes):.4g})")
    return s


def _alpha_unit(a: np.ndarray) -> np.ndarray:
    spread = a.max() - a.min()
    return np.full_like(a, 0.5) if spread == 0 else (a - a.min()) / spread


def alphapruning_max_eps(alphas: np.ndarray, target: float, sizes: np.ndarray | None = None) -> float:
    """The largest ``eps`` for which :func:`alphapruning_sparsities` keeps every sparsity <= 1 (``inf``: any).

    After the rescale to the target the heaviest-pruned block gets ``target·(1+ε) / (1-ε+2ε·m)`` with ``m`` the
    size-weighted mean of the min-max normalised α, so ``ε <= (1-target) / (1+target-2m)``.
    """
    a = np.asarray(alphas, np.float64)
    sizes = np.ones_like(a) if sizes is None else np.asarray(sizes, np.float64)
    _check(target, sizes, a, "alphas")
    m = float(_alpha_unit(a) @ sizes / sizes.sum())
    denom = 1.0 + target - 2.0 * m
    return float("inf") if denom <= 0 else float((1.0 - target) / denom)


def flap_sparsities(scores: list[np.ndarray], kinds: list[str], granule_params: np.ndarray, target: float,
                    min_keep: float = 0.0) -> np.ndarray:
    """FLAP per-unit sparsities from per-granule fluctuation scores (see module doc).

    Args:
        scores: per unit, the fluctuation score of each granule (head group or neuron).
        kinds: per unit, its kind (``"attn"`` / ``"ffn"``); scores are standardised within a kind.
        granule_params: per unit, the parameters one granule carries.
        target: share of all parameters to remove, in ``(0, 1)``.
        min_keep: no unit keeps fewer than ``ceil(min_keep · count)`` granules.

    Walking the granules by ascending ``z``, one is removed when that brings the removed total closer to
    the target (strictly) and its unit stays above ``min_keep``; the result is within half of the
    largest granule of the target unless ``min_keep`` blocks it.
    """
    if not 0.0 < target < 1.0:
        raise FFPruneError(f"target must be in (0, 1), got {target}")
    if not 0.0 <= min_keep <= 1.0:
        raise FFPruneError(f"min_keep must be in [0, 1], got {min_keep}")
    gran = np.asarray(granule_params, np.float64)
    if not (len(scores) == len(kinds) == len(gran)):
        raise FFPruneError(f"scores, kinds and granule_params need one entry per unit, got "
                           f"{len(scores)}, {len(kinds)}, {len(gran)}")
    scores = [np.asarray(x, np.float64) for x in scores]
    if any(x.ndim != 1 or len(x) == 0 or not np.all(np.isfinite(x)) for x in scores):
        raise FFPruneError("scores must be non-empty, finite 1-D arrays")
    z = [np.empty(0)] * len(scores)
    for kind in sorted(set(kinds)):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        pooled = np.concatenate([scores[i] for i in idx])
        mean, std = pooled.mean(), pooled.std()
        for i in idx:
            z[i] = np.zeros_like(scores[i]) if std == 0 else (scores[i] - mean) / std
    counts = np.array([len(x) for x in scores])
    floor_kept = np.ceil(min_keep * counts - 1e-9).astype(np.int64)
    unit_of = np.concatenate([np.full(c, i) for i, c in enumerate(counts)])
    order = np.lexsort((np.arange(len(unit_of)), np.concatenate(z)))  # ascending z, ties by position
    goal = target * float(counts @ gran)
    removed_params, removed = 0.0, np.zeros(len(counts), np.int64)
    for g in order:
        i = unit_of[g]
        if removed_params + gran[i] / 2 < goal and counts[i] - removed[i] > floor_kept[i]:
            removed[i] += 1
            removed_params += gran[i]
    return removed / counts


def dlp_sparsities(unimportance: np.ndarray, target: float, sizes: np.ndarray | None = None,
                   alpha: float = 0.15) -> np.ndarray:
    """DLP per-block sparsities from per-block unimportance (the median Wanda score of each block).

    Formula (Chen et al., ICML 2025; the authors' code, ``ironartisan/DLP``, ``get_dlp_ratios``):
    ``I_l = 1 - U_l / Σ_k U_k``; ``r_l = 2α (I_l - min I) / (max I - min I)`` (all ``0`` when every ``I`` is
    equal: the uniform allocation); keep ratio ``k_l = 1 - σ + r_l - r̄``; sparsity ``s_l = 1 - k_l``. Since
    ``I`` is affine in ``U``, the block with the largest median score gets ``σ + 2α - r̄`` and the smallest
    ``σ - r̄``: a spread of exactly ``2α``.

    Choices the paper leaves open: ``r̄`` is the *size-weighted* mean of ``r`` (the authors' code takes the
    plain mean over blocks of equal size), so ``Σ s_l·size_l = σ·Σ size_l`` exactly with blocks of any size;
    a sparsity outside ``[0, 1]`` is an error naming ``alpha`` (the authors' code clamps a negative one to
    0.01); ``α = 0.15`` is the value of the authors' examples (they set it per model and target).

    Args:
        unimportance: per block, ``U_l >= 0`` (the median of its Wanda scores), not all zero.
        target: the parameter-weighted mean sparsity ``σ``, in ``(0, 1)``.
        sizes: per block, its prunable parameters (default: all equal).
        alpha: half the spread of the sparsities, ``>= 0``.
    """
    u = np.asarray(unimportance, np.float64)
    sizes = np.ones_like(u) if sizes is None else np.asarray(sizes, np.float64)
    _check(target, sizes, u, "unimportance")
    if np.any(u < 0) or u.sum() <= 0:
        raise FFPruneError(f"unimportance must be >= 0 and not all 0 (medians of |W|·‖X‖), "
                           f"got range [{u.min():.6g}, {u.max():.6g}]")
    if not np.isfinite(alpha) or alpha < 0:
        raise FFPruneError(f"alpha must be a finite number >= 0, got {alpha}")
    importance = 1.0 - u / u.sum()
    spread = importance.max() - importance.min()
    r = np.zeros_like(u) if spread == 0 else (importance - importance.min()) / spread * (2 * alpha)
    keep = (1.0 - target) + r - (r @ sizes) / sizes.sum()
    s = 1.0 - keep
    if np.any(s < 0) or np.any(s > 1):
        raise FFPruneError(f"alpha={alpha} is too large for target={target}: sparsities leave [0, 1] "
                           f"(range [{s.min():.6g}, {s.max():.6g}])")
    return s


def _depth_centre(sizes: np.ndarray) -> float:
    """The size-weighted mean block index: ``(L-1)/2`` when every block has the same size."""
    return float(np.arange(len(sizes)) @ sizes / sizes.sum())


def _check_atp(target: float, sizes: np.ndarray) -> np.ndarray:
    if not 0.0 < target < 1.0:
        raise FFPruneError(f"target must be in (0, 1), got {target}")
    sizes = np.asarray(sizes, np.float64)
    if sizes.ndim != 1 or not np.all(np.isfinite(sizes)) or not np.all(sizes > 0):
        raise FFPruneError(f"sizes must be a 1-D array of positive parameter counts, got shape {sizes.shape}")
    if len(sizes) < 2:
        raise FFPruneError(f"ATP needs at least 2 blocks for a progression over depth, got {len(sizes)}")
    return sizes


def atp_sparsities(target: float, sizes: np.ndarray, beta: float) -> np.ndarray:
    """ATP per-block sparsities: the arithmetic progression ``s_l = σ + β (l - c)``, ``l = 0..L-1``.

    Formula (Huang et al., ICML 2025, Eq. 10): ``s_i = S - β(L-1)/2 + β(i-1)`` for ``i = 1..L``, with ``S`` the
    mean sparsity — the mean over blocks, which the paper's equal-sized blocks make the parameter-weighted
    mean. Choice for blocks of different sizes (e.g. a model pruned and exported before): the centre ``c`` is
    the size-weighted mean block index ``Σ l·size_l / Σ size_l`` instead of ``(L-1)/2``, so that
    ``Σ s_l·size_l = σ·Σ size_l`` exactly and every step is still ``β``; with equal sizes it is Eq. 10.

    Args:
        target: the parameter-weighted mean sparsity ``σ``, in ``(0, 1)``.
        sizes: per block (in depth order), its prunable parameters; at least 2 blocks.
        beta: the common difference, ``>= 0`` (``0``: uniform); at most :func:`atp_max_beta` for ``[0, 1]``.
    """
    sizes = _check_atp(target, sizes)
    if not np.isfinite(beta) or beta < 0:
        raise FFPruneError(f"beta must be a finite number >= 0 (a progression increasing with depth), got {beta}")
    s = target + beta * (np.arange(len(sizes)) - _depth_centre(sizes))
    if np.any(s < -1e-12) or np.any(s > 1 + 1e-12):
        raise FFPruneError(f"beta={beta} is too large for target={target}: sparsities leave [0, 1] "
                           f"(the largest that fits is {atp_max_beta(target, sizes):.6g})")
    return np.clip(s, 0.0, 1.0)  # only float rounding at the largest beta is clipped here


def atp_max_beta(target: float, sizes: np.ndarray, min_keep: float = 0.0, max_keep: float = 1.0) -> float:
    """The largest common difference whose progression keeps every keep ratio in ``[min_keep, max_keep]``.

    The first block (sparsity ``σ - β c``) must keep at most ``max_keep`` and the last (``σ + β (L-1-c)``) at
    least ``min_keep``: ``β <= min((σ - (1 - max_keep)) / c, ((1 - min_keep) - σ) / (L-1-c))``. With the whole
    range (``[0, 1]``) and equal sizes this is the paper's ``min(2S/(L-1), 2(1-S)/(L-1))`` (Sec. 3.4).
    """
    sizes = _check_atp(target, sizes)
    if not 0.0 <= min_keep <= max_keep <= 1.0:
        raise FFPruneError(f"min_keep and max_keep must satisfy 0 <= min_keep <= max_keep <= 1, got {min_keep}, {max_keep}")
    c, last = _depth_centre(sizes), len(sizes) - 1
    return float(max(0.0, min((target - (1.0 - max_keep)) / c, ((1.0 - min_keep) - target) / (last - c))))


def atp_betas(beta_max: float, trials: int) -> np.ndarray:
    """ATP's grid of common differences: ``trials`` evenly spaced values ``k·β_max/trials``, ``k = 1..trials``.

    The paper grids ``(0, β_max]`` with a step of 0.002 (9 trials for LLaMA-3-8B at 70 %, 3 for 70B models);
    a fixed step would cost many more trials on models with few layers (a wider range), so the number of
    trials is fixed instead and the step follows from it. ``β = 0`` (uniform) is not a trial, as in the paper.
    """
    if not np.isfinite(beta_max) or beta_max <= 0:
        raise FFPruneError(f"beta_max must be a finite number > 0, got {beta_max}")
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
        raise FFPruneError(f"trials must be a positive integer, got {trials!r}")
    return beta_max * np.arange(1, trials + 1) / trials
