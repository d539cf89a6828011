"""``SearchLogger``: TensorBoard scalars and a progress bar for one search (fed by :class:`~ffenv.wrappers.SearchAccounting`).

Per episode it writes one scalar family per cost axis — ``by_evaluations/*``, ``by_tokens/*``,
``by_wall_ms/*`` (step = milliseconds of wall time) with the tags ``reward``, ``best_reward``, ``ppl``,
``best_ppl`` — so runs of different methods overlay on any axis (and ``by_env_steps/*`` for sequential
searches, whose episodes take one step per unit), plus ``curriculum/target_sparsity`` and
``curriculum/reward_windows`` by episode. The axes are the env measurement's (:attr:`SearchLogger.axes`, set by the
accounting): over a surrogate env ``by_surrogate_evaluations/*`` instead of ``by_evaluations/*`` and ``by_tokens/*``
(no model forward runs: both stay 0), and the progress bar counts surrogate evaluations.
An agent may add its learning (``learning/<name>``, e.g. policy loss, approx KL) with
:meth:`SearchLogger.log_learning`. :meth:`SearchLogger.close` writes the
hyper-parameters with the final metrics and flushes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

AXES = ("evaluations", "tokens", "wall_ms")
"""The cost axes of a real search (``env_steps`` is added for sequential searches)."""


class SearchLogger:
    """TensorBoard (``logdir``, ``None``: none) and a tqdm bar (``progress``) for one search.

    Args:
        logdir: the run's TensorBoard folder (e.g. ``runs/<env>/<method>/seed<k>``).
        progress: show a tqdm bar (episodes, evaluations, best ppl, elapsed seconds).
        hparams: written as TensorBoard hyper-parameters when the logger closes.
    """

    def __init__(self, logdir: str | Path | None = None, progress: bool = True,
                 hparams: dict[str, Any] | None = None) -> None:
        self.logdir = Path(logdir) if logdir is not None else None
        self.progress = progress
        self.hparams = dict(hparams or {})
        self._writer: Any = None
        self._bar: Any = None
        self._last: dict[str, Any] = {}
        self.axes: tuple[str, ...] = AXES
        """The cost axes of the scalars (:class:`~ffenv.wrappers.SearchAccounting` sets its env's; the first counts
        evaluations, ``wall_ms`` is the history's ``seconds`` in milliseconds)."""

    def _tb(self) -> Any:
        if self._writer is None and self.logdir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when a logdir is set

            self._writer = SummaryWriter(str(self.logdir), max_queue=1000)  # fewer waits on the writer thread
        return self._writer

    def log_episode(self, point: dict[str, Any], info: dict[str, Any], budget: int) -> None:
        """One finished episode: ``point`` is the accounting's history record, ``info`` the env's step info."""
        self._last = point
        writer = self._tb()
        if writer is not None:
            steps = {axis: int(round(point["seconds"] * 1000)) if axis == "wall_ms" else point[axis] for axis in self.axes}
            for axis in steps:
                for tag in ("reward", "ppl", "best_reward", "best_ppl"):
                    if np.isfinite(point[tag]):
                        writer.add_scalar(f"by_{axis}/{tag}", point[tag], steps[axis])
            writer.add_scalar("curriculum/target_sparsity", point["target"], point["episode"])
            writer.add_scalar("curriculum/reward_windows", info["reward_windows"], point["episode"])
        if self.progress:
            if self._bar is None:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=budget, initial=point["episode"] - 1, desc="search", unit="ep",
                                 dynamic_ncols=True)
            self._bar.update(1)
            axis = self.axes[0]
            evals = {axis.replace("evaluations", "evals"): point[axis]}
            if np.isfinite(point["best_ppl"]):
                shown = {"best_ppl": f"{point['best_ppl']:.2f}"}
            else:  # the curriculum's warm-up: nothing measured at the final target yet, so no best to show
                shown = {"warm_up": f"target {point['target']:.2f} ppl {point['ppl']:.1f}"}
            self._bar.set_postfix(**evals, **shown, elapsed=f"{point['seconds']:.0f}s", refresh=False)

    def log_learning(self, values: dict[str, float]) -> None:
        """An agent's learning statistics (``learning/<name>``) at the search's current episode."""
        writer = self._tb()
        if writer is None:
            return
        step = int(self._last.get("episode", 0))
        for name, value in values.items():
            if value is not None and np.isfinite(value):
                writer.add_scalar(f"learning/{name}", float(value), step)

    def close(self, metrics: dict[str, float] | None = None) -> None:
        """Close the bar; write the hyper-parameters with the final ``metrics`` (and the best so far) and flush.

        Idempotent: a second call does nothing.
        """
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in self.hparams.items()}
            final = {f"hparam/{k}": float(v) for k, v in (metrics or {}).items() if v is not None}
            if self._last and np.isfinite(self._last["best_reward"]):
                final.setdefault("hparam/best_reward", self._last["best_reward"])
                final.setdefault("hparam/best_ppl", self._last["best_ppl"])
            self._writer.add_hparams(hp, final, run_name=".")
            self._writer.flush()
            self._writer.close()
            self._writer = None
