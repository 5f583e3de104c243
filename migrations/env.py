"""Alembic environment: runs online against the URL set by store.db."""

from alembic import context

from store.db import make_engine
from store.models import Base

config = context.config


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is set by store.db"
    engine = make_engine(url)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch mode rebuilds a table to drop a column (copy, DROP, rename). With foreign keys
            # enforced, that DROP would cascade into every row that references the table (a job's
            # trials, artifacts). The pragma only takes effect outside a transaction; the keys
            # are checked once the migration is done. (Set on the driver's connection: every
            # SQLAlchemy transaction starts with an explicit BEGIN, see store.db.)
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            connection.commit()
            if broken:
                raise RuntimeError(f"the migration left rows whose foreign keys point nowhere: "
                                   f"{broken[:5]}")
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `thresher migrate`")
run_migrations_online()
