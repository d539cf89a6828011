"""The static per-unit features of the observation, computed once from the dense model.

The observation of :class:`~ffenv.envs.prune_env.FFPruneEnv` is ``[target_sparsity, features of unit 0,
features of unit 1, ...]`` with the :data:`UNIT_FEATURES` of every unit, each in ``[0, 1]``. They are
family-neutral (shares and ratios, no absolute sizes), so a policy can read any model's units.
"""

from __future__ import annotations

import numpy as np
import torch

from ffenv.lm.models import Block
from ffenv.pruning.engines import Pruner, StructuredPruner
from ffenv.pruning.importance import block_column_importance, block_outlier_ratio

UNIT_FEATURES = (
    "depth",            # block index / (L - 1)
    "kind",             # 0 attention, 1 FFN, 0.5 whole block (unstructured)
    "size_share",       # unit parameters / largest unit's parameters
    "importance",       # mean unit importance / largest among units of the same kind
    "importance_spread",  # coefficient of variation c of granule importances, as c / (1 + c)
    "outlier_ratio",    # OWL: share of the block's Wanda scores above 5 × their mean
)
KIND_CODES = {"attn": 0.0, "ffn": 1.0, "block": 0.5}


def unit_features(pruner: Pruner, blocks: list[Block], norms: dict[tuple[int, str], torch.Tensor]) -> np.ndarray:
    """``[n_units, len(UNIT_FEATURES)]`` float32 features in ``[0, 1]`` (see :data:`UNIT_FEATURES`).

    Importance is the engine's own granule importance in structured mode (KV groups, neurons) and the mean
    Wanda score of every input column of the block's linears in unstructured mode
    (:func:`~ffenv.pruning.importance.block_column_importance`).
    """
    units = pruner.units
    outliers = [block_outlier_ratio(b, norms) for b in blocks]
    max_size = max(u.size for u in units)
    if isinstance(pruner, StructuredPruner):
        imps = [imp.double() for imp in pruner.importance]
    else:
        imps = [block_column_importance(b, norms) for b in blocks]
    means = np.array([float(i.mean()) for i in imps])
    kinds = np.array([u.kind for u in units])
    feats = np.zeros((len(units), len(UNIT_FEATURES)), dtype=np.float64)
    for j, (u, imp) in enumerate(zip(units, imps)):
        same = means[kinds == u.kind]
        cv = float(imp.std() / imp.mean()) if imp.numel() > 1 and float(imp.mean()) > 0 else 0.0
        feats[j] = [
            u.block / max(len(blocks) - 1, 1),
            KIND_CODES[u.kind],
            u.size / max_size,
            means[j] / same.max() if same.max() > 0 else 0.0,
            cv / (1.0 + cv),
            outliers[u.block],
        ]
    return np.clip(feats, 0.0, 1.0).astype(np.float32)
