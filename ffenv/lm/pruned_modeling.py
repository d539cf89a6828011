"""Decoder layers by role, and causal LMs whose decoder layers have their own widths (``ffprune export`` folders).

**Roles.** A decoder layer of a Hugging Face causal LM holds an attention (query / key / value projections, separate
or fused into one ``qkv_proj``, and an output projection) and an MLP (gated — ``gate_proj`` and ``up_proj``, or one
fused ``gate_up_proj`` — or not — ``fc1``), whose down projection (``down_proj`` / ``fc2``) closes it.
:func:`decoder_layers` finds the layer list and :func:`layer_roles` the modules playing each role, by the names the
transformers families give them (:data:`ROLE_NAMES`: Llama, Mistral, Qwen2 / Qwen3, Gemma 2 / 3, Phi / Phi-3, OPT
and the many families built the same way); a layer missing a role is a one-line ``ValueError`` naming it. What only
some families have needs no entry: q/k-norms act per head (their size is the head size, which pruning keeps), biases
are sliced with their rows, parallel attention / MLP blocks and tied embeddings are untouched by head and neuron
pruning. A family's attention may read its head counts from attributes (OPT's ``num_heads``, the
``num_key_value_groups`` of the Llama-style families) or, with a fused ``qkv_proj``, from its config (Phi-3 splits
the fused rows at ``config.num_attention_heads · head_dim``): :func:`set_head_counts` sets all three.

**Per-layer widths.** A structurally pruned model keeps, per decoder layer, its own number of attention heads, KV
heads and FFN neurons; Hugging Face configs describe one width for all layers. The exported ``config.json`` is the
original model's config (same ``model_type``, head size, hidden size...) plus

* ``ffprune_layers``: one ``{"num_attention_heads", "num_key_value_heads", "intermediate_size"}`` per layer;
* ``architectures`` / ``auto_map`` naming the classes below, whose only change to the family's class is
  that the layers are built at those widths (same forward, same weight names).

This file imports only torch and transformers and is copied into the exported folder as
``modeling_ffprune.py``, so the folder loads without ffprune installed::

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

(``ffenv.load_pruned(DIR)`` loads it with ffprune's copy of these classes, no remote code involved.)
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

from torch import nn

LAYERS_KEY = "ffprune_layers"
LAYER_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
CLASS_PREFIX = "FFPruned"

LAYER_LISTS = ("model.layers", "model.decoder.layers", "model.language_model.layers")
"""Where the families keep their decoder layers (dotted attributes from the ``*ForCausalLM``)."""
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "attention": ("self_attn", "attn", "self_attention", "attention"),
    "q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",), "qkv": ("qkv_proj",),
    "o": ("o_proj", "out_proj", "dense"),
    "mlp": ("mlp", "feed_forward"),
    "gate": ("gate_proj",), "up": ("up_proj",), "gate_up": ("gate_up_proj",), "fc_in": ("fc1",),
    "down": ("down_proj", "fc2"),
}
"""The attribute names each role goes by across the transformers families (the one declared table)."""


@dataclass(frozen=True)
class Roles:
    """The attribute names of one decoder layer's roles (:func:`layer_roles`)."""

    attention: str
    """The attention module, on the layer."""
    q_k_v: tuple[str, ...]
    """On the attention: ``(q, k, v)`` projections, or ``(qkv,)`` for one fused projection (rows ``[q | k | v]``)."""
    o: str
    """The attention's output projection (its input columns are the heads)."""
    mlp: str | None
    """The module holding the FFN linears, on the layer (``None``: the layer itself, as in OPT)."""
    ffn_in: tuple[str, ...]
    """On the MLP: ``(gate, up)``, ``(fc1,)``, or ``(gate_up,)`` fused (rows ``[gate | up]``)."""
    ffn_out: str
    """The down projection (its input columns are the neurons)."""

    @property
    def fused_qkv(self) -> bool:
        return len(self.q_k_v) == 1

    @property
    def fused_gate_up(self) -> bool:
        return len(self.ffn_in) == 1 and self.ffn_in[0] in ROLE_NAMES["gate_up"]


