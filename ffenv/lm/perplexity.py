"""Perplexity: the one evaluation routine every part of ffprune uses.

A window of ``T`` tokens predicts ``T - 1`` of them (the first has no context). Perplexity is
``exp(Σ NLL / Σ predicted tokens)`` over all windows: the exact token-weighted mean, not a mean of
per-window means and not normalised by ``T`` instead of ``T - 1``.

For the model families whose logits are exactly ``lm_head(last hidden state)`` (``HEAD_ONLY_FAMILIES``) the
``[B, T, V]`` logits tensor (and its shifted copy) is never built. While a chunk of ``CHUNK_LOGITS`` logits
holds at least ``MIN_CHUNK_ROWS`` rows (the tiny models' 4 k vocabulary) the head and ``F.cross_entropy`` run on
row chunks; otherwise (a real vocabulary: SmolLM2's
49 k, Gemma's 262 k) the head runs on tiles of all the batch's rows × a block of the vocabulary, small enough to
stay in cache, and the loss is an online log-sum-exp over the blocks (``logsumexp − target logit``, the same
value as ``F.cross_entropy`` up to float32 rounding). Each head weight is then read once per batch rather than
once per few rows: Gemma-3's 671 MB output layer made an evaluation 2.5 × a plain forward of the same model
with row chunks and makes it less than one with tiles. Any other family goes through its own ``forward``.
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
#: logits per tile of the head + loss (float32: 16 MiB)
CHUNK_LOGITS = 1 << 22
#: row chunks while one holds this many rows (each reads the head's weight once); vocabulary tiles below
MIN_CHUNK_ROWS = 256
#: the smallest vocabulary block of a tile (fewer, larger matmuls when a batch has very many rows)
MIN_VOCAB_BLOCK = 2048


def _head(model: torch.nn.Module) -> Callable[[torch.Tensor, int, int], torch.Tensor] | None:
    """The LM head as a function of the last hidden states and a block ``[start, stop)`` of the vocabulary, giving
    those logits (soft-capped as the family's forward does), for the :data:`HEAD_ONLY_FAMILIES`; ``None``: run the
    model's own forward."""
    if getattr(model.config, "model_type", None) not in HEAD_ONLY_FAMILIES:
        return None
    lm_head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)

    def head(hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        bias = None if lm_head.bias is None else lm_head.bias[start:stop]
        logits = F.linear(hidden, lm_head.weight[start:stop], bias)
        return torch.tanh(logits / cap) * cap if cap else logits

    return head


def _add_head_nll(total: torch.Tensor, head: Callable[[torch.Tensor, int, int], torch.Tensor], vocab: int,
                  hidden: torch.Tensor, target: torch.Tensor) -> None:
    """Add to ``total`` (a float64 scalar, in place) the next-token NLL of ``target`` ``[R]`` given the last hidden
    states ``[R, H]``, chunk by chunk: row chunks of :data:`CHUNK_LOGITS` logits while one holds at least
    :data:`MIN_CHUNK_ROWS` rows (a small vocabulary), vocabulary tiles otherwise (see the module's docstring)."""
    rows = hidden.shape[0]
    if CHUNK_LOGITS // vocab >= MIN_CHUNK_ROWS:
        step = CHUNK_LOGITS // vocab
        for i in range(0, rows, step):
            logits = head(hidden[i : i + step], 0, vocab).float()
            total += F.cross_entropy(logits, target[i : i + step], reduction="sum")
        return
    block = min(vocab, max(MIN_VOCAB_BLOCK, CHUNK_LOGITS // rows))
    step = max(1, CHUNK_LOGITS // block)
    for i in range(0, rows, step):
        h, t = hidden[i : i + step], target[i : i + step]
        peak = torch.full((h.shape[0],), -math.inf, device=h.device)
        mass = torch.zeros(h.shape[0], device=h.device)
        picked = torch.zeros(h.shape[0], device=h.device)
        for start in range(0, vocab, block):
            logits = head(h, start, start + block).float()
            new_peak = torch.maximum(peak, logits.amax(-1))
            mass = mass * torch.exp(peak - new_peak) + torch.exp(logits - new_peak[:, None]).sum(-1)
            peak = new_peak
            inside = (t >= start) & (t < start + logits.shape[1])
            at = (t - start).clamp(0, logits.shape[1] - 1)[:, None]
            picked = torch.where(inside, logits.gather(1, at)[:, 0], picked)
        total += (peak + mass.log() - picked).double().sum()


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
    vocab = model.get_output_embeddings().out_features if head is not None else 0
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
            _add_head_nll(total, head, vocab, hidden.reshape(-1, hidden.shape[-1]), target)
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
    vocab = model.get_output_embeddings().out_features if head is not None else 0
    out = []
    for i in range(0, tokens.shape[0], batch_size):
        batch = tokens[i : i + batch_size].to(device)
        if head is None:
            hidden = model(input_ids=batch, use_cache=False).logits[:, :-1]
        else:
            hidden = model.base_model(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]
        for window, target in zip(hidden, batch[:, 1:]):
            if head is None:
                out.append(float(F.cross_entropy(window.float(), target, reduction="sum")))
            else:
                total = torch.zeros((), dtype=torch.float64, device=device)
                _add_head_nll(total, head, vocab, window, target)
                out.append(float(total))
    return torch.tensor(out, dtype=torch.float64)
