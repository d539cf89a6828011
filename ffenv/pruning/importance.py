"""Importance, computed once on the dense model from one calibration pass.

Wanda (Sun et al., 2024) scores a weight by ``|W_ij| · ‖X_j‖₂`` where ``‖X_j‖₂`` is the L2 norm of
the ``j``-th input feature over all calibration tokens. :func:`collect_input_norms` gathers those norms
for every linear layer of every decoder block in a single forward pass; everything else in this module
is arithmetic on them:

* structured units (FastForward's setting): the score of an input column of an output projection is
  ``Σ_i |W_ij| ‖X_j‖₂``; a head's (or KV group's) score is the mean over its columns of ``o_proj`` /
  ``out_proj``, a neuron's score that of its column of ``down_proj`` / ``fc2``;
* unstructured: per-weight Wanda scores (or plain magnitude), compared within each output row;
* the OWL outlier ratio: the share of a block's Wanda scores above ``M`` × their mean.
"""

from __future__ import annotations

import torch
from torch import nn

from ffenv.lm.models import Block


@torch.inference_mode()
def collect_input_norms(
    model: nn.Module, blocks: list[Block], tokens: torch.Tensor, batch_size: int = 8
) -> dict[tuple[int, str], torch.Tensor]:
    """``‖X_j‖₂`` of every input feature of every linear in ``blocks`` over the calibration ``tokens``.

    Returns a dict keyed by ``(block index, linear name)`` (names as in :attr:`Block.linears`) of
    float32 vectors on the model's device. Linears that share an input (q/k/v, gate/up) are measured once.
    """
    sumsq: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def hook(key: tuple[int, str]):
        def fn(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            acc = sumsq.get(key)
            sq = x.pow(2).sum(0)
            sumsq[key] = sq if acc is None else acc + sq
        return fn

    aliases: dict[tuple[int, str], tuple[int, str]] = {}
    for block in blocks:
        first_of_input: dict[str, tuple[int, str]] = {}
        for name, lin in block.linears.items():
            group = "attn_in" if name in ("q", "k", "v", "qkv") else "ffn_in" if name.startswith("ffn_in") else name
            key = (block.index, name)
            if group in first_of_input:
                aliases[key] = first_of_input[group]
                continue
            first_of_input[group] = key
            handles.append(lin.register_forward_pre_hook(hook(key)))
    try:
        device = next(model.parameters()).device
        for i in range(0, tokens.shape[0], batch_size):
            model(input_ids=tokens[i : i + batch_size].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    norms = {k: v.sqrt() for k, v in sumsq.items()}
    for key, src in aliases.items():
        norms[key] = norms[src]
    return norms


def column_scores(linear: nn.Linear, input_norm: torch.Tensor) -> torch.Tensor:
    """Per input column ``j``: ``Σ_i |W_ij| · ‖X_j‖₂`` (float32)."""
    return linear.weight.detach().float().abs().sum(0) * input_norm


def wanda_scores(linear: nn.Linear, input_norm: torch.Tensor) -> torch.Tensor:
    """Per weight: ``|W_ij| · ‖X_j‖₂`` (float32, shaped like the weight)."""
    return linear.weight.detach().float().abs() * input_norm[None, :]


def structured_importance(
    block: Block, norms: dict[tuple[int, str], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-granule attention scores ``[attn_granules]``: KV groups, or query heads under multi-query attention;
    per-neuron FFN scores ``[intermediate]``)."""
    cols = column_scores(block.attn_out, norms[(block.index, "o")])
    attn = cols.view(block.attn_granules, -1).mean(1)
    ffn = column_scores(block.ffn_out, norms[(block.index, "ffn_out")])
    return attn, ffn


def block_column_importance(block: Block, norms: dict[tuple[int, str], torch.Tensor]) -> torch.Tensor:
    """Per input column of each linear of a block (concatenated, float64 on the CPU): the mean Wanda score
    ``mean_i |W_ij| · ‖X_j‖₂`` — the unstructured counterpart of :func:`structured_importance`."""
    return torch.cat([wanda_scores(lin, norms[(block.index, name)]).mean(0).double().cpu()
                      for name, lin in block.linears.items()])


def block_outlier_ratio(block: Block, norms: dict[tuple[int, str], torch.Tensor], m: float = 5.0) -> float:
    """OWL outlier ratio over all Wanda scores of all linears of one block."""
    above = 0
    total = 0
    scores = [wanda_scores(lin, norms[(block.index, name)]) for name, lin in block.linears.items()]
    mean = sum(float(s.sum()) for s in scores) / sum(s.numel() for s in scores)
    for s in scores:
        above += int((s > m * mean).sum())
        total += s.numel()
    return above / total


@torch.inference_mode()
def collect_input_moments(
    model: nn.Module, linears: list[nn.Linear], tokens: torch.Tensor, batch_size: int = 8
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per input feature of each of ``linears``: (mean, population variance) over the calibration ``tokens``.

    One forward pass; float64 accumulation. FLAP's fluctuation metric uses the variance.
    """
    sums: list[torch.Tensor | None] = [None] * len(linears)
    sumsq: list[torch.Tensor | None] = [None] * len(linears)
    count = [0]

    def hook(i: int):
        def fn(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            s, q = x.sum(0), x.pow(2).sum(0)
            sums[i] = s if sums[i] is None else sums[i] + s
            sumsq[i] = q if sumsq[i] is None else sumsq[i] + q
        return fn

    handles = [lin.register_forward_pre_hook(hook(i)) for i, lin in enumerate(linears)]
    try:
        device = next(model.parameters()).device
        for i in range(0, tokens.shape[0], batch_size):
            batch = tokens[i : i + batch_size]
            model(input_ids=batch.to(device), use_cache=False)
            count[0] += batch.numel()
    finally:
        for h in handles:
            h.remove()
    out = []
    for s, q in zip(sums, sumsq):
        mean = s / count[0]
        out.append((mean, (q / count[0] - mean.pow(2)).clamp_min(0.0)))
    return out
