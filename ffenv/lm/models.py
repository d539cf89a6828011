"""Models: the bundled tiny zoo, Hugging Face loading, and a uniform view of decoder blocks.

:func:`load_model` accepts a bundled name (``tiny-llama``, ``tiny-mistral``, ``tiny-opt``), a named real model
(``smollm2-135m``, fetched and converted once: :mod:`ffenv.lm.sources`), a local GGUF file, a local checkpoint
folder, or a Hugging Face hub id (``meta-llama/Llama-2-7b-hf``, ``mistralai/Mistral-7B-v0.1``, ``facebook/opt-125m``...).
:func:`decoder_blocks` finds each decoder layer's parts by role (:mod:`ffenv.lm.pruned_modeling`), so the pruning
code sees one shape for every family: per block, the attention projections, the FFN input projections and the two
*output* projections whose input columns carry the prunable units.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ffenv.errors import FFPruneError
from ffenv.lm.pruned_modeling import LAYERS_KEY, decoder_layers, head_dim, layer_roles, pruned_class
from ffenv.lm.sources import PACKAGED_MODELS, gguf_fingerprint, read_source, resolve_real_source

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "zoo"
EXPORT_FILE = "ffprune_export.json"
"""What marks a folder written by ``ffprune export`` (its facts, as JSON)."""
BUNDLED_MODELS = ("tiny-llama", "tiny-mistral", "tiny-opt")
TESTED_FAMILIES = ("llama", "mistral", "opt", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "phi")
"""The ``model_type`` families the engines are tested on (tests/test_families.py); others built alike work too."""

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def bundled_path(name: str) -> Path:
    """Folder of a bundled model; ``ValueError`` listing the bundled names for anything else."""
    if name not in BUNDLED_MODELS:
        raise FFPruneError(f"model {name!r} is not bundled; bundled models are {list(BUNDLED_MODELS)}")
    path = BUNDLED_DIR / name
    if not (path / "config.json").exists():
        raise FFPruneError(f"bundled model {name!r} is missing its files under {path}; reinstall ffprune")
    return path


def bundled_card(name: str) -> dict[str, Any]:
    """The model card (``card.json``) of a bundled model: config, training and dense perplexities (``dense_ppl``:
    ``seq_len``, ``reward``, ``eval``; a card written when the reward split was called ``calib`` is read with the new
    name)."""
    card = json.loads((bundled_path(name) / "card.json").read_text())
    dense = card.get("dense_ppl", {})
    if "calib" in dense and "reward" not in dense:
        card["dense_ppl"] = {("reward" if k == "calib" else k): v for k, v in dense.items()}
    return card


def weights_fingerprint(name_or_path: str) -> str | None:
    """A short identity of a model's weights, stored with every search result and bench folder so results
    computed on other weights are never mixed in (e.g. after the bundled zoo is retrained).

    Bundled names and local folders: SHA-256 over the weight files (``*.safetensors``, ``*.bin``; names and
    bytes). Named real models and GGUF files: ``gguf:<SHA-256 of the GGUF file>`` (recorded by the conversion).
    Hub ids: ``hub:<id>@<commit>`` of the locally cached snapshot (``None`` when not cached yet). A named real model's
    is known from its declared file hash, so asking for it fetches nothing (a surrogate env of a real task checks it).
    """
    if isinstance(name_or_path, str) and name_or_path in PACKAGED_MODELS:
        return gguf_fingerprint(PACKAGED_MODELS[name_or_path].gguf_sha256)
    source = _resolve_source(name_or_path)
    folder = Path(source)
    converted = read_source(folder)
    if converted is not None and "fingerprint" in converted:
        return str(converted["fingerprint"])
    if not folder.exists():  # a hub id
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "config.json")
        except Exception:  # noqa: BLE001 - any hub-library failure just means "unknown"
            return None
        if not isinstance(cached, str):
            return None
        return f"hub:{source}@{Path(cached).parent.name}"
    files = sorted(f for pattern in ("*.safetensors", "*.bin") for f in folder.glob(pattern))
    if not files:
        raise FFPruneError(f"model path {source!r} has no weight files (*.safetensors / *.bin)")
    return _hash_files(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=16)
def _hash_files(files: tuple[tuple[str, int, int], ...]) -> str:
    """SHA-256 (names and bytes) of weight files, memoised on (path, size, mtime): a bench hashes a large
    local checkpoint once per process, not once per cell, and a rewritten file is hashed again."""
    import hashlib

    digest = hashlib.sha256()
    for path, _size, _mtime in files:
        digest.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` → CUDA when available, else CPU; otherwise validated ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise FFPruneError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FFPruneError(f"device={device!r} but CUDA is not available on this machine; use device='cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"`` → float32 on CPU, bfloat16 on CUDA; strings like ``"bf16"`` are accepted."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise FFPruneError(f"dtype must be one of float32, bfloat16, float16, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise FFPruneError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")


def _resolve_source(name_or_path: str) -> str:
    if not isinstance(name_or_path, str) or not name_or_path:
        raise FFPruneError(f"model must be a bundled name {list(BUNDLED_MODELS)}, a named real model "
                           f"{sorted(PACKAGED_MODELS)}, a .gguf file, a local path or a hub id; got {name_or_path!r}")
    if name_or_path in BUNDLED_MODELS:
        return str(bundled_path(name_or_path))
    real = resolve_real_source(name_or_path)
    if real is not None:
        return real
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FFPruneError(f"model path {str(path)!r} has no config.json (not a Hugging Face checkpoint folder)")
        return str(path)
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~")):
        return name_or_path  # a hub id
    raise FFPruneError(
        f"unknown model {name_or_path!r}: use a bundled name {list(BUNDLED_MODELS)}, a named real model "
        f"{sorted(PACKAGED_MODELS)}, a .gguf file, an existing local checkpoint folder, or a hub id like "
        "'meta-llama/Llama-2-7b-hf'"
    )


def load_model(
    name_or_path: str = "tiny-llama",
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "auto",
) -> tuple[nn.Module, Any]:
    """Load a causal LM and its tokenizer, in eval mode with gradients off.

    Args:
        name_or_path: bundled name, local checkpoint folder, or Hugging Face hub id.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        dtype: ``"auto"`` (float32 on CPU, bfloat16 on CUDA), ``"float32"``, ``"bfloat16"``, ``"float16"``.

    Raises:
        FFPruneError: unknown name, missing path, unsupported family, or a hub id that cannot be fetched.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = _resolve_source(name_or_path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as err:
        raise FFPruneError(
            f"model {name_or_path!r} could not be loaded ({err}); bundled models are {list(BUNDLED_MODELS)}"
        ) from err
    check_prunable(config, name_or_path)
    # an `ffprune export` folder has per-layer widths (ffenv.lm.pruned_modeling)
    cls = pruned_class(config.model_type) if hasattr(config, LAYERS_KEY) else AutoModelForCausalLM
    try:
        model = cls.from_pretrained(source, dtype=dt)
    except Exception as err:  # noqa: BLE001 - corrupt/truncated weight files, shape mismatches, hub errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise FFPruneError(f"model {name_or_path!r}: the weights could not be loaded ({type(err).__name__}: {first[:200]}); "
                           "the checkpoint may be corrupt or incomplete") from err
    model.to(dev).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model, tokenizer


