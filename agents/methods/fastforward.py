"""The one-shot FastForward agent: single-step PPO on the whole allocation (FastForward Pruning).

Read top to bottom, like a CleanRL file:

1. A Gaussian policy: MLP [256, 256, 128] (ReLU) on the observation → the mean of the raw action;
   a state-independent learned log-std (initial std 0.5; the paper's 1.0 is sized for thousands of
   episodes, see :class:`FastForwardConfig`). A value head of the same shape.
2. Each update collects ``batch_episodes`` single-step episodes as one population
   (``reset_many`` / ``step_many``: evaluated in-process or on Ray workers). The sampled action
   ``a ~ N(μ, σ)`` is sent to the env clipped to the action box (the env's projector does the rest); its
   log-probability is that of the unclipped sample, as stable-baselines3 does. With ``squash`` the sample
   ``u ~ N(μ, σ)`` is sent as ``a = tanh(u)``, inside the box with nothing clipped (:func:`env_action`).
3. With one-step episodes the return is the reward: advantage ``A = r - V(s)``, normalised over the
   batch (γ and λ play no part). ``update_epochs`` PPO-clip epochs on the full batch (one minibatch):
   ``L = -min(ρA, clip(ρ, 1±ε)A) + c_v (V - r)² - c_e H``, gradients clipped to ``max_grad_norm``. The ratio
   ``ρ`` and the entropy ``H`` are the Gaussian's, of the raw (unclipped, or pre-tanh) sample.
4. The :class:`~ffenv.wrappers.SearchAccounting` around the env keeps the best allocation seen at the
   final target and full fidelity; the search returns it.
5. Every update logs its learning (``log``): policy and value loss, entropy, std, approx KL, clip
   fraction, explained variance and the batch's mean reward, as CleanRL does (with ``mean_episode``, also the
   reward of the policy's mean action, played as the batch's first episode and not learned from).

Save / load of the policy (:func:`save_policy`, :func:`load_policy`, :func:`read_policy` with its provenance) and a
warm start from a policy trained at another target (the paper transfers 20 % → 30 %) are supported; a checkpoint
after every update makes the search resumable. The observation's first entry is the episode's target, so one
policy trained across targets (the curriculum's ``train_targets``) is target-conditioned: :func:`mean_action` is
its deterministic allocation for any target (``ffprune allocate``): the mean clipped to the box, or ``tanh(μ)`` for a
squashed policy (the policy, and its file, know whether they squash).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ffenv.errors import FFPruneError
from ffenv.io import CheckpointPacer, atomic_torch_save, load_checkpoint, pack, unpack
from ffenv.wrappers import SearchAccounting


@dataclass
class FastForwardConfig:
    """Hyper-parameters of the FastForward agent (defaults sized for the bundled models)."""

    hidden: tuple[int, ...] = (256, 256, 128)
    """Hidden layer widths of the actor and of the critic MLPs."""
    learning_rate: float = 1e-3
    """Adam learning rate (eps 1e-5). The paper's 1e-4–5e-4 is for 2000+ episodes; at 3e-4 and a budget of 100
    the learned std did not move (1.00 → 1.00) and the mean barely left the uniform allocation."""
    batch_episodes: int = 8
    """Single-step episodes per update (the PPO batch; one minibatch). The paper's 15–20 leave a budget-100
    search about 6 updates; 8 gives 12."""
    update_epochs: int = 10
    """PPO epochs over each batch."""
    clip_coef: float = 0.2
    """PPO ratio clip ``ε``."""
    ent_coef: float = 0.01
    """Entropy bonus ``c_e``."""
    vf_coef: float = 0.5
    """Value-loss weight ``c_v``."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    init_std: float = 0.5
    """Initial standard deviation of the Gaussian policy (state-independent, learned). The paper's 1.0 sends a
    third of the sampled coordinates past the ``[-1, 1]`` bounds (clipped: a search that is mostly random);
    0.5 clips about 5 %; 0.3 explored too little (``docs/results/fastforward-budget100/README.md``)."""
    mean_episode: bool = False
    """Play the policy's mean (deterministic) action as the first episode of every batch, besides the samples: the
    search's best then includes what the policy itself would return (``ffprune allocate --refine`` turns it on, so a
    refinement never ends below its zero-shot allocation on the reward split). It costs one evaluation per update
    and is left out of the PPO update (it is not a sample of the policy); needs ``batch_episodes >= 3``."""
    squash: bool = False
    """A tanh-squashed Gaussian: sample ``u ~ N(μ, σ)``, send ``a = tanh(u)`` to the env (inside the ``[-1, 1]``
    box: nothing is clipped; float32 rounds ``|u| > 9`` to ``±1``, still in the box). The PPO ratio uses the
    Normal log-probability of ``u``: the squashed action's log-density subtracts the tanh's log-Jacobian
    ``Σ log(1 - tanh(u)²)``, which depends on ``u`` alone, the same for the old and the new policy, so it cancels in
    the ratio. The entropy bonus is the Normal's, i.e. the pre-squash entropy (the squashed distribution's has no
    closed form). The deterministic action is ``tanh(μ)``. Off (the default): the sample is clipped to the box, and a
    clipped coordinate says nothing about where inside the range it should be."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded with the result (not used by the algorithm)."""

    def __post_init__(self) -> None:
        checks = {"learning_rate": self.learning_rate > 0, "batch_episodes": self.batch_episodes >= 2,
                  "update_epochs": self.update_epochs >= 1, "clip_coef": self.clip_coef > 0,
                  "init_std": self.init_std > 0, "max_grad_norm": self.max_grad_norm > 0}
        for name, ok in checks.items():
            if not ok:
                raise FFPruneError(f"{name} is out of range: {getattr(self, name)!r}")
        if not isinstance(self.squash, bool):
            raise FFPruneError(f"squash must be true or false, got {self.squash!r}")
        if self.mean_episode and self.batch_episodes < 3:
            raise FFPruneError(f"batch_episodes must be >= 3 with mean_episode (two samples besides the mean), "
                               f"got {self.batch_episodes}")


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last); last layer initialised small."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        nn.init.orthogonal_(lin.weight, gain=np.sqrt(2) if i < len(sizes) - 2 else 0.01)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Policy(nn.Module):
    """Gaussian actor (state-independent log-std) and critic on the observation (defaults: :class:`FastForwardConfig`'s).

    ``squash``: the env gets ``tanh`` of the Gaussian's sample (:func:`env_action`); a plain attribute, not a
    parameter, saved in the policy file beside the weights.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = FastForwardConfig.hidden,
                 init_std: float = FastForwardConfig.init_std, squash: bool = FastForwardConfig.squash):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden = obs_dim, act_dim, tuple(int(h) for h in hidden)
        self.squash = bool(squash)
        self.actor = mlp([obs_dim, *hidden, act_dim])
        self.critic = mlp([obs_dim, *hidden, 1])
        self.log_std = nn.Parameter(torch.full((act_dim,), float(np.log(init_std))))

    def dist(self, obs: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.actor(obs), self.log_std.exp().expand(obs.shape[0], -1))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)


def env_action(policy: Policy, u: np.ndarray, low: float | np.ndarray = -1.0,
               high: float | np.ndarray = 1.0) -> np.ndarray:
    """What the env gets for the Gaussian's sample (or mean) ``u``: ``tanh(u)`` for a squashed policy (the env's box
    is ``[-1, 1]``), else ``u`` clipped to ``[low, high]`` (``float32``)."""
    u = np.asarray(u, np.float32)
    return np.tanh(u) if policy.squash else np.clip(u, low, high).astype(np.float32)


def save_policy(policy: Policy, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Save a policy (weights, shapes, whether it squashes, and free-form metadata such as the target) atomically."""
    atomic_torch_save({"state_dict": policy.state_dict(), "obs_dim": policy.obs_dim, "act_dim": policy.act_dim,
                       "hidden": [m.out_features for m in policy.actor if isinstance(m, nn.Linear)][:-1],
                       "squash": policy.squash, "meta": meta or {}}, path)


