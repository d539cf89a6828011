"""Pruned checkpoints: the model a search found, as a Hugging Face folder that loads again.

:func:`save_pruned` writes (atomically: a temporary folder renamed into place)

* ``model.safetensors`` + ``config.json`` + the tokenizer files;
* structured: the pruned heads / KV groups and FFN neurons are physically gone. ``config.json`` keeps the
  original family and sizes and adds ``ffprune_layers`` (per-layer widths), ``architectures`` /
  ``auto_map`` naming ``FFPruned<Family>ForCausalLM`` from ``modeling_ffprune.py`` (a copy of
  :mod:`ffenv.lm.pruned_modeling`), so ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``
  loads it without ffprune;
* unstructured: the original shapes with the pruned weights zero (a plain checkpoint of the family) and
  ``recipe.yaml``, the per-layer sparsities as an llm-compressor recipe (``WandaPruningModifier`` with one
  ``sparsity`` per decoder layer), the format the vLLM / llm-compressor tool chain that runs sparse
  checkpoints reads;
* ``ffprune_export.json`` (machine-readable: allocation, search provenance, measured figures) and a model
  card ``README.md``.

:func:`ffenv.load_pruned` loads such a folder (``gym.make(..., model=DIR)`` too: :func:`ffenv.lm.models.load_model`
reads ``ffprune_layers``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ffenv.errors import FFPruneError
from ffenv.io import atomic_write_dir, jsonable
from ffenv.lm import pruned_modeling
from ffenv.lm.models import EXPORT_FILE, decoder_blocks
from ffenv.lm.pruned_modeling import LAYERS_KEY, class_name, decoder_layers, pruned_class
from ffprune.agents.tools.timing import median_seconds

MODELING_FILE = "modeling_ffprune.py"
RECIPE_FILE = "recipe.yaml"


def layer_widths(model: nn.Module) -> list[dict[str, int]]:
    """Per decoder layer: attention heads, KV heads and FFN neurons, read from the projections' sizes."""
    return [{"num_attention_heads": b.num_heads, "num_key_value_heads": b.num_kv_heads,
             "intermediate_size": b.intermediate_size} for b in decoder_blocks(model)]


