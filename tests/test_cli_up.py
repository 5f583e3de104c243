"""`thresher up` runs the API and a worker; SIGTERM stops both (the worker is not left behind)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from store.db import make_engine, make_sessionmaker, transaction
from store.models import Worker
from tests.conftest import DATASETS_DIR
from tests.pg_cluster import free_port
from tests.processes import ROOT, wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _worker_pid(url: str) -> int | None:
    engine = make_engine(url)
    try:
        with transaction(make_sessionmaker(engine), write=False) as s:
            return s.scalar(select(Worker.pid))
    except Exception:  # the schema is not there yet
        return None
    finally:
        engine.dispose()


def test_sigterm_stops_the_api_and_its_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'var' / 'thresher.db'}"
    env = dict(os.environ, THRESHER_DATABASE_URL=url, THRESHER_DATASETS_DIR=str(DATASETS_DIR),
               THRESHER_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    log = open(tmp_path / "up.log", "wb")  # the child keeps its own copy
    up = subprocess.Popen([sys.executable, "-m", "cli.main", "up", "--port", str(free_port())],
                          cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    pid: int | None = None
    try:
        wait_for(lambda: _worker_pid(url) is not None, "the embedded worker registers", timeout=120)
        pid = _worker_pid(url)
        assert pid is not None and _alive(pid)
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=120)
        wait_for(lambda: not _alive(pid), "the worker exits with the API", timeout=120)
    finally:
        up.kill()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
