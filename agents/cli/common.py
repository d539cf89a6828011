"""Arguments and parsing shared by several subcommands (nothing heavy is imported here: ``ffprune --help`` stays fast)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

METHODS_HINT = "`ffprune methods` lists them"


def parse_kwargs(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    """``["model=tiny-opt", "reward_windows=8"]`` → ``{"model": "tiny-opt", "reward_windows": 8}``.

    Values are parsed as JSON when they are JSON (numbers, ``true``, lists), else kept as strings. ``flag``
    (``"--env-kwarg"``, ``"--agent-kwarg"``) is named in the one-line :class:`ffenv.FFPruneError` for a pair
    without ``=`` or with an empty key.
    """
    from ffenv.errors import FFPruneError
    from ffenv.io import json_or_text

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FFPruneError(f"{flag} expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = json_or_text(value)
    return out


def parse_floats(text: str | None, flag: str) -> list[float] | None:
    """``"0.2,0.25,0.35"`` → ``[0.2, 0.25, 0.35]`` (``None`` stays ``None``); anything else is a one-line
    :class:`ffenv.FFPruneError` naming ``flag``."""
    from ffenv.errors import FFPruneError

    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise FFPruneError(f"{flag} expects comma-separated numbers such as 0.2,0.25,0.35, got {text!r}")
    return values


def parse_names(text: str, flag: str) -> list[str]:
    """``"a,b"`` → ``["a", "b"]``; an empty list is a one-line :class:`ffenv.FFPruneError` naming ``flag``."""
    from ffenv.errors import FFPruneError

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise FFPruneError(f"{flag} needs at least one entry, got {text!r}")
    return items


def add_study_arguments(p: argparse.ArgumentParser, out: str, suite_help: str | None) -> None:
    """The options a study over the core suite's tasks shares (``claim``, ``amortised``, ``tune``): ``--out``
    (resumed), ``--suite-out`` (only for a study that reads the suite's cells: ``suite_help`` says what it reads;
    ``None``: no such option), ``--report-only``, the cell workers and ``--quiet``."""
    p.add_argument("--out", default=out, help="output folder (resumes what is already there)")
    if suite_help is not None:
        p.add_argument("--suite-out", default="docs/results/core", help=f"the core suite's results ({suite_help})")
    p.add_argument("--report-only", action="store_true", help="no search: rewrite the report from what is in --out")
    add_cell_workers_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars, no progress lines")


RESULTS = "docs/results"
"""The repository's committed results: the default folders of the commands that regenerate them (``<RESULTS>/core``,
``<RESULTS>/claim``...). Only the command line points there; the library takes every folder as an argument."""


def interrupted(out: str) -> int:
    """Say how to resume an interrupted study (finished work in ``out`` is kept); the exit code 130."""
    print(f"\ninterrupted; run the same command again to resume (finished work in {out} is kept)", file=sys.stderr)
    return 130


def add_env_arguments(p: argparse.ArgumentParser) -> None:
    """``--env-kwarg`` and ``--reward``: the env settings every searching subcommand takes."""
    p.add_argument("--env-kwarg", action="append", metavar="KEY=VALUE",
                   help="override an env setting (an EnvConfig field; repeatable; VALUE parsed as JSON when it is JSON)")
    p.add_argument("--reward", choices=("plain", "calibrated"),
                   help="what the search optimises: plain held-in ppl ratio (default) or the ratio after Calib")


def add_surrogate_arguments(p: argparse.ArgumentParser) -> None:
    """``--surrogate`` and ``--surrogate-data``: run on the task's surrogate env (:mod:`ffenv.surrogate`), whose results
    are labelled and kept apart from real ones."""
    p.add_argument("--surrogate", action="store_true", help="run on the task's surrogate (predicted rewards and held-out "
                   "ppl, microseconds per evaluation; results labelled 'surrogate', refused where real results are expected)")
    p.add_argument("--surrogate-data", metavar="PATH", help="with --surrogate: the evaluation set (.npz or a folder of "
                   "them; default: the bundled one)")


def add_cell_run_arguments(p: argparse.ArgumentParser) -> None:
    """What every command that runs bench cells takes (``ffprune bench``, ``ffprune suite run``): the Calib column, the
    env settings, the surrogate, progress and the cell workers."""
    p.add_argument("--no-calibrate", action="store_true", help="skip the post-pruning calibration column")
    p.add_argument("--calib-alpha", type=float, help="ridge penalty of the calibration (default: the env's calib_alpha)")
    add_env_arguments(p)
    add_surrogate_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars, no progress lines")
    add_cell_workers_argument(p)


def add_cell_workers_argument(p: argparse.ArgumentParser) -> None:
    """``--cell-workers``: bench cells as Ray tasks, with ``--ray-address`` (the library's
    ``Runner(workers, address)``, the ``runner=`` of ``run_bench`` / ``run_suite`` / ``run_claim``...)."""
    p.add_argument("--cell-workers", type=int, default=0, help="run the (method, seed) cells as Ray tasks on this many "
                   "workers (a local Ray instance with N CPUs, or N GPUs with --env-kwarg device=cuda); 0: one after "
                   "the other in this process (default)")
    add_ray_address_argument(p)


def add_ray_address_argument(p: argparse.ArgumentParser) -> None:
    """``--ray-address``: an existing Ray cluster instead of a local instance."""
    p.add_argument("--ray-address", help="an existing Ray cluster ('auto', 'ray://host:10001') instead of a local one")


def env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``--env-kwarg`` pairs plus ``--reward`` and, where the subcommand has them, ``--surrogate`` /
    ``--surrogate-data`` (the flags that are env settings)."""
    from ffenv.errors import FFPruneError

    kwargs = parse_kwargs(args.env_kwarg, "--env-kwarg")
    if args.reward is not None:
        kwargs["reward"] = args.reward
    if getattr(args, "surrogate", False):
        kwargs["surrogate"] = True
    if getattr(args, "surrogate_data", None) is not None:
        if not kwargs.get("surrogate"):
            raise FFPruneError("--surrogate-data needs --surrogate")
        kwargs["surrogate_data"] = args.surrogate_data
    return kwargs
