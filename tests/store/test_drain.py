"""Many real processes drain one queue: every item is claimed exactly once, none is lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from store.db import make_engine, make_sessionmaker, transaction
from store.models import Job
from tests.helpers import seed_jobs

ROOT = Path(__file__).resolve().parents[2]
ITEMS = 2_000


def test_processes_drain_2000_items_each_exactly_once(db_url: str) -> None:
    processes = 16 if db_url.startswith("postgresql") else 8  # SQLite serializes its writers
    ids = seed_jobs(db_url, ITEMS)
    drainers = [subprocess.Popen([sys.executable, "-m", "tests.store.drainer", db_url, f"d{i}"],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(processes)]
    finished: list[str] = []
    per_process = []
    for p in drainers:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        done = out.split()
        per_process.append(len(done))
        finished += done
    print(f"{processes} processes drained {ITEMS} items: {sorted(per_process)}")
    assert len(finished) == ITEMS and sorted(finished) == sorted(ids)  # none twice, none lost
    assert sum(1 for n in per_process if n > 0) >= processes // 2  # really shared out
    with transaction(make_sessionmaker(make_engine(db_url)), write=False) as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.status == "succeeded")) == ITEMS
