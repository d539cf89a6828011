"""The standard vector envs over ffprune: gymnasium's Async/SyncVectorEnv and SB3's SubprocVecEnv/DummyVecEnv.

Each end-to-end scenario runs in its own process (``python tests/test_standard_vector.py SCENARIO``)
with a hard timeout that kills the whole process group, so a worker deadlock fails the test instead
of hanging the suite. A scenario scores the same random actions on one env in the parent (this also
starts torch's thread pool there, the condition under which forked workers used to hang) and through
the vector env, and prints both as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ENV_ID = "FFPrune-Llama-v0"
KWARGS = {"reward_windows": 2, "calib_samples": 8}
N_ENVS, N_STEPS = 2, 3
STEP_TIMEOUT = 120  # seconds, gymnasium's own wait bound
SCENARIO_TIMEOUT = 480  # a spawn scenario takes about 2 min on 2 busy cores


def _actions(action_dim: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (N_STEPS, N_ENVS, action_dim)).astype(np.float32)


def _make_env():
    import gymnasium as gym

    import ffenv  # noqa: F401  (registers the ids in spawned workers)

    return gym.make(ENV_ID, **KWARGS)


def _reference() -> tuple[np.ndarray, list[list[float]]]:
    """The actions, and their rewards from one env in this process (one episode per action)."""
    env = _make_env()
    actions = _actions(env.action_space.shape[0])
    rewards = []
    for step_actions in actions:
        row = []
        for a in step_actions:
            env.reset(seed=0)
            row.append(float(env.step(a)[1]))
        rewards.append(row)
    return actions, rewards


def _gymnasium(context: str | None) -> dict:
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

    actions, reference = _reference()  # before the workers start: the parent has used torch
    out: dict = {"reference": reference}
    venvs = {"async": lambda: AsyncVectorEnv([_make_env] * N_ENVS, context=context, autoreset_mode=AutoresetMode.SAME_STEP)}
    if context == "spawn":
        venvs["sync"] = lambda: SyncVectorEnv([_make_env] * N_ENVS, autoreset_mode=AutoresetMode.SAME_STEP)
    for name, build in venvs.items():
        venv = build()
        try:
            rewards, terminated, ppl = [], [], []
            venv.reset(seed=0)
            for step_actions in actions:
                if name == "async":
                    venv.step_async(step_actions)
                    _, r, term, _, info = venv.step_wait(timeout=STEP_TIMEOUT)
                else:
                    _, r, term, _, info = venv.step(step_actions)
                rewards.append(r.tolist())
                terminated.append(term.tolist())
                ppl.append(info["final_info"]["ppl"].tolist())  # SAME_STEP: the step's info, reset info beside it
            out[name] = {"rewards": rewards, "terminated": terminated, "ppl": ppl}
        finally:
            venv.close()
    return out


def _sb3(start_method: str) -> dict:
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    actions, reference = _reference()
    out: dict = {"reference": reference}
    venvs = {"subproc": lambda: SubprocVecEnv([_make_env] * N_ENVS, start_method=start_method)}
    if start_method == "spawn":
        venvs["dummy"] = lambda: DummyVecEnv([_make_env] * N_ENVS)
    for name, build in venvs.items():
        venv = build()
        try:
            venv.reset()
            rewards, dones = [], []
            for step_actions in actions:
                _, r, done, _ = venv.step(step_actions)
                rewards.append(r.tolist())
                dones.append(done.tolist())
            out[name] = {"rewards": rewards, "terminated": dones}
        finally:
            venv.close()
    return out


SCENARIOS = {"gym-fork": lambda: _gymnasium("fork"), "gym-spawn": lambda: _gymnasium("spawn"),
             "sb3-fork": lambda: _sb3("fork"), "sb3-spawn": lambda: _sb3("spawn")}


def _run(name: str) -> dict:
    import torch

    return {**SCENARIOS[name](), "parent_threads": torch.get_num_threads()}


def run_scenario(name: str) -> tuple[dict, float, str]:
    """Run a scenario in a fresh process group; fail (killing the group) if it outlives SCENARIO_TIMEOUT."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), name], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=SCENARIO_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{name} hung for {SCENARIO_TIMEOUT} s\n{stderr[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # workers left behind, if any
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"{name} failed\n{stderr[-3000:]}"
    return json.loads(stdout.strip().splitlines()[-1]), time.perf_counter() - t0, stderr


