"""The experiments' default settings as plain values, in one place.

The library takes its defaults from here (:class:`~ffprune.agents.experiments.surrogate_record.RecordSettings`,
the amortised protocol of :mod:`ffprune.agents.experiments.amortised`, :mod:`ffprune.agents.experiments.tune`,
:class:`~ffprune.agents.experiments.claim.ClaimSpec`, a suite's budget) and
so does the command line, for its options and their ``--help``. This module imports nothing but the standard
library: ``ffprune --help`` starts without torch, and no copy of a default has to be kept equal by hand.
"""

from __future__ import annotations

from typing import Any

# ----------------------------------------------------------------------------- suites
SUITE_BUDGET = 100
"""Evaluations per search of a suite (every registered suite's): the budget the claim's and the amortised protocol's
per-target cells were searched at."""
SUITE_SEEDS = 3
"""Seeds ``0..2`` of a suite's search methods (every registered suite's but ``gemma3``'s one)."""
CORE_HALF_TASKS: tuple[str, ...] = ("llama-s0.5", "mistral-s0.5", "opt-s0.5")
"""The ``core`` suite's three 50 % structured tasks, where the claim and a tune run by default."""

# ----------------------------------------------------------------------------- ffprune claim
CLAIM_BUDGETS: tuple[int, ...] = (SUITE_BUDGET, 10 * SUITE_BUDGET)
"""Budgets of the multi-step searches: the single-step budget and ten times it."""
CLAIM_METHODS: tuple[str, ...] = ("amc-ddpg",)
"""Agents for the sequential envs."""
CLAIM_SEEDS = SUITE_SEEDS
"""Seeds ``0..2``: those of FastForward's suite cells."""

# ----------------------------------------------------------------------------- ffprune surrogate record
RECORD_HEURISTICS: tuple[str, ...] = ("uniform", "owl", "alphapruning", "flap", "dlp", "atp")
"""The heuristics an evaluation set can hold (all of them by default; FLAP only in structured mode)."""
RECORD: dict[str, Any] = {
    "random": 50, "spreads": ("uniform", 0.1, 0.3, 0.6), "heuristics": RECORD_HEURISTICS, "atp_trials": 4,
    "perturb": 100, "perturb_parents": 8, "perturb_sigmas": (0.05, 0.1, 0.2), "fidelity": 40,
    "fidelity_windows": (2, 4, 8, 16), "held_out": 0.15, "task_weight": 2, "chunk": 32, "verify": 3,
}
"""What one (family, mode)'s evaluation set samples per env seed (the fields of ``RecordSettings``)."""

# ----------------------------------------------------------------------------- ffprune amortised
AMORTISED_MODES: tuple[str, ...] = ("structured", "unstructured")
"""The modes of the amortised protocol."""
AMORTISED_TRAIN_BUDGET = 300
"""Evaluations of one policy's training (per family, mode and seed)."""
AMORTISED_REFINE = 20
"""Evaluations of a refinement at one test target."""

# ----------------------------------------------------------------------------- ffprune tune
TUNE_TASKS: tuple[str, ...] = CORE_HALF_TASKS
"""The ``core`` suite's tasks a tune runs on by default (another suite's: all its tasks)."""
TUNE_SEEDS: tuple[int, ...] = (10, 11, 12)
"""A tune's search seeds: not 0-2, which the suite's held-out protocol uses."""


def joined(values: tuple[Any, ...]) -> str:
    """``values`` as the command line writes them: comma-separated."""
    return ",".join(str(v) for v in values)
