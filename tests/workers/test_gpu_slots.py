"""Scaled worker containers share a machine's GPUs one each, by locks in a shared directory. The
locks are real flocks taken by real processes; the GPU count is given, so no GPU is needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOLDER = ("import sys\n"
          "from pathlib import Path\n"
          "from workers.runtime.gpu_slots import claim\n"
          "print(claim(Path(sys.argv[1]), int(sys.argv[2])), flush=True)\n"
          "sys.stdin.read()  # hold the GPU until the test closes our stdin\n")


def _worker(lock_dir: Path, gpus: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), str(gpus)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_each_worker_takes_a_gpu_of_its_own_and_a_dead_worker_s_gpu_is_free_again(tmp_path: Path) -> None:
    first, second = _worker(tmp_path, 2), _worker(tmp_path, 2)
    try:
        held = {p.stdout.readline().strip(): p for p in (first, second)}  # type: ignore[union-attr]
        assert set(held) == {"0", "1"}

        third = _worker(tmp_path, 2)
        _, err = third.communicate(timeout=60)
        assert third.returncode != 0
        assert "all 2 GPUs of this machine are held by other workers" in err

        held["0"].kill()  # a crash: the kernel releases its lock
        held["0"].wait(timeout=30)
        fourth = _worker(tmp_path, 2)
        assert fourth.stdout.readline().strip() == "0"  # type: ignore[union-attr]
        fourth.kill()
        fourth.wait(timeout=30)
    finally:
        for p in (first, second):
            p.kill()
            p.wait(timeout=30)
