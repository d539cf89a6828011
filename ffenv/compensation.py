"""Post-pruning calibration (the paper's "Calib"): ridge compensation of removed channels, no training.

After structured pruning, the input ``x`` of each output projection (``o_proj``/``out_proj`` over head
channels, ``down_proj``/``fc2`` over FFN neurons) splits into kept channels ``K`` and removed channels
``R``; the removed part ``W_R x_R`` is lost. Calib predicts the removed channels from the kept ones by
ridge regression without intercept over the calibration tokens,

    B = argmin_B ‖X_R − X_K B‖²_F + α‖B‖²_F = (X_Kᵀ X_K + α I)⁻¹ X_Kᵀ X_R        (α = 0.9 by default),

and folds it into the projection: ``W_K ← W_K + W_R Bᵀ`` (the removed columns stay zero). It runs
layer by layer, in forward order: each module's Gram matrix ``XᵀX`` is collected on the model whose
earlier modules are already pruned *and* compensated. The removed channels are still computed (only the
output projection's columns are masked), so ``X`` holds them too.

Procedure, one pass through the layers: the inputs of the first decoder layer (hidden states and the
family's other arguments: position embeddings, attention mask, position ids...) are captured once per
calibration batch, the model's forward being stopped there. Then for each layer ``i`` in order, over every
batch's cached hidden states:

(a) run layer ``i`` to the end of its attention and stop, accumulating ``attn_out``'s input Gram; fold the
    attention compensation (if it has removed columns). The ``attn_out`` inputs are kept for (b) and (c):
    they do not depend on ``attn_out``'s weights;
(b) run layer ``i`` again up to ``ffn_out`` (pre-hook accumulates the Gram, then stops), with the attention
    replayed as ``attn_out(cached input)`` rather than recomputed (same values; an attention module whose
    output is not ``attn_out``'s own is recomputed instead); fold the FFN compensation;
(c) run layer ``i`` whole, attention replayed likewise, to get layer ``i + 1``'s inputs.

Layers with nothing removed only get (c); (b) is skipped when the FFN has nothing removed, and the walk ends
at the last pruned layer (no (c) there). The Gram matrices are the ones that running the model from the
embeddings for every module would give (bit for bit on the bundled models), for about one attention and
two FFN evaluations per calibrated layer instead of one partial model forward per module. Memory: the cached
hidden states, ``[calibration windows, seq_len, hidden]`` in the model's dtype (32 × 2048 × 4096 × 2 bytes =
0.5 GB for a 7B model), the same again for one layer's ``attn_out`` inputs, and one Gram matrix (``in × in``,
float64) at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from ffenv.errors import FFPruneError
from ffenv.models import Block


class _Stop(Exception):
    """Raised by a hook to end a forward once what it needs is recorded: the rest is not needed."""


def _forward_until_stopped(model: nn.Module, tokens: torch.Tensor, batch_size: int, handle: Any) -> None:
    """Forward every batch of ``tokens`` until the hook behind ``handle`` raises :class:`_Stop`; then remove it."""
    device = next(model.parameters()).device
    try:
        for i in range(0, tokens.shape[0], batch_size):
            try:
                model(input_ids=tokens[i : i + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()


@torch.inference_mode()
def input_gram(model: nn.Module, linear: nn.Linear, tokens: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """``XᵀX`` (float64, ``[in, in]``) of ``linear``'s input over ``tokens``; forwards stop at ``linear``.

    One partial model forward per batch for one module: fine for inspecting a module; :func:`ridge_compensation`
    gets all its Gram matrices in one walk through the layers instead.
    """
    gram = torch.zeros(linear.in_features, linear.in_features, dtype=torch.float64, device=linear.weight.device)

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().double().reshape(-1, linear.in_features)
        gram.addmm_(x.T, x)
        raise _Stop

    _forward_until_stopped(model, tokens, batch_size, linear.register_forward_pre_hook(hook))
    return gram


def ridge_fold(linear: nn.Linear, kept: torch.Tensor, gram: torch.Tensor, alpha: float, dense: torch.Tensor) -> None:
    """Set ``linear``'s kept columns to ``W_K + W_R Bᵀ`` (``W`` = the ``dense`` weight), in place.

    ``B`` are the ridge coefficients from the input Gram matrix ``XᵀX`` (``[in, in]``) or from its kept rows
    ``X_Kᵀ X`` (``[len(kept), in]``: all the solve needs, and cheaper to gather); the removed columns are left as
    they are.
    """
    n = linear.in_features
    mask = torch.ones(n, dtype=torch.bool, device=gram.device)
    mask[kept.to(gram.device)] = False
    removed = torch.nonzero(mask).flatten()
    kept = kept.to(gram.device)
    if len(removed) == 0 or len(kept) == 0:
        return
    rows = gram if gram.shape[0] == len(kept) else gram.index_select(0, kept)
    g_kk = rows.index_select(1, kept)
    g_kr = rows.index_select(1, removed)
    g_kk.diagonal().add_(alpha)
    b = torch.linalg.solve(g_kk, g_kr)  # [k, r]
    w = dense.detach().double()
    delta = w.index_select(1, removed.to(w.device)) @ b.T.to(w.device)  # [out, k]
    with torch.no_grad():
        new_kept = w.index_select(1, kept.to(w.device)) + delta
        linear.weight.index_copy_(1, kept.to(w.device), new_kept.to(linear.weight.dtype))


_Inputs = list[tuple[torch.Tensor, tuple, dict]]  # per calibration batch: hidden states, other args, kwargs


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.decoder.layers if model.config.model_type == "opt" else model.model.layers


@torch.inference_mode()
def _first_layer_inputs(model: nn.Module, layer: nn.Module, tokens: torch.Tensor, batch_size: int) -> _Inputs:
    """Per batch, ``(hidden_states, other positional args, kwargs)`` of ``layer`` (the first decoder layer).

    The kwargs (position embeddings, attention mask, position ids...) are what every layer receives; they are
    kept by reference, never modified, and only the hidden states are replaced on the way down the layers.
    """
    captured: _Inputs = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        hidden, rest = (args[0], tuple(args[1:])) if args else (kwargs.pop("hidden_states"), ())
        captured.append((hidden, rest, kwargs))
        raise _Stop

    _forward_until_stopped(model, tokens, batch_size, layer.register_forward_pre_hook(hook, with_kwargs=True))
    return captured


class _AttentionReplay:
    """While active (``with``), the layer's attention module skips q, k, v and the attention itself and returns
    ``attn_out(x)`` for the current batch's cached ``attn_out`` input ``x`` (and the rest of its cached output).

    Exact: ``x`` depends only on the layer input and q, k, v, which compensation never changes.
    """

    def __init__(self, attn: nn.Module, attn_out: nn.Linear, cached: list[tuple[torch.Tensor, tuple | None]]) -> None:
        self.attn, self.attn_out, self.cached, self.batch = attn, attn_out, cached, 0

    def _forward(self, *_args: object, **_kwargs: object) -> torch.Tensor | tuple:
        x, tail = self.cached[self.batch]
        y = self.attn_out(x)
        return y if tail is None else (y, *tail)

    def __enter__(self) -> _AttentionReplay:
        self._own = self.attn.__dict__.get("forward")  # an instance-level forward (e.g. a dispatch hook) is kept
        self.attn.forward = self._forward
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._own is None:
            del self.attn.forward
        else:
            self.attn.forward = self._own


@torch.inference_mode()
def _attention_pass(layer: nn.Module, attn_out: nn.Linear, inputs: _Inputs,
                    gram: torch.Tensor | None, kept: torch.Tensor | None = None) -> _AttentionReplay | None:
    """Run ``layer`` on the cached ``inputs`` up to the end of its attention module, accumulating the kept rows
    ``X_Kᵀ X`` of ``attn_out``'s input Gram into ``gram`` (if given). Returns the replay of the attention, or
    ``None`` when the attention module's output is not ``attn_out``'s (then the layer is simply run again for the
    later passes)."""
    attn = next((m for m in layer.children() if any(sub is attn_out for sub in m.modules())), None)
    if attn is None or attn is attn_out:
        raise FFPruneError("attn_out is not inside an attention submodule of its decoder layer")
    seen: dict[str, torch.Tensor] = {}
    cached: list[tuple[torch.Tensor, tuple | None]] = []
    replayable = True

    def record_input(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen["x"] = args[0]
        if gram is not None:
            x = args[0].detach().double().reshape(-1, attn_out.in_features)
            gram.addmm_(x.index_select(1, kept).T, x)

    def record_output(_module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        seen["y"] = out

    def stop(_module: nn.Module, _args: tuple, out: torch.Tensor | tuple) -> None:
        nonlocal replayable
        first, tail = (out[0], tuple(out[1:])) if isinstance(out, tuple) else (out, None)
        replayable = replayable and first is seen.get("y")
        cached.append((seen["x"], tail))
        seen.clear()
        raise _Stop

    handles = [attn_out.register_forward_pre_hook(record_input), attn_out.register_forward_hook(record_output),
               attn.register_forward_hook(stop)]
    try:
        for hidden, rest, kwargs in inputs:
            try:
                layer(hidden, *rest, **kwargs)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return _AttentionReplay(attn, attn_out, cached) if replayable else None


@torch.inference_mode()
def _ffn_pass(layer: nn.Module, ffn_out: nn.Linear, inputs: _Inputs, replay: _AttentionReplay | None,
              kept: torch.Tensor) -> torch.Tensor:
    """The kept rows ``X_Kᵀ X`` (float64) of ``ffn_out``'s input Gram when ``layer`` runs on the cached ``inputs``;
    stopped at ``ffn_out``."""
    kept = kept.to(ffn_out.weight.device)
    gram = torch.zeros(len(kept), ffn_out.in_features, dtype=torch.float64, device=ffn_out.weight.device)

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().double().reshape(-1, ffn_out.in_features)
        gram.addmm_(x.index_select(1, kept).T, x)
        raise _Stop

    handle = ffn_out.register_forward_pre_hook(hook)
    try:
        for j, (hidden, rest, kwargs) in enumerate(inputs):
            if replay is not None:
                replay.batch = j
            try:
                layer(hidden, *rest, **kwargs)
            except _Stop:
                pass
    finally:
        handle.remove()
    return gram


@torch.inference_mode()
def _run_layer(layer: nn.Module, inputs: _Inputs, replay: _AttentionReplay | None = None) -> None:
    """Replace each cached hidden state by ``layer``'s output on it (the next layer's input), in place."""
    for j, (hidden, rest, kwargs) in enumerate(inputs):
        if replay is not None:
            replay.batch = j
        out = layer(hidden, *rest, **kwargs)
        inputs[j] = (out[0] if isinstance(out, (tuple, list)) else out, rest, kwargs)


def _calibrate(model: nn.Module, todo: list[tuple[Block, torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]],
               tokens: torch.Tensor, alpha: float, batch_size: int) -> None:
    """Fold the compensation of every block in ``todo`` (sorted by layer), walking the layers once."""
    layers = _decoder_layers(model)
    inputs = _first_layer_inputs(model, layers[0], tokens, batch_size)
    nxt = 0  # the layer whose input ``inputs`` holds
    for n, (block, attn_cols, ffn_cols, attn_w, ffn_w) in enumerate(todo):
        for i in range(nxt, block.index):  # nothing to calibrate there: just move on
            _run_layer(layers[i], inputs)
        layer, lin = layers[block.index], block.attn_out
        gram = None
        if attn_cols is not None:
            attn_cols = attn_cols.to(lin.weight.device)
            gram = torch.zeros(len(attn_cols), lin.in_features, dtype=torch.float64, device=lin.weight.device)
        replay = _attention_pass(layer, lin, inputs, gram, attn_cols)
        if attn_cols is not None:
            ridge_fold(lin, attn_cols, gram, alpha, attn_w)
        with replay if replay is not None else nullcontext():
            if ffn_cols is not None:
                ridge_fold(block.ffn_out, ffn_cols, _ffn_pass(layer, block.ffn_out, inputs, replay, ffn_cols), alpha, ffn_w)
            if n + 1 < len(todo):  # later layers still need calibrating
                _run_layer(layer, inputs, replay)
        del replay  # this layer's cached attn_out inputs
        nxt = block.index + 1


@contextmanager
def ridge_compensation(model: nn.Module, blocks: list[Block], kept_columns: list[tuple[torch.Tensor, torch.Tensor]],
                       dense: list[tuple[torch.Tensor, torch.Tensor]], tokens: torch.Tensor, alpha: float = 0.9,
                       batch_size: int = 8) -> Iterator[None]:
    """Compensate an (already pruned) model inside a ``with`` block; the weights are put back on exit.

    The Gram matrices come from one pass through the decoder layers over cached layer inputs (module docstring).

    Args:
        model: the pruned model (pruned channels' output-projection columns zeroed).
        blocks: its decoder blocks.
        kept_columns: per block, the kept input columns of ``attn_out`` and of ``ffn_out``.
        dense: per block, the dense (unpruned) weights of ``attn_out`` and ``ffn_out``.
        tokens: calibration windows ``[N, T]`` (16–32 sequences in the paper).
        alpha: ridge penalty (``> 0``).
        batch_size: calibration windows per forward.
    """
    if not alpha > 0:
        raise FFPruneError(f"alpha must be > 0, got {alpha}")
    if len(kept_columns) != len(blocks) or len(dense) != len(blocks):
        raise FFPruneError(f"kept_columns and dense need one entry per block ({len(blocks)}), "
                           f"got {len(kept_columns)} and {len(dense)}")
    saved = [(lin, lin.weight.detach().clone()) for b in blocks for lin in (b.attn_out, b.ffn_out)]
    try:
        todo = [(b, a_cols if len(a_cols) < b.attn_out.in_features else None,
                 f_cols if len(f_cols) < b.ffn_out.in_features else None, a_w, f_w)
                for b, (a_cols, f_cols), (a_w, f_w) in zip(blocks, kept_columns, dense)]
        todo = sorted((t for t in todo if t[1] is not None or t[2] is not None), key=lambda t: t[0].index)
        if todo:
            _calibrate(model, todo, tokens, alpha, batch_size)
        yield
    finally:
        with torch.no_grad():
            for lin, weight in saved:
                lin.weight.copy_(weight)
