"""Search bookkeeping shared by every agent: budget, best allocation, cost axes, TensorBoard, results.

:class:`SearchMonitor` is the outermost ``gymnasium.Wrapper`` of a search. For every episode it

* records the reward, perplexity, target and cost (evaluations, tokens forwarded, wall seconds);
* keeps the best allocation **at the final target on all reward windows**: an episode of a cheaper
  curriculum stage that looks at least as good as the best is re-scored with
  :meth:`ffenv.curriculum.CurriculumWrapper.full_fidelity_step` (that evaluation is counted);
* logs to TensorBoard one scalar family per cost axis — ``by_evaluations/*``, ``by_tokens/*``,
  ``by_wall_ms/*`` (step = milliseconds of wall time) with the tags ``reward``, ``best_reward``, ``ppl``,
  ``best_ppl`` — so runs of different agents overlay on any axis;
* shows a tqdm bar (evaluations, best ppl, elapsed time) and knows when the budget is spent.

Its :meth:`state_dict` / :meth:`load_state_dict` make searches resumable; :func:`atomic_write_json`
and :func:`atomic_torch_save` write files so that an interruption never leaves a half-written one.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

AXES = ("evaluations", "tokens", "wall_ms")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write JSON through a temporary file and an atomic rename."""
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def versions() -> dict[str, str]:
    """Versions of everything that shapes a result."""
    import gymnasium
    import stable_baselines3
    import transformers

    import ffenv

    return {"ffprune": ffenv.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "gymnasium": gymnasium.__version__,
            "stable_baselines3": stable_baselines3.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def run_dir(logdir: str | Path, env_id: str, agent: str, seed: int) -> Path:
    """``<logdir>/<env>/<agent>/seed<k>``: where one search's TensorBoard events go."""
    return Path(logdir) / env_id / agent / f"seed{seed}"


class SearchMonitor(gym.Wrapper):
    """Budget, best allocation, cost axes and TensorBoard logging for one search (see module doc).

    Args:
        env: the environment the agent sees (usually a :class:`CurriculumWrapper` around ``gym.make``).
        budget: episodes the search may run.
        logdir: TensorBoard run folder (``None``: no TensorBoard).
        progress: show a tqdm bar.
        hparams: logged as TensorBoard hyper-parameters when the search closes.
        weights: identity of the model weights (:func:`ffenv.models.weights_fingerprint`), kept in the
            checkpoint so a resume on other weights is refused.
    """

    def __init__(self, env: gym.Env, budget: int, logdir: str | Path | None = None, progress: bool = True,
                 hparams: dict[str, Any] | None = None, weights: str | None = None) -> None:
        super().__init__(env)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget must be a positive integer (episodes), got {budget!r}")
        self.budget = budget
        self.logdir = Path(logdir) if logdir is not None else None
        self.hparams = dict(hparams or {})
        self.weights = weights
        self.base = env.unwrapped
        self.final_target = getattr(env, "final_target", self.base.target_sparsity)
        self.full_windows = getattr(env, "full_windows", self.base.reward_windows)
        self.episodes = 0
        self.wall_offset = 0.0  # seconds spent before a resume
        self.cost_offset = {"evaluations": 0, "tokens": 0}
        self._cost_at_start = dict(self.base.cost)
        self._t0 = time.perf_counter()
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self._writer = None
        self._bar = None
        self._progress = progress

    # ------------------------------------------------------------------ cost axes
    @property
    def wall_seconds(self) -> float:
        return self.wall_offset + time.perf_counter() - self._t0

    @property
    def cost(self) -> dict[str, float]:
        """Search cost so far: episodes, evaluations (re-scorings included), tokens, wall seconds."""
        return {"episodes": self.episodes,
                "evaluations": self.cost_offset["evaluations"] + self.base.cost["evaluations"]
                - self._cost_at_start["evaluations"],
                "tokens": self.cost_offset["tokens"] + self.base.cost["tokens"] - self._cost_at_start["tokens"],
                "seconds": round(self.wall_seconds, 3)}

    @property
    def done(self) -> bool:
        """True once the episode budget is spent."""
        return self.episodes >= self.budget

    # ------------------------------------------------------------------ gymnasium API
    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.episodes += 1
        stage = info.get("curriculum", {})
        is_final = stage.get("final", True) if stage else (
            info["target_sparsity"] == self.final_target and self.base.reward_windows == self.full_windows)
        full_reward, full_info = (reward, info) if is_final else (None, None)
        if full_reward is None and info["target_sparsity"] == self.final_target and hasattr(self.env, "full_fidelity_step"):
            if self.best is None or reward >= self.best["reward"]:
                full_reward, full_info = self.env.full_fidelity_step(action)
        if full_reward is not None and (self.best is None or full_reward > self.best["reward"]):
            self.best = {"reward": float(full_reward), "ppl": float(full_info["ppl"]),
                         "action": np.asarray(action, np.float32).tolist(),
                         "layer_sparsity": np.asarray(full_info["layer_sparsity"]).tolist(),
                         "keep_ratio": np.asarray(full_info["keep_ratio"]).tolist(),
                         "sparsity": float(full_info["sparsity"]), "episode": self.episodes,
                         "evaluations": self.cost["evaluations"], "tokens": self.cost["tokens"],
                         "seconds": round(self.wall_seconds, 3)}
        self._log(float(reward), float(info["ppl"]), float(info["target_sparsity"]))
        return obs, reward, terminated, truncated, info

    # ------------------------------------------------------------------ logging
    def _log(self, reward: float, ppl: float, target: float) -> None:
        cost = self.cost
        point = {"episode": self.episodes, "reward": reward, "ppl": ppl, "target": target,
                 "evaluations": cost["evaluations"], "tokens": cost["tokens"], "seconds": cost["seconds"],
                 "best_reward": self.best["reward"] if self.best else float("nan"),
                 "best_ppl": self.best["ppl"] if self.best else float("nan")}
        self.history.append(point)
        if self.logdir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.logdir))
            steps = {"evaluations": cost["evaluations"], "tokens": cost["tokens"],
                     "wall_ms": int(round(cost["seconds"] * 1000))}
            for axis in AXES:
                for tag in ("reward", "ppl", "best_reward", "best_ppl"):
                    value = point[tag]
                    if np.isfinite(value):
                        self._writer.add_scalar(f"by_{axis}/{tag}", value, steps[axis])
            self._writer.add_scalar("curriculum/target_sparsity", target, self.episodes)
            self._writer.add_scalar("curriculum/reward_windows", self.base.reward_windows, self.episodes)
        if self._progress:
            if self._bar is None:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=self.budget, initial=self.episodes - 1, desc="search", unit="ep",
                                 dynamic_ncols=True)
            self._bar.update(1)
            self._bar.set_postfix(evals=cost["evaluations"], best_ppl=f"{point['best_ppl']:.2f}",
                                  elapsed=f"{cost['seconds']:.0f}s", refresh=False)

    def close_search(self, metrics: dict[str, float] | None = None) -> None:
        """Flush TensorBoard (hyper-parameters with the final metrics) and close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in self.hparams.items()}
            final = {f"hparam/{k}": float(v) for k, v in (metrics or {}).items() if v is not None}
            if self.best is not None:
                final.setdefault("hparam/best_reward", self.best["reward"])
                final.setdefault("hparam/best_ppl", self.best["ppl"])
            self._writer.add_hparams(hp, final, run_name=".")
            self._writer.flush()
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        cost = self.cost
        state = {"episodes": self.episodes, "wall_seconds": self.wall_seconds,
                 "evaluations": cost["evaluations"], "tokens": cost["tokens"],
                 "best": self.best, "history": self.history, "weights": self.weights}
        if hasattr(self.env, "state_dict"):
            state["curriculum"] = self.env.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("weights") != self.weights:
            raise ValueError(f"the checkpoint was written for other model weights ({state.get('weights')}, now "
                             f"{self.weights}): the model changed since; start the search again without resume")
        self.episodes = int(state["episodes"])
        self.wall_offset = float(state["wall_seconds"])
        self._t0 = time.perf_counter()
        self._cost_at_start = dict(self.base.cost)
        self.cost_offset = {"evaluations": int(state["evaluations"]), "tokens": int(state["tokens"])}
        self.best = state["best"]
        self.history = list(state["history"])
        if "curriculum" in state and hasattr(self.env, "load_state_dict"):
            self.env.load_state_dict(state["curriculum"])

    @property
    def evaluations_to_best(self) -> int | None:
        return None if self.best is None else int(self.best["evaluations"])
