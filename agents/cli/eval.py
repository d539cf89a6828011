"""``ffprune eval``: zero-shot tasks (lm-evaluation-harness) on an exported, bundled, local or hub model."""

from __future__ import annotations

import argparse

NAME = "eval"
HELP = "zero-shot tasks (lm-evaluation-harness; pip install -e \".[eval]\") on a model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ffprune eval``."""
    p.add_argument("model", help="an `ffprune export` folder, a bundled name, a local checkpoint or a hub id")
    p.add_argument("--tasks", default="ffprune_nextline", help="comma-separated lm-eval tasks (default: "
                   "ffprune_nextline, built offline from the corpus; e.g. arc_easy,arc_challenge,hellaswag,piqa,winogrande)")
    p.add_argument("--limit", type=int, help="first N documents of each task (default: all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--include-path", help="folder of extra lm-eval task YAML files")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", help="write the summary JSON here")


def run(args: argparse.Namespace) -> int:
    """Run :func:`ffprune.agents.tools.zeroshot.run_tasks` on the model; print one line per task (and write the JSON)."""
    import torch

    from ffenv.io import atomic_write_json
    from ffenv.lm.models import load_model, weights_fingerprint
    from ffprune.agents.tools.zeroshot import run_tasks

    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = run_tasks(model, tokenizer, args.tasks, limit=args.limit, batch_size=args.batch_size, seed=args.seed,
                        num_fewshot=args.num_fewshot, include_path=args.include_path)
    summary = {"model": args.model, "weights_fingerprint": weights_fingerprint(args.model), **summary}
    for name, m in summary["tasks"].items():
        acc = "n/a" if m.get("acc") is None else f"{m['acc']:.4f} ± {m.get('acc_stderr') or 0:.4f}"
        norm = "n/a" if m.get("acc_norm") is None else f"{m['acc_norm']:.4f}"
        print(f"{name}: acc {acc} | acc_norm {norm} | n {m.get('n')}")
    if args.out:
        atomic_write_json(args.out, summary)
        print(f"written: {args.out}")
    return 0
