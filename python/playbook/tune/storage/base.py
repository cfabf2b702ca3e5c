"""The storage interface, its records and errors, and storage URLs (no database code here)."""

from __future__ import annotations

import abc
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "STATUSES",
    "FINISHED",
    "SCHEMES",
    "TrialRecord",
    "StudyRecord",
    "Storage",
    "StorageError",
    "parse_url",
    "mask_url",
]

STATUSES = ("pending", "running", "complete", "infeasible", "failed")
FINISHED = ("complete", "infeasible", "failed")
SCHEMES = ("sqlite", "postgresql")


class StorageError(RuntimeError):
    """A storage that cannot be used: corrupt or locked file, unreachable server, wrong credentials,
    missing schema, incompatible schema version. The message names the storage (password masked),
    the cause and what to do."""


@dataclass(frozen=True)
class TrialRecord:
    """One trial as stored (read-only snapshot).

    Attributes:
        index: Trial index ``i``: its params are point ``i`` of the study's Halton sequence.
        params: ``{name: value}`` as the objective saw them (active hyperparameters only).
        status: ``"pending"``, ``"running"``, ``"complete"``, ``"infeasible"`` or ``"failed"``.
        score: Best value of the study metric over all reports and final values (playbook 6.2:
            retrospective selection), ``None`` if never reported.
        best_step: Step at which ``score`` occurred (``None`` for a final-only value or no score).
        worker: Id (``host:pid``) of the worker that ran (or runs) it.
        error: Traceback (failed), reason (infeasible or re-queue) or ``None``.
        created, started, finished: Unix times from the storage's clock (the database server's
            for PostgreSQL; ``None`` when not reached).
        final: Values passed to ``trial.complete(**final)``.
        attempts: How many times the trial was claimed (``> 1`` after a re-queue).
    """

    index: int
    params: dict[str, Any]
    status: str
    score: float | None = None
    best_step: int | None = None
    worker: str | None = None
    error: str | None = None
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    final: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0

    @property
    def is_finished(self) -> bool:
        """True for complete, infeasible and failed trials."""
        return self.status in FINISHED

    @property
    def feasible(self) -> bool:
        """True for complete trials (the ones that count in comparisons, playbook 4.6)."""
        return self.status == "complete"


@dataclass(frozen=True)
class StudyRecord:
    """A stored study: its name, config dict, seed and creation time."""

    name: str
    config: dict[str, Any]
    seed: int
    created: float


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)


def _metric_value(x: Any) -> float:
    """SQLite stores NaN as NULL: read it back as NaN."""
    return math.nan if x is None else float(x)


