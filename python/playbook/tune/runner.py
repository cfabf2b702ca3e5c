"""Running a study: worker loop, heartbeats, local worker processes, progress line (playbook 7.5).

Each worker (a local process, or the calling process when ``n_workers=1``) opens its own storage
connection and loops: claim the next trial index atomically, compute its params (a pure function
of the space, the seed and the index), call the objective, record the outcome. A background
thread heartbeats the running trial; a trial whose worker stops heartbeating is re-queued by the
next claim and re-run from scratch. When nothing is left to claim but trials of other workers are
still running, a worker waits for them (so that a worker that dies late is still covered), then
exits.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, TextIO

from playbook.tune.trial import Trial, TrialInfeasible, TrialLost

if TYPE_CHECKING:
    from playbook.tune.study import Study

__all__ = ["RunOptions", "worker_id", "run_worker", "run_processes", "Progress"]

_HOST = socket.gethostname()


def worker_id(pid: int | None = None) -> str:
    """``host:pid`` of a worker process (the current one by default)."""
    return f"{_HOST}:{os.getpid() if pid is None else pid}"


@dataclass(frozen=True)
class RunOptions:
    """Options shared by every worker of one ``Study.run`` call.

    Attributes:
        heartbeat_timeout: Seconds without a heartbeat after which a running trial is re-queued.
        deadline: Unix time after which workers claim no new trial (``None``: no limit).
        max_attempts: A trial whose local worker process died this many times is marked failed
            instead of re-queued (protects against objectives that crash the interpreter).
    """

    heartbeat_timeout: float = 60.0
    deadline: float | None = None
    max_attempts: int = 3

    @property
    def heartbeat_interval(self) -> float:
        return min(max(self.heartbeat_timeout / 4.0, 0.02), 10.0)

    @property
    def poll_interval(self) -> float:
        return min(max(self.heartbeat_timeout / 8.0, 0.02), 1.0)


class _Heartbeat(threading.Thread):
    """Daemon thread writing a heartbeat for the worker's current trial every ``interval`` s."""

    def __init__(self, study: Study, worker: str, interval: float) -> None:
        super().__init__(name=f"playbook-heartbeat-{worker}", daemon=True)
        self._study = study
        self._worker = worker
        self._interval = interval
        self._stop_event = threading.Event()
        self.current: int | None = None

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            index = self.current
            if index is None:
                continue
            try:
                self._study._storage.heartbeat(self._study.name, index, self._worker)
            except Exception:  # a missed heartbeat is not fatal; the next one may go through
                pass

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _finish_from_result(trial: Trial, result: Any) -> None:
    """Complete a trial the objective did not finish itself, from its return value."""
    if result is None:
        trial.complete()
    elif isinstance(result, Mapping):
        trial.complete(**result)
    elif isinstance(result, (int, float)) and not isinstance(result, bool):
        trial.complete(**{trial.metric: float(result)})
    else:
        trial.fail(f"Objective returned {result!r}; return None, a number (the metric) or a dict of final values.")


def run_trial(objective: Callable[[Trial], Any], trial: Trial) -> None:
    """Call ``objective(trial)`` and record the outcome.

    Exceptions mark the trial failed with the traceback (playbook: failures are data, the study
    goes on); :class:`TrialInfeasible` marks it infeasible. ``KeyboardInterrupt`` and
    ``SystemExit`` propagate (the caller re-queues the trial).
    """
    try:
        result = objective(trial)
    except TrialLost:
        return
    except TrialInfeasible as exc:
        if trial.status == "running":
            trial.infeasible(str(exc))
    except Exception:
        if trial.status == "running":
            trial.fail(traceback.format_exc())
    else:
        if trial.status == "running":
            _finish_from_result(trial, result)


def run_worker(
    study: Study,
    objective: Callable[[Trial], Any],
    options: RunOptions,
    on_trial_done: Callable[[Trial], None] | None = None,
) -> int:
    """The worker loop: claim, run, record, until the study has nothing left for this worker.

    Returns:
        How many trials this worker ran.
    """
    storage = study._storage
    worker = worker_id()
    heartbeat = _Heartbeat(study, worker, options.heartbeat_interval)
    heartbeat.start()
    done = 0
    try:
        while options.deadline is None or time.time() < options.deadline:
            record = storage.claim_trial(
                study.name, worker, study.num_trials, options.heartbeat_timeout, study.params
            )
            if record is None:
                counts = storage.status_counts(study.name)
                if counts["running"] == 0 and counts["pending"] == 0:
                    break
                time.sleep(options.poll_interval)
                continue
            trial = Trial(
                index=record.index,
                params=record.params,
                study_name=study.name,
                metric=study.metric,
                mode=study.mode,
                storage=storage,
                worker=worker,
            )
            heartbeat.current = record.index
            try:
                run_trial(objective, trial)
            except BaseException:
                storage.requeue(study.name, workers=[worker], reason=f"requeued: worker {worker} was interrupted")
                raise
            finally:
                heartbeat.current = None
            done += 1
            if on_trial_done is not None:
                on_trial_done(trial)
    finally:
        heartbeat.stop()
    return done


