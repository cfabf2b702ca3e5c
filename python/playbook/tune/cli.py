"""The ``playbook`` command line: experiment tracking for tuning studies (playbook 6.3).

Commands::

    playbook study list   [--storage URL]                      # the 6.3 tracking table
    playbook study show   NAME [--storage URL] [--trial I]     # config, warnings, trials (one trial in full)
    playbook study plot   NAME [--storage URL] --out DIR       # PNGs + self-contained HTML
    playbook study export NAME [--storage URL] --format csv|json [--output FILE]
    playbook study create NAME --space FILE.json|.yaml [--num-trials N] [--seed S] [--metric M] [--mode min|max]
    playbook study work   NAME --objective module:function [--workers N] [--timeout S]
    playbook study requeue NAME (--stale-after S | --all-running)
    playbook study delete NAME --yes

``--storage`` defaults to the environment variable ``PLAYBOOK_STORAGE``, else
``sqlite:///studies.db``; ``postgresql://user:password@host:port/db`` shares a study between
machines. An unknown study name exits with status 2 and lists the known names; a storage that
cannot be used (bad URL, unreachable server, wrong credentials, corrupt or locked file) exits
with status 1 and one line naming it (password masked) and the cause, no traceback.
``study work`` is what each node of a cluster runs (a Slurm array task, a Kubernetes Job, an ssh
loop): it exits 0 when the study has nothing left to run or ``--timeout`` passed, non-zero when
the run failed. Also runnable as ``python -m playbook.tune.cli``.

``study list`` prints the columns the playbook recommends for tracking (6.3 "Setting up
experiment tracking"): study name, config summary, notes, number of trials (done/total), best
value of the study metric, and a reproduction command. The reproduction command is the
``command`` entry of the study config when the user recorded one (e.g. the training launch
line); otherwise ``playbook study show NAME --storage URL``, which prints the search space and
seed that, with the objective, determine every trial (quasi-random search is non-adaptive,
FAQ 7.5).

Example:
    $ playbook study list --storage sqlite:///studies.db
    $ playbook study export resnet-lr --format csv --output trials.csv
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

__all__ = ["main", "build_parser", "trials_to_rows", "study_to_json", "DEFAULT_STORAGE"]

DEFAULT_STORAGE = "sqlite:///studies.db"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE, as `head` leaves other tools
_BASE_COLUMNS = ("index", "status", "score", "best_step", "worker", "error",
                 "created", "started", "finished")


class CliError(Exception):
    """An error reported to the user as ``playbook: error: ...`` with an exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def default_storage() -> str:
    """``$PLAYBOOK_STORAGE`` or ``sqlite:///studies.db``."""
    return os.environ.get("PLAYBOOK_STORAGE") or DEFAULT_STORAGE


def _sqlite_path(url: str) -> Optional[Path]:
    """File path of a ``sqlite:///`` URL (``None`` for other URLs and in-memory databases)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return None
    rest = url[len(prefix):]
    if rest in ("", ":memory:"):
        return None
    return Path(rest)


def _list_studies(storage: str) -> list:
    """Studies in ``storage``; a missing SQLite file holds none (and is not created)."""
    path = _sqlite_path(storage)
    if path is not None and not path.exists():
        return []
    from playbook import tune

    return list(tune.list_studies(storage))


def _load(name: str, storage: str) -> Any:
    studies = _list_studies(storage)
    for study in studies:
        if study.name == name:
            return study
    known = ", ".join(sorted(s.name for s in studies)) or "(none)"
    from playbook.tune.storage import mask_url

    raise CliError(f"unknown study {name!r} in {mask_url(storage)}; known studies: {known}", EXIT_USAGE)


# ----------------------------------------------------------------------------------------------
# formatting helpers (pure)
# ----------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text table with left-aligned columns separated by two spaces."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def output_width(out: TextIO) -> Optional[int]:
    """Columns available for a table: ``$COLUMNS`` if set, the terminal's width when ``out`` is
    a terminal, else ``None`` (no limit: piped output keeps whole cells)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    isatty = getattr(out, "isatty", None)
    if isatty is not None and isatty():
        import shutil

        return shutil.get_terminal_size().columns
    return None


