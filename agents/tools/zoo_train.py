"""Train the bundled tiny models (and their shared tokenizer) on the ``stdlib`` corpus.

Reproducible: the same ``--seed`` and ``--steps`` on the same machine (and thread count) give the same
weights. The held-out perplexity on the ``reward`` split is measured every ``--eval-every`` steps and the best
checkpoint is the one shipped (early stopping; the ``eval`` split stays untouched for reporting). With
``--minutes`` the run stops at the first step past the time limit; ``training.json`` records the steps taken
and the schedule length, and the model card's ``reproduce`` line replays it with ``--steps``. An interrupted
run continues with ``--resume`` (state checkpointed at each measurement).

    python -m ffprune.agents.tools.zoo_train --arch llama --steps 1200 --seed 0
    python -m ffprune.agents.tools.zoo_train --arch llama --card-only   # re-measure the shipped model, rewrite its card
    python -m ffprune.agents.tools.zoo_train --plot docs/zoo-training.png
    python -m ffprune.agents.tools.zoo_train --tokenizer-only          # (re)build ffenv/zoo/tokenizer
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ffenv.errors import FFPruneError
from ffenv.io import (
    atomic_save_figure,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    read_json,
)
from ffenv.lm.data import corpus_text, evaluation_windows, token_stream
from ffenv.lm.models import BUNDLED_DIR, load_model, weights_fingerprint
from ffenv.lm.perplexity import perplexity
from ffprune.agents.tools.specs import spec_with

logger = logging.getLogger(__name__)

ZOO_DIR = BUNDLED_DIR  # the bundled models live in the package ffenv.zoo
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


def _require_keys(state_file: Path, state: dict[str, Any], keys: tuple[str, ...]) -> None:
    """:class:`FFPruneError` if the run state loaded from ``state_file`` lacks any of ``keys``."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise FFPruneError(f"{state_file} is corrupt or not a zoo training state (no {', '.join(missing)}); "
                           "delete it and start again without --resume")


@dataclass(frozen=True)
class TrainSpec:
    """What one zoo training run is (where it is written and whether it resumes are :func:`train`'s own arguments)."""

    named_by: ClassVar[tuple[str, str]] = ("arch", "an architecture name")
    """A plain string given as the spec is its ``arch`` (:func:`~ffprune.agents.tools.specs.spec_with`)."""

    arch: str
    """One of :data:`ARCHS`."""
    minutes: float | None = None
    """Wall-clock budget (exactly one of ``minutes`` and ``steps``)."""
    steps: int | None = None
    """Optimizer steps (exactly one of ``minutes`` and ``steps``)."""
    seed: int = 0
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    """Peak learning rate."""
    eval_every: int = 100
    """Steps between held-out (``reward`` split) measurements."""
    schedule_steps: int | None = None
    """Length of the cosine schedule (default: ``steps``; with ``minutes``, estimated)."""


