"""Shared fixtures for the playbook.tune tests (pure Python: no torch).

PostgreSQL tests run against a real server: ``pgserver`` (installed by ``pip install -e .[test]``)
starts a private PostgreSQL 16 on a Unix socket for the session. A missing ``pgserver`` is a test
failure, never a skip, so CI cannot pass without having run them.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

from playbook.tune import storage as storage_mod


@pytest.fixture()
def db_url(tmp_path):
    """A fresh SQLite storage URL; every cached connection is closed afterwards."""
    yield f"sqlite:///{tmp_path}/studies.db"
    storage_mod.close_all()


class PGServer:
    """A private PostgreSQL server (pgserver) with helpers to make databases and restart it."""

    def __init__(self, root: Path) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import pgserver
                from pgserver import _commands
        except ImportError as exc:
            pytest.fail(
                f"The PostgreSQL tests need the 'pgserver' package ({exc}): install the test extra, "
                "pip install -e '.[test]'. They are never skipped.",
                pytrace=False,
            )
        self._commands = _commands
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.server = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
        uri = self.server.get_uri()  # postgresql://postgres:@/postgres?host=/socket/dir
        self.socket_dir = uri.split("?host=", 1)[1]
        self._names = itertools.count()
        self._allow_password_users()

    def url(self, database: str = "postgres", user: str = "postgres", password: str | None = "") -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@/{database}?host={self.socket_dir}"

    def sql(self, statement: str, database: str = "postgres") -> list:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def new_database(self) -> str:
        """A fresh empty database; returns its URL (user postgres)."""
        name = f"t{next(self._names)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def _allow_password_users(self) -> None:
        """Role ``tuner`` (password ``s3cret``) must authenticate with its password; role ``reader``
        may log in but not create tables."""
        self.sql("CREATE ROLE tuner LOGIN PASSWORD 's3cret'")
        self.sql("CREATE ROLE reader LOGIN")
        self.sql("GRANT CREATE ON SCHEMA public TO tuner")
        hba = Path(self.server.pgdata) / "pg_hba.conf"
        text = hba.read_text()
        hba.write_text("local all tuner scram-sha-256\n" + text)
        self.pg_ctl("reload")

    def pg_ctl(self, *args: str) -> None:
        self._commands.pg_ctl(["-w", *args], pgdata=self.server.pgdata, user=self.server.system_user)

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        self.server.ensure_postgres_running()


@pytest.fixture(scope="session")
def pg_server():
    # Not under pytest's tmp dir: its 0700 parents keep out the unprivileged server user (as root).
    root = Path(tempfile.mkdtemp(prefix="playbook-pg-"))
    server = PGServer(root)
    yield server
    storage_mod.close_all()
    server.pg_ctl("-m", "immediate", "stop")  # its data is deleted next: skip the shutdown checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server.server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def pg_url(pg_server):
    """A URL of a fresh database on the session's PostgreSQL server."""
    yield pg_server.new_database()
    storage_mod.close_all()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request, tmp_path):
    """A fresh storage URL of each backend (the tests using it run once per backend)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/studies.db"
    else:
        yield request.getfixturevalue("pg_server").new_database()
    storage_mod.close_all()


# A PostgreSQL test must never pass as skipped (CI would go green without having run it).
_PG_FIXTURES = ("pg_server", "pg_url")
_pg_skipped: list[str] = []


def _uses_postgres(item) -> bool:
    names = getattr(item, "fixturenames", ())
    if any(f in names for f in _PG_FIXTURES):
        return True
    callspec = getattr(item, "callspec", None)
    return "any_url" in names and callspec is not None and callspec.params.get("any_url") == "postgresql"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _uses_postgres(item):
        _pg_skipped.append(item.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _pg_skipped:
        print(f"\nERROR: {len(_pg_skipped)} PostgreSQL test(s) were skipped, which is not allowed: "
              f"{_pg_skipped[:5]}")
        session.exitstatus = 1
