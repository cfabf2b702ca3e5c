"""Studies: a search space, a seed and a trial budget, stored and run by workers (playbook 4.5-4.6).

A study is the playbook's unit of experiment (4.5): quasi-random search (FAQ 7.5) over a search
space, ``num_trials`` trials, one metric to optimize. Because the search is non-adaptive, trial
``i`` is simply point ``i`` of the study's scrambled Halton sequence: the same on any machine and
with any number of workers (playbook 7.5 d).

Example:
    >>> from playbook import tune
    >>> space = tune.SearchSpace({"lr": tune.Real(1e-4, 1e-1, scale="log")})
    >>> study = tune.Study.create("demo", space, storage="sqlite:///studies.db",
    ...                           seed=0, num_trials=8, metric="val_error")  # doctest: +SKIP
    >>> def objective(trial):
    ...     trial.report(100, val_error=abs(math.log10(trial.params["lr"]) + 2))
    >>> study.run(objective)  # doctest: +SKIP
    >>> study.best_trials(k=1)[0].params  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from playbook.tune.artifacts import artifacts_dir, check_artifacts
from playbook.tune.halton import _check_seed, new_seed
from playbook.tune.space import SearchSpace, Spec
from playbook.tune.storage import Storage, StudyRecord, TrialRecord, mask_url, open_storage
from playbook.tune.trial import Trial

if TYPE_CHECKING:
    from playbook.tune.analysis import Analysis

__all__ = ["Study", "TrialRecord", "list_studies", "DEFAULT_STORAGE", "CONFIG_KEYS"]

DEFAULT_STORAGE = "sqlite:///studies.db"
_CONFIG_VERSION = 1
# Keys that define a study: re-creating a study with any of them different is an error.
CONFIG_KEYS = ("space", "seed", "num_trials", "metric", "mode")
_MODES = ("min", "max")


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"Invalid study name {name!r}: it needs to be a non-empty string.")
    return name


def _check_config(num_trials: object, metric: object, mode: object) -> None:
    if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 1:
        raise ValueError(f"Invalid num_trials={num_trials!r}: it needs to be an int >= 1.")
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"Invalid metric={metric!r}: it needs to be a non-empty string such as 'val_error'.")
    if mode not in _MODES:
        raise ValueError(f"Unknown mode: {mode!r}. It needs to be one of {list(_MODES)}.")


def config_diff(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Keys of :data:`CONFIG_KEYS` whose values differ between two study configs."""
    return [k for k in CONFIG_KEYS if stored.get(k) != wanted.get(k)]


_MISSING = object()


def _label(item: Any, i: int) -> str:
    if isinstance(item, Mapping) and isinstance(item.get("name"), str):
        return f"[{item['name']}]"
    return f"[{i}]"


def _is_branches(x: Any) -> bool:
    return (
        isinstance(x, list)
        and bool(x)
        and all(isinstance(p, list) and len(p) == 2 and isinstance(p[1], list) for p in x)
        and len({str(p[0]) for p in x}) == len(x)
    )


