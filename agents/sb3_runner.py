"""stable-baselines3 agents (PPO, SAC, or any SB3 algorithm for Box actions) on the same search.

With one-step episodes, discounting and bootstrapping play no part, so the settings that matter are
those that make the agent *learn within a few hundred episodes*:

* PPO: ``n_steps=16`` episodes per rollout, one minibatch of 16, 10 epochs (as the FastForward agent);
* SAC: ``learning_starts=32``, a replay buffer as large as the budget, one gradient step per episode;
* others (A2C, TD3, DDPG...): SB3 defaults with ``n_steps`` / ``learning_starts`` scaled the same way.

The run stops after exactly the monitor's budget of episodes (a callback), checkpoints the model (and
SAC's replay buffer) with the monitor's state at every rollout end, and resumes from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agents.monitor import SearchMonitor, atomic_torch_save

DEFAULTS: dict[str, dict[str, Any]] = {
    "PPO": {"n_steps": 16, "batch_size": 16, "n_epochs": 10, "learning_rate": 3e-4, "ent_coef": 0.01,
            "gamma": 0.99, "gae_lambda": 1.0},
    "A2C": {"n_steps": 16, "learning_rate": 3e-4},
    "SAC": {"learning_starts": 32, "batch_size": 64, "train_freq": 1, "gradient_steps": 1, "learning_rate": 3e-4},
    "TD3": {"learning_starts": 32, "batch_size": 64, "train_freq": 1, "gradient_steps": 1},
    "DDPG": {"learning_starts": 32, "batch_size": 64, "train_freq": 1, "gradient_steps": 1},
}


def algorithm_class(name: str) -> type:
    """The SB3 class for ``name`` (case-insensitive); ``ValueError`` if unknown or not for Box actions."""
    import stable_baselines3 as sb3

    cls = getattr(sb3, name.upper(), None)
    if cls is None or not isinstance(cls, type):
        known = [n for n in dir(sb3) if n.isupper() and isinstance(getattr(sb3, n), type)]
        raise ValueError(f"agent must be 'fastforward' or a stable-baselines3 algorithm {known}, got {name!r}")
    if gym.spaces.Box not in getattr(cls, "_supported_action_spaces", (gym.spaces.Box,)):
        raise ValueError(f"{name} does not support Box action spaces")
    return cls


def run_sb3(
    env: SearchMonitor,
    algo: str = "ppo",
    seed: int = 0,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train an SB3 algorithm until the monitor's budget is spent. Returns the model and its settings."""
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    cls = algorithm_class(algo)
    name = cls.__name__
    kwargs: dict[str, Any] = dict(DEFAULTS.get(name, {}))
    if "learning_starts" in kwargs:
        kwargs["buffer_size"] = max(env.budget, 1000)
    kwargs.update(overrides)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    model_file = ckpt.with_suffix(".sb3.zip") if ckpt is not None else None
    buffer_file = ckpt.with_suffix(".buffer.pkl") if ckpt is not None else None

    resumed = bool(resume and ckpt is not None and ckpt.exists() and model_file.exists())
    if resumed:
        import torch

        state = torch.load(ckpt, weights_only=False)
        env.load_state_dict(state["monitor"])
        model = cls.load(model_file, env=env, seed=seed)
        if isinstance(model, OffPolicyAlgorithm) and buffer_file.exists():
            model.load_replay_buffer(buffer_file)
    else:
        model = cls("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **kwargs)

    def save() -> None:
        if ckpt is None:
            return
        tmp = model_file.with_name(f".{model_file.name}.tmp.zip")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        model.save(tmp)
        tmp.replace(model_file)
        if isinstance(model, OffPolicyAlgorithm):
            tmpb = buffer_file.with_name(f".{buffer_file.name}.tmp.pkl")
            model.save_replay_buffer(tmpb)
            tmpb.replace(buffer_file)
        atomic_torch_save({"monitor": env.state_dict(), "algo": name}, ckpt)

    class Budget(BaseCallback):
        last_saved = env.episodes

        def _on_step(self) -> bool:
            return not env.done

        def _on_rollout_end(self) -> None:  # every rollout (PPO) or every 16 episodes (off-policy)
            if env.episodes - self.last_saved >= 16 or not isinstance(model, OffPolicyAlgorithm):
                save()
                self.last_saved = env.episodes

    remaining = env.budget - env.episodes
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=Budget(), reset_num_timesteps=not resumed,
                    progress_bar=False)
    save()
    return {"model": model, "config": {"algorithm": name, **{k: _plain(v) for k, v in kwargs.items()}}}


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(np.asarray(v).tolist())
