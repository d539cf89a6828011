"""RayEvaluator: a population scored on Ray actors equals the same population scored in-process.

One local Ray instance (2 CPUs) serves the whole module; every evaluator is closed before the next one
starts (each actor takes one of the two CPUs). A worker killed before a batch is replaced and its
evaluation retried; with ``retries=0`` the batch fails as one FFPruneError that points at ``--resume``.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from ffenv import EnvConfig, FFPruneEnv, FFPruneError, WorkerLostError  # noqa: E402
from ffenv.envs.population import LocalEvaluator  # noqa: E402
from ffenv.vector.ray_workers import RayEvaluator, actor_device, actor_env_kwargs  # noqa: E402

CONFIG = EnvConfig(reward_windows=2, calib_samples=8)
TARGETS = [0.3, 0.2, 0.4, 0.3, 0.2]
WINDOWS = [1, 2, 2, 1, 2]


@pytest.fixture(scope="module")
def ray_instance():
    """A private local Ray instance with 2 CPUs, shut down after the module."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 2**20, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def actions() -> np.ndarray:
    n_units = 2 * 8  # tiny-llama, structured: attention + FFN per block
    return np.random.default_rng(0).uniform(-1, 1, (len(TARGETS), n_units)).astype(np.float32)


@pytest.fixture(scope="module")
def local_results(actions):
    """The batch scored in this process with one torch thread, like every actor."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = FFPruneEnv(CONFIG)
        assert env.n_units == actions.shape[1]
        return LocalEvaluator(env).score_many(actions, TARGETS, WINDOWS)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_worker_results(ray_instance, actions):
    with RayEvaluator(CONFIG, workers=2) as ev:
        assert not ev.started_ray  # reuses the module's instance
        assert [w["threads"] for w in ev.worker_info] == [1, 1]
        assert len({w["pid"] for w in ev.worker_info}) == 2
        results = ev.score_many(actions, TARGETS, WINDOWS)
        # an error the environment raises in an actor comes back as itself
        with pytest.raises(FFPruneError, match="reward_windows"):
            ev.score_many(actions[:1], [0.3], [3])
        assert ev.score_many(actions[:0], [], []) == []
    assert ray.is_initialized()  # close() leaves a Ray it did not start running
    return results


def assert_same(got, want, rtol: float = 0.0) -> None:
    assert len(got) == len(want)
    for (r1, i1), (r2, i2) in zip(got, want):
        assert r1 == pytest.approx(r2, rel=rtol, abs=0) if rtol else r1 == r2
        assert i1.keys() == i2.keys()
        for key in i1:
            a, b = i1[key], i2[key]
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and a.flags.writeable
                assert np.array_equal(a, b) if not rtol else np.allclose(a, b, rtol=rtol, atol=0), key
            elif isinstance(a, float) and rtol:
                assert a == pytest.approx(b, rel=rtol, abs=0), key
            else:
                assert a == b, key


def test_an_address_nobody_listens_on_fails_at_once():
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process: an evaluator would reuse it")
    t0 = time.perf_counter()
    with pytest.raises(FFPruneError, match=r"cannot reach the Ray cluster at '127\.0\.0\.1:9'"):
        RayEvaluator(CONFIG, workers=1, address="127.0.0.1:9")
    assert time.perf_counter() - t0 < 15 and not ray.is_initialized()


def test_actor_env_kwargs_leave_the_worker_fields_out():
    kwargs = actor_env_kwargs(CONFIG.replace(workers=3, ray_address="auto"), "cpu")
    assert "workers" not in kwargs and "ray_address" not in kwargs
    assert EnvConfig(**kwargs) == CONFIG
    assert actor_env_kwargs(CONFIG.replace(device="cuda:1"), "cuda")["device"] == "cuda"


def test_one_gpu_per_actor_with_a_cuda_device():
    assert actor_device("cpu", 8) == ("cpu", 0)
    assert actor_device("cuda", 2) == actor_device("cuda:1", 2) == ("cuda", 1)  # Ray picks the GPU: its cuda:0
    assert actor_device("auto", 1) == ("cuda", 1) and actor_device("auto", 0) == ("cpu", 0)


@pytest.mark.slow
def test_two_workers_equal_one_worker_exactly(ray_instance, actions, two_worker_results):
    with RayEvaluator(CONFIG, workers=1) as ev:
        one = ev.score_many(actions, TARGETS, WINDOWS)
    assert_same(two_worker_results, one)
    assert [info["reward_windows"] for _, info in one] == WINDOWS
    assert [info["target_sparsity"] for _, info in one] == TARGETS
    assert all(info["cost"] == {"evaluations": 1, "tokens": w * CONFIG.seq_len} for (_, info), w in zip(one, WINDOWS))


@pytest.mark.slow
def test_workers_equal_in_process(two_worker_results, local_results):
    assert_same(two_worker_results, local_results, rtol=1e-6)


@pytest.mark.slow
def test_killed_worker_is_replaced_and_its_evaluation_retried(ray_instance, actions, two_worker_results):
    with RayEvaluator(CONFIG, workers=2) as ev:
        pid = ev.worker_info[1]["pid"]
        os.kill(pid, signal.SIGKILL)
        results = ev.score_many(actions, TARGETS, WINDOWS)
        assert ev.worker_info[1]["pid"] != pid  # a fresh actor took the dead one's place
    assert_same(results, two_worker_results)


@pytest.mark.slow
def test_worker_lost_without_retry_fails_the_batch(ray_instance, actions, two_worker_results):
    with RayEvaluator(CONFIG, workers=2, retries=0) as ev:
        pid = ev.worker_info[0]["pid"]
        ray.kill(ev.actors[0], no_restart=True)
        with pytest.raises(WorkerLostError, match=rf"worker 0 of 2 \(pid {pid} .*\) died \(retries=0\); all 5 evaluations "
                                               r"of this batch are lost .*continue with --resume") as err:
            ev.score_many(actions, TARGETS, WINDOWS)
        assert "\n" not in str(err.value) and not isinstance(err.value, FFPruneError)  # not bad input
        # the next batch refills the dead slot and runs whole
        assert_same(ev.score_many(actions, TARGETS, WINDOWS), two_worker_results)


@pytest.mark.slow
def test_bad_config_is_the_environments_error(ray_instance):
    t0 = time.perf_counter()
    with pytest.raises(FFPruneError, match="reward_windows=100000 exceeds"):
        RayEvaluator(EnvConfig(reward_windows=100000, calib_samples=8), workers=1)
    assert time.perf_counter() - t0 < 120
    deadline = time.monotonic() + 30  # the failed evaluator's actor is killed: its CPU comes back
    while ray.available_resources().get("CPU") != 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU") == 2


def test_without_ray_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(FFPruneError, match=r"^workers / ray_address need Ray: pip install 'ffprune\[ray\]'$"):
        RayEvaluator(CONFIG, workers=2)