def assert_real_rewards(result: dict, *names: str) -> None:
    reference = np.array(result["reference"])
    assert reference.shape == (N_STEPS, N_ENVS) and np.all(reference > 0)
    for name in names:
        got = result[name]
        np.testing.assert_allclose(got["rewards"], reference, rtol=1e-6, err_msg=name)
        assert np.all(got["terminated"]), name
        if "ppl" in got:
            assert np.all(np.isfinite(got["ppl"])) and np.all(np.array(got["ppl"]) > 0), name


# ---------------------------------------------------------------------- fast: the mechanism itself
def test_forked_child_runs_torch_after_parent_started_its_pool():
    """os.fork after parallel torch kernels: check_fork_safety makes the child's kernels run (without it they hang)."""
    code = (
        "import os, sys, warnings, torch\n"
        "from ffenv.lm.forking import check_fork_safety\n"
        "torch.set_num_threads(2)\n"
        "x = torch.randn(512, 4096); idx = torch.randperm(4096)[:2048]\n"
        "x.index_select(1, idx); x @ x.T  # starts the OpenMP pool\n"
        "check_fork_safety(); assert torch.get_num_threads() == 2  # parent: a no-op\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        check_fork_safety()\n"
        "    x.index_select(1, idx); x @ x.T\n"
        "    ok = torch.get_num_threads() == 1 and len(w) == 1 and \"context='spawn'\" in str(w[0].message)\n"
        "    os._exit(0 if ok else 3)\n"
        "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the forked child hung in torch")
    assert proc.returncode == 0, stderr[-2000:]


def test_cuda_initialised_before_fork_is_one_clear_error(monkeypatch):
    import torch

    from ffenv.errors import FFPruneError
    from ffenv.lm.forking import check_fork_safety

    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)
    with pytest.raises(FFPruneError, match=r"context='spawn'.*SAME_STEP.*start_method='spawn'"):
        check_fork_safety()


def test_not_forked_is_a_noop():
    import torch

    from ffenv.lm import forking

    threads = torch.get_num_threads()
    forking.check_fork_safety()
    assert not forking.forked_unsafely() and torch.get_num_threads() == threads


# ---------------------------------------------------------------------- end to end, in worker processes
@pytest.mark.slow
def test_gymnasium_async_fork_after_parent_used_torch():
    result, seconds, stderr = run_scenario("gym-fork")
    assert_real_rewards(result, "async")
    if result["parent_threads"] > 1:  # the workers say why they are single-threaded and name the fix
        assert "runs on 1 thread" in stderr and "context='spawn'" in stderr
    print(f"gym-fork: {seconds:.1f} s")


@pytest.mark.slow
def test_gymnasium_spawn_same_step_matches_single_env():
    result, seconds, _ = run_scenario("gym-spawn")
    assert_real_rewards(result, "async", "sync")
    print(f"gym-spawn: {seconds:.1f} s")


@pytest.mark.slow
def test_sb3_subproc_spawn_matches_single_env():
    result, seconds, stderr = run_scenario("sb3-spawn")
    assert_real_rewards(result, "subproc", "dummy")
    assert "runs on 1 thread" not in stderr  # spawned workers keep all threads
    print(f"sb3-spawn: {seconds:.1f} s")


@pytest.mark.slow
def test_sb3_subproc_fork_after_parent_used_torch():
    result, seconds, stderr = run_scenario("sb3-fork")
    assert_real_rewards(result, "subproc")
    if result["parent_threads"] > 1:
        assert "runs on 1 thread" in stderr and "start_method='spawn'" in stderr
    print(f"sb3-fork: {seconds:.1f} s")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(json.dumps(_run(sys.argv[1])))
