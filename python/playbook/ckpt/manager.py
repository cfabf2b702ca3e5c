"""CheckpointManager: atomic checkpoints, N best + latest, verified restore (playbook "Saving
checkpoints and retrospectively selecting the best checkpoint").

The playbook: "Set up the pipeline to keep track of the N best checkpoints seen so far during
training. At the end of training, model selection is then a matter of choosing the best
checkpoint seen during training." and checkpoints make "the training job [...] resilient to
compute instance interruptions". The on-disk format and commit protocol are in
:mod:`playbook.ckpt._format`.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from playbook._validate import step_index
from playbook.ckpt import _format
from playbook.ckpt._format import CorruptCheckpointError, Manifest
from playbook.ckpt._state import HostCopier, check_weights_only, collect

__all__ = ["CheckpointManager", "CheckpointWarning", "CorruptCheckpointError"]

_MODES = ("min", "max")


class CheckpointWarning(UserWarning):
    """A corrupt checkpoint was skipped, or retention could not delete an old checkpoint."""


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _check_count(name: str, value: Any, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Invalid {name}={value!r}: it needs to be an int >= 0{' or None' if allow_none else ''}.")
    return value


class CheckpointManager:
    """Atomic, verified checkpoints in one directory, keeping the ``keep_best`` best and the
    ``keep_latest`` newest (playbook: retrospective optimal checkpoint selection).

    Args:
        directory: Folder of this run's checkpoints (``step_00001200/`` sub-directories); created
            at the first save.
        metric: Name of the metric in ``save(..., metrics=)`` that ranks checkpoints (``None``:
            no ranking; ``keep_best`` is ignored and ``"best"`` is not available).
        mode: ``"min"`` or ``"max"``.
        keep_best: How many best checkpoints to keep (NaN/inf/missing metric ranks worst; ties
            keep the earlier step).
        keep_latest: How many of the newest checkpoints to keep; ``None`` keeps every one.
        async_save: Write in a background thread. ``save`` then only copies tensors to host
            memory (the time the training loop waits); ``wait()`` blocks until written, and an
            error of the background write is raised by the next ``save``/``wait``/``close``.
            Helps when writes are slow compared to a training step: GPU training (the
            device-to-host copy is the only wait) and slow or network disks. On CPU training
            with a fast local disk the copy costs about as much as the write would. Keeps one
            host copy of the state alive between saves (reused, so steady-state saves allocate
            nothing).

    Retention runs only after a save has committed, so a failed save never deletes anything.
    Saving step ``s`` also deletes checkpoints with a step greater than ``s``: they belong to a
    run that was rolled back (training resumed from an earlier checkpoint).

    Under ``torch.distributed`` only rank 0 writes (the others validate the state and return);
    every rank can restore. Add a ``torch.distributed.barrier()`` after ``save``/``wait`` if
    other ranks read the checkpoint right away.

    Example:
        >>> mgr = CheckpointManager("runs/exp1", metric="val_error", mode="min", keep_best=3)  # doctest: +SKIP
        >>> start = mgr.restore_into(model=model, optimizer=opt, scheduler=sched)          # doctest: +SKIP
        >>> mgr.save(step, {"model": model, "optimizer": opt, "scheduler": sched},
        ...          metrics={"val_error": err})                                          # doctest: +SKIP
        >>> best = mgr.restore("best")                                                     # doctest: +SKIP
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        metric: str | None = None,
        mode: str = "min",
        keep_best: int = 1,
        keep_latest: int | None = 1,
        async_save: bool = False,
    ) -> None:
        if metric is not None and (not isinstance(metric, str) or not metric):
            raise ValueError(f"Invalid metric={metric!r}: it needs to be a non-empty string or None.")
        if mode not in _MODES:
            raise ValueError(f"Unknown mode: {mode!r}. It needs to be one of {list(_MODES)}.")
        _check_count("keep_best", keep_best)
        _check_count("keep_latest", keep_latest, allow_none=True)
        if keep_latest == 0 and (metric is None or keep_best == 0):
            raise ValueError(
                f"Invalid retention keep_best={keep_best}, keep_latest={keep_latest} with metric={metric!r}: "
                "every checkpoint would be deleted right after it is written."
            )
        self.directory = Path(os.fspath(directory))
        self.metric = metric
        self.mode = mode
        self.keep_best = keep_best
        self.keep_latest = keep_latest
        self.async_save = bool(async_save)
        self.restored_step: int | None = None
        self._copier = HostCopier(reuse=self.async_save)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        if _rank() == 0:
            _format.cleanup_stale(self.directory)

    def __repr__(self) -> str:
        return (
            f"CheckpointManager({str(self.directory)!r}, metric={self.metric!r}, mode={self.mode!r}, "
            f"keep_best={self.keep_best}, keep_latest={self.keep_latest}, async_save={self.async_save})"
        )

    # -- listing ----------------------------------------------------------------------------------

    def _scan(self) -> tuple[list[Manifest], list[tuple[int, Path, str]]]:
        """(valid manifests by step, [(step, path, reason)] of step_* directories that are not)."""
        valid: list[Manifest] = []
        bad: list[tuple[int, Path, str]] = []
        try:
            entries = list(os.scandir(self.directory))
        except (FileNotFoundError, NotADirectoryError):
            return valid, bad
        for entry in entries:
            step = _format.parse_step_dir(entry.name)
            if step is None:
                continue
            path = Path(entry.path)
            try:
                valid.append(_format.read_manifest(path))
            except CorruptCheckpointError as exc:
                if path.exists():  # not deleted by a concurrent retention in the meantime
                    bad.append((step, path, str(exc)))
        valid.sort(key=lambda m: m.step)
        bad.sort()
        return valid, bad

    def steps(self) -> list[int]:
        """Steps of the committed checkpoints, ascending (checksums are checked at restore)."""
        return [m.step for m in self._scan()[0]]

    def latest_step(self) -> int | None:
        """The newest committed step, or ``None``."""
        steps = self.steps()
        return steps[-1] if steps else None

    def _score(self, m: Manifest) -> float | None:
        if self.metric is None:
            return None
        v = m.metrics.get(self.metric)
        return v if v is not None and math.isfinite(v) else None

    def _ranked(self, manifests: list[Manifest]) -> list[Manifest]:
        """Best first; NaN/inf/missing last; ties by step (earlier first)."""
        sign = 1.0 if self.mode == "min" else -1.0

        def key(m: Manifest) -> tuple[int, float, int]:
            s = self._score(m)
            return (1, 0.0, m.step) if s is None else (0, sign * s, m.step)

        return sorted(manifests, key=key)

    def best_step(self) -> int | None:
        """Step of the best checkpoint by ``metric`` (``None`` if none has a finite value)."""
        self._need_metric()
        ranked = [m for m in self._ranked(self._scan()[0]) if self._score(m) is not None]
        return ranked[0].step if ranked else None

    def metrics(self, step: int) -> dict[str, float]:
        """The metrics saved with checkpoint ``step``."""
        return dict(self._manifest(step).metrics)

    def _manifest(self, step: int) -> Manifest:
        step = step_index(step, "checkpoint step")
        path = self.directory / _format.step_dirname(step)
        if not path.is_dir():
            raise ValueError(f"No checkpoint for step {step} in {self.directory}; steps: {self.steps()}.")
        return _format.read_manifest(path)

    def _need_metric(self) -> None:
        if self.metric is None:
            raise ValueError(
                f"CheckpointManager({str(self.directory)!r}) has no metric, so there is no best checkpoint; "
                "create it with metric='val_error' (and mode) to rank checkpoints."
            )

    # -- saving -----------------------------------------------------------------------------------

    def _raise_background_error(self) -> None:
        with self._lock:
            err, self._error = self._error, None
        if err is not None:
            raise err

    def wait(self) -> None:
        """Block until the background save (if any) is written; raise its error if it failed."""
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        self._raise_background_error()

    def close(self) -> None:
        """``wait()`` and free the host buffers kept for async saves."""
        try:
            self.wait()
        finally:
            self._copier.clear()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save(self, step: int, state: Mapping[str, Any], metrics: Mapping[str, float] | None = None) -> None:
        """Write checkpoint ``step`` atomically, then apply retention.

        Args:
            step: Training step (int >= 0); names the directory ``step_{step:08d}``.
            state: ``{name: value}``; values are tensors, plain containers/numbers/strings, or
                objects with ``state_dict()`` (modules, optimizers, LR schedulers, GradScaler,
                :func:`playbook.ckpt.rng_state`).
            metrics: ``{name: number}`` stored in the manifest (e.g. ``{"val_error": 0.21}``).

        Raises:
            TypeError: a value ``torch.load(weights_only=True)`` could not read back (names the
                key); raised before anything is written.
            OSError: the write failed (unwritable directory, full disk); nothing was committed
                and no earlier checkpoint was touched. With ``async_save`` it comes from the
                previous save, and this save is not made (call it again).
        """
        self._raise_background_error()
        step = step_index(step, "checkpoint step")
        values: dict[str, float] = {}
        for name, v in (metrics or {}).items():
            if not isinstance(name, str) or isinstance(v, bool):
                raise ValueError(f"Invalid checkpoint metric {name!r}={v!r}: names are strings, values numbers.")
            try:
                values[name] = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"Invalid checkpoint metric {name}={v!r}: it needs to be a number.") from None
        collected = collect(state)
        check_weights_only(collected)
        if _rank() != 0:
            return
        if not self.async_save:
            host, _ = self._copier.copy(collected, clone_cpu=False)
            self._commit(step, host, values)
            return
        self.wait()  # one save in flight; also re-raises its error
        host, buffers = self._copier.copy(collected, clone_cpu=True)

        def run() -> None:
            try:
                self._commit(step, host, values)
            except BaseException as exc:
                with self._lock:
                    self._error = exc
            finally:
                self._copier.release(buffers)

        self._thread = threading.Thread(target=run, name=f"playbook-ckpt-save-{step}", daemon=False)
        self._thread.start()

    def _commit(self, step: int, host: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        _format.write_checkpoint(self.directory, step, host, metrics)
        self._retain(step)

    def _retain(self, committed: int) -> None:
        valid, _ = self._scan()
        keep: set[int] = set()
        later = [m for m in valid if m.step > committed]  # a rolled-back run's future
        current = [m for m in valid if m.step <= committed]
        if self.keep_latest is None:
            keep.update(m.step for m in current)
        else:
            keep.update(m.step for m in current[len(current) - self.keep_latest :] if self.keep_latest)
        if self.metric is not None and self.keep_best:
            keep.update(m.step for m in self._ranked(current)[: self.keep_best])
        for m in current + later:
            if m.step in keep and m not in later:
                continue
            try:
                _format.remove_checkpoint(m.path)
            except OSError as exc:
                warnings.warn(
                    f"Could not delete old checkpoint {m.path} ({exc}); it stays on disk.",
                    CheckpointWarning,
                    stacklevel=3,
                )

    # -- restoring --------------------------------------------------------------------------------

    def _load(self, m: Manifest, map_location: Any) -> dict[str, Any]:
        _format.verify_files(m)
        path = m.path / _format.STATE_FILE
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:
            raise CorruptCheckpointError(
                f"Checkpoint file {path} cannot be loaded with torch.load(weights_only=True): "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}. "
                "It is not loaded any other way: a checkpoint never executes code."
            ) from None
        if not isinstance(state, dict):
            raise CorruptCheckpointError(f"Checkpoint file {path} holds a {type(state).__name__}, not a dict.")
        return state

    def _candidates(self, which: Any) -> tuple[list[Manifest], list[tuple[int, Path, str]], str]:
        valid, bad = self._scan()
        if which == "latest":
            return list(reversed(valid)), [b for b in bad if not valid or b[0] > valid[-1].step], "newest"
        if which == "best":
            self._need_metric()
            return [m for m in self._ranked(valid) if self._score(m) is not None], [], "best"
        raise ValueError(f"Unknown checkpoint {which!r}. It needs to be 'latest', 'best' or a step (int).")

    def restore(self, which: str | int = "latest", map_location: Any = None) -> dict[str, Any]:
        """Load a checkpoint's state dict (values as saved: state dicts, tensors, numbers).

        Args:
            which: ``"latest"``, ``"best"`` (by ``metric``) or a step.
            map_location: As in ``torch.load`` (tensors are saved on the CPU).

        Returns:
            The state dict; :attr:`restored_step` tells which step it is.

        Raises:
            FileNotFoundError: no checkpoint at all (or none with a finite metric for ``"best"``).
            CorruptCheckpointError: ``restore(step)`` of a corrupt checkpoint, or every candidate
                is corrupt. ``"latest"``/``"best"`` skip corrupt ones with a
                :class:`CheckpointWarning` naming the path and use the next newest/best valid one.
        """
        self.wait()  # an async save in flight is part of "latest"
        if not isinstance(which, str):
            m = self._manifest(step_index(which, "checkpoint step"))
            state = self._load(m, map_location)
            self.restored_step = m.step
            return state
        candidates, bad, order = self._candidates(which)
        for step, path, reason in reversed(bad):
            warnings.warn(f"Skipping checkpoint {path}: {reason}", CheckpointWarning, stacklevel=2)
        failures = []
        for m in candidates:
            try:
                state = self._load(m, map_location)
            except CorruptCheckpointError as exc:
                failures.append(str(exc))
                warnings.warn(
                    f"Skipping corrupt checkpoint {m.path}: {exc} Using the next {order} valid one.",
                    CheckpointWarning,
                    stacklevel=2,
                )
                continue
            self.restored_step = m.step
            return state
        if failures or bad:
            raise CorruptCheckpointError(
                f"No valid checkpoint in {self.directory}: " + "; ".join(failures + [b[2] for b in bad])
            )
        extra = f" with a finite {self.metric!r}" if which == "best" else ""
        raise FileNotFoundError(f"No checkpoint{extra} in {self.directory}.")

    def restore_into(self, which: str | int = "latest", /, *, map_location: Any = "cpu", **objects: Any) -> int:
        """Load a checkpoint into live objects; return the step to continue from.

        Args:
            which: ``"latest"`` (default), ``"best"`` or a step.
            map_location: Where tensors are loaded before being copied into the objects.
            **objects: ``name=object`` for every state key to load: objects with
                ``load_state_dict`` (modules, optimizers, schedulers, GradScaler,
                ``ckpt.rng_state()``) or tensors (copied in place). Loaded in the order given;
                the optimizer's scheduler must already exist (torch's order).

        Returns:
            ``restored_step + 1``, or ``0`` when there is no valid checkpoint (a fresh run:
            nothing is touched; corrupt ones are reported with a :class:`CheckpointWarning`).

        Raises:
            KeyError: a name is missing from the checkpoint (nothing is loaded).
            TypeError: an object that cannot receive a state (nothing is loaded).
        """
        if not objects:
            raise ValueError("restore_into needs objects to load into, e.g. restore_into(model=model, optimizer=opt).")
        for name, obj in objects.items():
            if not (callable(getattr(obj, "load_state_dict", None)) or isinstance(obj, torch.Tensor)):
                raise TypeError(
                    f"Cannot restore into {name}={type(obj).__name__}: it needs load_state_dict() or to be a tensor "
                    "(use restore() to get plain values)."
                )
        try:
            state = self.restore(which, map_location=map_location)
        except FileNotFoundError:
            if isinstance(which, str) and which == "latest":
                return 0
            raise
        except CorruptCheckpointError:
            if isinstance(which, str) and which == "latest":
                return 0  # every checkpoint was reported with a warning: start afresh
            raise
        missing = [k for k in objects if k not in state]
        if missing:
            raise KeyError(
                f"Checkpoint step {self.restored_step} in {self.directory} has no {missing}; it holds {sorted(state)}."
            )
        for name, obj in objects.items():
            value = state[name]
            if isinstance(obj, torch.Tensor):
                if not isinstance(value, torch.Tensor) or value.shape != obj.shape:
                    raise ValueError(
                        f"Cannot restore {name}: checkpoint holds {getattr(value, 'shape', type(value).__name__)}, "
                        f"the tensor has shape {tuple(obj.shape)}."
                    )
        for name, obj in objects.items():
            value = state[name]
            if isinstance(obj, torch.Tensor):
                with torch.no_grad():
                    obj.copy_(value)
            else:
                obj.load_state_dict(value)
        assert self.restored_step is not None
        return self.restored_step + 1
