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

import contextlib
import math
import multiprocessing as mp
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, TextIO

from playbook._process import pid_alive
from playbook.tune.trial import Trial, TrialInfeasible, TrialLost, as_number

if TYPE_CHECKING:
    from playbook.tune.study import Study

__all__ = ["RunOptions", "worker_id", "run_worker", "run_processes", "run_study", "Progress", "Terminated", "error_summary"]

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
    """Complete a trial the objective did not finish itself, from its return value.

    A return value that is not None, a number or a dict of numbers marks the trial failed with
    a message naming the offending key and value (it never escapes to the worker loop, where it
    would look like a dead worker and the trial would be re-run).
    """
    if result is None:
        trial.complete()
        return
    if isinstance(result, Mapping):
        bad = []
        for name, value in result.items():
            try:
                as_number(str(name), value)
            except ValueError as exc:
                bad.append(str(exc))
        if bad:
            trial.fail(
                f"Objective of trial {trial.index} returned a dict with a value that is not a number: "
                + " ".join(bad)
            )
        else:
            trial.complete(**{str(k): v for k, v in result.items()})
        return
    try:
        value = as_number(trial.metric, result)
    except ValueError:
        trial.fail(
            f"Objective of trial {trial.index} returned {result!r} ({type(result).__name__}); return None, "
            f"a number (the metric {trial.metric!r}) or a dict of final numbers."
        )
        return
    trial.complete(**{trial.metric: value})


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


class Terminated(SystemExit):
    """Raised in the main thread when ``Study.run`` receives SIGTERM: handled like Ctrl-C.

    The workers are stopped, their trials re-queued, and (uncaught) the process exits with
    status ``128 + SIGTERM`` (143), without a traceback.
    """

    def __init__(self) -> None:
        super().__init__(128 + int(signal.SIGTERM))


_INTERRUPTS = (KeyboardInterrupt, Terminated)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (once).

    Only installed from the main thread and when SIGTERM has its default disposition (a
    handler the user installed, or SIG_IGN, is left alone); restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _requeue_or_fail(study: Study, worker: str, index: int, attempts: int, reason: str, options: RunOptions) -> None:
    """A trial whose worker died: re-queue it, or mark it failed after ``max_attempts`` deaths."""
    storage = study._storage
    if attempts >= options.max_attempts:
        storage.finish_trial(
            study.name,
            index,
            worker,
            "failed",
            score=None,
            best_step=None,
            error=f"{reason}; gave up after {attempts} attempts",
            final={},
        )
    else:
        storage.requeue(study.name, workers=[worker], reason=f"requeued: {reason}")


# Note the storage writes when it re-queues a running trial whose worker stopped heartbeating
# (the worker died without anyone recording it: kill -9, a segfault in the calling process).
_STALE_NOTE = "stopped heartbeating"


def _died_too_often(record: Any, options: RunOptions) -> bool:
    """A just-claimed trial whose previous ``max_attempts`` claims all ended with the worker
    dying unseen (re-queued as stale): the limit of deaths that no supervisor could count."""
    error = getattr(record, "error", None) or ""
    return record.attempts > options.max_attempts and _STALE_NOTE in error