def read_policy(path: str | Path) -> tuple[Policy, dict[str, Any]]:
    """A policy file of :func:`save_policy` and its metadata (provenance; ``{}`` if none was saved). A file saved
    before the ``squash`` flag existed is an unsquashed policy.

    A missing file, one that is not a policy file (corrupt, or another checkpoint) is a one-line
    :class:`FFPruneError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FFPruneError(f"policy file {str(path)!r} does not exist")
    try:
        blob = load_checkpoint(path)
    except FFPruneError:
        raise FFPruneError(f"policy file {str(path)!r} is corrupt or not an ffprune policy file (write one with "
                           "`ffprune search --agent fastforward --out R.json`: R.policy.pt)") from None
    try:
        policy = Policy(int(blob["obs_dim"]), int(blob["act_dim"]), tuple(int(h) for h in blob["hidden"]),
                        squash=bool(blob.get("squash", False)))
        policy.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise FFPruneError(f"policy file {str(path)!r} is not an ffprune policy file ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else 'missing fields'})") from None
    meta = blob.get("meta") or {}
    return policy, dict(meta) if isinstance(meta, dict) else {}


def load_policy(path: str | Path, obs_dim: int | None = None, act_dim: int | None = None) -> Policy:
    """Load a policy saved by :func:`save_policy`, checking it fits the given observation / action sizes."""
    policy, _meta = read_policy(path)
    for name, want in (("obs_dim", obs_dim), ("act_dim", act_dim)):
        if want is not None and getattr(policy, name) != want:
            raise FFPruneError(f"policy {str(path)!r} has {name}={getattr(policy, name)}, but this env needs {want} "
                               "(a warm start needs the same model and mode)")
    return policy


def update_policy_meta(path: str | Path, fields: dict[str, Any]) -> None:
    """Add ``fields`` to a saved policy's metadata (atomically; the weights are left as they are)."""
    blob = load_checkpoint(path)
    blob["meta"] = {**(blob.get("meta") or {}), **fields}
    atomic_torch_save(blob, path)


