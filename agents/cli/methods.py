"""``ffprune methods``: the registered search methods (what ``--agent`` and ``--methods`` accept)."""

from __future__ import annotations

import argparse

NAME = "methods"
HELP = "list the registered search methods (names for --agent / --methods)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``ffprune methods`` takes no options."""


def run(args: argparse.Namespace) -> int:
    """One line per method of :data:`ffprune.agents.methods.METHODS`: name, kind, env modes, formulations, description."""
    from ffprune.agents.methods import METHODS

    width = max(len("name"), *(len(name) for name in METHODS))
    print(f"{'name':<{width}}  {'kind':<9}  {'modes':<24}  {'formulations':<23}  description")
    for name, method in METHODS.items():
        print(f"{name:<{width}}  {method.kind:<9}  {','.join(method.modes):<24}  {','.join(method.formulations):<23}  "
              f"{method.description}")
    print("\nAny other stable-baselines3 algorithm for Box actions is accepted by name too (a2c, td3, ...), on either "
          "formulation (single-step FFPrune-*-v0 ids or their FFPrune-*-Sequential-* twins).")
    return 0