def run_worker(
    study: Study,
    objective: Callable[[Trial], Any],
    options: RunOptions,
    on_trial_done: Callable[[Trial], None] | None = None,
    *,
    on_wait: Callable[[], None] | None = None,
    keep_going: Callable[[], bool] | None = None,
) -> int:
    """The worker loop: claim, run, record, until the study has nothing left for this worker.

    Args:
        on_trial_done: called after each trial this worker finished.
        on_wait: called while waiting for trials of other workers.
        keep_going: checked before each claim; ``False`` stops the loop (e.g. the parent of a
            worker process is gone).

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
            if keep_going is not None and not keep_going():
                break
            record = storage.claim_trial(
                study.name, worker, study.num_trials, options.heartbeat_timeout, study.params
            )
            if record is None:
                counts = storage.status_counts(study.name)
                if counts["running"] == 0 and counts["pending"] == 0:
                    break
                if on_wait is not None:
                    on_wait()
                time.sleep(options.poll_interval)
                continue
            if _died_too_often(record, options):
                storage.finish_trial(
                    study.name,
                    record.index,
                    worker,
                    "failed",
                    score=None,
                    best_step=None,
                    error=(
                        f"gave up after {record.attempts - 1} attempts: each time its worker died "
                        f"without a trace (last: {record.error})"
                    ),
                    final={},
                )
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
            except _INTERRUPTS as exc:
                what = "SIGTERM" if isinstance(exc, Terminated) else type(exc).__name__
                storage.requeue(study.name, workers=[worker], reason=f"requeued: worker {worker} was interrupted ({what})")
                raise
            except BaseException as exc:
                # Escaped the objective's exception handling (SystemExit from the objective, an
                # error while recording): counts as a death of the worker, like a crash.
                reason = (
                    f"worker {worker} stopped by {type(exc).__name__}: {exc} while running trial "
                    f"{record.index}\n{traceback.format_exc()}"
                )
                _requeue_or_fail(study, worker, record.index, record.attempts, reason, options)
                raise
            finally:
                heartbeat.current = None
            done += 1
            if on_trial_done is not None:
                on_trial_done(trial)
    finally:
        heartbeat.stop()
    return done


def _worker_main(
    storage_url: str,
    study_name: str,
    objective: Callable[[Trial], Any],
    options: RunOptions,
    started: Any = None,
) -> None:
    """Entry point of a worker process: opens its own storage connection.

    ``started`` (an Event) is set once the process has bootstrapped (imported the main module,
    unpickled the objective, opened the study): the supervisor tells bootstrap failures apart
    from deaths while running a trial by it. The worker stops claiming once its parent is gone.
    """
    from playbook.tune.study import Study

    study = Study.load(study_name, storage_url)
    if started is not None:
        started.set()
    parent = mp.parent_process()
    try:
        run_worker(study, objective, options, keep_going=None if parent is None else parent.is_alive)
    except KeyboardInterrupt:
        pass
    finally:
        study._storage.close()


def _worker_state(worker: str | None, live: set[str]) -> str:
    """``"live"`` (a worker of this run), ``"dead"`` (a process of this host that is gone) or
    ``"other"`` (another process or host: alive as far as we can tell)."""
    if worker is None:
        return "dead"
    if worker in live:
        return "live"
    host, _, pid = worker.rpartition(":")
    if host == _HOST and pid.isdigit() and not pid_alive(int(pid)):
        return "dead"
    return "other"


def error_summary(error: str | None, width: int = 200) -> str:
    """One line from a stored error: the last line of a traceback (``Type: message``), else
    the first line of the text."""
    if not error:
        return ""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[-1] if "Traceback (most recent call last)" in error else lines[0]
    return line if len(line) <= width else line[: width - 3] + "..."


class Progress:
    """Progress of a run on stderr.

    On a terminal, a tqdm progress bar (trials done / total, rate, ETA, best so far); otherwise
    (logs, CI) one plain line per change::

        [wd-vs-optimizer] 12/32 trials (2 running, 1 failed) best val_error=0.231 (trial 7)

    ``running`` counts only trials of this run's live workers. When trials of other processes
    are running, the line says so and why the run waits for them: a dead local process's trial
    is re-queued once it has been silent for ``heartbeat_timeout`` seconds. Each trial that
    fails during the run is announced once with its index, exception and message, and the
    command that prints its traceback.
    """

    def __init__(self, study: Study, enabled: bool = True, stream: TextIO | None = None, min_interval: float = 0.5) -> None:
        self.study = study
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self.live_workers: set[str] = set()
        self.heartbeat_timeout: float | None = None
        self._last_line = ""
        self._last_time = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._since = time.time()
        self._announced: set[int] = set()
        self._bar: Any = None
        self._closed = False

    # -- state ------------------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        trials = self.study._storage.trials(self.study.name)
        counts = dict.fromkeys(("pending", "complete", "infeasible", "failed"), 0)
        running, waiting = 0, {"dead": [], "other": []}
        for t in trials:
            if t.status == "running":
                state = _worker_state(t.worker, self.live_workers)
                if state == "live":
                    running += 1
                else:
                    waiting[state].append(t.index)
            elif t.status in counts:
                counts[t.status] += 1
        best = None
        sign = 1.0 if self.study.mode == "min" else -1.0
        for t in trials:
            if t.status == "complete" and t.score is not None and math.isfinite(t.score):
                if best is None or (sign * t.score, t.index) < (sign * best.score, best.index):
                    best = t
        return {"trials": trials, "counts": counts, "running": running, "waiting": waiting, "best": best}

    def _fields(self, snap: dict[str, Any]) -> tuple[int, str]:
        counts = snap["counts"]
        finished = counts["complete"] + counts["infeasible"] + counts["failed"]
        extra = [f"{snap['running']} running"] if snap["running"] else []
        extra += [f"{counts[s]} {s}" for s in ("infeasible", "failed") if counts[s]]
        text = f"({', '.join(extra)})" if extra else ""
        best = snap["best"]
        if best is not None:
            text += f"{' ' if text else ''}best {self.study.metric}={best.score:.6g} (trial {best.index})"
        waits = []
        if snap["waiting"]["dead"]:
            idx = ", ".join(map(str, snap["waiting"]["dead"]))
            timeout = "" if self.heartbeat_timeout is None else f" {self.heartbeat_timeout:g} s"
            waits.append(f"waiting for trial(s) {idx} of dead workers: re-queued once silent for{timeout} (heartbeat_timeout)")
        if snap["waiting"]["other"]:
            idx = ", ".join(map(str, snap["waiting"]["other"]))
            waits.append(f"waiting for trial(s) {idx} running in other processes")
        if waits:
            text += f"{'; ' if text else ''}{'; '.join(waits)}"
        return finished, text

    def line(self) -> str:
        finished, text = self._fields(self._snapshot())
        head = f"[{self.study.name}] {finished}/{self.study.num_trials} trials"
        return f"{head} {text}" if text else head

    # -- output -----------------------------------------------------------------------------------

    def _failure_lines(self, trials: list[Any]) -> list[str]:
        lines = []
        for t in trials:
            if t.status != "failed" or t.index in self._announced:
                continue
            if t.finished is None or t.finished < self._since:
                continue
            self._announced.add(t.index)
            lines.append(
                f"[{self.study.name}] trial {t.index} failed: {error_summary(t.error)} "
                f"(traceback: playbook study show {self.study.name} --storage {self.study.storage_url} --trial {t.index})"
            )
        return lines

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _make_bar(self, finished: int) -> Any:
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is a dependency; a broken install falls back to plain lines
            self._tty = False
            return None
        return tqdm(
            total=self.study.num_trials,
            initial=finished,
            desc=self.study.name,
            unit="trial",
            file=self.stream,
            dynamic_ncols=True,
            leave=True,
        )

    def update(self, force: bool = False) -> None:
        if not self.enabled or self._closed:
            return
        now = time.monotonic()
        if not force and now - self._last_time < self.min_interval:
            return
        self._last_time = now
        snap = self._snapshot()
        for text in self._failure_lines(snap["trials"]):
            self._write(text)
        finished, text = self._fields(snap)
        if self._tty:
            if self._bar is None:
                self._bar = self._make_bar(finished)
            if self._bar is not None:
                self._bar.n = finished
                self._bar.set_postfix_str(text, refresh=False)
                self._bar.refresh()
                return
        line = f"[{self.study.name}] {finished}/{self.study.num_trials} trials" + (f" {text}" if text else "")
        if line == self._last_line:
            return
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = line

    def close(self) -> None:
        if not self.enabled or self._closed:
            return
        self.update(force=True)
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None


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


_GUARD_FIX = (
    'put the code that creates and runs the study under `if __name__ == "__main__":` (keep the '
    "objective at module level, above the guard), or run with n_workers=1"
)


def _check_not_bootstrapping() -> None:
    """Inside a worker process that is still importing the main script (a script without the
    ``__main__`` guard re-runs ``study.run`` there): refuse with the fix, before multiprocessing
    prints its own long explanation."""
    if mp.parent_process() is not None and getattr(mp.current_process(), "_inheriting", False):
        raise RuntimeError(
            "Study.run(n_workers > 1) was called while a worker process was importing the main "
            f"script (the script has no `if __name__ == \"__main__\":` guard): {_GUARD_FIX}."
        )


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

    Raises:
        RuntimeError: a worker process died before it started (while importing the main module
            or unpickling the objective, e.g. a script without the ``__main__`` guard): every
            worker is stopped and the error names the fix. Also when workers keep dying and
            trials are left undone.
    """
    if mp_context not in mp.get_all_start_methods():
        raise ValueError(f"Unknown start method: {mp_context!r}. It needs to be one of {mp.get_all_start_methods()}.")
    _check_not_bootstrapping()
    if mp_context != "fork":
        _check_picklable(objective, mp_context)
    ctx = mp.get_context(mp_context)
    storage = study._storage
    started: dict[Any, Any] = {}

    def spawn() -> Any:
        event = ctx.Event()
        p = ctx.Process(
            target=_worker_main,
            args=(study.storage_url, study.name, objective, options, event),
            name=f"playbook-worker-{study.name}",
        )
        p.start()
        started[p] = event
        progress.live_workers.add(worker_id(p.pid))
        return p

    procs: list[Any] = []
    max_respawns = n_workers + options.max_attempts * study.num_trials
    respawns = 0
    try:
        procs.extend(spawn() for _ in range(n_workers))
        while procs:
            time.sleep(0.05)
            for p in list(procs):
                if p.is_alive():
                    continue
                p.join()
                procs.remove(p)
                pid, exitcode = p.pid, p.exitcode
                booted = started.pop(p).is_set()
                progress.live_workers.discard(worker_id(pid))
                p.close()
                if exitcode == 0:
                    continue
                if not booted:
                    raise RuntimeError(
                        f"A worker process of study {study.name!r} exited with code {exitcode} before it "
                        f"could start (start method {mp_context!r}: it re-imports the main script and "
                        "unpickles the objective; its traceback is above). If the script has no "
                        f'`if __name__ == "__main__":` guard: {_GUARD_FIX}. No trial was run by it; '
                        "the other workers were stopped."
                    )
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
            progress.live_workers.discard(worker_id(p.pid))
        raise
    counts = storage.status_counts(study.name)
    finished = counts["complete"] + counts["infeasible"] + counts["failed"]
    in_time = options.deadline is None or time.time() < options.deadline
    if in_time and finished < study.num_trials and counts["running"] == 0:
        raise RuntimeError(
            f"Worker processes of study {study.name!r} kept dying ({respawns} replaced); "
            f"{study.num_trials - finished} of {study.num_trials} trials are not finished. See the "
            "workers' errors above; the trials stay queued for the next run."
        )


