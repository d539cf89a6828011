"""``ffprune export``: a finished search's best allocation as a pruned Hugging Face folder (checked by reloading it)."""

from __future__ import annotations

import argparse

NAME = "export"
HELP = "write a search result's pruned model as a Hugging Face folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ffprune export``."""
    p.add_argument("result", help="result JSON of a finished `ffprune search --out`")
    p.add_argument("--out", required=True, help="output folder (must be absent or empty unless --force)")
    p.add_argument("--calibrate", action="store_true", help="fold post-pruning calibration into the kept weights "
                   "(structured envs)")
    p.add_argument("--calib-alpha", type=float, help="ridge penalty of the calibration (default: the env's calib_alpha)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-speed", action="store_true", help="skip the dense vs pruned forward timing")
    p.add_argument("--dtype", help="storage dtype (float32, bfloat16, float16; default: the source checkpoint's when it "
                   "stores the pruned weights exactly, else the compute dtype)")


def run(args: argparse.Namespace) -> int:
    """Run :func:`ffprune.agents.tools.export.export_result` and print the export's facts."""
    from ffprune.agents.tools.export import export_result

    facts = export_result(args.result, args.out, calibrate=args.calibrate, calib_alpha=args.calib_alpha,
                          force=args.force, speed=not args.no_speed, dtype=args.dtype)
    fig = facts["figures"]
    print(f"{args.out}: {facts['mode']} {facts['base_model']} at sparsity {facts['allocation']['sparsity']:.4f}"
          f"{' + calib' if facts['calibrated'] else ''}")
    print(f"  parameters {fig['params']['dense']:,} -> {fig['params']['pruned']:,};"
          f" weight files {facts['weights_bytes']:,} bytes")
    print(f"  held-out ppl {fig['eval_ppl']['pruned']:.4f} (dense {fig['eval_ppl']['dense']:.4f}); reloaded "
          f"{facts['reloaded']['eval_ppl']:.4f}")
    if "tokens_per_s" in fig:
        tps = fig["tokens_per_s"]
        print(f"  forward tokens/s {tps['dense']:,.0f} -> {tps['pruned']:,.0f} ({fig['speed_setup']})")
    return 0
