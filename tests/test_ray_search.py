"""Searches and benches on Ray workers (a local Ray instance started by the code under test)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")


@pytest.mark.slow
def test_search_with_two_workers_equals_one_worker(tmp_path):
    """``--workers 2`` gives the same search as ``--workers 1`` (FastForward's batches of episodes: every population
    method scores through the same ``step_many``; the actors' scores equal in-process ones in test_ray.py). The two
    searches join one local Ray instance (as searches in one process do); starting one is tested below."""
    import ray

    from ffenv.vector.ray_workers import init_ray
    from ffprune.agents.experiments.search import run_search

    env_kwargs = {"reward_windows": 2, "calib_samples": 8, "eval_samples": 2}
    results = {}
    started = init_ray(ray, 2, None)
    try:
        for workers in (1, 2):
            for agent, params in (("fastforward", {"batch_episodes": 4, "hidden": [16]}),):
                results[workers, agent] = run_search("FFPrune-Llama-v0", agent=agent, budget=8, seed=0, logdir=None,
                                                     out=tmp_path / f"{agent}-{workers}.json", progress=False,
                                                     env_kwargs={**env_kwargs, "workers": workers}, agent_kwargs=params)
    finally:
        if started:
            ray.shutdown()
    for agent in ("fastforward",):
        one, two = results[1, agent], results[2, agent]
        assert [h["reward"] for h in one["history"]] == [h["reward"] for h in two["history"]]
        assert one["best"]["action"] == two["best"]["action"] and one["best"]["eval_ppl"] == two["best"]["eval_ppl"]
        assert one["cost"]["evaluations"] == two["cost"]["evaluations"]


@pytest.mark.slow
def test_bench_cells_run_as_ray_tasks(tmp_path):
    from ffprune.agents.experiments.bench import run_bench
    from ffprune.agents.experiments.engine import Runner

    small = {"reward_windows": 2, "calib_samples": 8, "eval_samples": 2}
    rows, failures = run_bench(env_id="FFPrune-Llama-v0", budget=3, seeds=2, methods=["random", "uniform"],
                               env_kwargs=small, calibrate=False, out=tmp_path / "b", runner=Runner(2), progress=False)
    assert failures == []
    assert sorted(r["method"] for r in rows) == ["random", "uniform"]
    assert len(list((tmp_path / "b" / "cells").glob("*/seed*.json.gz"))) == 3  # random x 2, uniform once (deterministic)