def value_diff(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """The differing leaves of two JSON-like values: ``[(path, a_value, b_value), ...]``.

    Paths look like ``space.params[lr].hi`` (list items with a ``"name"`` are labelled by it, other
    list items by position); a value missing on one side is reported as ``<missing>``.
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[tuple[str, Any, Any]] = []
        for k in list(a) + [k for k in b if k not in a]:
            out += value_diff(a.get(k, _MISSING), b.get(k, _MISSING), f"{path}.{k}" if path else str(k))
        return out
    if _is_branches(a) and _is_branches(b):  # [[value, params], ...] of a Categorical: by value
        return value_diff({str(v): p for v, p in a}, {str(v): p for v, p in b}, path)
    if isinstance(a, list) and isinstance(b, list):
        la = [_label(x, i) for i, x in enumerate(a)]
        lb = [_label(x, i) for i, x in enumerate(b)]
        if len(set(la)) != len(la) or len(set(lb)) != len(lb):  # no unique names: by position
            la = [f"[{i}]" for i in range(len(a))]
            lb = [f"[{i}]" for i in range(len(b))]
        ka, kb = dict(zip(la, a)), dict(zip(lb, b))
        out = []
        for k in la + [k for k in lb if k not in ka]:
            out += value_diff(ka.get(k, _MISSING), kb.get(k, _MISSING), f"{path}{k}")
        return out
    if a == b and (type(a) is type(b) or not (isinstance(a, bool) or isinstance(b, bool))):
        return []
    return [(path, a, b)]


def _show(v: Any) -> str:
    return "<missing>" if v is _MISSING else repr(v)


class Study:
    """A stored quasi-random search study (playbook 4.5, FAQ 7.5).

    Make one with :meth:`create` or :meth:`load`, not with the constructor.

    Attributes:
        name: Unique name in its storage.
        space: The :class:`~playbook.tune.space.SearchSpace`.
        metric: The metric that scores trials (e.g. ``"val_error"``).
        mode: ``"min"`` or ``"max"``.
        seed: Seed of the scrambled Halton sequence.
        num_trials: Trial budget.
        notes: Free text (not part of the study's identity).
        config: The stored config dict (``space`` as a plain dict, ``seed``, ``num_trials``,
            ``metric``, ``mode``, ``notes``, ``version``).
        storage_url: Where it lives (``sqlite:///...`` or ``postgresql://...``; shown with the
            password masked in ``repr``).
        created: Unix time of creation.
    """

    def __init__(self, record: StudyRecord, storage: Storage) -> None:
        self._record = record
        self._storage = storage
        config = record.config
        self.name: str = record.name
        self.config: dict[str, Any] = dict(config)
        self.space: SearchSpace = SearchSpace.from_dict(config["space"])
        self.metric: str = config["metric"]
        self.mode: str = config["mode"]
        self.seed: int = int(record.seed)
        self.num_trials: int = int(config["num_trials"])
        self.notes: str = config.get("notes", "")
        self.storage_url: str = storage.url
        self.created: float = record.created

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        space: SearchSpace | Mapping[str, Spec],
        storage: str | Storage = DEFAULT_STORAGE,
        seed: int | None = None,
        num_trials: int = 32,
        metric: str = "val_error",
        mode: str = "min",
        notes: str = "",
        artifacts: str | os.PathLike[str] | None = None,
    ) -> Study:
        """Create a study, or open it if one with the same name and config exists.

        Args:
            name: Study name (unique within the storage).
            space: A :class:`SearchSpace` (or the dict to build one).
            storage: Storage URL (``"sqlite:///studies.db"``) or a :class:`Storage`.
            seed: Halton seed; ``None`` draws one (when creating) or accepts the stored one
                (when opening).
            num_trials: Number of trials (quasi-random points ``0..num_trials-1``).
            metric: Metric that scores trials, as passed to ``trial.report``.
            mode: ``"min"`` or ``"max"``.
            notes: Free text stored with the study (not compared when reopening).
            artifacts: Directory for the trials' files (checkpoints); stored in the config as
                an absolute path. Default: ``<db stem>_artifacts/<study>/`` beside the SQLite
                file. Reopening with a different ``artifacts`` is an error.

        Returns:
            The study.

        Raises:
            ValueError: invalid arguments, or a study called ``name`` exists with a different
                config (the message names each differing path with its two values). A larger
                ``num_trials`` than the stored one is not a difference: the study grows to it
                (see :meth:`extend`); a smaller one is.
        """
        _check_name(name)
        if not isinstance(space, SearchSpace):
            space = SearchSpace(space)
        _check_config(num_trials, metric, mode)
        if seed is not None:
            seed = _check_seed(seed)
        if not isinstance(notes, str):
            raise ValueError(f"Invalid notes={notes!r}: it needs to be a string.")
        store = open_storage(storage)
        config = {
            "version": _CONFIG_VERSION,
            "space": space.to_dict(),
            "seed": seed,
            "num_trials": int(num_trials),
            "metric": metric,
            "mode": mode,
            "notes": notes,
        }
        if artifacts is not None:
            config["artifacts"] = check_artifacts(artifacts)
        existing = store.get_study(name)
        if existing is None:
            config["seed"] = new_seed() if seed is None else seed
            existing = store.create_study(name, config, config["seed"])
        if seed is None:
            config["seed"] = existing.seed
        stored = existing.config
        diff = config_diff(stored, config)
        if artifacts is not None and stored.get("artifacts") != config["artifacts"]:
            diff.append("artifacts")
        grow = False
        if diff == ["num_trials"] and int(config["num_trials"]) > int(stored.get("num_trials", 0)):
            diff, grow = [], True  # a study can grow (trial i depends only on space, seed and i)
        if diff:
            paths = [
                (p, a, b)
                for k in diff
                for p, a, b in value_diff(stored.get(k, _MISSING), config.get(k, _MISSING), k)
            ]
            details = "; ".join(f"{p}: stored {_show(a)}, given {_show(b)}" for p, a, b in paths)
            shrink = ""
            if "num_trials" in diff and int(config["num_trials"]) < int(stored.get("num_trials", 0)):
                shrink = " (num_trials can grow, never shrink)"
            raise ValueError(
                f"Study {name!r} already exists in {store.display_url!r} with a different config "
                f"(differing keys: {diff}): {details}{shrink}. Use another name or Study.load({name!r}, ...)."
            )
        if grow:
            existing = store.extend_study(name, int(config["num_trials"]))
        return cls(existing, store)

    @classmethod
    def load(cls, name: str, storage: str | Storage = DEFAULT_STORAGE) -> Study:
        """Open an existing study.

        Raises:
            ValueError: no study called ``name`` (the message lists the existing ones).
        """
        _check_name(name)
        store = open_storage(storage)
        record = store.get_study(name)  # reads never create a database
        if record is None:
            path = getattr(store, "path", None)
            if path is not None and not os.path.exists(path):
                raise ValueError(
                    f"No study named {name!r} in {store.display_url!r}: the file {path!r} does not exist "
                    "(it was not created). Check --storage / $PLAYBOOK_STORAGE or create the study first."
                )
            names = [r.name for r in store.list_studies()]
            raise ValueError(f"No study named {name!r} in {store.display_url!r}; existing studies: {names!r}.")
        return cls(record, store)

    # -- changing a study -------------------------------------------------------------------------

    def extend(self, n: int) -> Study:
        """Add ``n`` trials to the study's budget (points ``num_trials .. num_trials+n-1``).

        Trial ``i`` is a pure function of (space, seed, i) (playbook 7.5 d), so a study can grow
        after it ran: the existing trials stay valid. Workers already running keep the budget
        they started with; run the study again to run the new trials.

        Args:
            n: How many trials to add (an int >= 1).

        Returns:
            ``self``, with :attr:`num_trials` and :attr:`config` updated.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Invalid n={n!r}: it needs to be an int >= 1 (a study can grow, never shrink).")
        stored = self._storage.get_study(self.name)
        if stored is None:
            raise ValueError(f"Study {self.name!r} no longer exists in {self._storage.display_url!r}.")
        record = self._storage.extend_study(self.name, int(stored.config["num_trials"]) + n)
        self._record = record
        self.config = dict(record.config)
        self.num_trials = int(record.config["num_trials"])
        return self

    def requeue_stale(self, older_than: float = 0.0) -> list[int]:
        """Put running trials whose last heartbeat is at least ``older_than`` seconds old back in
        the queue, now (their metrics are kept; the next claim re-runs them).

        After killing every worker of a study (a cancelled cluster job, ``kill -9``), this saves
        waiting ``heartbeat_timeout`` seconds for the trials to be found stale. With the default
        ``older_than=0`` every running trial is re-queued: use it only when no worker is alive,
        or the live ones lose their trials (they notice at their next report and stop).

        Returns:
            The re-queued trial indices.
        """
        if isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or not older_than >= 0:
            raise ValueError(f"Invalid older_than={older_than!r}: it needs to be a number of seconds >= 0.")
        reason = f"requeued: no heartbeat for {older_than:g} s (requeue_stale)" if older_than else "requeued: requeue_stale"
        return self._storage.requeue(self.name, stale_after=float(older_than), reason=reason)

    def delete(self) -> None:
        """Delete the study, its trials and their metrics from the storage (artifacts on disk
        are left alone)."""
        self._storage.delete_study(self.name)

    # -- queries ----------------------------------------------------------------------------------

    def params(self, index: int) -> dict[str, Any]:
        """Params of trial ``index``: ``space.sample(index, seed)`` (whether it ran or not)."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"Invalid trial index {index!r}: it needs to be an int >= 0.")
        return self.space.sample(index, self.seed)

    @property
    def artifacts(self) -> Path:
        """The study's artifacts directory (``config["artifacts"]``, else ``<db stem>_artifacts/<study>/``
        beside the SQLite file); trial ``i`` uses ``trial_<i:05d>/`` inside it."""
        return artifacts_dir(self.name, self.config, self._storage)

    def trials(self) -> list[TrialRecord]:
        """Every trial stored so far (claimed at least once), sorted by index."""
        return self._storage.trials(self.name)

    def trial(self, index: int) -> TrialRecord:
        """The stored trial ``index`` (ValueError if it does not exist yet)."""
        for t in self.trials():
            if t.index == index:
                return t
        raise ValueError(f"Study {self.name!r} has no stored trial {index!r}.")

    def metrics(self, index: int) -> list[tuple[int, dict[str, float]]]:
        """Training curves of trial ``index``: ``[(step, {name: value}), ...]`` in step order."""
        return self._storage.metrics(self.name, index)

    def status_counts(self) -> dict[str, int]:
        """``{status: count}`` over stored trials (pending/running/complete/infeasible/failed)."""
        return self._storage.status_counts(self.name)

    def best_trials(self, k: int = 1) -> list[TrialRecord]:
        """The ``k`` best complete trials, best score first (ties: lower index first).

        The score of a trial is the best value of :attr:`metric` over all its reports
        (retrospective selection, playbook 6.2). Infeasible and failed trials never count.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"Invalid k={k!r}: it needs to be an int >= 0.")
        done = [t for t in self.trials() if t.status == "complete" and t.score is not None and math.isfinite(t.score)]
        sign = 1.0 if self.mode == "min" else -1.0
        done.sort(key=lambda t: (sign * float(t.score), t.index))  # type: ignore[arg-type]
        return done[:k]

    @property
    def is_finished(self) -> bool:
        """True when all ``num_trials`` trials are complete, infeasible or failed."""
        c = self.status_counts()
        return c["complete"] + c["infeasible"] + c["failed"] >= self.num_trials

    def analysis(self) -> Analysis:
        """A :class:`playbook.tune.analysis.Analysis` of this study (plots, reports)."""
        from playbook.tune.analysis import Analysis

        return Analysis(self)

    def to_dataframe(self) -> Any:
        """Trials as a pandas DataFrame (see :func:`playbook.tune.dataframe.to_dataframe`)."""
        from playbook.tune.dataframe import to_dataframe

        return to_dataframe(self)

    # -- running ----------------------------------------------------------------------------------

    def run(
        self,
        objective: Callable[[Trial], Any],
        n_workers: int = 1,
        timeout: float | None = None,
        progress: bool = True,
        *,
        heartbeat_timeout: float = 60.0,
        mp_context: str = "spawn",
        retry_failed: bool = False,
    ) -> Study:
        """Run the study's remaining trials (resumable; a finished study does nothing).

        Args:
            objective: ``objective(trial)``: trains with ``trial.params``, calls
                ``trial.report(step, **metrics)``; may call ``trial.complete(**final)`` /
                ``trial.infeasible(reason)`` or return a number (the metric), a dict of final
                values or None. An exception marks the trial failed with its traceback and the
                study goes on. For ``n_workers > 1`` it must be picklable (a module-level
                function or a ``functools.partial`` of one), and scripts need the
                ``if __name__ == "__main__":`` guard (processes are spawned).
            n_workers: Local worker processes; ``1`` runs in this process.
            timeout: Seconds after which no new trial is started (running ones finish).
            progress: Show progress on stderr: a tqdm bar on a terminal, else one line per
                change (done / total, live running trials, best so far, what it waits for);
                each trial that fails is announced with its error.
            heartbeat_timeout: Seconds without a heartbeat after which a running trial (for
                instance of a killed worker) is re-queued and re-run.
            mp_context: Multiprocessing start method (``"spawn"``, ``"forkserver"``, ``"fork"``).
            retry_failed: Put failed trials back in the queue first.

        Returns:
            ``self``.

        Raises:
            RuntimeError: (``n_workers > 1``) a worker process died before it could start, e.g.
                a script without the ``if __name__ == "__main__":`` guard; or workers kept dying
                with trials left. Every worker is stopped first.
            KeyboardInterrupt, playbook.tune.Terminated: Ctrl-C / SIGTERM; the workers are
                stopped and their running trials re-queued (``Terminated`` exits with 143).
        """
        from playbook.tune.runner import Progress, RunOptions, run_study

        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"Invalid n_workers={n_workers!r}: it needs to be an int >= 1.")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"Invalid timeout={timeout!r}: it needs to be a number of seconds > 0 or None.")
        if not (isinstance(heartbeat_timeout, (int, float)) and heartbeat_timeout > 0):
            raise ValueError(f"Invalid heartbeat_timeout={heartbeat_timeout!r}: it needs to be a number of seconds > 0.")
        if not callable(objective):
            raise ValueError(f"objective {objective!r} is not callable.")
        if retry_failed:
            self._storage.requeue(self.name, statuses=("failed",), reason="requeued: retry_failed")
        options = RunOptions(
            heartbeat_timeout=float(heartbeat_timeout),
            deadline=None if timeout is None else time.time() + float(timeout),
        )
        run_study(self, objective, n_workers, options, Progress(self, enabled=progress), mp_context=mp_context)
        return self

    # -- misc -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close this process's connection to the storage (reopened on next use)."""
        self._storage.close()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (Study.load, (self.name, self.storage_url))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Study) and (other.name, other.storage_url) == (self.name, self.storage_url)

    def __hash__(self) -> int:
        return hash((self.name, self.storage_url))

    def __repr__(self) -> str:
        return (
            f"Study({self.name!r}, storage={mask_url(self.storage_url)!r}, num_trials={self.num_trials}, "
            f"metric={self.metric!r}, mode={self.mode!r}, seed={self.seed})"
        )


def list_studies(storage: str | Storage = DEFAULT_STORAGE) -> list[Study]:
    """Every study in ``storage``, oldest first."""
    store = open_storage(storage)
    return [Study(record, store) for record in store.list_studies()]
