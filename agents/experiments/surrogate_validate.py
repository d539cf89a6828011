"""``ffprune surrogate validate``: how well each (model, mode)'s surrogate ranks what it never saw, per suite task.

For every evaluation set (:mod:`ffenv.surrogate.records`; default the bundled ``ffenv/surrogate/data/``) the surrogate
is fitted as an environment fits it (:func:`ffenv.surrogate.fit`, :class:`~ffenv.surrogate.FitSettings`, seeded: the
train split, early-stopped on the validation split) and judged on the **test** split (allocations the fit never read;
the split is by allocation, :func:`ffenv.surrogate.split_of`):

* reward, on the test rows measured on all reward windows: Spearman ρ of predicted vs real reward, over all of them
  and within the top decile of real reward (the allocations a search ends with), and the mean absolute error of
  ``log reward``;
* held-out ppl, on the test rows that have one: Spearman ρ, over all of them and within the top decile (the lowest
  held-out ppls), and the MAE of ``log eval_ppl``; and the same **cross-validated** (:data:`CV_FOLDS` folds by
  allocation, :func:`ffenv.surrogate.fold_of`: each fold predicted by a surrogate fitted without it) on every row with
  a held-out ppl, since a suite target has only ≈ 50 of them and a fixed test split leaves 1–11 (the goals on the
  held-out ppl are judged on the cross-validated numbers);
* each per slice: all targets, and the target of each suite task of the (model, mode) (``core``: structured 0.3 and
  0.5, unstructured 0.7, the 9 tasks; ``real``: SmolLM2 structured 0.2, unstructured 0.7), a slice being the rows at
  that target;
* the same numbers for scikit-learn's ``HistGradientBoostingRegressor`` (default settings, the same inputs and
  training rows; only when scikit-learn is installed) and the microseconds one prediction of a single allocation
  costs each model: the comparison behind the default model class.

Goals (the issue's, after YAHPO Gym / NAS-Bench-301 practice): ρ ≥ :data:`GOALS` ``["spearman"]`` over all test
rows of a task and ≥ ``["top_decile"]`` within its top decile, for the reward and for the held-out ppl alike.
``validation.json`` holds every number, ``validation.md`` a table per (model, mode) with the goals marked. What is
validated and how (families, modes, fit settings, the comparison, timings, folds) is a :class:`ValidateSpec`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ffenv.errors import FFPruneError
from ffenv.registration import FAMILY_MODELS, MODE_SUFFIX, family_of
from ffenv.surrogate import EvaluationSet, FitSettings, fit, fold_of
from ffenv.surrogate.model import REWARD_FLOOR, model_inputs
from ffenv.surrogate.records import DATA_DIR, data_name
from ffprune.agents.experiments.engine import Report
from ffprune.agents.experiments.rlstats import spearman
from ffprune.agents.experiments.suite import family_targets, task_name
from ffprune.agents.experiments.surrogate_record import check_families_modes
from ffprune.agents.tools.specs import spec_with

log = logging.getLogger(__name__)

GOALS = {"spearman": 0.9, "top_decile": 0.7}
"""Spearman ρ the surrogate should reach on a task's test allocations: over all, and within the top decile."""
TOP_DECILE = 0.9
"""Rows whose real reward is at or above this quantile of their slice form its top decile."""
CV_FOLDS = 5
"""Folds of the held-out ppl's cross-validation."""
TIMING_CALLS = 2000
"""Single-allocation predictions timed per model (median of per-call times, after a warm-up)."""


def _rho(pred: np.ndarray, real: np.ndarray) -> float | None:
    """Spearman ρ, ``None`` below 3 rows or when one side is constant."""
    if len(real) < 3:
        return None
    rho = spearman(pred, real)
    return None if math.isnan(rho) else rho


