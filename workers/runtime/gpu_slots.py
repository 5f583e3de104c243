"""One worker per GPU on a machine with several.

Docker Compose cannot hand each replica of a scaled service its own GPU (a reservation of one GPU
gives every replica the first one), so the deployment shows every GPU to every worker container
and each worker takes the first GPU that no other worker holds: an exclusive lock on a file in a
directory the workers share (THRESHER_GPU_LOCK_DIR). The kernel drops the lock when the process
ends, however it ends, so a crashed worker's GPU is free for the next one at once.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO

# The open lock files of this process: closing one would release its GPU.
_held: list[IO[str]] = []


class NoFreeGpu(RuntimeError):
    pass


def claim(lock_dir: Path, count: int) -> int:
    """Lock and return the lowest free GPU index below `count`, for the life of this process."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        f = open(lock_dir / f"gpu-{index}.lock", "a+")  # held until the process ends
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        f.seek(0)
        f.truncate()
        f.write(f"{socket.gethostname()} pid {os.getpid()}\n")  # who holds it, for an operator
        f.flush()
        _held.append(f)
        return index
    raise NoFreeGpu(f"all {count} GPUs of this machine are held by other workers (locks in "
                    f"{lock_dir}): run at most one worker per GPU")
