"""Perplexity: the one evaluation routine every part of ffprune uses.

A window of ``T`` tokens predicts ``T - 1`` of them (the first has no context). Perplexity is
``exp(Σ NLL / Σ predicted tokens)`` over all windows: the exact token-weighted mean, not a mean of
per-window means and not normalised by ``T`` instead of ``T - 1``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ffenv.errors import FFPruneError


@torch.inference_mode()
def nll_sum(model: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 16) -> tuple[float, int]:
    """Summed next-token negative log-likelihood and the number of predicted tokens.

    Args:
        model: a causal LM returning ``.logits`` of shape ``[B, T, V]``.
        tokens: ``[N, T]`` integer windows.
        batch_size: windows per forward pass.
    """
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise FFPruneError(f"tokens must have shape [N, T] with T >= 2, got {tuple(tokens.shape)}")
    if batch_size <= 0:
        raise FFPruneError(f"batch_size must be positive, got {batch_size}")
    device = next(model.parameters()).device
    total = 0.0
    count = 0
    for i in range(0, tokens.shape[0], batch_size):
        batch = tokens[i : i + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
        target = batch[:, 1:]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
        total += float(loss)
        count += target.numel()
    return total, count


def perplexity(model: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 16) -> float:
    """Token-weighted perplexity of ``model`` on ``[N, T]`` windows (``inf`` if the NLL overflows/NaNs)."""
    total, count = nll_sum(model, tokens, batch_size)
    mean = total / count
    if not math.isfinite(mean) or mean > 700:
        return float("inf")
    return math.exp(mean)
