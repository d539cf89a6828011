"""Surrogate mode: rewards and held-out perplexities predicted from recorded evaluations, microseconds per step.

``gym.make(<task id>, surrogate=True)`` builds the same environment (spaces, observation, projector, rounding,
reset options, populations, vector envs) whose :meth:`~ffenv.envs.prune_env.FFPruneEnv.score` asks a fitted
surrogate instead of running the model. Two modules:

* :mod:`ffenv.surrogate.records`: the evaluation sets (one ``.npz`` per (model, mode)), their split by allocation,
  their fingerprint, and :func:`~ffenv.surrogate.records.record`, which measures allocations on a real env;
* :mod:`ffenv.surrogate.model`: the MLP ensemble fitted on a set, its fidelity error model, and
  :func:`~ffenv.surrogate.model.load_surrogate` (per-process and on-disk caches).
"""

from ffenv.surrogate.model import FitSettings, Surrogate, fit, load_surrogate
from ffenv.surrogate.records import EvaluationSet, Rows, data_path, fold_of, record, split_of

__all__ = ["EvaluationSet", "FitSettings", "Rows", "Surrogate", "data_path", "fit", "fold_of", "load_surrogate", "record",
           "split_of"]
