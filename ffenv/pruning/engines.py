"""Pruning engines: apply an allocation to a model, and undo it exactly.

Both engines precompute everything that does not depend on the allocation when they are built
(unit orderings, per-row score ranks, the dense weights they will touch), so applying a new
allocation is a selection, not a sort, and :meth:`restore` brings back bit-identical dense weights.

Both speak one language, the :class:`Pruner` protocol: :meth:`~Pruner.to_unit_sparsity` turns projected
keep ratios into the **per-unit sparsity the engine can realise** (whole heads / neurons in structured
mode, as close as possible to the global target; in unstructured mode every block sparsity is realisable
as it is, and the per-row rounding happens in :meth:`~Pruner.apply`), :meth:`~Pruner.prune` /
:meth:`~Pruner.apply` prune to such a per-unit sparsity, :meth:`~Pruner.restore` undoes them and
:meth:`~Pruner.kept_params` counts the parameters kept, exactly.

:class:`StructuredPruner` (the paper's setting)
    Two units per decoder block: attention (whole KV groups — a group's query heads with their key and value
    heads; single query heads where one KV head serves them all) and FFN (whole intermediate neurons), the top-``k``
    of a module kept by importance.
    :meth:`StructuredPruner.slice` removes the others **physically** for an evaluation: every touched
    module's weights are swapped for index-selected smaller copies (q/k/v and FFN input rows and
    biases, output-projection columns; the attention module's head count), so a step costs the
    pruned model's forward; :meth:`~StructuredPruner.restore` puts the dense tensors back (they are
    never written). :meth:`StructuredPruner.apply` instead zeroes the removed units' input columns of
    the output projections (``o_proj``/``out_proj``, ``down_proj``/``fc2``): the same function (their
    only path to the residual stream is through those columns), used where the removed channels
    must still be computed (post-pruning calibration regresses them on the kept ones).

:class:`UnstructuredPruner`
    One unit per decoder block; a block's sparsity applies to every linear of the block, pruning
    the lowest-scoring weights of each output row (Wanda's per-output comparison group, or plain
    magnitude). The rank of every weight within its row is precomputed once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ffenv.errors import FFPruneError
from ffenv.lm.models import Block
from ffenv.lm.pruned_modeling import set_head_counts
from ffenv.pruning.importance import structured_importance, wanda_scores


@dataclass(frozen=True)
class Unit:
    """One prunable unit: a block's attention or FFN (structured) or a whole block (unstructured).

    ``count`` is the number of removable granules (KV groups / neurons / weights per row) and
    ``granule_params`` the parameters one granule carries; ``size = count · granule_params``.
    """

    block: int
    kind: str  # "attn" | "ffn" | "block"
    count: int
    granule_params: int

    @property
    def size(self) -> int:
        return self.count * self.granule_params


class Pruner(Protocol):
    """What the environment needs of a pruning engine (both engines below implement it)."""

    units: list[Unit]
    """The prunable units, in action order."""

    def to_unit_sparsity(self, keep: np.ndarray, target_keep_params: float) -> np.ndarray:
        """The per-unit sparsity this engine realises for projected keep ratios (and the kept-parameter target)."""
        ...

    def kept_params(self, unit_sparsity: np.ndarray) -> np.ndarray:
        """Parameters kept per unit at a realisable per-unit sparsity (exact)."""
        ...

    def prune(self, unit_sparsity: np.ndarray) -> None:
        """The cheapest exact pruning for an evaluation; :meth:`restore` undoes it."""
        ...

    def apply(self, unit_sparsity: np.ndarray) -> None:
        """Pruning by masking (every weight keeps its shape; what Calib needs); :meth:`restore` undoes it."""
        ...

    def restore(self) -> None:
        """The dense weights back, bit-identical."""
        ...


def round_to_units(keep: np.ndarray, units: list[Unit], target_keep_params: float) -> np.ndarray:
    """Whole granules kept per unit, as close as possible to ``keep`` and to the global target.

    Floors every ``keep_i · count_i``, then adds single granules to the units with the largest
    fractional remainders, in one pass, while that brings the kept total closer to
    ``target_keep_params``. Each unit moves at most one granule from its exact share, and the final
    kept total is within half of the largest granule of the target: a unit skipped in the pass had a
    granule larger than twice the remaining deficit, and if none was skipped the added granules
    cover the whole initial deficit (it is at most the sum of one granule per unit).
    """
    counts = np.array([u.count for u in units], dtype=np.int64)
    gran = np.array([u.granule_params for u in units], dtype=np.float64)
    exact = np.asarray(keep, np.float64) * counts
    kept = np.floor(exact + 1e-9).astype(np.int64)
    kept = np.minimum(kept, counts)
    remainder = exact - kept
    deficit = target_keep_params - float(kept @ gran)
    order = np.lexsort((np.arange(len(units)), -remainder))  # largest remainder first, ties by index
    for i in order:  # one pass suffices: see the docstring
        if deficit <= 0:
            break
        if kept[i] < counts[i] and gran[i] <= 2 * deficit:
            kept[i] += 1
            deficit -= gran[i]
    return kept


def row_prune_count(sparsity: float, in_features: int) -> int:
    """Weights removed from each row of a linear with ``in_features`` inputs at a block sparsity (nearest whole count)."""
    return min(in_features, int(math.floor(sparsity * in_features + 0.5)))


def unstructured_kept_params(unit_sparsity: np.ndarray, shapes: list[list[tuple[int, int]]]) -> np.ndarray:
    """Exact weights kept per block after per-row rounding; ``shapes[j]``: ``(in_features, out_features)`` of each
    linear of block ``j`` (what :meth:`UnstructuredPruner.kept_params` counts, without the model)."""
    return np.array([sum(n_in * n_out - row_prune_count(float(s), n_in) * n_out for n_in, n_out in block)
                     for s, block in zip(unit_sparsity, shapes)], dtype=np.float64)


def _head_rows(b: Block, granules: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows of q (the query heads of the granules) and of k / v (their KV groups; ``None`` when the granules are single
    query heads, whose one shared key / value head stays) for granule indices."""
    if b.query_head_granules:
        return (granules[:, None] * b.head_dim + torch.arange(b.head_dim)).reshape(-1), None
    r = b.num_heads // b.num_kv_heads
    heads = (granules[:, None] * r + torch.arange(r)).reshape(-1)
    q_rows = (heads[:, None] * b.head_dim + torch.arange(b.head_dim)).reshape(-1)
    kv_rows = (granules[:, None] * b.head_dim + torch.arange(b.head_dim)).reshape(-1)
    return q_rows, kv_rows


