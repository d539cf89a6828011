"""Causal LMs whose decoder layers have their own widths: the model classes of an ``ffprune export`` folder.

A structurally pruned Llama / Mistral / OPT keeps, per decoder layer, its own number of attention heads,
KV groups and FFN neurons; Hugging Face configs describe one width for all layers. The exported
``config.json`` is the original model's config (same ``model_type``, head size, hidden size...) plus

* ``ffprune_layers``: one ``{"num_attention_heads", "num_key_value_heads", "intermediate_size"}`` per layer;
* ``architectures`` / ``auto_map`` naming the classes below, whose only change to the family's class is
  that the layers are built at those widths (same forward, same weight names).

This file imports only torch and transformers and is copied into the exported folder as
``modeling_ffprune.py``, so the folder loads without ffprune installed::

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

(``ffenv.load_pruned(DIR)`` loads it with ffprune's copy of these classes, no remote code involved.)
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

LAYERS_KEY = "ffprune_layers"
LAYER_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


def _resized(lin: nn.Linear, in_features: int | None = None, out_features: int | None = None) -> nn.Linear:
    """A new linear of the given size (same bias, device and dtype); the weights are loaded afterwards."""
    w = lin.weight
    return nn.Linear(lin.in_features if in_features is None else in_features,
                     lin.out_features if out_features is None else out_features,
                     bias=lin.bias is not None, device=w.device, dtype=w.dtype)


def resize_layers(model: nn.Module, layers: list[dict[str, Any]]) -> None:
    """Rebuild ``model``'s decoder layers at per-layer widths (``layers``: one dict of ``LAYER_FIELDS`` each)."""
    cfg = model.config
    decoder = model.model.decoder.layers if cfg.model_type == "opt" else model.model.layers
    if not isinstance(layers, list) or len(layers) != len(decoder):
        raise ValueError(f"config.{LAYERS_KEY} must list one entry per decoder layer ({len(decoder)}), got {layers!r}")
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    for i, (layer, spec) in enumerate(zip(decoder, layers)):
        # an FFN may have no neuron left (width 0: it adds nothing); attention keeps at least one head group (the
        # pruning engine keeps one with zeroed output columns where it removed all: a module with zero heads cannot run)
        if not isinstance(spec, dict) or any(not isinstance(spec.get(k), int) or spec[k] < (k != "intermediate_size")
                                             for k in LAYER_FIELDS):
            raise ValueError(f"config.{LAYERS_KEY}[{i}] must give integers {LAYER_FIELDS}, >= 1 (heads) and >= 0 "
                             f"(neurons), got {spec!r}")
        h, kv, m = (spec[k] for k in LAYER_FIELDS)
        attn = layer.self_attn
        attn.q_proj = _resized(attn.q_proj, out_features=h * head_dim)
        attn.k_proj = _resized(attn.k_proj, out_features=kv * head_dim)
        attn.v_proj = _resized(attn.v_proj, out_features=kv * head_dim)
        if cfg.model_type == "opt":
            attn.out_proj = _resized(attn.out_proj, in_features=h * head_dim)
            attn.num_heads = h  # OPT reshapes by num_heads (Llama / Mistral infer the head count)
            layer.fc1 = _resized(layer.fc1, out_features=m)
            layer.fc2 = _resized(layer.fc2, in_features=m)
        else:
            attn.o_proj = _resized(attn.o_proj, in_features=h * head_dim)
            mlp = layer.mlp
            mlp.gate_proj = _resized(mlp.gate_proj, out_features=m)
            mlp.up_proj = _resized(mlp.up_proj, out_features=m)
            mlp.down_proj = _resized(mlp.down_proj, in_features=m)


_FAMILIES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "opt": "OPTForCausalLM"}
CLASS_NAMES = {family: f"FFPruned{base}" for family, base in _FAMILIES.items()}


@functools.cache
def pruned_class(model_type: str) -> type[nn.Module]:
    """The family's ``*ForCausalLM`` with per-layer widths from ``config.ffprune_layers`` (same forward and weight
    names; only ``__init__`` differs). Built on first use, so importing this module does not import the
    families' modelling code."""
    if model_type not in _FAMILIES:
        raise ValueError(f"model_type must be one of {sorted(_FAMILIES)}, got {model_type!r}")
    import transformers

    base = getattr(transformers, _FAMILIES[model_type])

    def __init__(self: nn.Module, config: Any) -> None:
        base.__init__(self, config)
        resize_layers(self, getattr(config, LAYERS_KEY))

    name = CLASS_NAMES[model_type]
    return type(name, (base,), {"__init__": __init__, "__module__": __name__, "__qualname__": name,
                                "__doc__": f"``{base.__name__}`` with per-layer widths from ``config.{LAYERS_KEY}``."})


def __getattr__(name: str) -> type[nn.Module]:
    """``FFPrunedLlamaForCausalLM`` etc. as module attributes (what ``auto_map`` and pickle look up)."""
    for model_type, class_name in CLASS_NAMES.items():
        if name == class_name:
            return pruned_class(model_type)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
