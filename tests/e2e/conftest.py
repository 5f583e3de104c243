"""What the end-to-end tests share: `thresher up` as a real process on its own SQLite database,
reached over real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp: Path, datasets_dir: Path) -> dict[str, str]:
    return dict(os.environ, THRESHER_DATABASE_URL=f"sqlite:///{tmp / 'var' / 'thresher.db'}",
                THRESHER_DATASETS_DIR=str(datasets_dir), THRESHER_CACHE_DIR=str(tmp / "var" / "cache"))


@pytest.fixture
def service(tmp_path: Path, mnist_dir: Path) -> Iterator[str]:
    port = _free_port()
    # to a file, not a pipe: nobody reads a pipe while the test runs, and a full one blocks `up`
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "up", "--port", str(port)],
                            env={**_env(tmp_path, mnist_dir), "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "the service did not come up"
            time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
