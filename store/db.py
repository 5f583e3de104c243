"""Engines, sessions, the schema check and the migrations entry points."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from core.errors import SchemaBehind

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
IMMEDIATE = "thresher_immediate"


# A PostgreSQL connection that hangs (a host gone from the network) must fail within bounded
# time so that the caller's retry (store.reconnect) or the API's 503 can take over; keepalives
# notice a dead peer on an idle pooled connection. Parameters in the URL's query win.
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
    "keepalives_count": 3,
}


def make_engine(url: str, *, sqlite_busy_timeout: float = SQLITE_BUSY_TIMEOUT_MS / 1000) -> Engine:
    """An engine for `url`; `sqlite_busy_timeout` is how long a SQLite writer waits for the lock
    before "database is locked" (which workers retry and the API answers with 503)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args = {k: v for k, v in POSTGRES_CONNECT_ARGS.items() if k not in parsed.query}
        # pre-ping: a pooled connection that died with the server is replaced before it is used
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)

    busy_ms = int(sqlite_busy_timeout * 1000)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": sqlite_busy_timeout})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so that `begin` below is the only BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # SQLite ignores FOR UPDATE; a writing transaction takes the write lock at BEGIN, which
        # makes a claim's UPDATE atomic against other claimers and avoids the read-then-write
        # upgrade that fails with "database is locked" without waiting for busy_timeout.
        # Read-only transactions stay deferred: in WAL mode they never block or wait.
        immediate = conn.get_execution_options().get(IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session], *, write: bool = True) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception.

    `write=False` marks a read-only unit (on SQLite a deferred BEGIN that never takes the lock)."""
    with factory() as session:
        # Procuring the connection first begins the transaction with the option visible to the
        # `begin` hook above (other databases ignore it).
        session.connection(execution_options={IMMEDIATE: write})
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    make_engine(url).dispose()  # creates the SQLite parent directory
    command.upgrade(_alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(_alembic_config(url), revision)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Refuse to run on a schema that is behind the code."""
    head = head_revision()
    current = current_revision(engine)
    if current != head:
        where = "empty" if current is None else f"at revision {current}"
        raise SchemaBehind(
            f"the database {engine.url.render_as_string(hide_password=True)} is {where}; "
            f"this code needs revision {head}: run `thresher migrate`"
        )