def stored_dtype(name_or_path: str) -> torch.dtype | None:
    """The dtype a checkpoint's weights are stored in (its config's ``dtype``), if it says so."""
    from transformers import AutoConfig

    try:
        value = getattr(AutoConfig.from_pretrained(_resolve_source(name_or_path)), "dtype", None)
    except OSError:
        return None
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None


@functools.lru_cache(maxsize=4)
def load_model_cached(name_or_path: str, device: str, dtype: str) -> tuple[nn.Module, Any]:
    """:func:`load_model`, cached per process so several environments share one copy of the weights.

    Safe because ffprune never leaves a shared model pruned: every step restores it exactly.
    """
    return load_model(name_or_path, device, dtype)


def context_length(model: nn.Module) -> int:
    """Maximum sequence length the model accepts."""
    return int(model.config.max_position_embeddings)


@dataclass
class Block:
    """One decoder layer, seen uniformly across families (:func:`decoder_blocks`).

    ``attn_in`` are q, k, v (or the one fused ``qkv_proj``, rows ``[q | k | v]``); ``attn_out`` the output projection
    (o_proj / out_proj / dense), whose input columns are grouped by head; ``ffn_in`` the FFN input projections (gate
    + up, fc1, or one fused ``gate_up_proj``, rows ``[gate | up]``) and ``ffn_out`` the down projection (down_proj /
    fc2), whose input columns are the FFN neurons.

    The attention's prunable granule (:attr:`attn_granules` of them) is a KV group (its query heads with their key
    and value heads) under multi-head and grouped-query attention, and a single query head when one KV head serves
    them all (multi-query attention: the key and value stay).
    """

    index: int
    attn_in: list[nn.Linear]
    attn_out: nn.Linear
    ffn_in: list[nn.Linear]
    ffn_out: nn.Linear
    num_heads: int
    num_kv_heads: int
    head_dim: int
    attention: nn.Module | None = None  # the attention module (its head count changes when heads are removed)
    fused_qkv: bool = False
    fused_gate_up: bool = False

    @property
    def linears(self) -> dict[str, nn.Linear]:
        """Every linear of the block by name: ``q``, ``k``, ``v`` (or ``qkv``), ``o``, ``ffn_in<i>``, ``ffn_out``."""
        names = ["qkv"] if self.fused_qkv else ["q", "k", "v"]
        out = {n: m for n, m in zip(names, self.attn_in)}
        out["o"] = self.attn_out
        for i, m in enumerate(self.ffn_in):
            out[f"ffn_in{i}"] = m
        out["ffn_out"] = self.ffn_out
        return out

    @property
    def intermediate_size(self) -> int:
        return self.ffn_out.in_features

    @property
    def query_head_granules(self) -> bool:
        """Whether the attention's granules are single query heads (one KV head shared by several query heads)."""
        return self.num_kv_heads == 1 and self.num_heads > 1

    @property
    def attn_granules(self) -> int:
        """The attention's prunable granules: query heads under multi-query attention, else KV groups."""
        return self.num_heads if self.query_head_granules else self.num_kv_heads


