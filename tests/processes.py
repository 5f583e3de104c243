"""A deployment as real processes: `thresher serve` and `thresher worker` on one database, each
logging to its own file, driven over real HTTP. For tests that kill, restart or starve them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import DATASETS_DIR
from tests.helpers import trials
from tests.pg_cluster import free_port

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def serving(command: str, env: dict[str, str], cwd: Path, log_path: Path | None = None, *,
            up_seconds: float, stop_seconds: float, poll_seconds: float = 0.2) -> Iterator[str]:
    """`thresher COMMAND --port P` (serve or up) on a free port, logging to a file (not a pipe:
    nobody reads a pipe while the test runs, and a full one blocks the server); its base URL once
    /healthz answers; SIGTERM at the end, SIGKILL past `stop_seconds`. The log is
    `log_path`, else COMMAND-PORT.log in `cwd`."""
    port = free_port()
    log_path = log_path or cwd / f"{command}-{port}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", command, "--port", str(port)], env=env,
                            cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + up_seconds
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"thresher {command} did not come up"
            time.sleep(poll_seconds)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=stop_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:.0f} s: {what}")
        time.sleep(0.05)


class Deployment:
    def __init__(self, url: str, tmp_path: Path, **settings: object) -> None:
        self.url, self.tmp_path = url, tmp_path
        self.port = free_port()
        self.env = dict(os.environ, THRESHER_DATABASE_URL=url, THRESHER_DATASETS_DIR=str(DATASETS_DIR),
                        THRESHER_CACHE_DIR=str(tmp_path / "cache"), THRESHER_POLL_SECONDS="0.1",
                        THRESHER_HEARTBEAT_SECONDS="0.5",
                        **{f"THRESHER_{k.upper()}": str(v) for k, v in settings.items()})
        self.api: subprocess.Popen[bytes] | None = None
        self.api_starts = 0
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, log_name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"{log_name}.log", "ab")  # the child keeps its own copy
        try:
            return subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    def log(self, name: str) -> str:
        path = self.tmp_path / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- the API ----------------------------------------------------------------------------
    def start_api(self) -> None:
        self.api_starts += 1
        self.api = self._spawn("api", "serve", "--port", str(self.port))
        wait_for(self._api_up, "the API answers /healthz", timeout=60)

    def _api_up(self) -> bool:
        assert self.api is not None
        if self.api.poll() is not None:
            raise AssertionError(f"the API exited with {self.api.returncode}:\n{self.log('api')}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def kill_api(self) -> None:
        assert self.api is not None
        self.api.send_signal(signal.SIGKILL)
        self.api.wait(timeout=30)

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}",
                            headers={"Authorization": f"Bearer {token}"}, timeout=60)

    # -- workers ----------------------------------------------------------------------------
    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        self.workers[name] = self._spawn(name, "worker", "--name", name)
        return self.workers[name]

    def assert_workers_alive(self) -> None:
        for name, proc in self.workers.items():
            assert proc.poll() is None, f"worker {name} exited with {proc.returncode}:\n{self.log(name)}"

    def stop_workers(self) -> dict[str, int]:
        """SIGTERM every worker (a clean drain) and return their exit codes."""
        for proc in self.workers.values():
            proc.send_signal(signal.SIGTERM)
        return {name: proc.wait(timeout=60) for name, proc in self.workers.items()}

    def close(self) -> None:
        for proc in [*self.workers.values(), *([self.api] if self.api else [])]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


__all__ = ["Deployment", "job", "trials", "wait_for"]