def notice(message: str) -> None:
    """A progress message of the storage layer (waiting on a lock, reconnecting) on stderr."""
    try:
        print(f"playbook: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # closed stderr: the message is advisory
        pass


class Storage(abc.ABC):
    """Where studies, trials and per-step metrics live. Implementations must be process-safe.

    Every method is one short transaction, safe to repeat after a lost connection. Methods
    acting on behalf of a running trial take the ``worker`` id and return ``False`` (writing
    nothing) when the trial no longer belongs to it. Times come from the storage's clock.
    """

    url: str

    @property
    def display_url(self) -> str:
        """:attr:`url` with any password masked (for messages)."""
        return mask_url(self.url)

    @abc.abstractmethod
    def create_study(self, name: str, config: Mapping[str, Any], seed: int) -> StudyRecord:
        """Insert a study unless one with that name exists; return the stored record either way."""

    @abc.abstractmethod
    def get_study(self, name: str) -> StudyRecord | None:
        """The stored study called ``name``, or ``None``."""

    @abc.abstractmethod
    def list_studies(self) -> list[StudyRecord]:
        """All studies, oldest first."""

    @abc.abstractmethod
    def extend_study(self, name: str, num_trials: int) -> StudyRecord:
        """Raise the stored ``num_trials`` of study ``name`` to ``num_trials`` (atomically; a
        value below the stored one raises ``ValueError`` and changes nothing)."""

    @abc.abstractmethod
    def delete_study(self, name: str) -> bool:
        """Delete a study with its trials and metrics; ``False`` if there was none."""

    @abc.abstractmethod
    def claim_trial(
        self,
        study: str,
        worker: str,
        num_trials: int,
        stale_after: float,
        params_for: Callable[[int], dict[str, Any]],
    ) -> TrialRecord | None:
        """Atomically claim the next trial: a pending one (lowest index) or a new index below
        ``num_trials``. Running trials silent for ``stale_after`` seconds are re-queued first.

        A re-claimed trial keeps its stored metrics, score and best step (a trial resuming from a
        checkpoint continues its curves) and its ``attempts`` count goes up by one.

        Returns:
            The claimed trial (status ``"running"``), or ``None`` when nothing is claimable.
        """

    @abc.abstractmethod
    def heartbeat(self, study: str, index: int, worker: str) -> bool:
        """Mark the trial alive now."""

    @abc.abstractmethod
    def report(
        self,
        study: str,
        index: int,
        worker: str,
        step: int,
        metrics: Mapping[str, float],
        score: float | None,
        best_step: int | None,
    ) -> bool:
        """Store per-step metrics and the running score of a trial.

        Stored metrics of the trial at steps ``> step`` are deleted first and values at ``step``
        replaced by name, so a trial that resumes (or restarts) at an earlier step has no
        duplicate points in its curves.
        """

    @abc.abstractmethod
    def finish_trial(
        self,
        study: str,
        index: int,
        worker: str,
        status: str,
        *,
        score: float | None,
        best_step: int | None,
        error: str | None,
        final: Mapping[str, Any],
    ) -> bool:
        """Set a final status (complete, infeasible or failed)."""

    @abc.abstractmethod
    def requeue(
        self,
        study: str,
        *,
        workers: Sequence[str] | None = None,
        statuses: Sequence[str] = ("running",),
        stale_after: float | None = None,
        reason: str = "",
    ) -> list[int]:
        """Put trials back to pending: those with a status in ``statuses``, optionally only those
        of the given ``workers`` or (running ones) silent for ``stale_after`` seconds. Their
        metrics are kept. Returns the re-queued indices."""

    @abc.abstractmethod
    def trials(self, study: str) -> list[TrialRecord]:
        """Every stored trial of the study, by index."""

    @abc.abstractmethod
    def metrics(self, study: str, index: int) -> list[tuple[int, dict[str, float]]]:
        """``[(step, {name: value}), ...]`` in step order."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections (the storage reconnects if used again)."""

    def status_counts(self, study: str) -> dict[str, int]:
        """``{status: count}`` over stored trials (every status present, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for t in self.trials(study):
            counts[t.status] += 1
        return counts

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mask_url(url: str) -> str:
    """``url`` with the password (in ``user:password@`` or a ``password=`` parameter) replaced by
    ``***``."""
    if not isinstance(url, str) or "://" not in url:
        return str(url)
    url = re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)  # libpq's ?password=...
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("://", 1)[0] + "://***"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def parse_url(url: str) -> tuple[str, str]:
    """Split a storage URL into ``(scheme, location)``.

    ``sqlite:///rel/path.db`` -> ``("sqlite", "rel/path.db")``; ``sqlite:////abs/path.db`` ->
    ``("sqlite", "/abs/path.db")``; a bare path (no ``://``) is an SQLite file;
    ``postgresql://user:password@host:port/db`` (or ``postgres://``) -> ``("postgresql", url)``.
    """
    if not isinstance(url, str) or not url:
        raise ValueError(
            f"Invalid storage URL {url!r}. Use 'sqlite:///path/to/file.db' or "
            "'postgresql://user:password@host:port/database'."
        )
    if "://" not in url:
        return "sqlite", url
    scheme, rest = url.split("://", 1)
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(f"Invalid SQLite URL {url!r}. Use 'sqlite:///relative.db' or 'sqlite:////absolute.db'.")
        path = rest[1:]
        if path == ":memory:":
            raise ValueError(f"In-memory SQLite ({url!r}) cannot be shared by workers; use a file.")
        return "sqlite", path
    if scheme in ("postgresql", "postgres"):
        return "postgresql", url
    raise ValueError(
        f"Unknown storage scheme: {scheme!r} in {mask_url(url)!r}. It needs to be one of {list(SCHEMES)} "
        "('sqlite:///path/to/file.db' or 'postgresql://user:password@host:port/database')."
    )
