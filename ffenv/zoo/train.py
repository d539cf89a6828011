"""Train the bundled tiny models (and their shared tokenizer) on the ``stdlib`` corpus.

Reproducible: the same ``--seed`` and ``--steps`` on the same machine give the same weights.
With ``--minutes`` the run stops at the first step past the time limit; the model card records the
number of steps taken, so ``--steps`` reproduces it.

    python -m ffenv.zoo.train --arch llama --minutes 12 --seed 0
    python -m ffenv.zoo.train --tokenizer-only          # (re)build ffenv/zoo/tokenizer
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ffenv.data import corpus_text, evaluation_windows, token_stream
from ffenv.evaluation import perplexity

ZOO_DIR = Path(__file__).resolve().parent
TOKENIZER_DIR = ZOO_DIR / "tokenizer"
VOCAB_SIZE = 4096
CONTEXT = 512

ARCHS: dict[str, dict[str, Any]] = {
    "llama": dict(
        model_type="llama", hidden_size=192, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=8, intermediate_size=512, max_position_embeddings=CONTEXT,
        tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0,
    ),
    "mistral": dict(
        model_type="mistral", hidden_size=192, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=2, intermediate_size=512, max_position_embeddings=CONTEXT,
        tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=None,
    ),
    "opt": dict(
        model_type="opt", hidden_size=192, num_hidden_layers=8, num_attention_heads=8,
        ffn_dim=768, max_position_embeddings=CONTEXT, word_embed_proj_dim=192,
        do_layer_norm_before=True, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        tie_word_embeddings=True, enable_bias=True,
    ),
}


def train_tokenizer(out_dir: Path = TOKENIZER_DIR, vocab_size: int = VOCAB_SIZE) -> Any:
    """Train the shared byte-level BPE tokenizer on the ``stdlib`` train split and save it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    text = corpus_text("stdlib", "train")
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|pad|>", model_max_length=CONTEXT,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def build_model(arch: str, tokenizer: Any, seed: int) -> torch.nn.Module:
    """A freshly initialised ``transformers`` model of one of :data:`ARCHS`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(ARCHS[arch])
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **spec,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def train(arch: str, minutes: float | None, steps: int | None, seed: int, batch_size: int = 16,
          seq_len: int = 256, lr: float = 3e-3, out: Path | None = None) -> dict[str, Any]:
    """Train one tiny model; save it (fp16 safetensors + tokenizer + model card) and return its card."""
    from transformers import AutoTokenizer

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    if (minutes is None) == (steps is None):
        raise ValueError("give exactly one of minutes or steps")
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    model = build_model(arch, tokenizer, seed)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    stream = token_stream(tokenizer, "stdlib", "train")
    held = evaluation_windows(tokenizer, "stdlib", "calib", seq_len=seq_len)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    planned = steps if steps is not None else 10**9
    est_total = steps if steps is not None else None
    warmup = 100
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    history: list[dict[str, float]] = []
    step = 0
    while step < planned:
        elapsed = time.time() - t0
        if minutes is not None and elapsed >= minutes * 60:
            break
        if est_total is None and step == 50:  # estimate the total from the measured speed
            est_total = max(200, int(minutes * 60 / (elapsed / 50)))
        total = est_total or 10**4
        frac = min(step / total, 1.0)
        cur_lr = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = cur_lr
        starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=gen)
        batch = torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 200 == 0:
            model.eval()
            ppl = perplexity(model, held[:64], batch_size=16)
            model.train()
            history.append({"step": step, "seconds": round(time.time() - t0, 1), "train_loss": round(loss.item(), 4),
                            "calib_ppl": round(ppl, 3)})
            print(json.dumps(history[-1]), flush=True)
    train_seconds = time.time() - t0
    model.eval()
    model = model.half()
    out = out or ZOO_DIR / f"tiny-{arch}"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    card = {
        "name": out.name, "arch": arch, "architecture": type(model).__name__, "parameters": n_params,
        "config": ARCHS[arch], "vocab_size": len(tokenizer), "seed": seed, "steps": step,
        "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "tokens_seen": step * batch_size * seq_len,
        "train_tokens_available": len(stream), "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(), "history": history,
    }
    (out / "training.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def write_card(name: str) -> dict[str, Any]:
    """Measure a saved model as shipped (fp16 weights, run in float32) and write ``card.json`` + ``README.md``."""
    from ffenv.models import ZOO_DIR as _zoo
    from ffenv.models import load_model

    folder = _zoo / name
    training = json.loads((folder / "training.json").read_text())
    model, tokenizer = load_model(str(folder), device="cpu", dtype="float32")
    cfg = model.config
    ppl = {split: round(perplexity(model, evaluation_windows(tokenizer, "stdlib", split, seq_len=256)), 3)
           for split in ("calib", "eval")}
    card = {
        "name": name,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "kv_heads": getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        "hidden_size": cfg.hidden_size,
        "ffn_size": getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None),
        "vocab_size": cfg.vocab_size,
        "context": cfg.max_position_embeddings,
        "weights_dtype": "float16",
        "size_on_disk_bytes": (folder / "model.safetensors").stat().st_size,
        "tokens_seen": training["tokens_seen"],
        "train_steps": training["steps"],
        "train_seconds": training["train_seconds"],
        "train_seed": training["seed"],
        "dense_ppl": {"seq_len": 256, **ppl},
        "reproduce": f"python -m ffenv.zoo.train --arch {training['arch']} --steps {training['steps']} "
                     f"--seed {training['seed']}",
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    lines = [f"# {name}", "", f"A {card['architecture']} trained by ffprune on the `stdlib` corpus (train split) "
             "with the shared 4k byte-level BPE tokenizer. For pruning research only.", "",
             "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in card.items() if k != "name"]
    (folder / "README.md").write_text("\n".join(lines) + "\n")
    return card


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS))
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tokenizer-only", action="store_true", help="(re)train the shared tokenizer and stop")
    ap.add_argument("--card-only", action="store_true", help="(re)measure the saved model and rewrite its card")
    args = ap.parse_args(argv)
    if args.tokenizer_only:
        train_tokenizer()
        return
    if args.arch is None:
        ap.error("--arch is required")
    if not args.card_only:
        train(args.arch, args.minutes, args.steps, args.seed, args.batch_size, lr=args.lr, out=args.out)
    if args.out is None:
        print(json.dumps(write_card(f"tiny-{args.arch}"), indent=2))


if __name__ == "__main__":
    main()