class StructuredPruner:
    """Head/KV-group and neuron pruning by masking output-projection columns (exactly undone)."""

    def __init__(self, blocks: list[Block], norms: dict[tuple[int, str], torch.Tensor]) -> None:
        self.blocks = blocks
        self.units: list[Unit] = []
        self._order: list[torch.Tensor] = []  # per unit: granule indices, most important first
        self.importance: list[torch.Tensor] = []
        for b in blocks:
            attn_imp, ffn_imp = structured_importance(b, norms)
            self.units.append(Unit(b.index, "attn", b.attn_granules, self._group_params(b)))
            self.units.append(Unit(b.index, "ffn", b.intermediate_size, self._neuron_params(b)))
            for imp in (attn_imp, ffn_imp):
                self.importance.append(imp.cpu())
                self._order.append(torch.argsort(imp, descending=True, stable=True))
        self._counts = np.array([u.count for u in self.units], dtype=np.float64)
        self._granule_params = np.array([u.granule_params for u in self.units], dtype=np.float64)
        self._saved: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self._swapped: list[tuple[object, str, object]] = []  # (module, attribute, dense value) put back by restore

    @staticmethod
    def _group_params(b: Block) -> int:
        """Parameters of one attention granule: its query rows (with its KV group's key / value rows unless the
        granule is a single query head) and their biases, and its output-projection columns."""
        g, d = b.attn_granules, b.head_dim
        q_rows = b.num_heads * d // g
        rows = q_rows if b.query_head_granules else (b.num_heads + 2 * b.num_kv_heads) * d // g
        biased = any(lin.bias is not None for lin in b.attn_in)
        return rows * b.attn_in[0].in_features + (rows if biased else 0) + b.attn_out.out_features * q_rows

    @staticmethod
    def _neuron_params(b: Block) -> int:
        per_row = sum(lin.in_features + (1 if lin.bias is not None else 0) for lin in b.ffn_in)
        return (2 * per_row if b.fused_gate_up else per_row) + b.ffn_out.out_features

    def to_unit_sparsity(self, keep: np.ndarray, target_keep_params: float) -> np.ndarray:
        """Per-unit sparsity of whole granules closest to ``keep`` and the target (:func:`round_to_units`)."""
        return 1.0 - round_to_units(keep, self.units, target_keep_params) / self._counts

    def granules_kept(self, unit_sparsity: np.ndarray) -> np.ndarray:
        """Whole granules (KV groups / neurons) kept per unit at a per-unit sparsity of whole granules."""
        return np.rint((1.0 - np.asarray(unit_sparsity, np.float64)) * self._counts).astype(np.int64)

    def kept_params(self, unit_sparsity: np.ndarray) -> np.ndarray:
        """Parameters kept per unit (exact)."""
        return self.granules_kept(unit_sparsity) * self._granule_params

    def apply(self, unit_sparsity: np.ndarray) -> None:
        """Prune every unit to its sparsity (most important granules kept); call :meth:`restore` after."""
        if self._saved or self._swapped:
            raise RuntimeError("apply() called twice without restore()")
        kept = self.granules_kept(unit_sparsity)
        with torch.no_grad():
            for i, unit in enumerate(self.units):
                k = int(kept[i])
                if k >= unit.count:
                    continue
                block = self.blocks[unit.block]
                lin = block.attn_out if unit.kind == "attn" else block.ffn_out
                pruned = self._order[i][k:]
                if unit.kind == "attn":
                    width = lin.in_features // unit.count
                    pruned = (pruned[:, None] * width + torch.arange(width)).reshape(-1)
                cols = pruned.to(lin.weight.device)
                self._saved.append((lin, cols, lin.weight.index_select(1, cols)))
                lin.weight.index_fill_(1, cols, 0)

    def prune(self, unit_sparsity: np.ndarray) -> None:
        """The cheapest exact pruning for an evaluation: :meth:`slice` (physical removal)."""
        self.slice(unit_sparsity)

    def slice(self, unit_sparsity: np.ndarray) -> None:
        """Remove the pruned heads / KV groups and neurons physically until :meth:`restore`.

        Each touched linear gets new, smaller weight (and bias) tensors; the dense ones are kept aside
        untouched. On a model already pruned by :meth:`apply` (and compensated by Calib) it keeps the
        current values of the kept columns: :meth:`unslice` then returns to that state. A unit with no head
        group left keeps its most important group with zeroed output
        columns (a module with zero heads cannot run); an FFN with no neuron left runs with width 0.
        """
        if self._swapped:
            raise RuntimeError("slice() called twice without unslice() / restore()")
        kept = self.kept_indices(unit_sparsity)
        with torch.no_grad():
            for j, b in enumerate(self.blocks):
                groups, neurons = kept[2 * j], kept[2 * j + 1]
                if len(groups) < b.attn_granules:
                    self._slice_attention(b, groups, self._order[2 * j])
                if len(neurons) < b.intermediate_size:
                    rows = torch.cat([neurons, b.intermediate_size + neurons]) if b.fused_gate_up else neurons
                    for lin in b.ffn_in:
                        self._slice_linear(lin, rows=rows)
                    self._slice_linear(b.ffn_out, cols=neurons)

    def _slice_attention(self, b: Block, groups: torch.Tensor, order: torch.Tensor) -> None:
        silent = len(groups) == 0
        if silent:
            groups = order[:1]
        q_rows, kv_rows = _head_rows(b, groups)
        heads = len(q_rows) // b.head_dim
        kv_heads = b.num_kv_heads if kv_rows is None else len(kv_rows) // b.head_dim
        if b.fused_qkv:  # rows [q | k | v] of one projection
            q_size, kv_size = b.num_heads * b.head_dim, b.num_kv_heads * b.head_dim
            kv = torch.arange(kv_size) if kv_rows is None else kv_rows
            self._slice_linear(b.attn_in[0], rows=torch.cat([q_rows, q_size + kv, q_size + kv_size + kv]))
        else:
            q, k, v = b.attn_in
            self._slice_linear(q, rows=q_rows)
            if kv_rows is not None:
                self._slice_linear(k, rows=kv_rows)
                self._slice_linear(v, rows=kv_rows)
        self._slice_linear(b.attn_out, cols=q_rows)
        if silent:
            b.attn_out.weight.zero_()
        if b.attention is not None:  # wherever the family reads its head counts (attributes, or its config)
            set_head_counts(b.attention, heads, kv_heads, self._swap)

    def _slice_linear(self, lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
        if rows is not None:
            idx = rows.to(lin.weight.device)
            self._swap(lin, "weight", nn.Parameter(lin.weight.index_select(0, idx), requires_grad=False))
            if lin.bias is not None:
                self._swap(lin, "bias", nn.Parameter(lin.bias.index_select(0, idx), requires_grad=False))
            self._swap(lin, "out_features", len(idx))
        if cols is not None:
            idx = cols.to(lin.weight.device)
            self._swap(lin, "weight", nn.Parameter(lin.weight.index_select(1, idx), requires_grad=False))
            self._swap(lin, "in_features", len(idx))

    def _swap(self, obj: object, name: str, value: object) -> None:
        self._swapped.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def kept_indices(self, unit_sparsity: np.ndarray) -> list[torch.Tensor]:
        """Per unit, the indices (ascending) of the granules kept at a per-unit sparsity."""
        return [torch.sort(self._order[i][: int(k)]).values for i, k in enumerate(self.granules_kept(unit_sparsity))]

    def kept_columns(self, unit_sparsity: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block, the kept input columns (ascending) of ``attn_out`` and of ``ffn_out``."""
        out = []
        for b, (g_idx, n_idx) in zip(self.blocks, zip(*[iter(self.kept_indices(unit_sparsity))] * 2)):
            width = b.attn_out.in_features // b.attn_granules
            cols = (g_idx[:, None] * width + torch.arange(width)).reshape(-1)
            out.append((cols, n_idx))
        return out

    def unslice(self) -> None:
        """Undo :meth:`slice` only: the full-size tensors come back (those of :meth:`apply`, if it ran first)."""
        for obj, name, value in reversed(self._swapped):
            setattr(obj, name, value)
        self._swapped.clear()

    def restore(self) -> None:
        """Undo :meth:`slice` (the dense tensors come back) and :meth:`apply` (the saved columns); bit-identical."""
        self.unslice()
        with torch.no_grad():
            for lin, cols, values in reversed(self._saved):
                lin.weight.index_copy_(1, cols, values)
        self._saved.clear()


def unstructured_ranks(blocks: list[Block], norms: dict[tuple[int, str], torch.Tensor],
                       criterion: str = "wanda") -> dict[str, torch.Tensor]:
    """Per linear (``"<block index>/<name>"``): each weight's rank within its row by the criterion's score, lowest
    first (stable: ties in column order), as ``int16`` (``int32`` for rows of 2¹⁵ inputs or more). What
    :class:`UnstructuredPruner` prunes by; a pure function of the weights and ``norms``, so it can be cached."""
    if criterion not in ("wanda", "magnitude"):
        raise FFPruneError(f"criterion must be 'wanda' or 'magnitude', got {criterion!r}")
    ranks = {}
    for b in blocks:
        for name, lin in b.linears.items():
            if criterion == "wanda":
                score = wanda_scores(lin, norms[(b.index, name)])
            else:
                score = lin.weight.detach().float().abs()
            order = torch.argsort(score, dim=1, stable=True)
            rank_dtype = torch.int16 if lin.in_features < 2**15 else torch.int32
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(lin.in_features, device=order.device).expand_as(order))
            ranks[f"{b.index}/{name}"] = rank.to(rank_dtype)
    return ranks


class UnstructuredPruner:
    """Per-block unstructured sparsity with precomputed per-row ranks (Wanda or magnitude)."""

    def __init__(self, blocks: list[Block], norms: dict[tuple[int, str], torch.Tensor], criterion: str = "wanda",
                 ranks: dict[str, torch.Tensor] | None = None) -> None:
        """``ranks``: :func:`unstructured_ranks` of these blocks, norms and criterion when already computed (a disk
        cache); computed here otherwise."""
        if criterion not in ("wanda", "magnitude"):
            raise FFPruneError(f"criterion must be 'wanda' or 'magnitude', got {criterion!r}")
        self.blocks = blocks
        self.criterion = criterion
        self.units: list[Unit] = []
        self._linears: list[list[tuple[nn.Linear, torch.Tensor, torch.Tensor]]] = []
        self._active = False
        ranks = unstructured_ranks(blocks, norms, criterion) if ranks is None else ranks
        for b in blocks:
            entries = []
            for name, lin in b.linears.items():
                rank = ranks[f"{b.index}/{name}"].to(lin.weight.device)
                if rank.shape != lin.weight.shape:
                    raise FFPruneError(f"ranks of {b.index}/{name} have shape {tuple(rank.shape)}, the weight "
                                       f"{tuple(lin.weight.shape)}: not this model's ranks")
                entries.append((lin, rank, lin.weight.detach().clone()))
            self._linears.append(entries)
            n_weights = sum(lin.weight.numel() for lin, _, _ in entries)
            self.units.append(Unit(b.index, "block", n_weights, 1))
        self._shapes = [[(lin.in_features, lin.out_features) for lin, _, _ in entries] for entries in self._linears]

    def row_prune_counts(self, sparsity: float, lin: nn.Linear) -> int:
        """Weights removed from each row of ``lin`` at a block sparsity ``sparsity`` (:func:`row_prune_count`)."""
        return row_prune_count(sparsity, lin.in_features)

    @property
    def linear_shapes(self) -> list[list[tuple[int, int]]]:
        """Per block, ``(in_features, out_features)`` of each linear the block's sparsity applies to."""
        return self._shapes

    def to_unit_sparsity(self, keep: np.ndarray, target_keep_params: float) -> np.ndarray:
        """Per-unit sparsity ``1 - keep``: any block sparsity is realisable as it is (the per-row rounding happens in
        :meth:`apply`, :meth:`kept_params` counts it), so the kept-parameter target plays no part here."""
        return np.clip(1.0 - np.asarray(keep, np.float64), 0.0, 1.0)

    def kept_params(self, unit_sparsity: np.ndarray) -> np.ndarray:
        """Exact weights kept per block after per-row rounding (:func:`unstructured_kept_params`)."""
        return unstructured_kept_params(unit_sparsity, self.linear_shapes)

    def prune(self, unit_sparsity: np.ndarray) -> None:
        """The cheapest exact pruning for an evaluation: :meth:`apply` (masks; dense kernels run either way)."""
        self.apply(unit_sparsity)

    def apply(self, unit_sparsity: np.ndarray) -> None:
        """Zero the lowest-ranked ``round(s · in_features)`` weights of every row of every linear of each block."""
        if self._active:
            raise RuntimeError("apply() called twice without restore()")
        self._active = True
        with torch.no_grad():
            for s, entries in zip(unit_sparsity, self._linears):
                for lin, rank, _dense in entries:
                    k = self.row_prune_counts(float(s), lin)
                    if k > 0:  # times the keep mask: half masked_fill_'s time, the same numbers (w·1 = w, w·0 = ±0)
                        lin.weight.mul_(rank >= k)

    def restore(self) -> None:
        """Copy the dense weights back (bit-identical)."""
        with torch.no_grad():
            for entries in self._linears:
                for lin, _rank, dense in entries:
                    lin.weight.copy_(dense)
        self._active = False
