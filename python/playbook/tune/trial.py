"""The object an objective function receives: params in, training curves out (playbook 6.2, 7.8).

``trial.report(step, **metrics)`` records one point of the training curves. The trial's score is
the best value of the study metric over every report (and the ``complete(**final)`` values):
retrospective selection of the best checkpoint (playbook 6.2), with the step where it occurred.

A NaN or infinite value of the study metric, or of any metric whose name contains ``"loss"``,
makes the trial infeasible (playbook 7.8: a diverged run): ``report`` stores the values, marks the
trial infeasible and raises :class:`TrialInfeasible` to stop the training loop. The runner
catches it; objectives should let it propagate.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from playbook._validate import step_index
from playbook.tune.storage import Storage

if TYPE_CHECKING:
    from playbook.ckpt import CheckpointManager

__all__ = ["Trial", "TrialInfeasible", "TrialLost", "is_better", "nonfinite_metrics", "as_number"]


class TrialInfeasible(Exception):
    """Raised by :meth:`Trial.report` when a reported value is NaN/inf (playbook 7.8).

    The runner marks the trial ``infeasible`` (not ``failed``) and moves on to the next trial.
    """


class TrialLost(RuntimeError):
    """Raised by :meth:`Trial.report` when the trial no longer belongs to this worker.

    Happens when the worker missed heartbeats for longer than the study's heartbeat timeout and
    the trial was re-queued (and possibly claimed by another worker): the rest of this run would
    be wasted, so the runner abandons it without writing anything.
    """


def is_better(a: float, b: float | None, mode: str) -> bool:
    """Whether score ``a`` beats ``b`` (``None`` is beaten by anything) in ``mode`` min/max."""
    if b is None:
        return True
    return a < b if mode == "min" else a > b


def nonfinite_metrics(metrics: Mapping[str, Any], metric: str) -> list[str]:
    """Names among ``metrics`` whose non-finite value makes a trial infeasible.

    The study metric and every metric whose name contains ``"loss"`` count.
    """
    bad = []
    for name, value in metrics.items():
        if (name == metric or "loss" in name) and not math.isfinite(value):
            bad.append(name)
    return bad


def as_number(name: str, value: Any) -> int | float:
    """``value`` as a Python int or float, or a ValueError naming ``name`` and the value.

    Accepted: ``int`` and ``float`` (and their subclasses such as numpy's ``float64``), numpy
    scalars, 0-d numpy arrays and 0-d tensors (converted with ``.item()``; a CUDA tensor is
    copied to the host). Refused, with the same message wherever a metric is given
    (``report``, ``complete``, an objective's return value): ``None``, ``bool``, strings (even
    ``"0.3"``), containers, complex numbers and tensors/arrays with more than one dimension.
    """
    v = value
    if not isinstance(v, (int, float)) and hasattr(v, "item") and hasattr(v, "ndim"):
        if v.ndim != 0:
            shape = tuple(getattr(v, "shape", ()))
            raise ValueError(
                f"Metric {name}={value!r} is not a number: a tensor/array of shape {shape}; "
                "report a number or a 0-d tensor (e.g. loss.item() or loss.mean())."
            )
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(
            f"Metric {name}={value!r} is not a number ({type(value).__name__}); metrics must be "
            "int, float, numpy scalars or 0-d tensors."
        )
    return v


def _as_float(name: str, value: Any) -> float:
    return float(as_number(name, value))


class Trial:
    """One trial being run: point ``index`` of the study's quasi-random sequence.

    Created by :meth:`playbook.tune.Study.run`; objectives receive it as their only argument.

    Attributes:
        index: Trial index (the Halton point index).
        params: ``{name: value}`` of the active hyperparameters (flat names).
        study_name: Name of the study.
        metric: The study metric (e.g. ``"val_error"``).
        mode: ``"min"`` or ``"max"``.
        score: Best value of ``metric`` so far (``None`` before the first report).
        best_step: Step of :attr:`score`.
        status: ``"running"`` until :meth:`complete` / :meth:`infeasible` or the runner finishes it.

    Example:
        >>> def objective(trial):
        ...     for step in range(0, 1000, 100):
        ...         err = 1.0 / (1 + step * trial.params["lr"])
        ...         trial.report(step, val_error=err)
    """

    def __init__(
        self,
        *,
        index: int,
        params: Mapping[str, Any],
        study_name: str,
        metric: str,
        mode: str,
        storage: Storage | None,
        worker: str,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        self.index = int(index)
        self.params = dict(params)
        self.study_name = study_name
        self.metric = metric
        self.mode = mode
        self.worker = worker
        self.score: float | None = None
        self.best_step: int | None = None
        self.status = "running"
        self.error: str | None = None
        self.final: dict[str, Any] = {}
        self._storage = storage
        self._last_step: int | None = None
        self._directory = None if directory is None else Path(directory)
        # (step, value of the study metric) of every stored report, earlier attempts included.
        self._history: list[tuple[int, float]] | None = None

    def __repr__(self) -> str:
        return f"Trial(index={self.index}, params={self.params!r}, status={self.status!r}, score={self.score!r})"

    def _check_running(self, what: str) -> None:
        if self.status != "running":
            raise RuntimeError(f"Trial {self.index} is already {self.status}; cannot {what}.")

    @property
    def directory(self) -> Path:
        """This trial's own folder, ``<study artifacts>/trial_<index:05d>/`` (created on first use).

        It is kept when the trial is re-run (interrupted run, dead worker, heartbeat timeout), so
        an objective that checkpoints there continues where the previous attempt stopped.
        """
        if self._directory is None:
            from playbook.tune.artifacts import artifacts_dir, trial_dir

            if self._storage is None:
                raise ValueError(f"Trial {self.index} has no storage and no directory: pass Trial(..., directory=PATH).")
            record = self._storage.get_study(self.study_name)
            if record is None:
                raise ValueError(f"Study {self.study_name!r} is not in {self._storage.url!r}.")
            self._directory = trial_dir(artifacts_dir(self.study_name, record.config, self._storage), self.index)
        self._directory.mkdir(parents=True, exist_ok=True)
        return self._directory

    def checkpoints(self, **kwargs: Any) -> CheckpointManager:
        """A :class:`playbook.ckpt.CheckpointManager` in ``directory/checkpoints`` ranking by the
        study's metric and mode (``kwargs`` go to the manager: ``keep_best``, ``keep_latest``,
        ``async_save``; ``metric``/``mode`` override the study's).

        Example:
            >>> def objective(trial):
            ...     mgr = trial.checkpoints(keep_best=1)
            ...     start = mgr.restore_into(model=model, optimizer=opt)   # 0, or resume
            ...     for step in range(start, 1000):
            ...         ...
            ...         mgr.save(step, {"model": model, "optimizer": opt}, metrics={"val_error": err})
            ...         trial.report(step, val_error=err)
        """
        from playbook.ckpt import CheckpointManager

        kwargs.setdefault("metric", self.metric)
        kwargs.setdefault("mode", self.mode)
        return CheckpointManager(self.directory / "checkpoints", **kwargs)

    def _load_history(self) -> list[tuple[int, float]]:
        if self._history is None:
            self._history = []
            if self._storage is not None:
                for step, values in self._storage.metrics(self.study_name, self.index):
                    if self.metric in values:
                        self._history.append((step, float(values[self.metric])))
                        self._update_score(float(values[self.metric]), step)
        return self._history

    def _record(self, step: int, value: float | None) -> None:
        """Keep the curve of the study metric as the storage does: a report at ``step`` replaces
        everything at steps >= ``step`` (a resumed attempt rewrites its future), then rescore."""
        history = self._load_history()
        if history and history[-1][0] >= step:
            history[:] = [(s, v) for s, v in history if s < step]
            self.score, self.best_step = None, None
            for s, v in history:
                self._update_score(v, s)
        if value is not None:
            history.append((step, value))
            self._update_score(value, step)

    def _update_score(self, value: float, step: int | None) -> None:
        if math.isfinite(value) and is_better(value, self.score, self.mode):
            self.score = value
            self.best_step = step

    def report(self, step: int, **metrics: float) -> None:
        """Record metrics at a training step (one point of each training curve).

        Args:
            step: Training step (int). A report at ``step`` first drops every stored report of this
                trial at steps >= ``step``: a trial resumed from a checkpoint rewrites the rest of
                its curve, and the score and best step are those of the curve as stored.
            **metrics: ``name=value`` floats, e.g. ``val_error=0.2, train_loss=0.7``.

        Raises:
            TrialInfeasible: a value of the study metric or of a ``*loss*`` metric is NaN/inf
                (the values are stored and the trial is marked infeasible first).
        """
        self._check_running("report")
        step = step_index(step, "Trial.report step")
        if not metrics:
            raise ValueError("Trial.report needs at least one metric, e.g. trial.report(step, val_error=0.2).")
        values = {name: _as_float(name, v) for name, v in metrics.items()}
        self._record(step, values.get(self.metric))
        self._last_step = step
        if self._storage is not None:
            owned = self._storage.report(
                self.study_name, self.index, self.worker, step, values, self.score, self.best_step
            )
            if not owned:
                self.status = "lost"
                raise TrialLost(
                    f"Trial {self.index} of study {self.study_name!r} was re-queued after missed heartbeats; "
                    f"worker {self.worker} abandons it."
                )
        bad = nonfinite_metrics(values, self.metric)
        if bad:
            reason = f"non-finite {', '.join(f'{n}={values[n]}' for n in bad)} at step {step}"
            self.infeasible(reason)
            raise TrialInfeasible(reason)

    def complete(self, **final: Any) -> None:
        """Finish the trial successfully, optionally with final metric values.

        A final value of the study metric takes part in the score (without a step). A non-finite
        final value of the study metric or of a ``*loss*`` metric makes the trial infeasible.
        """
        self._check_running("complete")
        final = {name: as_number(name, v) for name, v in final.items()}  # checked before any change
        self.final.update(final)
        numeric = {k: float(v) for k, v in final.items()}
        bad = nonfinite_metrics(numeric, self.metric)
        if bad:
            self.infeasible(f"non-finite final {', '.join(f'{n}={numeric[n]}' for n in bad)}")
            return
        if self.metric in final:
            value = _as_float(self.metric, final[self.metric])
            if is_better(value, self.score, self.mode):
                self.score, self.best_step = value, None
        if self.score is None:
            self._finish(
                "failed",
                f"Trial {self.index} finished without reporting the study metric {self.metric!r} "
                f"(report it with trial.report(step, {self.metric}=...) or trial.complete({self.metric}=...)).",
            )
            return
        self._finish("complete", None)

    def infeasible(self, reason: str) -> None:
        """Mark the trial infeasible (diverged, NaN loss, violated constraint; playbook 4.6, 7.8).

        Infeasible trials count in the study's infeasible fraction but never as best trials.
        The objective should return after calling it.
        """
        self._check_running("mark it infeasible")
        self._finish("infeasible", str(reason))

    def fail(self, error: str) -> None:
        """Mark the trial failed with ``error`` (the runner does this on exceptions)."""
        self._check_running("mark it failed")
        self._finish("failed", str(error))

    def _finish(self, status: str, error: str | None) -> None:
        self.status = status
        self.error = error
        if self._storage is not None:
            self._storage.finish_trial(
                self.study_name,
                self.index,
                self.worker,
                status,
                score=self.score,
                best_step=self.best_step,
                error=error,
                final=self.final,
            )
