"""The ``ffprune`` command line: thin calls of library functions (the top of ``ffenv`` ← baselines ← agents ← CLI).

One module per subcommand, each with ``add_arguments(parser)`` and ``run(args) -> int`` side by side; this
module assembles the parser and maps errors to exit codes. Nothing heavy is imported before a subcommand
runs (each ``run`` imports what it uses), so ``ffprune --version`` and ``--help`` start at once.

Exit codes: 0 done; 2 bad input (:class:`ffenv.FFPruneError`, an unknown gymnasium id), one line on stderr;
1 a lost Ray worker (:class:`ffenv.WorkerLostError`) or failed suite cells; 130 interrupted (Ctrl-C;
:class:`ffenv.SearchInterrupted` names the checkpoint to resume from). Anything else is a bug and shows its
traceback. Progress lines of the ``ffenv`` / ``ffprune`` loggers go to stderr (warnings only with ``--quiet``).

    ffprune --version
    ffprune models                      # bundled models and their dense perplexity
    ffprune fetch smollm2-135m          # a named real model: fetched, hash-checked, converted once (else on first use)
    ffprune methods                     # the registered search methods
    ffprune bench-env --env FFPrune-Llama-v0
    ffprune fidelity --env FFPrune-SmolLM2-v0 --out docs/results/real-fidelity/smollm2-s0.2
    ffprune search --env FFPrune-Llama-v0 --agent fastforward --budget 200 --out r.json
    ffprune search --env FFPrune-Llama-v0 --agent fastforward --train-targets 0.2,0.3,0.4 --budget 400 --out p.json
    ffprune allocate --policy p.policy.pt --target 0.35 --out a.json [--refine 16]
    ffprune amortised --cell-workers 2   # one policy per family and mode vs the suite's per-target searches
    ffprune tune --method fastforward --cell-workers 2   # a grid of settings, on the reward split, seeds 10-12
    ffprune bench --env FFPrune-Llama-v0 --budget 200 --seeds 3 --out bench/llama
    ffprune bench --suite core --cell-workers 2 --docs README.md
    ffprune surrogate record --dry-run     # the evaluation sets of surrogate mode: plan, then record (resumable)
    ffprune surrogate validate          # each surrogate vs the real rewards of its test allocations
    ffprune surrogate rank              # the core suite's method ranking on the surrogates vs the real suite
    ffprune surrogate study             # RL algorithms to 10,000 surrogate evaluations: learning curves
    ffprune export r.json --out pruned/llama [--calibrate]
    ffprune eval pruned/llama --tasks ffprune_nextline
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version

from ffprune.agents.cli import (
    allocate,
    amortised,
    bench,
    bench_env,
    claim,
    export,
    fetch,
    fidelity,
    methods,
    models,
    search,
    suite,
    surrogate,
    tune,
)
from ffprune.agents.cli import eval as zero_shot

SUBCOMMANDS = (models, fetch, methods, bench_env, fidelity, search, allocate, bench, suite, claim, amortised, tune, surrogate,
               export, zero_shot)
"""The subcommand modules, in ``--help`` order (each: ``NAME``, ``HELP``, ``add_arguments``, ``run``)."""
LOGGERS = ("ffenv", "ffprune")
"""The library loggers the command line shows on stderr."""


def build_parser() -> argparse.ArgumentParser:
    """The ``ffprune`` parser: one subparser per module of :data:`SUBCOMMANDS`, its ``run`` as ``args.run``."""
    ap = argparse.ArgumentParser(prog="ffprune", description="FastForward Pruning benchmark")
    ap.add_argument("--version", action="version", version=f"ffprune {version('ffprune')}")
    sub = ap.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        p = sub.add_parser(module.NAME, help=module.HELP, description=(module.__doc__ or "").replace("``", "").strip())
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ffprune`` console script: parse, run the subcommand, map errors to exit codes."""
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    with _log_to_stderr(logging.WARNING if quiet else logging.INFO), _library_progress_bars(not quiet):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import ffenv
    from ffenv.errors import FFPruneError, SearchInterrupted, WorkerLostError

    name = f"ffprune {args.command}"
    try:
        return args.run(args)
    except (FFPruneError, gym.error.Error) as err:  # bad input: one clear line, no traceback
        ids = ffenv.registration.all_env_ids()
        known = f" (ffprune ids: {', '.join(ids)})" if isinstance(err, gym.error.Error) else ""
        return _fail(f"{name}: error: {err}{known}", 2)
    except WorkerLostError as err:
        return _fail(f"{name}: {err}", 1)
    except SearchInterrupted as err:
        return _fail(f"{name}: {err}", 130)
    except KeyboardInterrupt:
        return _fail(f"{name}: interrupted", 130)


def _fail(line: str, code: int) -> int:
    print(line, file=sys.stderr)
    return code


@contextmanager
def _log_to_stderr(level: int) -> Iterator[None]:
    """The :data:`LOGGERS` at ``level`` with a ``%(message)s`` handler on stderr, restored afterwards."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in LOGGERS]
    for logger, _ in saved:
        logger.addHandler(handler)
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in saved:
            logger.removeHandler(handler)
            logger.setLevel(old)


@contextmanager
def _library_progress_bars(enabled: bool) -> Iterator[None]:
    """With ``--quiet`` (``enabled=False``), no progress bars from Hugging Face libraries either ("Loading weights"):
    ``HF_HUB_DISABLE_PROGRESS_BARS`` for what is imported later (Ray workers inherit it), and transformers' switch if
    it is already imported; both restored afterwards."""
    if enabled:
        yield
        return
    key = "HF_HUB_DISABLE_PROGRESS_BARS"
    old_env = os.environ.get(key)
    os.environ[key] = "1"
    hf_logging = sys.modules.get("transformers.utils.logging")
    was_on = hf_logging is not None and hf_logging.is_progress_bar_enabled()
    if was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old_env
        imported_here = hf_logging is None and "transformers.utils.logging" in sys.modules and old_env is None
        if was_on or imported_here:  # transformers read the variable when this run imported it: switch back on
            with warnings.catch_warnings():  # huggingface_hub keeps its own bars off (it read the variable at import)
                warnings.simplefilter("ignore", UserWarning)
                sys.modules["transformers.utils.logging"].enable_progress_bar()