def slice_metrics(pred_log_reward: np.ndarray, reward: np.ndarray, pred_log_eval: np.ndarray | None,
                  eval_ppl: np.ndarray, reward_rows: np.ndarray, eval_rows: np.ndarray) -> dict[str, Any]:
    """The metrics of one slice: ρ and MAE of ``log reward`` on ``reward_rows`` (a mask), ρ in their top decile (highest
    rewards); ρ, ρ in the top decile (lowest held-out ppls) and MAE of ``log eval_ppl`` on ``eval_rows``
    (``pred_log_eval`` ``None``: the model predicts no held-out ppl); which :data:`GOALS` each ρ meets."""
    real = np.log(np.maximum(reward[reward_rows].astype(np.float64), REWARD_FLOOR))
    pred = pred_log_reward[reward_rows]
    out: dict[str, Any] = {"rows": int(reward_rows.sum()), "spearman": _rho(pred, real),
                           "mae_log_reward": float(np.mean(np.abs(pred - real))) if len(real) else None}
    top = real >= np.quantile(real, TOP_DECILE) if len(real) else np.zeros(0, bool)
    out["top_decile_rows"] = int(top.sum())
    out["top_decile_spearman"] = _rho(pred[top], real[top])
    out.update(eval_metrics(pred_log_eval, eval_ppl, eval_rows))
    out["goals"] = {"spearman": _meets(out["spearman"], GOALS["spearman"]),
                    "top_decile": _meets(out["top_decile_spearman"], GOALS["top_decile"]),
                    "eval_spearman": _meets(out["eval_spearman"], GOALS["spearman"]),
                    "eval_top_decile": _meets(out["eval_top_decile_spearman"], GOALS["top_decile"])}
    return out


def eval_metrics(pred_log_eval: np.ndarray | None, eval_ppl: np.ndarray, rows: np.ndarray,
                 prefix: str = "eval") -> dict[str, Any]:
    """ρ, ρ in the top decile (the lowest held-out ppls) and MAE of ``log eval_ppl`` on ``rows`` (a mask), keyed
    ``<prefix>_rows``, ``<prefix>_spearman``, ``<prefix>_top_decile_rows``, ``<prefix>_top_decile_spearman``,
    ``mae_log_<prefix>_ppl`` (``None`` where ``pred_log_eval`` is ``None`` or no row is selected)."""
    out: dict[str, Any] = {f"{prefix}_rows": int(rows.sum()), f"{prefix}_top_decile_rows": 0}
    if pred_log_eval is None or not rows.any():
        out[f"{prefix}_spearman"] = out[f"{prefix}_top_decile_spearman"] = out[f"mae_log_{prefix}_ppl"] = None
        return out
    real = np.log(eval_ppl[rows].astype(np.float64))
    pred = pred_log_eval[rows]
    best = real <= np.quantile(real, 1.0 - TOP_DECILE)  # the lowest held-out ppls
    out[f"{prefix}_spearman"] = _rho(pred, real)
    out[f"{prefix}_top_decile_rows"] = int(best.sum())
    out[f"{prefix}_top_decile_spearman"] = _rho(pred[best], real[best])
    out[f"mae_log_{prefix}_ppl"] = float(np.mean(np.abs(pred - real)))
    return out


def cross_validated_eval(data: EvaluationSet, settings: FitSettings, folds: int = CV_FOLDS) -> np.ndarray:
    """The out-of-fold predicted ``log eval_ppl`` of every row with a held-out ppl (``nan`` elsewhere): the rows in
    :func:`~ffenv.surrogate.fold_of` fold ``k`` predicted by a surrogate :func:`~ffenv.surrogate.fit` without them
    (its reward model too, whose prediction the held-out model reads)."""
    a = data.arrays
    measured = data.measured
    fold = fold_of(a["unit_sparsity"], folds)
    x = model_inputs(a["unit_sparsity"], a["target"], a["seed"], data.description.seeds)
    pred = np.full(len(data), np.nan)
    for k in range(folds):
        rows = measured & (fold == k)
        if rows.any():
            surrogate = fit(data, settings, exclude=fold == k)
            if surrogate.eval_model is not None:
                pred[rows] = surrogate.predict_log(x[rows])[1]
    return pred


def _meets(value: float | None, goal: float) -> bool | None:
    return None if value is None else bool(value >= goal)


def _median_us(call: Any, calls: int) -> float:
    call()
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        call()
        times[i] = time.perf_counter() - t0
    return float(np.median(times) * 1e6)


def _sklearn() -> Any:
    """scikit-learn's ``HistGradientBoostingRegressor``, or ``None`` when scikit-learn is not installed."""
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
    except ImportError:
        return None
    return HistGradientBoostingRegressor


