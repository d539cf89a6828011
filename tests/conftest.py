"""Shared fixtures. Tests run offline on the bundled models and the built-in corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WIKITEXT_VALID = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2" / "valid.txt"

RAY_GROUPS = {"test_ray.py": "ray-actors", "test_remote_workers.py": "ray-actors", "test_ray_search.py": "ray-tasks"}
"""Test files that start Ray, and their group: under ``pytest -n N`` a group's tests share one worker (at most one Ray
instance per group at a time; the other tests that start Ray join ``ray-tasks``)."""

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest -n N: the workers share the cores, torch threads split
    THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    # and so do the processes the tests start (spawned env workers, the notebook's kernel): without this each one
    # takes every core, and its OpenMP threads spin against the other workers'
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    os.environ.setdefault("MKL_NUM_THREADS", str(THREADS))
    import torch

    torch.set_num_threads(THREADS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist loadgroup`` the tests that start Ray run in two groups (:data:`RAY_GROUPS`), each on
    one worker: two Ray instances at most, side by side."""
    for item in items:
        group = RAY_GROUPS.get(item.path.name)
        if group is None and "ray" in item.name.split("[")[0].split("_"):
            group = "ray-tasks"
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def wikitext_valid() -> Path:
    """The real WikiText-2 validation split from ../shared (skip when absent)."""
    if not WIKITEXT_VALID.exists():
        pytest.skip(f"{WIKITEXT_VALID} not present")
    return WIKITEXT_VALID


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from ffenv.lm.models import BUNDLED_DIR as ZOO_DIR

    return AutoTokenizer.from_pretrained(str(ZOO_DIR / "tokenizer"))


SURROGATE_KW = dict(model="tiny-llama", reward_windows=4, eval_samples=2, seq_len=64, calib_samples=8)
"""The tiny real env the surrogate tests record on (short windows, few reward windows)."""


@pytest.fixture(scope="session")
def surrogate_recording(tmp_path_factory):
    """A small evaluation set recorded once on the tiny real env: (env, set, folder holding tiny-llama-structured.npz).

    32 random allocations at four spreads and targets (16 with the held-out ppl), 6 of them again on 1 and 2 reward
    windows (the fidelity pairs)."""
    import numpy as np

    from ffenv import FFPruneEnv
    from ffenv.surrogate import EvaluationSet, record
    from ffenv.surrogate.records import data_name

    env = FFPruneEnv(**SURROGATE_KW)
    rng = np.random.default_rng(0)
    n = 32
    spread = np.repeat([0.3, 0.6, 1.0, 1.5], n // 4)[:, None]
    actions = np.clip(rng.normal(0.0, 1.0, (n, env.n_units)) * spread, -1, 1).astype(np.float32)
    targets = rng.choice([0.2, 0.3, 0.4, 0.5], n).tolist()
    data = EvaluationSet.from_rows(record(env, actions[:16], targets[:16], held_out=True, source="random:held"))
    data.append(record(env, actions[16:], targets[16:], source="random"))
    data.append(record(env, np.concatenate([actions[:6]] * 2), targets[:6] * 2, windows=[1] * 6 + [2] * 6,
                       source="fidelity"))
    folder = tmp_path_factory.mktemp("surrogate")
    data.save(folder / data_name("tiny-llama", "structured"))
    return env, data, folder
