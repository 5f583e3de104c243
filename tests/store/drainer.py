"""A queue consumer process for the drain test: claims jobs until none is left, finishes each with
a fenced write, and prints every job id it finished (one per line)."""

from __future__ import annotations

import sys

from store import queue
from store.db import make_engine, make_sessionmaker, transaction


def main(url: str, name: str) -> None:
    sessions = make_sessionmaker(make_engine(url))
    while True:
        with transaction(sessions) as s:
            lease = queue.claim(s, name, lease_seconds=600)
        if lease is None:
            return
        with transaction(sessions) as s:
            queue.update_job(s, lease, status="succeeded", lease_expires_at=None)
        print(lease.job_id, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