def _has_work(study: Study) -> bool:
    counts = study._storage.status_counts(study.name)
    finished = counts["complete"] + counts["infeasible"] + counts["failed"]
    return counts["pending"] > 0 or finished + counts["running"] < study.num_trials or counts["running"] > 0


def _recover_dead_worker(study: Study, worker: str, exitcode: int | None, options: RunOptions) -> None:
    """Re-queue (or fail, after too many attempts) the trials of a worker process that died."""
    for t in study._storage.trials(study.name):
        if t.status != "running" or t.worker != worker:
            continue
        reason = f"worker {worker} died (exit code {exitcode}) while running trial {t.index}"
        _requeue_or_fail(study, worker, t.index, t.attempts, reason, options)


def run_study(
    study: Study,
    objective: Callable[[Trial], Any],
    n_workers: int,
    options: RunOptions,
    progress: Progress,
    mp_context: str = "spawn",
) -> None:
    """Run the study in this process (``n_workers=1``) or in worker processes, with SIGTERM
    handled like Ctrl-C: workers stopped, their trials re-queued, the exception re-raised
    (:class:`Terminated` exits with status 143)."""
    progress.heartbeat_timeout = options.heartbeat_timeout
    with sigterm_as_interrupt():
        try:
            if n_workers == 1:
                progress.live_workers.add(worker_id())
                run_worker(
                    study, objective, options, on_trial_done=lambda _t: progress.update(), on_wait=progress.update
                )
            else:
                run_processes(study, objective, n_workers, options, progress, mp_context=mp_context)
        except _INTERRUPTS as exc:
            progress.close()
            what = "SIGTERM" if isinstance(exc, Terminated) else "interrupt"
            print(
                f"[{study.name}] stopped by {what}: workers stopped, their running trials re-queued; "
                "run again to resume.",
                file=sys.stderr,
                flush=True,
            )
            raise
        finally:
            progress.close()