def model_family(model: nn.Module) -> str:
    """The model's ``config.model_type`` (the family name results and exports record)."""
    return str(getattr(model.config, "model_type", type(model).__name__))


def decoder_blocks(model: nn.Module) -> list[Block]:
    """The decoder layers of a causal LM as :class:`Block` views, found by role (:mod:`ffenv.lm.pruned_modeling`:
    Llama, Mistral, Qwen2 / Qwen3, Gemma 2 / 3, Phi / Phi-3, OPT and the families built like them).

    Head and KV-group counts are read per layer from the projections' sizes, so a model exported by
    ``ffprune export`` (layers of different widths) can be pruned again. A model without the roles is an
    :class:`FFPruneError` naming what is missing.
    """
    cfg = model.config
    try:
        layers = decoder_layers(model)
        roles = [layer_roles(layer) for layer in layers]
    except ValueError as err:
        raise FFPruneError(f"cannot prune this {model_family(model)!r} model: {err}") from None
    d = head_dim(cfg)
    blocks = []
    for i, (layer, r) in enumerate(zip(layers, roles)):
        attn = getattr(layer, r.attention)
        mlp = layer if r.mlp is None else getattr(layer, r.mlp)
        attn_in = [getattr(attn, n) for n in r.q_k_v]
        if r.fused_qkv:  # rows [q | k | v]: the query rows are the output projection's columns
            heads = getattr(attn, r.o).in_features // d
            kv_heads = (attn_in[0].out_features // d - heads) // 2
        else:
            heads, kv_heads = attn_in[0].out_features // d, attn_in[1].out_features // d
        if heads < 1 or kv_heads < 1 or heads % kv_heads:
            raise FFPruneError(f"cannot prune this {model_family(model)!r} model: layer {i} has {heads} query heads "
                               f"and {kv_heads} key / value heads of size {d} (query heads must be a multiple)")
        blocks.append(Block(i, attn_in, getattr(attn, r.o), [getattr(mlp, n) for n in r.ffn_in],
                            getattr(mlp, r.ffn_out), heads, kv_heads, d, attn, r.fused_qkv, r.fused_gate_up))
    return blocks


def check_prunable(config: Any, name: str) -> None:
    """Refuse, before any weight is read, a model whose layers the engines cannot find (built on the meta device from
    its ``config``; a one-line :class:`FFPruneError` naming what is missing)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as err:
        raise FFPruneError(f"model {name!r} ({config.model_type!r}) is not a causal LM transformers can build "
                           f"({str(err).splitlines()[0][:160]})") from None
    try:
        decoder_blocks(skeleton)
    except FFPruneError as err:
        raise FFPruneError(f"model {name!r}: {err}") from None


def load_pruned(path: str | Path, device: str = "cpu", dtype: str = "auto") -> tuple[nn.Module, Any]:
    """Load an ``ffprune export`` folder: ``(model, tokenizer)``, in eval mode, gradients off."""
    path = Path(path)
    if not (path / EXPORT_FILE).is_file():
        raise FFPruneError(f"{str(path)!r} is not an ffprune export (no {EXPORT_FILE}); load other checkpoints with "
                           "ffenv.lm.models.load_model")
    return load_model(str(path), device, dtype)


def read_export(path: str | Path) -> dict[str, Any]:
    """The ``ffprune_export.json`` facts of an export folder."""
    file = Path(path) / EXPORT_FILE
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FFPruneError(f"{str(path)!r} is not a readable ffprune export ({EXPORT_FILE}: {err})") from err