def policy_fingerprint(policy: Policy) -> str:
    """``sha256:<16 hex>`` of the policy's parameters (names, shapes and values) and, for a squashed policy, of that
    flag (an unsquashed policy's fingerprint is what it was before the flag existed); the metadata plays no part."""
    digest = hashlib.sha256()
    if policy.squash:
        digest.update(b"squash;")
    for name, tensor in sorted(policy.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.numpy().tobytes())
    return f"sha256:{digest.hexdigest()[:16]}"


def mean_action(policy: Policy, obs: np.ndarray, low: float | np.ndarray = -1.0,
                high: float | np.ndarray = 1.0) -> np.ndarray:
    """The policy's deterministic action for one observation: the Gaussian's mean as the env gets it
    (:func:`env_action`: clipped to the action box, or ``tanh(μ)`` for a squashed policy; ``float32``; no sampling,
    no RNG)."""
    obs_t = torch.as_tensor(np.asarray(obs, np.float32).reshape(1, -1))
    if obs_t.shape[1] != policy.obs_dim:
        raise FFPruneError(f"the observation has {obs_t.shape[1]} entries, the policy expects {policy.obs_dim}")
    with torch.no_grad():
        mean = policy.actor(obs_t)[0].numpy()
    return env_action(policy, mean, low, high)