def matmul_params(model: nn.Module) -> int:
    """Weights of every ``nn.Linear`` (the LM head counted even when tied): what a forward's FLOPs scale with."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def forward_tokens_per_second(model: nn.Module, tokens: torch.Tensor, repeats: int = 5) -> float:
    """Median tokens per second of ``model(tokens)`` (one batch, logits included), after one warm-up
    (:func:`ffprune.agents.tools.timing.median_seconds` on the model's device)."""
    device = next(model.parameters()).device
    x = tokens.to(device)
    with torch.inference_mode():
        seconds = median_seconds(lambda: model(input_ids=x, use_cache=False), device, repeats=repeats, warmup=1)
    return x.numel() / seconds


def recipe_yaml(model: nn.Module, layer_sparsity: list[float]) -> str:
    """An llm-compressor recipe with these per-decoder-layer sparsities (unstructured Wanda masks)."""
    layer_class = type(decoder_layers(model)[0]).__name__
    values = ", ".join(f"{s:.6f}" for s in layer_sparsity)
    return (
        "# Per-layer unstructured sparsity found by ffprune (one value per decoder layer, in order).\n"
        "# Format: an llm-compressor recipe (WandaPruningModifier, sparsity given as a list over the\n"
        "# sequential targets). The checkpoint beside it already holds these masks (pruned weights are 0).\n"
        "sparsity_stage:\n"
        "  sparsity_modifiers:\n"
        "    WandaPruningModifier:\n"
        f"      sparsity: [{values}]\n"
        "      mask_structure: \"0:0\"\n"
        f"      sequential_targets: [\"{layer_class}\"]\n"
        "      targets: [\"Linear\"]\n"
        "      ignore: [\"re:.*lm_head\"]\n"
    )


def save_pruned(model: nn.Module, tokenizer: Any, out: str | Path, info: dict[str, Any], *, force: bool = False,
                check: Any = None) -> Path:
    """Write ``model`` (a pruned copy, e.g. :meth:`ffenv.FFPruneEnv.pruned_model`) as an export folder.

    Args:
        model: the pruned model; structured models may have layers of different widths.
        tokenizer: saved beside it.
        out: the folder; must be absent or empty unless ``force`` (replaced only once the new one is complete).
        info: JSON-able facts for ``ffprune_export.json`` and the card; ``info["mode"]`` is ``"structured"`` or
            ``"unstructured"``, ``info["allocation"]["unit_sparsity"]`` the sparsity of each action entry (per
            decoder layer when unstructured).
        check: optional ``check(tmp_folder) -> dict``, run on the written folder before it is put in place
            (e.g. reload and measure); its result is added to ``info["reloaded"]``, and an exception aborts
            the export with nothing written.
    """
    mode = info.get("mode")
    if mode not in ("structured", "unstructured"):
        raise FFPruneError(f"info['mode'] must be 'structured' or 'unstructured', got {mode!r}")
    family = model.config.model_type
    try:
        pruned = pruned_class(family)
    except ValueError as err:
        raise FFPruneError(f"model family {family!r} cannot be exported: {err}") from None

    def write(tmp: Path) -> None:
        if mode == "structured":
            setattr(model.config, LAYERS_KEY, layer_widths(model))
            model.config.auto_map = {"AutoModelForCausalLM": f"{Path(MODELING_FILE).stem}.{class_name(family)}"}
            model.__class__ = pruned  # same module tree; save_pretrained records the class name
            shutil.copyfile(pruned_modeling.__file__, tmp / MODELING_FILE)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if mode == "unstructured":
            (tmp / RECIPE_FILE).write_text(recipe_yaml(model, info["allocation"]["unit_sparsity"]))
        files = sorted([p.name for p in tmp.iterdir()] + [EXPORT_FILE, "README.md"])
        facts = {**info, "files": files, "weights_bytes": sum(p.stat().st_size for p in tmp.glob("*.safetensors"))}
        if "weights_bytes" in facts.get("figures", {}):
            facts["figures"]["weights_bytes"]["pruned"] = facts["weights_bytes"]
        (tmp / EXPORT_FILE).write_text(json.dumps(facts, indent=2, default=jsonable))
        if check is not None:  # on the complete folder, as a user would load it
            facts["reloaded"] = check(tmp)
            (tmp / EXPORT_FILE).write_text(json.dumps(facts, indent=2, default=jsonable))
        (tmp / "README.md").write_text(model_card(facts))
        mode_bits = 0o666 & ~_umask()
        for f in tmp.iterdir():  # some writers create 0600 files; an export is meant to be shared
            f.chmod(mode_bits)

    return atomic_write_dir(out, write, force=force)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def model_card(facts: dict[str, Any]) -> str:
    """The export's ``README.md``: a Hugging Face model card with the allocation, the search and the figures."""
    alloc, search, fig = facts["allocation"], facts.get("search", {}), facts.get("figures", {})
    structured = facts["mode"] == "structured"
    lines = ["---", "library_name: transformers", "tags: [pruned, ffprune, "
             f"{'structured' if structured else 'unstructured'}-sparsity]", f"base_model: {facts.get('base_model')}", "---", "",
             f"# {facts.get('base_model')} pruned by ffprune ({facts['mode']}, sparsity {alloc['sparsity']:.4f})", ""]
    if structured:
        lines += ["Heads / KV groups and FFN neurons are physically removed; every layer has its own width",
                  "(`ffprune_layers` in `config.json`). Load it with",
                  "", "```python", "from transformers import AutoModelForCausalLM",
                  "model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)  # modeling_ffprune.py",
                  "# or, with ffprune installed: model, tokenizer = ffenv.load_pruned(DIR)", "```", ""]
    else:
        lines += ["Same shapes as the original model, pruned weights set to zero (a plain checkpoint:",
                  "`AutoModelForCausalLM.from_pretrained(DIR)`). `recipe.yaml` gives the per-layer sparsities as an",
                  "llm-compressor recipe.", ""]
    lines += ["## Figures (measured at export)", "", "| | dense | pruned |", "|---|---|---|"]
    for key, label in (("params", "parameters"), ("matmul_params", "matmul weights (FLOPs per token)"),
                       ("weights_bytes", "weight file bytes (dense: parameters x dtype size)"), ("eval_ppl", "held-out ppl"),
                       ("tokens_per_s", "forward tokens/s")):
        if key in fig:
            d, p = fig[key]["dense"], fig[key]["pruned"]
            fmt = (lambda v: f"{v:,.2f}") if isinstance(d, float) else (lambda v: f"{v:,}")
            lines.append(f"| {label} | {fmt(d)} | {fmt(p)} |")
    if "speed_setup" in fig:
        lines += ["", f"Speed: {fig['speed_setup']}."]
    if facts.get("calibrated"):
        lines += ["", f"Post-pruning calibration (ridge, alpha {facts.get('calib_alpha')}) is folded into the kept weights."]
    lines += ["", "## Allocation", ""]
    if structured:
        lines += ["| layer | heads | KV groups | FFN neurons | attention sparsity | FFN sparsity |", "|---|---|---|---|---|---|"]
        s = alloc["unit_sparsity"]  # attn.0, ffn.0, attn.1, ...
        for i, (w, d) in enumerate(zip(alloc["layers"], alloc["dense_layers"])):
            lines.append(f"| {i} | {w['num_attention_heads']} / {d['num_attention_heads']} | {w['num_key_value_heads']} / "
                         f"{d['num_key_value_heads']} | {w['intermediate_size']} / {d['intermediate_size']} | "
                         f"{s[2 * i]:.4f} | {s[2 * i + 1]:.4f} |")
    else:
        lines += ["| layer | sparsity |", "|---|---|"] + [f"| {i} | {s:.4f} |" for i, s in enumerate(alloc["unit_sparsity"])]
    if search:
        lines += ["", "## Search", ""] + [f"- {k}: `{v}`" for k, v in search.items()]
    return "\n".join(lines) + "\n"
