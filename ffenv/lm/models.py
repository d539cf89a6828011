"""Models: the bundled tiny zoo, Hugging Face loading, and a uniform view of decoder blocks.

:func:`load_model` accepts a bundled name (``tiny-llama``, ``tiny-mistral``, ``tiny-opt``), a named real model
(``smollm2-135m``, fetched and converted once: :mod:`ffenv.lm.sources`), a local GGUF file, a local checkpoint
folder, or a Hugging Face hub id (``meta-llama/Llama-2-7b-hf``, ``mistralai/Mistral-7B-v0.1``, ``facebook/opt-125m``...).
:func:`decoder_blocks` hides the naming differences between the supported families so the pruning code sees one
shape: per block, the attention projections, the FFN input projections and the two *output* projections whose input
columns carry the prunable units.
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
from ffenv.lm.pruned_modeling import LAYERS_KEY, pruned_class
from ffenv.lm.sources import PACKAGED_MODELS, read_source, resolve_real_source

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "zoo"
EXPORT_FILE = "ffprune_export.json"
"""What marks a folder written by ``ffprune export`` (its facts, as JSON)."""
BUNDLED_MODELS = ("tiny-llama", "tiny-mistral", "tiny-opt")
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "opt")

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
    """The model card (``card.json``) of a bundled model: config, training and dense perplexities."""
    return json.loads((bundled_path(name) / "card.json").read_text())


def weights_fingerprint(name_or_path: str) -> str | None:
    """A short identity of a model's weights, stored with every search result and bench folder so results
    computed on other weights are never mixed in (e.g. after the bundled zoo is retrained).

    Bundled names and local folders: SHA-256 over the weight files (``*.safetensors``, ``*.bin``; names and
    bytes). Named real models and GGUF files: ``gguf:<SHA-256 of the GGUF file>`` (recorded by the conversion).
    Hub ids: ``hub:<id>@<commit>`` of the locally cached snapshot (``None`` when not cached yet).
    """
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
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise FFPruneError(
            f"model {name_or_path!r} is a {config.model_type!r} model; supported families are {SUPPORTED_MODEL_TYPES}"
        )
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
    """One decoder layer, seen uniformly across families.

    ``attn_in`` are q, k, v; ``attn_out`` the output projection (o_proj / out_proj), whose input
    columns are grouped by head; ``ffn_in`` the FFN input projections (gate+up / fc1) and ``ffn_out``
    the down projection (down_proj / fc2), whose input columns are the FFN neurons.
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

    @property
    def linears(self) -> dict[str, nn.Linear]:
        names = ["q", "k", "v"]
        out = {n: m for n, m in zip(names, self.attn_in)}
        out["o"] = self.attn_out
        for i, m in enumerate(self.ffn_in):
            out[f"ffn_in{i}"] = m
        out["ffn_out"] = self.ffn_out
        return out

    @property
    def intermediate_size(self) -> int:
        return self.ffn_out.in_features


def decoder_blocks(model: nn.Module) -> list[Block]:
    """The decoder layers of a Llama / Mistral / OPT causal LM as :class:`Block` views.

    Head and KV-group counts are read per layer from the projections' sizes, so a model exported by
    ``ffprune export`` (layers of different widths) can be pruned again.
    """
    cfg = model.config
    kind = cfg.model_type
    heads = cfg.num_attention_heads
    if kind in ("llama", "mistral"):
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return [
            Block(i, [l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj], l.self_attn.o_proj,
                  [l.mlp.gate_proj, l.mlp.up_proj], l.mlp.down_proj, l.self_attn.q_proj.out_features // head_dim,
                  l.self_attn.k_proj.out_features // head_dim, head_dim, l.self_attn)
            for i, l in enumerate(model.model.layers)
        ]
    if kind == "opt":
        head_dim = cfg.hidden_size // heads
        return [
            Block(i, [l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj], l.self_attn.out_proj,
                  [l.fc1], l.fc2, l.self_attn.q_proj.out_features // head_dim, l.self_attn.k_proj.out_features // head_dim,
                  head_dim, l.self_attn)
            for i, l in enumerate(model.model.decoder.layers)
        ]
    raise FFPruneError(f"unsupported model_type {kind!r}; supported: {SUPPORTED_MODEL_TYPES}")


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
