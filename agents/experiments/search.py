"""One search, end to end: make the env, wrap it, run a method, score the best allocation, write the result.

:func:`run_search` is what ``ffprune search`` and ``ffprune bench`` call; any registered method
(:mod:`ffprune.agents.methods.registry`) runs through it. The env is ``SearchAccounting(CurriculumWrapper(gym.make(...)))``
(the curriculum only for methods that learn), with a :class:`~ffenv.wrappers.logger.SearchLogger` for TensorBoard
and the progress bar. The result JSON holds the env id and its configuration, the fingerprint of the model's
weights (``weights_fingerprint``), the method and its settings, the env's ``unit_names`` (one per action
entry), the best allocation (action, per-unit sparsity, keep ratios), its perplexity on the reward split
(``best.reward_ppl``, dense ``best.dense_reward_ppl``) and on the held-out ``eval`` split (``best.eval_ppl``;
with ``calibrate``, ``best.eval_ppl_after_calib``), the search cost (episodes, evaluations, tokens, wall
seconds, evaluations-to-best) and the versions used. With ``train_targets`` (one target-conditioned policy trained
across targets) it also records them and ``best_by_target`` (the best allocation found at each training target,
on the reward split; :class:`~ffenv.wrappers.SearchAccounting`), and ``best`` is the one at ``target``. A
method that saves a policy (FastForward: ``<out>.policy.pt``) gets its provenance in the policy's metadata
(:func:`policy_provenance`, plus ``agent_config`` and the ``training_cost`` once it ran). It is written
atomically; a checkpoint beside it (``<out>.ckpt``; an off-policy SB3 method's replay buffer, ``<out>.buffer.pkl``)
lets ``resume=True`` continue an interrupted search; once the result is written that resume-only state is removed
(what the run produced stays: the policy, an SB3 model's ``<out>.sb3.zip``, TensorBoard), and a finished result is
returned as it is. Results are read back with :func:`ffprune.agents.results.read_result`.

**On a surrogate** (``env_kwargs={"surrogate": True}``, optionally ``"surrogate_data": PATH``; ``ffprune search
--surrogate``) every method runs unchanged on :mod:`ffenv.surrogate`'s env: the budget counts episodes as ever (one
surrogate evaluation each, re-scorings at the final target are surrogate evaluations too), ``cost`` has
``surrogate_evaluations`` (``evaluations`` and ``tokens`` stay 0), the best allocation's ``reward_ppl`` is the
surrogate's full-fidelity prediction and its ``eval_ppl`` the predicted held-out ppl (``best.surrogate: true``,
``best.eval_ppl_surrogate_std``: the ensemble spread of its log), the result has a top-level ``"surrogate":
{"fingerprint": ..., "data": ...}`` label (:func:`surrogate_label`), TensorBoard runs go to
``<logdir>/surrogate/<env>/<method>/seed<k>`` and plot by surrogate evaluations, and a finished result or a
checkpoint of another surrogate (or of the real env) is refused on resume. ``calibrate`` needs the real env.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from ffenv.config import EnvConfig
from ffenv.envs.sequential_env import FFPruneSequentialEnv, single_step_env
from ffenv.errors import FFPruneError, SearchInterrupted, positive_int, unit_interval
from ffenv.io import as_json, beside, check_writable, versions
from ffenv.lm.models import weights_fingerprint
from ffenv.registration import resolve_config, twin_env_id
from ffenv.surrogate import data_path, load_surrogate
from ffenv.surrogate.records import DATA_DIR
from ffenv.wrappers import CurriculumWrapper, SearchAccounting
from ffenv.wrappers.curriculum import check_train_targets
from ffenv.wrappers.logger import SearchLogger
from ffprune.agents.methods.fastforward import update_policy_meta
from ffprune.agents.methods.registry import METHODS, RunContext, SearchMethod, get_method
from ffprune.agents.methods.sb3 import replay_buffer_file
from ffprune.agents.results import (
    RESULT_FORMAT,
    RESULT_KEYS,
    RESULT_KIND,
    SearchResult,
    describe_surrogate,
    read_result,
    same_surrogate,
    surrogate_of,
    write_result,
)
from ffprune.agents.tools.specs import spec_with


def make_search_env(env_id: str, budget: int, env_kwargs: dict[str, Any] | None = None, target: float | None = None,
                    curriculum: bool = True, warmup_fraction: float = 0.4,
                    curriculum_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """``gym.make`` + (optionally) the curriculum over the first ``warmup_fraction`` of the budget."""
    kwargs = dict(env_kwargs or {})
    if target is not None:
        kwargs["target_sparsity"] = target
    env = gym.make(env_id, **kwargs)
    if curriculum:
        unit_interval("warmup_fraction", warmup_fraction)
        warmup = max(1, int(round(warmup_fraction * budget)))
        env = CurriculumWrapper(env, warmup_episodes=warmup, **(curriculum_kwargs or {}))
    return env


def model_fingerprint(env_id: str, env_kwargs: dict[str, Any] | None = None) -> str | None:
    """:func:`ffenv.lm.models.weights_fingerprint` of the model an env id (plus overrides) would load."""
    return weights_fingerprint(resolve_config(env_id, env_kwargs).model)


def surrogate_label(env_id: str, env_kwargs: dict[str, Any] | None = None,
                    config: EnvConfig | None = None) -> dict[str, Any] | None:
    """``{"fingerprint": <evaluation set's>, "data": <its file>}`` of the surrogate an env id (plus overrides; or a
    resolved ``config``) would build (the bundled set is named ``ffenv/surrogate/data/<file>``), or ``None`` for a real
    env. Loads (and caches) the surrogate: a missing or mismatched evaluation set is the env's one-line
    :class:`FFPruneError`."""
    config = config if config is not None else resolve_config(env_id, env_kwargs)
    if not config.surrogate:
        return None
    path = data_path(config.model, config.mode, config.surrogate_data)
    bundled = path.resolve().parent == DATA_DIR
    return {"fingerprint": load_surrogate(config).fingerprint,
            "data": f"ffenv/surrogate/data/{path.name}" if bundled else str(path)}


def score_allocation(env: gym.Env, action: np.ndarray, target: float) -> dict[str, Any]:
    """Perplexity of an allocation on the full reward split and on the held-out split (not search cost).

    On a surrogate env both are the surrogate's predictions (the reward split's at full fidelity, through
    :meth:`~ffenv.envs.prune_env.FFPruneEnv.score`), labelled ``surrogate: True`` with the ensemble spread of the
    held-out prediction's log (``eval_ppl_surrogate_std``)."""
    base = single_step_env(env)  # a sequential search's allocations are single-step actions too
    action = np.asarray(action, np.float32)
    reward = base.evaluate(action, split="reward", n_windows=base.config.reward_windows, target_sparsity=target)
    held = base.evaluate(action, split="eval", target_sparsity=target)
    scores = {"reward_ppl": reward["ppl"], "dense_reward_ppl": reward["dense_ppl"], "eval_ppl": held["ppl"],
              "dense_eval_ppl": held["dense_ppl"], "sparsity": held["sparsity"],
              "layer_sparsity": held["layer_sparsity"].tolist(), "eval_tokens": held["tokens"]}
    if held.get("surrogate"):
        scores.update(surrogate=True, eval_ppl_surrogate_std=float(held["surrogate_std"]))
    return scores


