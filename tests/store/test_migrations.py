import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
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


def _row(table: Any, **given: Any) -> dict[str, Any]:
    """`given`, plus a plain value for every other column that must have one."""
    out = dict(given)
    for col in table.columns:
        if col.name in out or col.nullable or (col.primary_key and col.autoincrement is True):
            continue
        t = col.type.python_type if not isinstance(col.type, sa.JSON) else dict
        out[col.name] = {str: "x", int: 0, float: 0.0, bool: False, dict: {}, bytes: b"",
                         datetime: datetime(2026, 12, 1, tzinfo=UTC)}.get(t, "x")
    return out


def test_checkpoints_move_into_artifacts_and_back(empty_db_url: str) -> None:
    """A job stored before artifacts existed keeps its downloads: its checkpoint and compact
    columns become artifact rows (the compact one with its architecture config), and back."""
    upgrade(empty_db_url, "0004")
    engine = make_engine(empty_db_url)
    meta = sa.MetaData()
    meta.reflect(engine)
    t = meta.tables
    config = {"base": "lenet-300-100", "widths": [30, 20]}
    with engine.begin() as c:
        for sha in ("a" * 64, "b" * 64, "c" * 64):
            c.execute(t["blob"].insert().values(**_row(t["blob"], sha256=sha, size=1)))
        c.execute(t["model"].insert().values(**_row(t["model"], id="m", architecture="lenet-300-100",
                                                    weights_sha256="a" * 64)))
        c.execute(t["dataset"].insert().values(**_row(t["dataset"], id="d")))
        c.execute(t["job"].insert().values(**_row(
            t["job"], id="j1", model_id="m", dataset_id="d", status="succeeded",
            checkpoint_sha256="b" * 64, compact_sha256="c" * 64,
            best={"compact": {"architecture_config": config}})))
        c.execute(t["job"].insert().values(**_row(t["job"], id="j2", model_id="m", dataset_id="d",
                                                  status="queued")))
        c.execute(t["trial"].insert().values(**_row(t["trial"], job_id="j1", number=0)))
    upgrade(empty_db_url)
    with engine.connect() as c:  # rebuilding the job table must not cascade into its trials
        assert c.execute(sa.text("SELECT count(*) FROM trial")).scalar() == 1
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT job_id, format, architecture, architecture_config, "
                                 "blob_sha256 FROM artifact ORDER BY id")).all()
    got = [(j, f, a, json.loads(cfg) if isinstance(cfg, str) else cfg, s) for j, f, a, cfg, s in rows]
    assert got == [("j1", "pruned", "lenet-300-100", {}, "b" * 64),
                   ("j1", "compact", "lenet-300-100", config, "c" * 64)]
    assert "checkpoint_sha256" not in {col["name"] for col in inspect(engine).get_columns("job")}
    downgrade(empty_db_url, "0004")
    with engine.connect() as c:
        back = c.execute(sa.text("SELECT id, checkpoint_sha256, compact_sha256 FROM job "
                                 "ORDER BY id")).all()
    assert [tuple(r) for r in back] == [("j1", "b" * 64, "c" * 64), ("j2", None, None)]
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM trial")).scalar() == 1
    engine.dispose()
