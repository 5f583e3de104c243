import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from core.errors import SchemaBehind
from store.db import check_schema, current_revision, downgrade, head_revision, make_engine, upgrade

TABLES = {"blob", "blob_chunk", "model", "dataset", "job", "trial", "worker"}


def test_upgrade_then_downgrade_then_upgrade(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    assert TABLES <= set(inspect(engine).get_table_names())
    assert current_revision(engine) == head_revision()
    check_schema(engine)
    downgrade(empty_db_url, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    upgrade(empty_db_url)
    assert TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_processes_refuse_a_schema_that_is_behind(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    with pytest.raises(SchemaBehind, match="run `thresher migrate`"):
        check_schema(engine)
    engine.dispose()


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_cli_refuses_to_start_on_an_empty_database(tmp_path: Path, command: str) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    out = subprocess.run([sys.executable, "-m", "cli.main", command], capture_output=True, text=True,
                         env={"THRESHER_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
                         cwd=Path(__file__).parents[2], timeout=120)
    assert out.returncode == 2
    assert "run `thresher migrate`" in out.stderr