def run_fastforward(
    env: SearchAccounting,
    seed: int = 0,
    config: FastForwardConfig | None = None,
    warm_start: str | Path | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    log: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Search until the budget is spent; return the policy, its last learning statistics and the config.

    Args:
        env: a :class:`~ffenv.wrappers.SearchAccounting` around the (curriculum-wrapped) environment.
        seed: seeds torch, numpy, Python's ``random`` and the env's first reset.
        config: hyper-parameters.
        warm_start: a policy file from an earlier search (e.g. at another target) to start from; it must squash as
            ``config.squash`` says.
        checkpoint: file to write after updates (policy, optimiser, RNG and search state): after every one while
            that is cheap, spaced so rewrites take at most a tenth of the run otherwise (:class:`ffenv.io.CheckpointPacer`).
        resume: continue from ``checkpoint`` if it exists.
        log: called after every update with its learning statistics (e.g. ``SearchLogger.log_learning``).
    """
    cfg = config or FastForwardConfig()
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
    low, high = env.action_space.low, env.action_space.high

    if cfg.squash and not (np.all(low == -1.0) and np.all(high == 1.0)):
        raise FFPruneError(f"squash needs the action box [-1, 1], got [{low.min()}, {high.max()}]")
    policy = Policy(obs_dim, act_dim, cfg.hidden, cfg.init_std, cfg.squash)
    if warm_start is not None:
        start = load_policy(warm_start, obs_dim, act_dim)
        if start.squash != cfg.squash:
            raise FFPruneError(f"squash must be the warm-start policy's ({start.squash}; {str(warm_start)!r}), "
                               f"got {cfg.squash}")
        if start.hidden != tuple(cfg.hidden):
            raise FFPruneError(f"hidden must be the warm-start policy's {list(start.hidden)} ({str(warm_start)!r}), "
                               f"got {list(cfg.hidden)}")
        policy.load_state_dict(start.state_dict())
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
    updates = 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        env.load_state_dict(unpack(state["search"]))
        updates = state["updates"]

    stats: dict[str, float] = {}
    pacer = CheckpointPacer()
    while not env.budget_spent:
        # ---- collect a batch of one-step episodes: one population evaluation (in-process or on workers)
        n = min(cfg.batch_episodes, env.budget - env.episodes)
        obs_n, _ = env.reset_many(n, seed=seed + env.episodes)
        obs_b, act_b, logp_b, env_actions = [], [], [], []
        first = 1 if cfg.mean_episode else 0  # the mean's episode, if any: evaluated, not learned from
        if first:
            env_actions.append(mean_action(policy, obs_n[0], low, high))
        for i in range(first, n):
            obs_t = torch.as_tensor(obs_n[i], dtype=torch.float32)[None]
            with torch.no_grad():
                dist = policy.dist(obs_t)
                action = dist.sample()  # u: the Gaussian's sample (clipped, or squashed, on its way to the env)
                logp = dist.log_prob(action).sum(-1)
            env_actions.append(env_action(policy, action[0].numpy(), low, high))
            obs_b.append(obs_t)
            act_b.append(action)
            logp_b.append(logp)
        _, rewards, _, _, _ = env.step_many(np.stack(env_actions))
        rew_b = [float(r) for r in rewards[first:]]
        if len(rew_b) < 2:  # a batch of one sample has no advantage signal; the episodes still counted
            break
        obs_t = torch.cat(obs_b)
        act_t = torch.cat(act_b)
        old_logp = torch.cat(logp_b)
        returns = torch.tensor(rew_b, dtype=torch.float32)

        # ---- PPO-clip on the full batch; advantage r - V(s), normalised
        with torch.no_grad():
            values = policy.value(obs_t)
            adv = returns - values
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        clipfracs = []
        for _ in range(cfg.update_epochs):
            dist = policy.dist(obs_t)
            logp = dist.log_prob(act_t).sum(-1)
            logratio = logp - old_logp
            ratio = logratio.exp()
            with torch.no_grad():  # diagnostics only (CleanRL's): KL estimate and share of clipped ratios
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfracs.append(((ratio - 1.0).abs() > cfg.clip_coef).float().mean().item())
            pg_loss = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef) * adv).mean()
            v_loss = 0.5 * (policy.value(obs_t) - returns).pow(2).mean()
            entropy = dist.entropy().sum(-1).mean()  # the Gaussian's (with squash: pre-tanh) entropy
            loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
        updates += 1
        var_returns = returns.var().item()
        stats = {"pg_loss": pg_loss.item(), "v_loss": v_loss.item(), "entropy": entropy.item(),
                 "std": policy.log_std.exp().mean().item(), "batch_reward": returns.mean().item(), "updates": updates,
                 "approx_kl": approx_kl.item(), "clipfrac": float(np.mean(clipfracs)),
                 **({"mean_reward": float(rewards[0])} if first else {}),
                 "explained_variance": float("nan") if var_returns == 0 else
                 1.0 - (returns - values).var().item() / var_returns}
        if log is not None:
            log(stats)

        if checkpoint is not None and pacer.due():
            pacer.write(partial(_save_checkpoint, checkpoint, policy, optimizer, env, updates, cfg))
    return {"policy": policy, "stats": stats, "config": asdict(cfg)}


def _save_checkpoint(path: str | Path, policy: Policy, optimizer: torch.optim.Optimizer, env: SearchAccounting,
                     updates: int, cfg: FastForwardConfig) -> None:
    """The checkpoint :func:`run_fastforward` resumes from: policy, optimiser, RNGs, search state (packed), updates."""
    atomic_torch_save({"policy": policy.state_dict(), "optimizer": optimizer.state_dict(),
                       "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                       "python_rng": random.getstate(), "search": pack(env.state_dict()), "updates": updates,
                       "config": asdict(cfg)}, path)