def calibrated_eval_ppl(env: gym.Env, action: np.ndarray, target: float, alpha: float | None = None) -> float:
    """Held-out ppl of an allocation after post-pruning calibration (ridge ``alpha``, default the env config's
    ``calib_alpha``; not search cost)."""
    return single_step_env(env).evaluate(np.asarray(action, np.float32), split="eval", target_sparsity=target,
                                         calibrate=True, calib_alpha=alpha)["ppl"]


def run_dir(logdir: str | Path, env_id: str, method: str, seed: int, surrogate: bool = False) -> Path:
    """``<logdir>/<env>/<method>/seed<k>``: where one search's TensorBoard events go (a search on a surrogate:
    ``<logdir>/surrogate/<env>/<method>/seed<k>``, so its runs never overlay real ones unlabelled)."""
    return Path(logdir) / ("surrogate" if surrogate else "") / env_id / method / f"seed{seed}"


@dataclass(frozen=True)
class SearchSpec:
    """What one search is: the settings :func:`run_search` takes and its result records (where it is written and how it
    is shown are :func:`run_search`'s own arguments). The mappings are never mutated.

    ``agent`` is any name of :func:`ffprune.agents.methods.get_method`; ``env_kwargs`` override the env's settings
    (:class:`~ffenv.config.EnvConfig` fields), ``agent_kwargs`` the method's (:attr:`SearchMethod.settings`),
    ``curriculum_kwargs`` the curriculum's schedules (:data:`CURRICULUM_SETTINGS`). ``calibrate=True`` also scores the
    best allocation on the held-out split after post-pruning calibration (structured envs; ridge ``calib_alpha``,
    default the env config's): ``best.eval_ppl_after_calib``, next to the uncalibrated ``best.eval_ppl``.

    ``train_targets`` (methods that learn under the curriculum) trains across targets: each episode's final target is
    drawn from them (seeded by ``seed``; :class:`~ffenv.wrappers.CurriculumWrapper`), with the usual ramps unless
    ``curriculum=False`` (then every episode runs at its drawn target on all reward windows). ``target`` (default:
    ``env_kwargs``'s ``target_sparsity``, else the largest training target) must be one of them: ``best`` is there.
    """

    named_by: ClassVar[tuple[str, str]] = ("env_id", "an env id")
    """A plain string given as the spec is its ``env_id`` (:func:`~ffprune.agents.tools.specs.spec_with`)."""

    env_id: str = "FFPrune-Llama-v0"
    agent: str = "fastforward"
    budget: int = 200
    seed: int = 0
    target: float | None = None
    env_kwargs: Mapping[str, Any] | None = None
    agent_kwargs: Mapping[str, Any] | None = None
    curriculum: bool = True
    warmup_fraction: float = 0.4
    curriculum_kwargs: Mapping[str, Any] | None = None
    train_targets: Sequence[float] | None = None
    warm_start: str | Path | None = None
    calibrate: bool = False
    calib_alpha: float | None = None

    def result_fields(self) -> dict[str, Any]:
        """How the search ran, as its result records it (``agent``, ``seed``, ``budget``, ``curriculum``, ...)."""
        return {"agent": self.agent, "seed": self.seed, "budget": self.budget, "curriculum": self.curriculum,
                "warmup_fraction": self.warmup_fraction, "warm_start": str(self.warm_start) if self.warm_start else None,
                **({"train_targets": list(self.train_targets)} if self.train_targets is not None else {}),
                **({"curriculum_kwargs": dict(self.curriculum_kwargs)} if self.curriculum_kwargs else {})}


