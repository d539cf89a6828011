"""Perplexity: the one evaluation routine every part of ffprune uses.

A window of ``T`` tokens predicts ``T - 1`` of them (the first has no context). Perplexity is
``exp(Σ NLL / Σ predicted tokens)`` over all windows: the exact token-weighted mean, not a mean of
per-window means and not normalised by ``T`` instead of ``T - 1``.

For the model families whose logits are exactly ``lm_head(last hidden state)`` (``HEAD_ONLY_FAMILIES``) the
LM head and the loss run on chunks of about ``CHUNK_LOGITS`` logits, so the ``[B, T, V]`` logits tensor (and
its shifted copy) is never built: same sum (float32 summation order aside), less memory traffic. On a
model as small as the zoo's the head is about a quarter of a forward, so this is a visible share of every
evaluation; any other family goes through its own ``forward`` unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ffenv.errors import FFPruneError

#: ``config.model_type`` values whose ``ForCausalLM.forward`` computes ``logits = lm_head(base_model(...)[0])``,
#: then at most soft-caps them by ``config.final_logit_softcapping`` (Gemma; checked against transformers 5's
#: modelling code).
HEAD_ONLY_FAMILIES = frozenset({"llama", "mistral", "opt", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi", "phi3"})
#: logits per chunk of the head + loss (float32: 16 MiB)
CHUNK_LOGITS = 1 << 22


def _head(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The LM head as a function of the last hidden states (soft-capped as the family's forward does) for the
    :data:`HEAD_ONLY_FAMILIES`; ``None``: run the model's own forward."""
    if getattr(model.config, "model_type", None) not in HEAD_ONLY_FAMILIES:
        return None
    lm_head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if not cap:
        return lm_head
    return lambda hidden: torch.tanh(lm_head(hidden) / cap) * cap


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
    head = _head(model)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for i in range(0, tokens.shape[0], batch_size):
        batch = tokens[i : i + batch_size].to(device)
        target = batch[:, 1:].reshape(-1)
        if head is None:
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
            total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target, reduction="sum")
        else:
            hidden = model.base_model(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]
            hidden = hidden.reshape(-1, hidden.shape[-1])
            rows = max(1, CHUNK_LOGITS // model.get_output_embeddings().out_features)
            for j in range(0, hidden.shape[0], rows):
                logits = head(hidden[j : j + rows]).float()
                total += F.cross_entropy(logits, target[j : j + rows], reduction="sum")
        count += target.numel()
    return float(total), count


def perplexity(model: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 16) -> float:
    """Token-weighted perplexity of ``model`` on ``[N, T]`` windows (``inf`` if the NLL overflows/NaNs)."""
    total, count = nll_sum(model, tokens, batch_size)
    mean = total / count
    if not math.isfinite(mean) or mean > 700:
        return float("inf")
    return math.exp(mean)


@torch.inference_mode()
def window_nll(model: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Per window, the summed next-token NLL (float64 ``[N]``; each window predicts ``T - 1`` tokens).

    For studies that score many prefixes of one set of windows from one forward (``ffprune fidelity``): the
    perplexity of the first ``n`` windows is ``exp(out[:n].sum() / (n · (T - 1)))``. The head and the loss run one
    window at a time for the :data:`HEAD_ONLY_FAMILIES`, as in :func:`nll_sum`.
    """
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise FFPruneError(f"tokens must have shape [N, T] with T >= 2, got {tuple(tokens.shape)}")
    device = next(model.parameters()).device
    head = _head(model)
    out = []
    for i in range(0, tokens.shape[0], batch_size):
        batch = tokens[i : i + batch_size].to(device)
        if head is None:
            hidden = model(input_ids=batch, use_cache=False).logits[:, :-1]
        else:
            hidden = model.base_model(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]
        for window, target in zip(hidden, batch[:, 1:]):
            logits = (window if head is None else head(window)).float()
            out.append(float(F.cross_entropy(logits, target, reduction="sum")))
    return torch.tensor(out, dtype=torch.float64)
