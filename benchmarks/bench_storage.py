"""Benchmark of study storage: SQLite versus PostgreSQL, in one run (playbook FAQ 7.5: quasi-random
search is embarrassingly parallel, so the storage is the only shared part).

Measures, for each backend, the three storage calls a worker makes per trial (``claim_trial``,
``report``, ``finish_trial``; trials of 0 s, so this is pure storage cost):

1. Overhead per trial: one worker in this process, ms per trial (claim + report + complete).
2. Throughput: trials/s (= claims/s) with 1, 4 and 16 concurrent worker processes on one study,
   from a common start signal until the study is finished; every run checks that every trial was
   completed exactly once.

SQLite and PostgreSQL rows are interleaved (SQLite, PostgreSQL, SQLite, ...) so that load from
other processes on the machine affects both alike. PostgreSQL is a private server started with
``pgserver`` (installed by ``pip install -e .[test]``) unless ``--postgres URL`` is given.

Targets (printed PASS/FAIL, never asserted in tests): PostgreSQL with 16 workers >= 200 trial
claims/s; overhead per trial < 10 ms for both backends.

Run::

    python benchmarks/bench_storage.py [--trials 400] [--out bench_results/storage.json]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from _common import env_info, format_table, write_json  # noqa: E402

from playbook.tune.storage import close_all, open_storage  # noqa: E402

WORKERS = (1, 4, 16)
TARGET_PG_CLAIMS_PER_S = 200.0
TARGET_MS_PER_TRIAL = 10.0


def _params(i: int) -> dict[str, Any]:
    return {"lr": 10.0 ** (-4 + 3 * ((i * 0.618033988749895) % 1.0))}


def _one_trial(store: Any, study: str, worker: str, num_trials: int) -> bool:
    t = store.claim_trial(study, worker, num_trials, 60.0, _params)
    if t is None:
        return False
    store.report(study, t.index, worker, 1, {"loss": 0.5}, 0.5, 1)
    store.finish_trial(study, t.index, worker, "complete", score=0.5, best_step=1, error=None, final={})
    return True


def _check(store: Any, study: str, n: int) -> None:
    trials = store.trials(study)
    if [t.index for t in trials] != list(range(n)) or any(t.status != "complete" or t.attempts != 1 for t in trials):
        raise RuntimeError(f"{store.display_url} study {study}: trials were lost or run twice")


def overhead(url: str, study: str, n: int) -> float:
    """ms per trial of claim + report + complete, one worker in this process."""
    store = open_storage(url)
    store.create_study(study, {"num_trials": n}, seed=0)
    start = time.perf_counter()
    done = 0
    while _one_trial(store, study, "bench:0", n):
        done += 1
    elapsed = time.perf_counter() - start
    _check(store, study, n)
    return 1000.0 * elapsed / done


def _worker(url: str, study: str, n: int, k: int, ready: Any, go: Any) -> None:
    store = open_storage(url)
    store.get_study(study)  # connect before the clock starts
    ready.release()
    go.wait()
    while _one_trial(store, study, f"bench:{k}", n):
        pass
    store.close()


def throughput(url: str, study: str, n: int, workers: int) -> float:
    """trials/s with ``workers`` processes from a common start until the study is finished."""
    store = open_storage(url)
    store.create_study(study, {"num_trials": n}, seed=0)
    ctx = mp.get_context("fork")
    ready, go = ctx.Semaphore(0), ctx.Event()
    close_all()  # children must not share this process's connection
    procs = [ctx.Process(target=_worker, args=(url, study, n, k, ready, go)) for k in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    start = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - start
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"a benchmark worker failed: exit codes {[p.exitcode for p in procs]}")
    _check(open_storage(url), study, n)
    return n / elapsed


def _start_postgres(root: str) -> tuple[Any, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            server = pgserver.get_server(Path(root) / "pgdata", cleanup_mode="delete")
    except ImportError:
        raise SystemExit("bench_storage needs pgserver (pip install -e .[test]) or --postgres URL") from None
    return server, server.get_uri()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=400, help="trials per measurement (default 400)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each row (median; default 3)")
    parser.add_argument("--postgres", default=None, help="PostgreSQL URL (default: a private pgserver)")
    parser.add_argument("--out", default="bench_results/storage.json")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        server = None
        pg_url = args.postgres
        if pg_url is None:
            server, pg_url = _start_postgres(tmp)
        urls = {"sqlite": f"sqlite:///{tmp}/bench.db", "postgresql": pg_url}
        run_id = f"{int(time.time())}"
        samples: dict[tuple[str, str], list[float]] = {}
        for r in range(args.repeats):
            for what in ["overhead", *[f"w{w}" for w in WORKERS]]:
                for backend, url in urls.items():  # interleaved: sqlite, postgresql, sqlite, ...
                    study = f"b{run_id}-{what}-{r}"
                    if what == "overhead":
                        value = overhead(url, study, args.trials)
                    else:
                        value = throughput(url, study, args.trials, int(what[1:]))
                    samples.setdefault((backend, what), []).append(value)
                    open_storage(url).delete_study(study)
        close_all()
        if server is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server.cleanup()

    rows = []
    for backend in urls:
        row: dict[str, Any] = {"backend": backend,
                               "ms_per_trial": statistics.median(samples[(backend, "overhead")])}
        for w in WORKERS:
            row[f"trials_per_s_{w}"] = statistics.median(samples[(backend, f"w{w}")])
        rows.append(row)
    ratio = {f"pg_over_sqlite_{w}": rows[1][f"trials_per_s_{w}"] / rows[0][f"trials_per_s_{w}"] for w in WORKERS}
    cols = [("backend", "backend"), ("ms_per_trial", "ms/trial (1 worker, in-process)", lambda v: f"{v:.2f}")]
    cols += [(f"trials_per_s_{w}", f"trials/s {w}w", lambda v: f"{v:.0f}") for w in WORKERS]
    print(format_table(rows, cols, title=f"Study storage: claim + report + complete, {args.trials} trials of 0 s, "
                                         f"median of {args.repeats}"))
    print("PostgreSQL / SQLite throughput: " + ", ".join(f"{w} workers {ratio[f'pg_over_sqlite_{w}']:.2f}x"
                                                         for w in WORKERS))
    pg = rows[1]
    targets = {
        "pg_16_workers_claims_per_s_ge_200": pg["trials_per_s_16"] >= TARGET_PG_CLAIMS_PER_S,
        "sqlite_ms_per_trial_lt_10": rows[0]["ms_per_trial"] < TARGET_MS_PER_TRIAL,
        "pg_ms_per_trial_lt_10": pg["ms_per_trial"] < TARGET_MS_PER_TRIAL,
    }
    for name, ok in targets.items():
        print(f"  {name}: {'PASS' if ok else 'FAIL'}")
    elapsed = time.perf_counter() - t0
    print(f"(total {elapsed:.1f} s)")
    payload = {
        "rows": rows,
        "ratios": ratio,
        "samples": {f"{b}/{w}": v for (b, w), v in samples.items()},
        "targets": targets,
        "trials": args.trials,
        "repeats": args.repeats,
        "elapsed_s": elapsed,
        "env": env_info(),
    }
    print(f"wrote {write_json(args.out, payload)}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