def train(spec: TrainSpec | str | None = None, *, out: Path | None = None, resume: bool = False,
          **settings: Any) -> dict[str, Any]:
    """Train one tiny model; save it (fp16 safetensors + tokenizer + ``training.json``) and return the record.

    ``spec`` is a :class:`TrainSpec` or an architecture name; ``settings`` are its fields by keyword
    (``train("llama", steps=2000, seed=1)``), replacing the spec's. ``out`` defaults to the bundled model's folder.
    The learning rate warms up over 100 steps, then follows a cosine from ``lr`` down to ``0.1·lr`` over
    ``schedule_steps`` (default: ``steps``; with ``minutes``, estimated from the speed of the first 50 steps and
    recorded). Every ``eval_every`` steps the held-out perplexity on 64 windows of the ``reward`` split is
    measured; the weights with the lowest one are kept (early stopping on ``reward``: the ``eval`` split is never
    looked at). The run state is checkpointed at each measurement to ``<out>/train_state.pt`` (atomically), so
    ``resume=True`` continues an interrupted run to the same weights.
    """
    import copy

    from transformers import AutoTokenizer

    spec = spec_with(TrainSpec, spec, settings, "train", "training")
    arch, minutes, steps, seed, batch_size, seq_len, lr, eval_every, schedule_steps = (
        spec.arch, spec.minutes, spec.steps, spec.seed, spec.batch_size, spec.seq_len, spec.lr, spec.eval_every,
        spec.schedule_steps)
    if arch not in ARCHS:
        raise FFPruneError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    if (minutes is None) == (steps is None):
        raise FFPruneError("give exactly one of minutes or steps")
    if eval_every <= 0:
        raise FFPruneError(f"eval_every must be a positive number of steps, got {eval_every}")
    out = out or ZOO_DIR / f"tiny-{arch}"
    state_file = out / "train_state.pt"
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    model = build_model(arch, tokenizer, seed)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    stream = token_stream(tokenizer, "stdlib", "train")
    held = evaluation_windows(tokenizer, "stdlib", "reward", seq_len=seq_len)[:64]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    planned = steps if steps is not None else 10**9
    est_total = schedule_steps or steps
    warmup = 100
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"ppl": math.inf, "step": 0, "state": None}
    step, spent = 0, 0.0
    if resume and state_file.exists():
        ck = load_checkpoint(state_file)
        _require_keys(state_file, ck, ("arch", "seed", "batch_size", "lr"))
        if (ck["arch"], ck["seed"], ck["batch_size"], ck["lr"]) != (arch, seed, batch_size, lr):
            raise FFPruneError(f"{state_file} belongs to another run (arch/seed/batch_size/lr differ); delete it")
        _require_keys(state_file, ck, ("model", "opt", "gen", "step", "spent", "history", "best", "est_total"))
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        step, spent, history, best, est_total = ck["step"], ck["spent"], ck["history"], ck["best"], ck["est_total"]
        logger.info("resumed %s at step %d", state_file, step)
    t0 = time.time() - spent
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
        if step % eval_every == 0 or step == planned:
            model.eval()
            ppl = perplexity(model, held, batch_size=16)
            model.train()
            if ppl < best["ppl"]:
                best = {"ppl": ppl, "step": step, "state": copy.deepcopy(model.state_dict())}
            history.append({"step": step, "seconds": round(time.time() - t0, 1), "lr": round(cur_lr, 6),
                            "train_loss": round(loss.item(), 4), "calib_ppl": round(ppl, 3)})
            logger.info("%s", json.dumps(history[-1]))  # one progress line a measurement
            atomic_torch_save({"arch": arch, "seed": seed, "batch_size": batch_size, "lr": lr, "step": step,
                               "spent": time.time() - t0, "history": history, "best": best, "est_total": est_total,
                               "model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()},
                              state_file)
    train_seconds = time.time() - t0
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    model = model.half()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    card = {
        "name": out.name, "arch": arch, "architecture": type(model).__name__, "parameters": n_params,
        "config": ARCHS[arch], "vocab_size": len(tokenizer), "seed": seed, "steps": step,
        "schedule_steps": est_total or step, "selected_step": best["step"] or step,
        "selection": "lowest reward-split ppl (calib_ppl, 64 windows), measured every eval_every steps", "eval_every": eval_every,
        "batch_size": batch_size, "seq_len": seq_len, "lr": lr,
        "tokens_seen": (best["step"] or step) * batch_size * seq_len,
        "train_tokens_available": len(stream), "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(), "history": history,
    }
    atomic_write_json(out / "training.json", card)
    state_file.unlink(missing_ok=True)
    return card


def write_card(name: str) -> dict[str, Any]:
    """Measure a saved model as shipped (fp16 weights, run in float32) and write ``card.json`` + ``README.md``."""
    folder = ZOO_DIR / name  # the same folder as ffenv.lm.models.BUNDLED_DIR
    training = read_json(folder / "training.json", name="training record")
    model, tokenizer = load_model(str(folder), device="cpu", dtype="float32")
    cfg = model.config
    ppl = {split: round(perplexity(model, evaluation_windows(tokenizer, "stdlib", split, seq_len=256)), 3)
           for split in ("reward", "eval")}
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
        "weights_fingerprint": weights_fingerprint(str(folder)),
        "tokens_seen": training["tokens_seen"],
        "train_steps": training["steps"],
        "selected_step": training["selected_step"],
        "train_seconds": training["train_seconds"],
        "train_seed": training["seed"],
        "dense_ppl": {"seq_len": 256, **ppl},
        "reproduce": f"python -m ffprune.agents.tools.zoo_train --arch {training['arch']} --steps {training['steps']} "
                     + (f"--schedule-steps {training['schedule_steps']} "
                        if training["schedule_steps"] != training["steps"] else "")
                     + f"--seed {training['seed']} --batch-size {training['batch_size']}",
    }
    atomic_write_json(folder / "card.json", card)
    lines = [f"# {name}", "", f"A {card['architecture']} trained by ffprune on the `stdlib` corpus (train split) "
             "with the shared 4k byte-level BPE tokenizer. For pruning research only.", "",
             "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in card.items() if k != "name"]
    atomic_write_text(folder / "README.md", "\n".join(lines) + "\n")
    return card


def plot_training(path: Path, names: tuple[str, ...] = ("tiny-llama", "tiny-mistral", "tiny-opt")) -> Path:
    """Plot held-out (``reward`` split) perplexity against training tokens for the bundled models, from their
    ``training.json``; the selected checkpoint of each is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name in names:
        rec = read_json(ZOO_DIR / name / "training.json", name="training record")
        per_step = rec["batch_size"] * rec["seq_len"]
        hist = rec["history"]
        (line,) = ax.plot([h["step"] * per_step / 1e6 for h in hist], [h["calib_ppl"] for h in hist], marker=".",
                          label=name)
        sel = next((h for h in hist if h["step"] == rec["selected_step"]), None)
        if sel is not None:
            ax.plot(sel["step"] * per_step / 1e6, sel["calib_ppl"], "o", mfc="none", ms=10, color=line.get_color())
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("held-out ppl (reward split, 64 x 256 tokens)")
    ax.set_yscale("log")
    ax.set_title("Bundled zoo: training curves (circle = shipped checkpoint)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    try:
        atomic_save_figure(fig, path)
    finally:
        plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    """The ``python -m ffprune.agents.tools.zoo_train`` command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS))
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--eval-every", type=int, default=100, help="steps between held-out (reward split) measurements")
    ap.add_argument("--schedule-steps", type=int, help="length of the cosine schedule (default: --steps)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/train_state.pt")
    ap.add_argument("--tokenizer-only", action="store_true", help="(re)train the shared tokenizer and stop")
    ap.add_argument("--card-only", action="store_true", help="(re)measure the saved model and rewrite its card")
    ap.add_argument("--plot", type=Path, metavar="PNG", help="plot the bundled models' training curves and stop")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # train()'s progress lines
    if args.tokenizer_only:
        train_tokenizer()
        return
    if args.plot:
        print(plot_training(args.plot))
        return
    if args.arch is None:
        ap.error("--arch is required")
    if not args.card_only:
        train(TrainSpec(args.arch, args.minutes, args.steps, args.seed, args.batch_size, lr=args.lr,
                        eval_every=args.eval_every, schedule_steps=args.schedule_steps), out=args.out, resume=args.resume)
    if args.out is None:
        print(json.dumps(write_card(f"tiny-{args.arch}"), indent=2))


if __name__ == "__main__":
    main()