def search_spec(spec: SearchSpec | str | None, settings: Mapping[str, Any]) -> SearchSpec:
    """A :class:`SearchSpec` from a spec or an env id, with ``settings`` (its fields) replacing its own; an unknown
    setting is a one-line :class:`FFPruneError` naming the settings."""
    return spec_with(SearchSpec, spec, settings, "run_search", "search")


def run_search(spec: SearchSpec | str | None = None, *, out: str | Path | None = None,
               logdir: str | Path | None = "runs", resume: bool = False, progress: bool = True,
               extra_keys: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    """Run one search and return (and, with ``out``, write) its result. See the module docstring.

    ``spec`` is a :class:`SearchSpec` or an env id; ``settings`` are :class:`SearchSpec` fields given by keyword
    (``run_search("FFPrune-Llama-v0", agent="cmaes", budget=100, seed=1)``), replacing the spec's. ``logdir`` is the
    TensorBoard root (``None``: none), ``progress`` shows the bar, ``resume=True`` continues an interrupted search from
    its checkpoint (``<out>.ckpt``) and returns a finished one as it is. Ctrl-C raises
    :class:`~ffenv.errors.SearchInterrupted` naming the checkpoint.

    ``extra_keys`` adds top-level keys to the result (JSON values; a suite's ``"variant"``), written with it in its one
    atomic write, so a finished result file always carries them.
    """
    spec = search_spec(spec, settings)
    method = get_method(spec.agent)
    extra_keys = _check_extra_keys(extra_keys)
    spec = _check_spec(method, spec)
    out_path = Path(out) if out is not None else None
    fingerprint = model_fingerprint(spec.env_id, spec.env_kwargs)
    label = surrogate_label(spec.env_id, spec.env_kwargs)
    finished = _finished_result(out_path, fingerprint, label) if resume else None
    if finished is not None:
        return finished
    checkpoint = _prepare_checkpoint(out_path, resume)
    env = _search_env(method, spec)
    final_target = single_step_env(env).config.target_sparsity
    logpath = run_dir(logdir, spec.env_id, method.name, spec.seed, label is not None) if logdir is not None else None
    agent_kwargs = dict(spec.agent_kwargs or {})
    hparams = {"agent": method.name, "budget": spec.budget, "seed": spec.seed, "target": final_target,
               "curriculum": spec.curriculum, "warmup_fraction": spec.warmup_fraction, **agent_kwargs,
               **({"train_targets": ",".join(map(str, spec.train_targets))} if spec.train_targets is not None else {}),
               **{f"curriculum.{k}": v for k, v in (spec.curriculum_kwargs or {}).items()},
               **({"surrogate": label["fingerprint"]} if label is not None else {})}
    search = SearchAccounting(env, spec.budget, SearchLogger(logpath, progress=progress, hparams=hparams))
    run = spec.result_fields()
    context = RunContext(checkpoint=checkpoint, resume=resume,
                         warm_start=Path(spec.warm_start) if spec.warm_start else None, out=out_path, logdir=logpath,
                         log=search.logger.log_learning,
                         meta=policy_provenance(spec.env_id, env, fingerprint, run, agent_kwargs))
    extra = _run_method(method, search, spec.seed, context, agent_kwargs)
    try:
        scored = _score_best(search, spec.calibrate, spec.calib_alpha)
    finally:
        search.close()
    if extra.get("policy_file"):  # what only the finished run knows: the method's settings and what training cost
        update_policy_meta(extra["policy_file"], {"agent_config": extra.get("agent_config"), "training_cost":
                                                  scored["cost"], "result_file": str(out_path)})
    provenance = {"label": label, "fingerprint": fingerprint, "logdir": logpath}
    result: dict[str, Any] = {**_assemble(spec, env, search, scored, extra, provenance), **extra_keys}
    if out_path is not None:
        write_result(out_path, result)
        _drop_resume_state(checkpoint)
    return result


def _drop_resume_state(checkpoint: Path | None) -> None:
    """After the result is written: the checkpoint and an SB3 replay buffer beside it are only there to resume, and a
    finished search resumes from its result, so they go (a checkpoint is up to the replay buffer's size; a suite has
    hundreds)."""
    if checkpoint is not None:
        for path in (checkpoint, replay_buffer_file(checkpoint)):
            path.unlink(missing_ok=True)


CURRICULUM_SETTINGS = ("start_sparsity", "sparsity_schedule", "stairs", "fidelity_start", "fidelity_schedule")
"""The curriculum's settings a search may change (its length, targets and seed are the search's)."""


def check_curriculum_kwargs(kwargs: dict[str, Any] | None, curriculum: bool) -> dict[str, Any] | None:
    """``kwargs`` if they name only :data:`CURRICULUM_SETTINGS` and the search runs under the curriculum (their values
    are checked by the wrapper); a one-line :class:`FFPruneError` otherwise."""
    if not kwargs:
        return None
    unknown = sorted(set(kwargs) - set(CURRICULUM_SETTINGS))
    if unknown:
        raise FFPruneError(f"curriculum_kwargs: {unknown} are not curriculum settings; settings: {list(CURRICULUM_SETTINGS)}")
    if not curriculum:
        raise FFPruneError(f"curriculum_kwargs {sorted(kwargs)} need a search under the curriculum (a method that learns, "
                           "curriculum=True)")
    return dict(kwargs)


def _check_spec(method: SearchMethod, spec: SearchSpec) -> SearchSpec:
    """The spec as the method runs it (heuristics: one evaluation, no curriculum; search baselines: no curriculum; the
    training targets sorted and the target among them); bad settings are an :class:`FFPruneError` before any work."""
    budget = positive_int("budget", spec.budget)
    if spec.warm_start is not None and not method.warm_start:
        raise FFPruneError(f"warm_start is only supported by {[m.name for m in METHODS.values() if m.warm_start]}; "
                           f"{method.name!r} cannot start from a policy file")
    curriculum = spec.curriculum and method.curriculum  # the baselines are defined at the final target and full fidelity
    if method.heuristic:
        budget = 1  # no search: one evaluation gives the heuristic allocation's reward
    curriculum_kwargs = check_curriculum_kwargs(dict(spec.curriculum_kwargs or {}) or None, curriculum)
    train_targets, target = _check_train_targets(method, spec.env_id, spec.env_kwargs, spec.train_targets, spec.target)
    return replace(spec, agent=method.name, budget=budget, curriculum=curriculum, curriculum_kwargs=curriculum_kwargs,
                   train_targets=train_targets, target=target)


def _finished_result(out: Path | None, fingerprint: str | None,
                     label: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The finished result at ``out`` (``None`` if there is none or it is unfinished); a result on other model
    weights, or on another surrogate than ``label`` (or on the real env when ``label`` is one, and back), is refused."""
    if out is None or not out.exists():
        return None
    done = read_result(out)
    if done.get("weights_fingerprint") != fingerprint:
        raise FFPruneError(f"out={str(out)!r} holds a search on other model weights ({done.get('weights_fingerprint')}, "
                           f"now {fingerprint}): the model changed since; use another out path")
    held = surrogate_of(done)
    if not same_surrogate(held, label):
        raise FFPruneError(f"out={str(out)!r} holds a search on {describe_surrogate(held)}, this one runs on "
                           f"{describe_surrogate(label)}: use another out path")
    return done if done.get("complete") else None


def _check_train_targets(method: SearchMethod, env_id: str, env_kwargs: dict[str, Any] | None,
                         train_targets: Sequence[float] | None, target: float | None) -> tuple[tuple[float, ...] | None,
                                                                                             float | None]:
    """The checked (sorted) training targets and the search's target (default: ``env_kwargs``'s, else the largest
    training target; it must be one of them); one-line :class:`FFPruneError` before any model is loaded."""
    if train_targets is None:
        return None, target
    if not method.curriculum:
        raise FFPruneError(f"train_targets needs a method that learns under the curriculum "
                           f"({[m.name for m in METHODS.values() if m.curriculum]}); {method.name!r} does not")
    if target is None:
        target = (env_kwargs or {}).get("target_sparsity")
    config = resolve_config(env_id, {**(env_kwargs or {}), **({"target_sparsity": target} if target is not None else {})})
    checked = check_train_targets(train_targets, config.min_keep, config.max_keep)
    if target is None:
        return checked, checked[-1]
    if float(target) not in checked:
        raise FFPruneError(f"target must be one of train_targets {list(checked)} (the result's best is at the target), "
                           f"got {target}")
    return checked, float(target)


def policy_provenance(env_id: str, env: gym.Env, fingerprint: str | None, run: dict[str, Any],
                      agent_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """What a policy saved by a search records about where it came from (its ``meta``): the env id, its settings
    (``env_kwargs``), ``mode``, ``unit_names``, the ``weights_fingerprint``, the search's ``target``, ``train_targets``
    (``None``: trained at ``target`` alone), ``budget``, ``seed``, the method and its overrides, and the versions.
    ``ffprune allocate`` rebuilds the env from it."""
    base = single_step_env(env)
    return {"env_id": env_id, "env_kwargs": recorded_env_kwargs(env), "mode": base.config.mode,
            "unit_names": list(base.unit_names), "weights_fingerprint": fingerprint,
            "target": base.config.target_sparsity, "train_targets": run.get("train_targets"), "budget": run["budget"],
            "seed": run["seed"], "agent": run["agent"], "agent_kwargs": dict(agent_kwargs or {}),
            "curriculum": run["curriculum"], "warmup_fraction": run["warmup_fraction"], "warm_start": run["warm_start"],
            "versions": versions()}


def _prepare_checkpoint(out: Path | None, resume: bool) -> Path | None:
    """``<out>.ckpt`` (after checking ``out`` can be written); an old checkpoint is removed unless resuming."""
    if out is None:
        return None
    check_writable(out)
    checkpoint = beside(out, ".ckpt")
    if not resume and checkpoint.exists():
        checkpoint.unlink()
    return checkpoint


def _search_env(method: SearchMethod, spec: SearchSpec) -> gym.Env:
    """:func:`make_search_env` of a checked spec, refused (and closed) when the env's mode does not suit the method or
    Calib. With ``train_targets`` the curriculum draws each episode's target (its ramps off when ``curriculum`` is)."""
    ramps = {} if spec.curriculum else {"sparsity_schedule": "none", "fidelity_schedule": "none"}
    draws = {} if spec.train_targets is None else {"train_targets": spec.train_targets, "target_seed": spec.seed, **ramps}
    env = make_search_env(spec.env_id, spec.budget, dict(spec.env_kwargs or {}), spec.target,
                          spec.curriculum or spec.train_targets is not None, spec.warmup_fraction,
                          {**(spec.curriculum_kwargs or {}), **draws})
    env_id, calibrate = spec.env_id, spec.calibrate
    mode = single_step_env(env).config.mode
    formulation = "sequential" if isinstance(env.unwrapped, FFPruneSequentialEnv) else "single-step"
    problem = None
    if formulation not in method.formulations:
        try:
            hint = f" (use its twin {twin_env_id(env_id)})"
        except FFPruneError:
            hint = ""
        problem = f"{method.name!r} searches {' or '.join(method.formulations)} envs; {env_id} is {formulation}{hint}"
    elif mode not in method.modes:
        problem = f"{method.name!r} needs a {' or '.join(method.modes)} env; {env_id} is {mode}"
    elif calibrate and mode != "structured":
        problem = f"calibrate needs a structured env (Calib compensates removed heads / neurons); {env_id} is {mode}"
    elif calibrate and single_step_env(env).config.surrogate:
        problem = "calibrate needs the real env: a surrogate predicts the held-out ppl it was recorded with, not after Calib"
    if problem is not None:
        env.close()
        raise FFPruneError(problem)
    return env


def _run_method(method: SearchMethod, search: SearchAccounting, seed: int, context: RunContext,
                agent_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The method's run on the search env: its extra result fields. On any failure the search is closed (flushes
    TensorBoard, releases Ray workers); Ctrl-C becomes :class:`SearchInterrupted`; a search that found no
    allocation at the final target is an :class:`FFPruneError`."""
    try:
        extra = method.run(search, seed, context, **(agent_kwargs or {}))
    except KeyboardInterrupt:
        search.close()
        raise SearchInterrupted(search.episodes, str(context.checkpoint) if context.checkpoint else None) from None
    except BaseException:
        search.close()
        raise
    if search.best is None:
        search.close()
        drawn = ("" if search.train_targets is None else
                 f" (it is one of train_targets {list(search.train_targets)}: was it drawn after the warm-up?)")
        raise FFPruneError(f"budget={search.budget} was too small: no episode reached the final target at full fidelity"
                           f"{drawn} (raise the budget or disable the curriculum)")
    return extra


def _score_best(search: SearchAccounting, calibrate: bool, calib_alpha: float | None) -> dict[str, Any]:
    """The search cost (frozen first: the held-out scoring is not search cost), then :func:`score_allocation` of the
    best allocation (plus its held-out ppl after Calib with ``calibrate``); the final metrics go to TensorBoard."""
    base, action, target = search.single, search.best["action"], search.final_target
    cost = {**search.cost, "evaluations_to_best": search.evaluations_to_best, "setup_seconds": round(base.setup_seconds, 3)}
    scores = score_allocation(search, np.array(action, np.float32), target)
    if calibrate:
        alpha = base.config.calib_alpha if calib_alpha is None else float(calib_alpha)
        scores.update(eval_ppl_after_calib=calibrated_eval_ppl(search, action, target, alpha), calib_alpha=alpha)
    search.logger.close({"eval_ppl": scores["eval_ppl"], "reward_ppl": scores["reward_ppl"]})
    return {"scores": scores, "cost": cost}


def recorded_env_kwargs(env: gym.Env) -> dict[str, Any]:
    """The env's settings as a result records them (``EnvConfig`` fields; a sequential env's ``projection`` too)."""
    env_kwargs = single_step_env(env).config.as_kwargs()
    if isinstance(env.unwrapped, FFPruneSequentialEnv):
        env_kwargs["projection"] = env.unwrapped.projection
    return env_kwargs


def _check_extra_keys(extra_keys: dict[str, Any] | None) -> dict[str, Any]:
    """``extra_keys`` as JSON values, if none of its keys is one of :data:`RESULT_KEYS`; a one-line error otherwise."""
    clash = sorted(set(extra_keys or {}) & set(RESULT_KEYS))
    if clash:
        raise FFPruneError(f"extra_keys: keys {clash} are the result's own; use other top-level keys")
    try:
        return as_json(dict(extra_keys or {}))
    except (TypeError, ValueError) as err:
        raise FFPruneError(f"extra_keys: values must be JSON values ({err})") from None


def _assemble(spec: SearchSpec, env: gym.Env, search: SearchAccounting, scored: dict[str, Any], extra: dict[str, Any],
              provenance: dict[str, Any]) -> SearchResult:
    """The result JSON (module docstring): the env and its settings (a sequential env's ``projection`` among them),
    how the search ran (the spec's run record), the best allocation with its scores, the cost, the history and the
    versions; on a surrogate, its label (``provenance["label"]``) first."""
    label, logpath = provenance["label"], provenance["logdir"]
    base = single_step_env(env)
    by_target = {"best_by_target": search.best_by_target} if search.train_targets is not None else {}
    return {"kind": RESULT_KIND, "format": RESULT_FORMAT, "complete": True,
            **({"surrogate": label} if label is not None else {}), "env_id": spec.env_id,
            "env_kwargs": recorded_env_kwargs(env), "weights_fingerprint": provenance["fingerprint"],
            "unit_names": list(base.unit_names),
            **({"window_bos": base.measurement.window_bos} if base.measurement.window_bos is not None else {}),
            **spec.result_fields(), "best": {**search.best, **scored["scores"]}, **by_target,
            "cost": scored["cost"], "history": search.history, "logdir": str(logpath) if logpath else None,
            "versions": versions(), **extra}