def _worker_main(storage_url: str, study_name: str, objective: Callable[[Trial], Any], options: RunOptions) -> None:
    """Entry point of a worker process: opens its own storage connection."""
    from playbook.tune.study import Study

    study = Study.load(study_name, storage_url)
    try:
        run_worker(study, objective, options)
    except KeyboardInterrupt:
        pass
    finally:
        study._storage.close()


class Progress:
    """A one-line progress display on stderr: trials done / total, best so far. No tqdm."""

    def __init__(self, study: Study, enabled: bool = True, stream: TextIO | None = None, min_interval: float = 0.5) -> None:
        self.study = study
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self._last_line = ""
        self._last_time = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self) -> str:
        counts = self.study._storage.status_counts(self.study.name)
        finished = counts["complete"] + counts["infeasible"] + counts["failed"]
        parts = [f"[{self.study.name}] {finished}/{self.study.num_trials} trials"]
        extra = [f"{counts[s]} {s}" for s in ("running", "infeasible", "failed") if counts[s]]
        if extra:
            parts.append(f"({', '.join(extra)})")
        best = self.study.best_trials(1)
        if best and best[0].score is not None:
            parts.append(f"best {self.study.metric}={best[0].score:.6g} (trial {best[0].index})")
        return " ".join(parts)

    def update(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_time < self.min_interval:
            return
        self._last_time = now
        line = self.line()
        if line == self._last_line:
            return
        if self._tty:
            pad = max(len(self._last_line) - len(line), 0)
            self.stream.write("\r" + line + " " * pad)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = line

    def close(self) -> None:
        if not self.enabled:
            return
        self.update(force=True)
        if self._tty and self._last_line:
            self.stream.write("\n")
            self.stream.flush()


def _check_picklable(objective: Callable[..., Any], method: str) -> None:
    try:
        pickle.dumps(objective)
    except Exception as exc:
        raise ValueError(
            f"The objective {objective!r} cannot be pickled ({exc}), which n_workers > 1 with "
            f"start method {method!r} needs: define it at module level (not a lambda, closure or "
            "function of __main__ in an interactive session), use functools.partial for arguments, "
            "or run with n_workers=1."
        ) from None


def run_processes(
    study: Study,
    objective: Callable[[Trial], Any],
    n_workers: int,
    options: RunOptions,
    progress: Progress,
    mp_context: str = "spawn",
) -> None:
    """Run ``n_workers`` local worker processes and supervise them.

    A worker process that dies (killed, segfault) has its running trial re-queued at once (or
    marked failed after ``options.max_attempts`` deaths) and is replaced while work remains.
    """
    if mp_context not in mp.get_all_start_methods():
        raise ValueError(f"Unknown start method: {mp_context!r}. It needs to be one of {mp.get_all_start_methods()}.")
    if mp_context != "fork":
        _check_picklable(objective, mp_context)
    ctx = mp.get_context(mp_context)
    storage = study._storage

    def spawn() -> Any:
        p = ctx.Process(
            target=_worker_main,
            args=(study.storage_url, study.name, objective, options),
            name=f"playbook-worker-{study.name}",
        )
        p.start()
        return p

    procs = [spawn() for _ in range(n_workers)]
    max_respawns = n_workers + options.max_attempts * study.num_trials
    respawns = 0
    try:
        while procs:
            time.sleep(0.05)
            for p in list(procs):
                if p.is_alive():
                    continue
                p.join()
                procs.remove(p)
                pid, exitcode = p.pid, p.exitcode
                p.close()
                if exitcode == 0:
                    continue
                _recover_dead_worker(study, worker_id(pid), exitcode, options)
                remaining = _has_work(study)
                in_time = options.deadline is None or time.time() < options.deadline
                if remaining and in_time and respawns < max_respawns:
                    procs.append(spawn())
                    respawns += 1
            progress.update()
    except BaseException:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
            storage.requeue(study.name, workers=[worker_id(p.pid)], reason="requeued: run interrupted")
        raise


def _has_work(study: Study) -> bool:
    counts = study._storage.status_counts(study.name)
    finished = counts["complete"] + counts["infeasible"] + counts["failed"]
    return counts["pending"] > 0 or finished + counts["running"] < study.num_trials or counts["running"] > 0


def _recover_dead_worker(study: Study, worker: str, exitcode: int | None, options: RunOptions) -> None:
    """Re-queue (or fail, after too many attempts) the trials of a worker process that died."""
    storage = study._storage
    for t in storage.trials(study.name):
        if t.status != "running" or t.worker != worker:
            continue
        reason = f"worker {worker} died (exit code {exitcode}) while running trial {t.index}"
        if t.attempts >= options.max_attempts:
            storage.finish_trial(
                study.name,
                t.index,
                worker,
                "failed",
                score=None,
                best_step=None,
                error=f"{reason}; gave up after {t.attempts} attempts",
                final={},
            )
        else:
            storage.requeue(study.name, workers=[worker], reason=f"requeued: {reason}")