def _child(owner: nn.Module, role: str, kind: type[nn.Module] = nn.Linear) -> str | None:
    """The first of the role's names (:data:`ROLE_NAMES`) under which ``owner`` holds a ``kind`` module, else ``None``."""
    return next((name for name in ROLE_NAMES[role] if isinstance(getattr(owner, name, None), kind)), None)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM (the first of :data:`LAYER_LISTS` it has, else its one list of
    ``config.num_hidden_layers`` modules); ``ValueError`` otherwise."""
    for path in LAYER_LISTS:
        node: Any = model
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, nn.ModuleList) and len(node):
            return node
    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    for module in model.modules():  # elsewhere: the one list of num_hidden_layers modules (GPT-2's transformer.h)
        if isinstance(module, nn.ModuleList) and n and len(module) == n:
            return module
    kind = getattr(config, "model_type", type(model).__name__)
    raise ValueError(f"a {kind!r} model has no list of decoder layers (looked for {', '.join(LAYER_LISTS)} and for "
                     f"{n} layers anywhere)")


def layer_roles(layer: nn.Module) -> Roles:
    """The roles of a decoder layer, found by name (:data:`ROLE_NAMES`); a ``ValueError`` names the first missing."""
    where = type(layer).__name__
    attention = _child(layer, "attention", nn.Module)
    if attention is None:
        raise ValueError(f"{where} has no attention module (looked for {ROLE_NAMES['attention']})")
    attn = getattr(layer, attention)
    q_k_v = tuple(_child(attn, r) for r in ("q", "k", "v"))
    if None in q_k_v:
        fused = _child(attn, "qkv")
        if fused is None:
            raise ValueError(f"{where}.{attention} ({type(attn).__name__}) has no nn.Linear query / key / value "
                             f"projections (looked for q_proj, k_proj, v_proj or a fused {ROLE_NAMES['qkv'][0]})")
        q_k_v = (fused,)
    o = _child(attn, "o")
    if o is None:
        raise ValueError(f"{where}.{attention} has no nn.Linear output projection (looked for {ROLE_NAMES['o']})")
    mlp = _child(layer, "mlp", nn.Module)
    owner = layer if mlp is None else getattr(layer, mlp)
    gate, up = _child(owner, "gate"), _child(owner, "up")
    ffn_in: tuple[str, ...] | None = (gate, up) if gate and up else None
    if ffn_in is None:
        single = _child(owner, "gate_up") or _child(owner, "fc_in")
        ffn_in = (single,) if single else None
    down = _child(owner, "down")
    if ffn_in is None or down is None:
        raise ValueError(f"{where} has no MLP of nn.Linear projections (looked for gate_proj + up_proj, gate_up_proj "
                         f"or fc1, then {ROLE_NAMES['down']}, on the layer or its {ROLE_NAMES['mlp']})")
    return Roles(attention, q_k_v, o, mlp, ffn_in, down)  # type: ignore[arg-type]


def head_dim(config: Any) -> int:
    """The attention head size a config declares (``head_dim``, else ``hidden_size // num_attention_heads``)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def set_head_counts(attention: nn.Module, heads: int, kv_heads: int, setter: Any = setattr) -> None:
    """Tell an attention module its head counts wherever its family reads them: the ``num_heads`` /
    ``num_key_value_heads`` / ``num_key_value_groups`` attributes it has, and, for a fused ``qkv_proj`` (which the
    forward splits by ``config.num_attention_heads``), a config of its own. ``setter(obj, name, value)`` makes each
    change (the pruning engine passes one that records it, to undo it)."""
    for name, value in (("num_heads", heads), ("num_key_value_heads", kv_heads),
                        ("num_key_value_groups", heads // kv_heads)):
        if isinstance(getattr(attention, name, None), int):
            setter(attention, name, value)
    if isinstance(getattr(attention, "qkv_proj", None), nn.Linear) and getattr(attention, "config", None) is not None:
        own = copy.copy(attention.config)  # the model's config is shared by every layer
        own.num_attention_heads, own.num_key_value_heads = heads, kv_heads
        setter(attention, "config", own)


def _resized(lin: nn.Linear, in_features: int | None = None, out_features: int | None = None) -> nn.Linear:
    """A new linear of the given size (same bias, device and dtype); the weights are loaded afterwards."""
    w = lin.weight
    return nn.Linear(lin.in_features if in_features is None else in_features,
                     lin.out_features if out_features is None else out_features,
                     bias=lin.bias is not None, device=w.device, dtype=w.dtype)


def resize_layers(model: nn.Module, layers: list[dict[str, Any]]) -> None:
    """Rebuild ``model``'s decoder layers at per-layer widths (``layers``: one dict of ``LAYER_FIELDS`` each)."""
    decoder = decoder_layers(model)
    if not isinstance(layers, list) or len(layers) != len(decoder):
        raise ValueError(f"config.{LAYERS_KEY} must list one entry per decoder layer ({len(decoder)}), got {layers!r}")
    d = head_dim(model.config)
    for i, (layer, spec) in enumerate(zip(decoder, layers)):
        # an FFN may have no neuron left (width 0: it adds nothing); attention keeps at least one head group (the
        # pruning engine keeps one with zeroed output columns where it removed all: a module with zero heads cannot run)
        if not isinstance(spec, dict) or any(not isinstance(spec.get(k), int) or spec[k] < (k != "intermediate_size")
                                             for k in LAYER_FIELDS):
            raise ValueError(f"config.{LAYERS_KEY}[{i}] must give integers {LAYER_FIELDS}, >= 1 (heads) and >= 0 "
                             f"(neurons), got {spec!r}")
        h, kv, m = (spec[k] for k in LAYER_FIELDS)
        roles = layer_roles(layer)
        attn = getattr(layer, roles.attention)
        if roles.fused_qkv:
            setattr(attn, roles.q_k_v[0], _resized(getattr(attn, roles.q_k_v[0]), out_features=(h + 2 * kv) * d))
        else:
            for name, heads in zip(roles.q_k_v, (h, kv, kv)):
                setattr(attn, name, _resized(getattr(attn, name), out_features=heads * d))
        setattr(attn, roles.o, _resized(getattr(attn, roles.o), in_features=h * d))
        set_head_counts(attn, h, kv)
        mlp = layer if roles.mlp is None else getattr(layer, roles.mlp)
        width = 2 * m if roles.fused_gate_up else m
        for name in roles.ffn_in:
            setattr(mlp, name, _resized(getattr(mlp, name), out_features=width))
        setattr(mlp, roles.ffn_out, _resized(getattr(mlp, roles.ffn_out), in_features=m))


def causal_lm_class_name(model_type: str) -> str:
    """The transformers ``*ForCausalLM`` class of a ``model_type`` (``ValueError`` when it has none)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if not isinstance(name, str):
        raise ValueError(f"model_type {model_type!r} has no causal-LM class in transformers")
    return name


def class_name(model_type: str) -> str:
    """The name of a family's class with per-layer widths (``FFPrunedLlamaForCausalLM``, ...)."""
    return CLASS_PREFIX + causal_lm_class_name(model_type)


def pruned_class(model_type: str) -> type[nn.Module]:
    """The family's ``*ForCausalLM`` with per-layer widths from ``config.ffprune_layers`` (same forward and weight
    names; only ``__init__`` differs). Built on first use, so importing this module does not import the
    families' modelling code."""
    return _pruned(causal_lm_class_name(model_type))


@functools.cache
def _pruned(base_name: str) -> type[nn.Module]:
    import transformers

    base = getattr(transformers, base_name)

    def __init__(self: nn.Module, config: Any) -> None:
        base.__init__(self, config)
        resize_layers(self, getattr(config, LAYERS_KEY))

    name = CLASS_PREFIX + base_name
    return type(name, (base,), {"__init__": __init__, "__module__": __name__, "__qualname__": name,
                                "__doc__": f"``{base.__name__}`` with per-layer widths from ``config.{LAYERS_KEY}``."})


def __getattr__(name: str) -> type[nn.Module]:
    """``FFPrunedLlamaForCausalLM`` etc. as module attributes (what ``auto_map`` and pickle look up)."""
    if name.startswith(CLASS_PREFIX) and name.endswith("ForCausalLM"):
        return _pruned(name[len(CLASS_PREFIX):])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