def validate_set(data: EvaluationSet, family: str, settings: FitSettings | None = None, compare: bool = True,
                 timing_calls: int = TIMING_CALLS, folds: int = CV_FOLDS) -> dict[str, Any]:
    """The validation of one evaluation set (module docstring): per slice, the surrogate's metrics (with its
    ``folds``-fold cross-validation of the held-out ppl; 0: none) and, with ``compare`` and scikit-learn installed,
    the gradient-boosted trees'. ``settings``: the fit's (default: an env's)."""
    settings = FitSettings() if settings is None else settings
    meta, a = data.meta, data.arrays
    mode = meta["mode"]
    split = data.split()
    test = split["test"]
    full = a["windows"] == int(meta["reward_windows"])
    measured = data.measured
    surrogate = fit(data, settings)
    x = surrogate.inputs(a["unit_sparsity"], a["target"], a["seed"].astype(np.int64))
    models: dict[str, dict[str, Any]] = {}
    pred_reward, pred_eval = surrogate.predict_log(x)
    one = (a["unit_sparsity"][0], float(a["target"][0]), int(a["seed"][0]))
    models["mlp-ensemble"] = {
        "label": f"MLP ensemble ({settings.members} × {settings.depth}×{settings.hidden})", "pred": (pred_reward, pred_eval),
        "us_per_prediction": _median_us(lambda: surrogate.predict_reward(*one), timing_calls),
        "fit_seconds": surrogate.info.get("fit_seconds")}
    hgb = _sklearn() if compare else None
    if hgb is not None:
        fit_rows = (split["train"] | split["validation"])  # what the ensemble saw (it early-stops on validation)
        t0 = time.perf_counter()
        trees = hgb(random_state=settings.seed).fit(x[fit_rows & full], np.log(np.maximum(
            a["reward"][fit_rows & full].astype(np.float64), REWARD_FLOOR)))
        trees_reward = trees.predict(x)
        xz = np.concatenate([x, trees_reward[:, None]], axis=1)  # as the ensemble: the predicted reward an input
        trees_eval = None
        if (fit_rows & measured).sum() >= 8:
            trees_eval = hgb(random_state=settings.seed).fit(xz[fit_rows & measured],
                                                             np.log(a["eval_ppl"][fit_rows & measured].astype(np.float64)))
        seconds = time.perf_counter() - t0
        row = x[:1]
        models["hist-gradient-boosting"] = {
            "label": "scikit-learn HistGradientBoostingRegressor (defaults)",
            "pred": (trees_reward, trees_eval.predict(xz) if trees_eval is not None else None),
            "us_per_prediction": _median_us(lambda: trees.predict(row), max(50, timing_calls // 20)),
            "fit_seconds": round(seconds, 3)}
    cv_pred = cross_validated_eval(data, settings, folds) if folds else None
    slices = [("all targets", None)] + [(task_name(family, mode, t), t) for t in family_targets(family, mode)]
    results: dict[str, Any] = {}
    for name, model in models.items():
        pr, pe = model["pred"]
        per_slice = {}
        for label, target in slices:
            at = np.ones(len(data), bool) if target is None else np.abs(a["target"] - target) < 1e-6
            per_slice[label] = slice_metrics(pr, a["reward"], pe, a["eval_ppl"], test & full & at, test & measured & at)
            if name == "mlp-ensemble" and cv_pred is not None:
                cv = eval_metrics(cv_pred, a["eval_ppl"], measured & at, "cv")
                both = measured & at & full  # what the real reward itself ranks: the reference a surrogate is up against
                cv["real_reward_spearman"] = _rho(-np.log(np.maximum(a["reward"][both].astype(np.float64), REWARD_FLOOR)),
                                                  np.log(a["eval_ppl"][both].astype(np.float64)))
                cv["goals"] = {"cv_spearman": _meets(cv["cv_spearman"], GOALS["spearman"]),
                               "cv_top_decile": _meets(cv["cv_top_decile_spearman"], GOALS["top_decile"])}
                per_slice[label]["cross_validated"] = cv
        results[name] = {"label": model["label"], "us_per_prediction": model["us_per_prediction"],
                         "fit_seconds": model["fit_seconds"], "slices": per_slice}
    sources = data.sources
    return {"model": meta["model"], "mode": mode, "family": family, "fingerprint": data.fingerprint,
            "rows": len(data), "seeds": sorted(set(a["seed"].tolist())),
            "splits": {k: int(v.sum()) for k, v in split.items()}, "cv_folds": folds,
            "test": {"full_fidelity": int((test & full).sum()), "held_out": int((test & measured).sum())},
            "sources": {s: int((a["source"] == i).sum()) for i, s in enumerate(sources)},
            "fit": {"settings": dataclasses.asdict(settings), "rows": surrogate.info.get("rows")},
            "models": results}


@dataclasses.dataclass(frozen=True)
class ValidateSpec:
    """What a validation is (the folder of sets it reads and the folder it writes are :func:`run_validate`'s own
    arguments)."""

    families: Sequence[str] = tuple(FAMILY_MODELS)
    """Families whose sets are validated (bundled, or real ones)."""
    modes: Sequence[str] = tuple(MODE_SUFFIX)
    """Modes of each family."""
    settings: FitSettings | None = None
    """The fit's settings (default: the ones an env fits with)."""
    compare: bool = True
    """Also fit scikit-learn's gradient-boosted trees (when installed) to compare with."""
    timing_calls: int = TIMING_CALLS
    """Single-allocation predictions timed per model."""
    folds: int = CV_FOLDS
    """Folds of the held-out ppl's cross-validation by allocation (0: none)."""


def run_validate(spec: ValidateSpec | None = None, *, data: str | Path | None = None,
                 out: str | Path = "surrogate-validation", **fields: Any) -> dict[str, Any]:
    """Validate the set of every (family, mode) of ``spec`` (``fields``: :class:`ValidateSpec` fields by keyword,
    replacing its own) in ``data`` (a folder; default the bundled sets) and write ``validation.json`` and
    ``validation.md`` to ``out``; the analysis. A missing set is a one-line :class:`FFPruneError` naming the command
    that records it."""
    spec = spec_with(ValidateSpec, spec, fields, "run_validate", "validation")
    settings, compare, timing_calls, folds = spec.settings, spec.compare, spec.timing_calls, spec.folds
    pairs = check_families_modes(spec.families, spec.modes)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 0 or folds == 1:
        raise FFPruneError(f"folds must be 0 (no cross-validation) or an integer >= 2, got {folds!r}")
    folder = DATA_DIR if data is None else Path(data)
    if not folder.is_dir():
        raise FFPruneError(f"data={str(folder)!r} is not a folder of evaluation sets")
    out = Path(out)
    REPORT.check(out)
    paths = {(f, m): folder / data_name(family_of(f)[1], m) for f, m in pairs}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise FFPruneError(f"{str(folder)!r} has no evaluation set {missing}; record them with `ffprune surrogate "
                           f"record` (--families / --modes for some only)")
    sets = []
    for (family, _mode), path in paths.items():
        log.info("[surrogate] validating %s", path.name)
        sets.append(validate_set(EvaluationSet.load(path), family, settings, compare, timing_calls, folds))
    analysis = {"goals": GOALS, "top_decile": TOP_DECILE, "cv_folds": folds, "data": str(folder), "compared": any(
        "hist-gradient-boosting" in s["models"] for s in sets), "sets": sets}
    return REPORT.write(out, analysis)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mark(value: float | None, goal: float) -> str:
    return "–" if value is None else f"{value:.3f} {'✓' if value >= goal else '✗'}"


def validation_markdown(analysis: dict[str, Any]) -> str:
    """The readable tables of :func:`run_validate`: a summary per suite task, then one table per (model, mode)."""
    goals = analysis["goals"]
    lines = ["### Surrogate validation on the test allocations", "",
             f"Per (model, mode): the surrogate fitted on the train split (early-stopped on validation) and judged on the "
             f"test split (by allocation: never seen by the fit). ρ = Spearman rank correlation of predicted vs real, "
             f"on the test rows measured on all reward windows (reward) or with a held-out ppl; top decile = the test rows "
             f"at or above the {analysis['top_decile']:.0%} quantile of real reward (held-out ppl: at or below the "
             f"{1 - analysis['top_decile']:.0%} quantile). A suite target has only ≈ 50 held-out ppls, so the held-out "
             f"ppl is also judged cross-validated: every row with one, predicted by a surrogate fitted without its fold "
             f"({analysis.get('cv_folds', 0)} folds by allocation; reward model refitted too). Goals: ρ ≥ "
             f"{goals['spearman']} overall and ≥ {goals['top_decile']} in the top decile (✓ met, ✗ missed, – too few "
             f"rows; a held-out top decile is 5–6 rows: its ρ is noise, shown for completeness). Beside the CV ρ, the "
             f"per-(model, mode) tables give how well the *real* reward ranks the same held-out ppls (the reward split "
             f"is what a search optimises; where it ranks them poorly, so can a surrogate of it).", "",
             "| task | test rows | ρ reward | ρ top decile | held-out rows (test) | ρ held-out ppl (test) | held-out rows "
             "(CV) | ρ held-out ppl (CV) | ρ top decile (CV) |", "|---" * 9 + "|"]
    for s in analysis["sets"]:
        for label, m in s["models"]["mlp-ensemble"]["slices"].items():
            if label == "all targets":
                continue
            cv = m.get("cross_validated") or {"cv_rows": 0, "cv_spearman": None, "cv_top_decile_spearman": None}
            lines.append(f"| {label} | {m['rows']} | {_mark(m['spearman'], goals['spearman'])} | "
                         f"{_mark(m['top_decile_spearman'], goals['top_decile'])} | {m['eval_rows']} | "
                         f"{_mark(m['eval_spearman'], goals['spearman'])} | {cv['cv_rows']} | "
                         f"{_mark(cv['cv_spearman'], goals['spearman'])} | "
                         f"{_mark(cv['cv_top_decile_spearman'], goals['top_decile'])} |")
    for s in analysis["sets"]:
        sources = ", ".join(f"{k} {v}" for k, v in s["sources"].items())
        lines += ["", f"#### {s['model']} {s['mode']}", "",
                  f"{s['rows']} rows (env seeds {', '.join(map(str, s['seeds']))}; train / validation / test "
                  f"{s['splits']['train']} / {s['splits']['validation']} / {s['splits']['test']}; test rows on all reward "
                  f"windows {s['test']['full_fidelity']}, with a held-out ppl {s['test']['held_out']}). Sources: {sources}.",
                  "", "| model | slice | test rows | ρ reward | ρ top decile (rows) | MAE log reward | ρ held-out ppl "
                  "(rows) | ρ top decile (rows) | MAE log held-out ppl | µs per prediction |", "|---" * 10 + "|"]
        for model in s["models"].values():
            for label, m in model["slices"].items():
                lines.append(f"| {model['label']} | {label} | {m['rows']} | {_mark(m['spearman'], goals['spearman'])} | "
                             f"{_mark(m['top_decile_spearman'], goals['top_decile'])} ({m['top_decile_rows']}) | "
                             f"{_fmt(m['mae_log_reward'])} | {_mark(m['eval_spearman'], goals['spearman'])} "
                             f"({m['eval_rows']}) | {_mark(m['eval_top_decile_spearman'], goals['top_decile'])} "
                             f"({m['eval_top_decile_rows']}) | {_fmt(m['mae_log_eval_ppl'])} | "
                             f"{model['us_per_prediction']:.0f} |")
        cv_lines = [(label, m["cross_validated"]) for label, m in s["models"]["mlp-ensemble"]["slices"].items()
                    if m.get("cross_validated")]
        if cv_lines:
            lines += ["", f"Held-out ppl cross-validated ({s.get('cv_folds')} folds by allocation, MLP ensemble):", "",
                      "| slice | rows | ρ held-out ppl | ρ top decile (rows) | MAE log held-out ppl | ρ real reward vs "
                      "held-out ppl |", "|---" * 6 + "|"]
            lines += [f"| {label} | {cv['cv_rows']} | {_mark(cv['cv_spearman'], goals['spearman'])} | "
                      f"{_mark(cv['cv_top_decile_spearman'], goals['top_decile'])} ({cv['cv_top_decile_rows']}) | "
                      f"{_fmt(cv['mae_log_cv_ppl'])} | {_fmt(cv.get('real_reward_spearman'))} |" for label, cv in cv_lines]
    if not analysis["compared"]:
        lines += ["", "scikit-learn is not installed here: no gradient-boosted trees to compare with."]
    return "\n".join(lines) + "\n"


REPORT = Report("validation", validation_markdown)
"""The validation's report: ``validation.json`` and ``validation.md``."""
