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
calibration batch, the model's forward being stopped there (where a model mixes attention types, Gemma's sliding and
global layers, it runs on to the first layer of every type, whose arguments the layers of that type then get).
Then for each layer ``i`` in order, over every batch's cached hidden states:

(a) run layer ``i`` to the end of its attention and stop, accumulating ``attn_out``'s input Gram; fold the
    attention compensation (if it has removed columns). The ``attn_out`` inputs are kept for (b) and (c):
    they do not depend on ``attn_out``'s weights;
(b) run layer ``i`` again up to ``ffn_out`` (pre-hook accumulates the Gram, then stops), with the attention
    replayed as ``attn_out(cached input)`` rather than recomputed (same values; an attention module whose
    output is not ``attn_out``'s own is recomputed instead); fold the FFN compensation;
(c) run layer ``i`` whole, attention replayed likewise, and the FFN replayed as ``ffn_out(cached input)``
    when the FFN is a submodule whose output is ``ffn_out``'s (Llama/Mistral's MLP; checked once per class
    on one batch; OPT's ``fc1``/``fc2`` sit in the layer itself and are recomputed), to get layer ``i + 1``'s
    inputs.

Layers with nothing removed only get (c); (b) is skipped when the FFN has nothing removed, and the walk ends
at the last pruned layer (no (c) there). The Gram matrices are the ones that running the model from the
embeddings for every module would give (to float32 rounding of each batch's product), for about one attention
and one FFN evaluation (two for OPT) per calibrated layer instead of one partial model forward per module. Memory: the cached
hidden states, ``[calibration windows, seq_len, hidden]`` in the model's dtype (32 × 2048 × 4096 × 2 bytes =
0.5 GB for a 7B model), the same again for one layer's ``attn_out`` inputs, its ``ffn_out`` inputs
(``[calibration windows, seq_len, intermediate]``: 1.4 GB for Llama-2-7B), and one Gram matrix (``in × in``,
float64; each batch's product in ``GRAM_PRODUCT_DTYPE``) at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from ffenv.errors import FFPruneError
from ffenv.lm.models import Block
from ffenv.lm.pruned_modeling import decoder_layers

#: dtype of each batch's Gram product (accumulated across batches in float64). float32 products are ~3x
#: cheaper than float64 ones on CPU (and on most GPUs); the folded weights agree with all-float64 statistics
#: to ~1e-6 relative on the bundled models (tests/test_compensation.py checks 1e-4 on the perplexity).
CALIB_ALPHA = 0.9
"""The ridge penalty α of Calib unless a caller sets one (:attr:`ffenv.EnvConfig.calib_alpha` defaults to it)."""
GRAM_PRODUCT_DTYPE = torch.float32


def _add_gram(gram: torch.Tensor, x: torch.Tensor, kept: torch.Tensor | None = None) -> None:
    """``gram += x_Kᵀ x`` for ``x`` of shape ``[..., in]`` (all rows of ``xᵀx`` when ``kept`` is ``None``)."""
    x = x.detach().reshape(-1, x.shape[-1]).to(GRAM_PRODUCT_DTYPE)
    rows = x if kept is None else x.index_select(1, kept)
    gram.add_(rows.T @ x)


class _Stop(Exception):
    """Raised by a hook to end a forward once what it needs is recorded: the rest is not needed."""


def _forward_until_stopped(model: nn.Module, tokens: torch.Tensor, batch_size: int, *handles: Any) -> None:
    """Forward every batch of ``tokens`` until a hook behind ``handles`` raises :class:`_Stop`; then remove them."""
    device = next(model.parameters()).device
    try:
        for i in range(0, tokens.shape[0], batch_size):
            try:
                model(input_ids=tokens[i : i + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def input_gram(model: nn.Module, linear: nn.Linear, tokens: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """``XᵀX`` (float64, ``[in, in]``) of ``linear``'s input over ``tokens``; forwards stop at ``linear``.

    One partial model forward per batch for one module: fine for inspecting a module; :func:`ridge_compensation`
    gets all its Gram matrices in one walk through the layers instead.
    """
    gram = torch.zeros(linear.in_features, linear.in_features, dtype=torch.float64, device=linear.weight.device)

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        _add_gram(gram, args[0])
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


def _layer_types(model: nn.Module, n: int) -> list[str] | None:
    """Each decoder layer's attention type where a model mixes several (``config.layer_types``: Gemma's sliding and
    global layers, each with its own mask and positions), else ``None`` (every layer takes the first one's inputs)."""
    types = list(getattr(model.config, "layer_types", None) or ())
    return types[:n] if len(types) >= n and len(set(types[:n])) > 1 else None


@torch.inference_mode()
def _first_layer_inputs(model: nn.Module, layers: nn.ModuleList, types: list[str] | None, tokens: torch.Tensor,
                        batch_size: int) -> tuple[_Inputs, list[dict[str, dict]]]:
    """Per batch, ``(hidden_states, other positional args, kwargs)`` of the first decoder layer, and (``types``: each
    layer's attention type, for a model that mixes them) the kwargs of the first layer of every type.

    The kwargs (position embeddings, attention mask, position ids...) are what every layer (of a type) receives; they
    are kept by reference, never modified, and only the hidden states are replaced on the way down the layers. The
    forward stops at the last layer whose kwargs are needed (the first, unless the types differ).
    """
    captured: _Inputs = []
    by_type: list[dict[str, dict]] = []
    firsts = {} if types is None else {t: types.index(t) for t in dict.fromkeys(types)}
    last = max(firsts.values(), default=0)

    def hook(index: int) -> Any:
        def record(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            kwargs = dict(kwargs)
            hidden, rest = (args[0], tuple(args[1:])) if args else (kwargs.pop("hidden_states"), ())
            if index == 0:
                captured.append((hidden, rest, kwargs))
                by_type.append({})
            if types is not None:
                by_type[-1][types[index]] = kwargs
            if index == last:
                raise _Stop
        return record

    _forward_until_stopped(model, tokens, batch_size, *[layers[i].register_forward_pre_hook(hook(i), with_kwargs=True)
                                                         for i in sorted({0, *firsts.values()})])
    return captured, by_type


def _use_inputs_of(inputs: _Inputs, by_type: list[dict[str, dict]], kind: str | None) -> None:
    """Give every batch's cached inputs the kwargs of layers of attention type ``kind`` (``None``: unchanged)."""
    if kind is None:
        return
    for j, (hidden, rest, _kwargs) in enumerate(inputs):
        inputs[j] = (hidden, rest, by_type[j][kind])


class _Replay:
    """While active (``with``), ``module`` (the attention, or the FFN) skips everything before its output projection
    ``linear`` and returns ``linear(x)`` for the current batch's cached input ``x`` of ``linear`` (and the rest of
    its cached output).

    Exact: ``x`` depends only on the layer input and the weights before ``linear``, which compensation never
    changes; only ``linear``'s own weights change between the pass that cached ``x`` and the replay.
    """

    def __init__(self, module: nn.Module, linear: nn.Linear, cached: list[tuple[torch.Tensor, tuple | None]]) -> None:
        self.module, self.linear, self.cached, self.batch = module, linear, cached, 0

    def _forward(self, *_args: object, **_kwargs: object) -> torch.Tensor | tuple:
        x, tail = self.cached[self.batch]
        y = self.linear(x)
        return y if tail is None else (y, *tail)

    def __enter__(self) -> _Replay:
        self._own = self.module.__dict__.get("forward")  # an instance-level forward (e.g. a dispatch hook) is kept
        self.module.forward = self._forward
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._own is None:
            del self.module.forward
        else:
            self.module.forward = self._own


def _submodule_with(layer: nn.Module, linear: nn.Linear) -> nn.Module | None:
    """The child of ``layer`` that contains ``linear`` (``None`` if ``linear`` is itself a child, as OPT's ``fc2``)."""
    child = next((m for m in layer.children() if any(sub is linear for sub in m.modules())), None)
    return None if child is linear else child


@torch.inference_mode()
def _attention_pass(layer: nn.Module, attn_out: nn.Linear, inputs: _Inputs,
                    gram: torch.Tensor | None, kept: torch.Tensor | None = None) -> _Replay | None:
    """Run ``layer`` on the cached ``inputs`` up to the end of its attention module, accumulating the kept rows
    ``X_Kᵀ X`` of ``attn_out``'s input Gram into ``gram`` (if given). Returns the replay of the attention, or
    ``None`` when the attention module's output is not ``attn_out``'s (then the layer is simply run again for the
    later passes)."""
    attn = _submodule_with(layer, attn_out)
    if attn is None:
        raise FFPruneError("attn_out is not inside an attention submodule of its decoder layer")
    seen: dict[str, torch.Tensor] = {}
    cached: list[tuple[torch.Tensor, tuple | None]] = []
    replayable = True

    def record_input(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen["x"] = args[0]
        if gram is not None:
            _add_gram(gram, args[0], kept)

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
    return _Replay(attn, attn_out, cached) if replayable else None


@torch.inference_mode()
def _ffn_pass(layer: nn.Module, ffn_out: nn.Linear, inputs: _Inputs, replay: _Replay | None, kept: torch.Tensor,
              check: dict[type, bool] | None = None) -> tuple[torch.Tensor, _Replay | None]:
    """The kept rows ``X_Kᵀ X`` (float64) of ``ffn_out``'s input Gram when ``layer`` runs on the cached ``inputs``
    (stopped at ``ffn_out``), and, when ``check`` is given, the replay of the FFN for pass (c).

    ``check`` maps an FFN module class to whether its output is exactly ``ffn_out``'s; a class seen for the first
    time is checked on the first batch (which then also runs ``ffn_out``, before its fold: only object identity is
    looked at). Without a separate FFN submodule (OPT) or when the check fails there is no replay.
    """
    kept = kept.to(ffn_out.weight.device)
    gram = torch.zeros(len(kept), ffn_out.in_features, dtype=torch.float64, device=ffn_out.weight.device)
    ffn = _submodule_with(layer, ffn_out) if check is not None else None
    cache = ffn is not None and check.get(type(ffn), True)
    verify = cache and type(ffn) not in check
    xs: list[tuple[torch.Tensor, None]] = []
    seen: dict[str, torch.Tensor] = {}

    def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        _add_gram(gram, args[0], kept)
        if cache:
            xs.append((args[0], None))
        if not (verify and len(xs) == 1):
            raise _Stop

    def record_output(_module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        seen["y"] = out

    def stop(_module: nn.Module, _args: tuple, out: torch.Tensor | tuple) -> None:
        check[type(ffn)] = out is seen.get("y")
        raise _Stop

    handles = [ffn_out.register_forward_pre_hook(record)]
    if verify:
        handles += [ffn_out.register_forward_hook(record_output), ffn.register_forward_hook(stop)]
    try:
        for j, (hidden, rest, kwargs) in enumerate(inputs):
            if replay is not None:
                replay.batch = j
            try:
                layer(hidden, *rest, **kwargs)
            except _Stop:
                pass
            if verify and j == 0:  # checked: the other batches stop at ffn_out
                for h in handles[1:]:
                    h.remove()
                handles = handles[:1]
    finally:
        for h in handles:
            h.remove()
    return gram, (_Replay(ffn, ffn_out, xs) if cache and check[type(ffn)] else None)


@torch.inference_mode()
def _run_layer(layer: nn.Module, inputs: _Inputs, *replays: _Replay | None) -> None:
    """Replace each cached hidden state by ``layer``'s output on it (the next layer's input), in place, with the
    given replays active."""
    replays = tuple(r for r in replays if r is not None)
    with ExitStack() as stack:
        for r in replays:
            stack.enter_context(r)
        for j, (hidden, rest, kwargs) in enumerate(inputs):
            for r in replays:
                r.batch = j
            out = layer(hidden, *rest, **kwargs)
            inputs[j] = (out[0] if isinstance(out, (tuple, list)) else out, rest, kwargs)


def _calibrate(model: nn.Module, todo: list[tuple[Block, torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]],
               tokens: torch.Tensor, alpha: float, batch_size: int) -> None:
    """Fold the compensation of every block in ``todo`` (sorted by layer), walking the layers once."""
    layers = decoder_layers(model)
    types = _layer_types(model, len(layers))
    inputs, by_type = _first_layer_inputs(model, layers, types, tokens, batch_size)
    nxt = 0  # the layer whose input ``inputs`` holds
    checked: dict[type, bool] = {}  # FFN module classes whose output is exactly ffn_out's (see _ffn_pass)
    for n, (block, attn_cols, ffn_cols, attn_w, ffn_w) in enumerate(todo):
        for i in range(nxt, block.index):  # nothing to calibrate there: just move on
            _use_inputs_of(inputs, by_type, types and types[i])
            _run_layer(layers[i], inputs)
        _use_inputs_of(inputs, by_type, types and types[block.index])
        layer, lin = layers[block.index], block.attn_out
        gram = None
        if attn_cols is not None:
            attn_cols = attn_cols.to(lin.weight.device)
            gram = torch.zeros(len(attn_cols), lin.in_features, dtype=torch.float64, device=lin.weight.device)
        replay = _attention_pass(layer, lin, inputs, gram, attn_cols)
        if attn_cols is not None:
            ridge_fold(lin, attn_cols, gram, alpha, attn_w)
        last = n + 1 == len(todo)  # no later layer needs this one's output
        ffn_replay = None
        if ffn_cols is not None:
            with replay if replay is not None else nullcontext():
                gram, ffn_replay = _ffn_pass(layer, block.ffn_out, inputs, replay, ffn_cols, None if last else checked)
            ridge_fold(block.ffn_out, ffn_cols, gram, alpha, ffn_w)
        if not last:
            _run_layer(layer, inputs, replay, ffn_replay)
        del replay, ffn_replay  # this layer's cached attn_out / ffn_out inputs
        nxt = block.index + 1


@contextmanager
def ridge_compensation(model: nn.Module, blocks: list[Block], kept_columns: list[tuple[torch.Tensor, torch.Tensor]],
                       dense: list[tuple[torch.Tensor, torch.Tensor]], tokens: torch.Tensor, alpha: float = CALIB_ALPHA,
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
