"""Post-pruning calibration (the paper's "Calib"): ridge compensation of removed channels, no training.

After structured pruning, the input ``x`` of each output projection (``o_proj``/``out_proj`` over head
channels, ``down_proj``/``fc2`` over FFN neurons) splits into kept channels ``K`` and removed channels
``R``; the removed part ``W_R x_R`` is lost. Calib predicts the removed channels from the kept ones by
ridge regression without intercept over the calibration tokens,

    B = argmin_B ‖X_R − X_K B‖²_F + α‖B‖²_F = (X_Kᵀ X_K + α I)⁻¹ X_Kᵀ X_R        (α = 0.9 by default),

and folds it into the projection: ``W_K ← W_K + W_R Bᵀ`` (the removed columns stay zero). It runs
layer by layer, in forward order: each module's Gram matrix ``XᵀX`` is collected on the model whose
earlier modules are already pruned *and* compensated, with the forward pass stopped right after the
module's input is seen. Only Gram matrices are kept (``in × in`` per module), never activations.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ffenv.errors import FFPruneError
from ffenv.models import Block


class _Seen(Exception):
    """Raised by the hook once the module's input is recorded: the rest of the forward is not needed."""


@torch.inference_mode()
def input_gram(model: nn.Module, linear: nn.Linear, tokens: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """``XᵀX`` (float64, ``[in, in]``) of ``linear``'s input over ``tokens``; forwards stop at ``linear``."""
    gram = torch.zeros(linear.in_features, linear.in_features, dtype=torch.float64, device=linear.weight.device)

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().double().reshape(-1, linear.in_features)
        gram.addmm_(x.T, x)
        raise _Seen

    handle = linear.register_forward_pre_hook(hook)
    device = next(model.parameters()).device
    try:
        for i in range(0, tokens.shape[0], batch_size):
            try:
                model(input_ids=tokens[i : i + batch_size].to(device), use_cache=False)
            except _Seen:
                pass
    finally:
        handle.remove()
    return gram


def ridge_fold(linear: nn.Linear, kept: torch.Tensor, gram: torch.Tensor, alpha: float, dense: torch.Tensor) -> None:
    """Set ``linear``'s kept columns to ``W_K + W_R Bᵀ`` (``W`` = the ``dense`` weight), in place.

    ``B`` are the ridge coefficients from the input Gram matrix; the removed columns are left as they are.
    """
    n = linear.in_features
    mask = torch.ones(n, dtype=torch.bool, device=gram.device)
    mask[kept.to(gram.device)] = False
    removed = torch.nonzero(mask).flatten()
    kept = kept.to(gram.device)
    if len(removed) == 0 or len(kept) == 0:
        return
    g_kk = gram.index_select(0, kept).index_select(1, kept)
    g_kr = gram.index_select(0, kept).index_select(1, removed)
    g_kk.diagonal().add_(alpha)
    b = torch.linalg.solve(g_kk, g_kr)  # [k, r]
    w = dense.detach().double()
    delta = w.index_select(1, removed.to(w.device)) @ b.T.to(w.device)  # [out, k]
    with torch.no_grad():
        new_kept = w.index_select(1, kept.to(w.device)) + delta
        linear.weight.index_copy_(1, kept.to(w.device), new_kept.to(linear.weight.dtype))


@contextmanager
def ridge_compensation(model: nn.Module, blocks: list[Block], kept_columns: list[tuple[torch.Tensor, torch.Tensor]],
                       dense: list[tuple[torch.Tensor, torch.Tensor]], tokens: torch.Tensor, alpha: float = 0.9,
                       batch_size: int = 8) -> Iterator[None]:
    """Compensate an (already pruned) model inside a ``with`` block; the weights are put back on exit.

    Args:
        model: the pruned model (pruned channels' output-projection columns zeroed).
        blocks: its decoder blocks.
        kept_columns: per block, the kept input columns of ``attn_out`` and of ``ffn_out``.
        dense: per block, the dense (unpruned) weights of ``attn_out`` and ``ffn_out``.
        tokens: calibration windows ``[N, T]`` (16–32 sequences in the paper).
        alpha: ridge penalty (``> 0``).
    """
    if not alpha > 0:
        raise FFPruneError(f"alpha must be > 0, got {alpha}")
    if len(kept_columns) != len(blocks) or len(dense) != len(blocks):
        raise FFPruneError(f"kept_columns and dense need one entry per block ({len(blocks)}), "
                         f"got {len(kept_columns)} and {len(dense)}")
    saved = [(lin, lin.weight.detach().clone()) for b in blocks for lin in (b.attn_out, b.ffn_out)]
    try:
        for block, (attn_cols, ffn_cols), (attn_w, ffn_w) in zip(blocks, kept_columns, dense):
            for lin, cols, w in ((block.attn_out, attn_cols, attn_w), (block.ffn_out, ffn_cols, ffn_w)):
                if len(cols) < lin.in_features:
                    ridge_fold(lin, cols, input_gram(model, lin, tokens, batch_size), alpha, w)
        yield
    finally:
        with torch.no_grad():
            for lin, weight in saved:
                lin.weight.copy_(weight)