def fit_widths(widths: Sequence[int], limit: Optional[int], shrinkable: Sequence[int],
               minimum: int = 10, sep: int = 2) -> list[int]:
    """Column widths that fit ``limit`` characters (separators included) by narrowing the
    widest of the ``shrinkable`` columns, one character at a time, down to ``minimum``."""
    out = list(widths)
    if limit is None:
        return out
    while sum(out) + sep * (len(out) - 1) > limit:
        candidates = [i for i in shrinkable if out[i] > minimum]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: out[i])
        out[widest] -= 1
    return out


def format_fitted_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                        limit: Optional[int], shrinkable: Sequence[int]) -> str:
    """:func:`format_table` with the ``shrinkable`` columns cut (``...``) to fit ``limit``."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    fitted = fit_widths(widths, limit, shrinkable)
    cut = [[_truncate(c, w) if w < widths[i] else c for i, (c, w) in enumerate(zip(row, fitted))]
           for row in cells]
    return format_table([_truncate(h, w) for h, w in zip(headers, fitted)], cut)


def _truncate(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


_SUMMARY_SKIP = ("space", "notes", "version", "seed", "command", "num_trials")


def config_summary(study: Any, width: int = 60) -> str:
    """Short config description: the varied parameters, the other config entries and the seed
    (the stored space, notes and version are left out: ``study show`` prints them)."""
    config = getattr(study, "config", None) or {}
    hps = [h for h in study.space.hyperparameters() if h.varied]
    # keys, not names: a branch's "lr" is "optimizer=adam/lr" (several branches may have an lr)
    items = [f"{len(hps)} params: " + ",".join(h.key for h in hps)]
    items += [f"{k}={v}" for k, v in config.items() if k not in _SUMMARY_SKIP]
    items.append(f"seed={study.seed}")
    return _truncate("; ".join(items), width)


def reproduction_command(study: Any, storage: str) -> str:
    """``config["command"]`` when recorded, else the ``study show`` command (see module doc)."""
    config = getattr(study, "config", None) or {}
    if config.get("command"):
        return str(config["command"])
    from playbook.tune.storage import mask_url

    return f"playbook study show {study.name} --storage {mask_url(storage)}"


def trial_fields(trial: Any) -> list[str]:
    """Scalar fields of a trial record: the contract's columns, plus any extra dataclass field
    (e.g. ``attempts``), in declaration order; ``params`` and ``final`` excluded."""
    if dataclasses.is_dataclass(trial):
        names = [f.name for f in dataclasses.fields(trial) if f.name not in ("params", "final")]
        return names + [c for c in _BASE_COLUMNS if c not in names]
    return list(_BASE_COLUMNS)


def trials_to_rows(trials: Sequence[Any], param_order: Sequence[str] = ()) -> tuple[list[str], list[list[Any]]]:
    """Flat rows of trials: scalar fields, ``param.<name>`` and ``final.<name>`` columns.

    Params named in ``param_order`` (e.g. the search space's order) come first, in that order.
    """
    base = trial_fields(trials[0]) if trials else list(_BASE_COLUMNS)
    params: list[str] = [n for n in dict.fromkeys(param_order) if any(n in t.params for t in trials)]
    finals: list[str] = []
    for t in trials:
        params.extend(n for n in t.params if n not in params)
        finals.extend(n for n in (t.final or {}) if n not in finals)
    headers = base + [f"param.{n}" for n in params] + [f"final.{n}" for n in finals]
    rows = []
    for t in trials:
        row = [getattr(t, c, None) for c in base]
        row += [t.params.get(n) for n in params]
        row += [(t.final or {}).get(n) for n in finals]
        rows.append(row)
    return headers, rows


def _jsonable(value: Any) -> Any:
    """Plain JSON value (numpy scalars to Python, non-finite floats to strings)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def trial_to_dict(trial: Any) -> dict[str, Any]:
    """A ``TrialRecord`` as a JSON-ready dict (same field names)."""
    out = {c: getattr(trial, c, None) for c in trial_fields(trial)}
    out["params"] = dict(trial.params)
    out["final"] = dict(trial.final or {})
    return _jsonable(out)


def study_to_json(study: Any, *, metrics: bool = False) -> dict[str, Any]:
    """The study (metadata and trials, optionally per-step metrics) as a JSON-ready dict."""
    trials = study.trials()
    out = {
        "name": study.name,
        "metric": study.metric,
        "mode": study.mode,
        "seed": study.seed,
        "num_trials": study.num_trials,
        "notes": study.notes,
        "config": study.config,
        "trials": [trial_to_dict(t) for t in trials],
    }
    if metrics:
        for entry, t in zip(out["trials"], trials):
            entry["metrics"] = [{"step": s, **v} for s, v in study.metrics(t.index)]
    return _jsonable(out)


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    studies = _list_studies(args.storage)
    if not studies:
        print(f"No studies in {args.storage}.", file=out)
        return EXIT_OK
    rows = []
    for s in sorted(studies, key=lambda s: s.name):
        trials = s.trials()
        done = sum(t.status in ("complete", "infeasible", "failed") for t in trials)
        best = s.best_trials(1)
        rows.append([
            s.name,
            config_summary(s, width=200),
            _truncate(s.notes or "", 40),
            f"{done}/{s.num_trials}",
            "" if not best else f"{float(best[0].score):.6g} ({s.metric}, {s.mode})",
            reproduction_command(s, args.storage),
        ])
    headers = ["name", "config", "notes", "trials", "best", "reproduce"]
    print(format_fitted_table(headers, rows, output_width(out), shrinkable=(1, 2, 4, 5)), file=out)
    return EXIT_OK


def _duration(trial: Any) -> Optional[float]:
    started, finished = getattr(trial, "started", None), getattr(trial, "finished", None)
    return None if started is None or finished is None else round(float(finished) - float(started), 3)


def _show_trial(study: Any, index: int, out: TextIO) -> int:
    """``study show NAME --trial I``: every stored field of one trial, the error in full."""
    from playbook.tune.runner import error_summary

    try:
        trial = study.trial(index)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    print(f"Trial {trial.index} of study {study.name}: {trial.status}", file=out)
    for name in trial_fields(trial):
        if name in ("index", "status", "error"):
            continue
        print(f"  {name}: {_fmt(getattr(trial, name, None))}", file=out)
    print(f"  duration: {_fmt(_duration(trial))} s", file=out)
    print(f"  params: {json.dumps(_jsonable(dict(trial.params)), sort_keys=False)}", file=out)
    if trial.final:
        print(f"  final: {json.dumps(_jsonable(dict(trial.final)))}", file=out)
    if trial.error:
        label = {"failed": "Error", "infeasible": "Infeasible because"}.get(trial.status, "Last note")
        print(f"{label}: {error_summary(trial.error)}", file=out)
        print(trial.error.rstrip(), file=out)
    return EXIT_OK


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    study = _load(args.name, args.storage)
    if args.trial is not None:
        return _show_trial(study, args.trial, out)
    analysis = study.analysis()
    print(f"Study {study.name}  (metric {study.metric}, mode {study.mode}, seed {study.seed})",
          file=out)
    if study.notes:
        print(f"Notes: {study.notes}", file=out)
    config = {k: v for k, v in (study.config or {}).items() if k != "space"}
    print(f"Config: {json.dumps(_jsonable(config), sort_keys=True)}", file=out)
    print("Search space:", file=out)
    for hp in study.space.hyperparameters():
        cond = "" if hp.condition is None else f"  if {hp.condition[0]}={hp.condition[1]}"
        print(f"  {hp.key}: {hp.role} {hp.spec!r}{cond}", file=out)
    counts = analysis.status_counts()
    print("Status: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f"; infeasible fraction {analysis.infeasible_fraction:.1%}", file=out)
    for w in analysis.warnings():
        print(f"WARNING: {w}", file=out)
    from playbook.tune.runner import error_summary

    trials = study.trials()
    headers, rows = trials_to_rows(trials, [hp.name for hp in study.space.hyperparameters()])
    keep = [i for i, h in enumerate(headers)
            if h not in ("worker", "error", "created", "started", "finished")]
    headers = [headers[i] for i in keep] + ["duration", "error"]
    rows = [[r[i] for i in keep] + [_duration(t), error_summary(t.error, width=80)]
            for r, t in zip(rows, trials)]
    print(format_fitted_table(headers, rows, output_width(out), shrinkable=(len(headers) - 1,)),
          file=out)
    if any(t.status == "failed" for t in trials):
        print(f"Tracebacks: playbook study show {study.name} --storage {args.storage} --trial INDEX",
              file=out)
    return EXIT_OK


def cmd_plot(args: argparse.Namespace, out: TextIO) -> int:
    study = _load(args.name, args.storage)
    path = study.analysis().report(args.out)
    print(f"Wrote {path}", file=out)
    return EXIT_OK


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    study = _load(args.name, args.storage)
    if args.format == "json":
        text = json.dumps(study_to_json(study, metrics=args.metrics), indent=2) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        headers, rows = trials_to_rows(study.trials())
        writer.writerow(headers)
        for row in rows:
            writer.writerow(["" if v is None else _jsonable(v) for v in row])
        text = buf.getvalue()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        out.write(text)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# commands for running studies (clusters)
# ----------------------------------------------------------------------------------------------


def _read_space(path: str) -> dict[str, Any]:
    """The search space dict (``SearchSpace.to_dict()`` format) in a .json or .yaml file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read --space {path!r}: {exc.strerror or exc}", EXIT_USAGE) from None
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise CliError(f"--space {path!r} is YAML, which needs PyYAML: pip install pyyaml "
                           "(or use a .json file)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CliError(f"--space {path!r} is not valid YAML: {exc}", EXIT_USAGE) from None
    elif p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(f"--space {path!r} is not valid JSON: {exc}", EXIT_USAGE) from None
    else:
        raise CliError(f"--space {path!r}: unknown file type {p.suffix!r}; use .json, .yaml or .yml",
                       EXIT_USAGE)
    if not isinstance(data, dict):
        raise CliError(f"--space {path!r} must hold a mapping (SearchSpace.to_dict() format), "
                       f"got {type(data).__name__}", EXIT_USAGE)
    return data


def cmd_create(args: argparse.Namespace, out: TextIO) -> int:
    from playbook import tune
    from playbook.tune.storage import open_storage

    data = _read_space(args.space)
    try:
        space = tune.SearchSpace.from_dict(data)
    except ValueError as exc:
        raise CliError(f"invalid search space in {args.space}: {exc}", EXIT_USAGE) from None
    store = open_storage(args.storage)
    before = store.get_study(args.name)
    study = tune.Study.create(args.name, space, store, seed=args.seed, num_trials=args.num_trials,
                              metric=args.metric, mode=args.mode, notes=args.notes)
    if before is None:
        what = "Created"
    elif int(before.config["num_trials"]) < study.num_trials:
        what = f"Grew (from {before.config['num_trials']} trials)"
    else:
        what = "Exists (same config)"
    print(f"{what}: study {study.name} in {store.display_url}: {study.num_trials} trials, "
          f"seed {study.seed}, {study.mode} {study.metric}", file=out)
    return EXIT_OK


def _import_objective(spec: str) -> Any:
    """``module:function`` (module importable from the current directory or ``PYTHONPATH``)."""
    import importlib

    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise CliError(f"invalid --objective {spec!r}: use module:function, e.g. train:objective",
                       EXIT_USAGE)
    if module_name.endswith(".py"):
        module_name = module_name[:-3].replace(os.sep, ".")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CliError(f"cannot import module {module_name!r} of --objective {spec!r}: {exc}; "
                           "run from the directory that contains it or add that to PYTHONPATH",
                           EXIT_USAGE) from None
        raise
    func = module
    for part in func_name.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise CliError(f"module {module_name!r} has no {func_name!r} (--objective {spec!r})",
                           EXIT_USAGE)
    if not callable(func):
        raise CliError(f"--objective {spec!r} is not callable: {func!r}", EXIT_USAGE)
    return func


def cmd_work(args: argparse.Namespace, out: TextIO) -> int:
    from playbook import tune

    objective = _import_objective(args.objective)
    study = tune.Study.load(args.name, args.storage)
    study.run(objective, n_workers=args.workers, timeout=args.timeout,
              progress=not args.quiet, heartbeat_timeout=args.heartbeat_timeout)
    counts = study.status_counts()
    print(f"study {study.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
          + f" of {study.num_trials}", file=out)
    return EXIT_OK


def cmd_requeue(args: argparse.Namespace, out: TextIO) -> int:
    from playbook import tune

    study = tune.Study.load(args.name, args.storage)
    older = 0.0 if args.all_running else args.stale_after
    indices = study.requeue_stale(older_than=older)
    print(f"study {study.name}: re-queued {len(indices)} running trial(s)"
          + (f": {indices}" if indices else ""), file=out)
    return EXIT_OK


def cmd_delete(args: argparse.Namespace, out: TextIO) -> int:
    from playbook import tune

    study = tune.Study.load(args.name, args.storage)
    if not args.yes:
        n = len(study.trials())
        raise CliError(f"not deleting study {study.name!r} ({n} stored trials) without --yes",
                       EXIT_USAGE)
    study.delete()
    print(f"Deleted study {study.name} from {study._storage.display_url}", file=out)
    return EXIT_OK


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid number of seconds (needs > 0): {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid positive int: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``playbook`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="playbook", description="Deep Learning Tuning Playbook tools.")
    top = parser.add_subparsers(dest="group", metavar="COMMAND")
    top.required = True
    study = top.add_parser("study", help="inspect tuning studies (playbook 6.3)")
    sub = study.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True

    def add(name: str, help_: str, func: Any, named: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        if named:
            p.add_argument("name", help="study name")
        p.add_argument("--storage", default=default_storage(),
                       help="storage URL (default: $PLAYBOOK_STORAGE or sqlite:///studies.db)")
        p.set_defaults(func=func)
        return p

    add("list", "tracking table of all studies", cmd_list, named=False)
    p = add("show", "config, warnings and trials of a study", cmd_show)
    p.add_argument("--trial", type=int, metavar="INDEX",
                   help="print every field of one trial, its traceback or reason in full")
    p = add("plot", "write PNG plots and an HTML report", cmd_plot)
    p.add_argument("--out", required=True, help="output directory")
    p = add("export", "export trials as CSV or JSON", cmd_export)
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--output", "-o", help="output file (default: stdout)")
    p.add_argument("--metrics", action="store_true",
                   help="JSON only: include per-step metrics of every trial")
    p = add("create", "create a study (or grow / reopen one with the same config)", cmd_create)
    p.add_argument("--space", required=True, help="search space file (.json, .yaml): SearchSpace.to_dict() format")
    p.add_argument("--num-trials", type=_positive_int, default=32, help="trial budget (default 32)")
    p.add_argument("--seed", type=int, default=None, help="Halton seed (default: drawn when creating)")
    p.add_argument("--metric", default="val_error", help="metric to optimize (default val_error)")
    p.add_argument("--mode", choices=("min", "max"), default="min")
    p.add_argument("--notes", default="", help="free text stored with the study")
    p = add("work", "run trials of a study here (what each node of a cluster runs)", cmd_work)
    p.add_argument("--objective", required=True, help="module:function, importable from here")
    p.add_argument("--workers", type=_positive_int, default=1, help="local worker processes (default 1)")
    p.add_argument("--timeout", type=_positive_seconds, default=None,
                   help="seconds after which no new trial starts")
    p.add_argument("--heartbeat-timeout", type=_positive_seconds, default=60.0,
                   help="seconds without heartbeat before a running trial is re-queued (default 60)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p = add("requeue", "put running trials back in the queue (after killing their workers)", cmd_requeue)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--stale-after", type=_seconds, metavar="S",
                   help="only trials without a heartbeat for S seconds")
    g.add_argument("--all-running", action="store_true",
                   help="every running trial (only when none of its workers is alive)")
    p = add("delete", "delete a study with its trials and metrics", cmd_delete)
    p.add_argument("--yes", action="store_true", help="really delete")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 error, 2 usage or unknown study)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and usage errors
        return int(exc.code or 0)
    from playbook.tune.storage import StorageError

    try:
        code = int(args.func(args, sys.stdout))
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except CliError as exc:
        print(f"playbook: error: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        # `playbook study show ... | head`: the reader is gone. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again; exit like a process killed by SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except (StorageError, ValueError, ImportError) as exc:  # bad URL, unusable storage, bad config
        print(f"playbook: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
