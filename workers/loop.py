"""The worker loop: claim a job, keep its lease alive, run it, retry crashes with backoff.

SIGTERM: stop claiming, hand the current job back (its trials are already stored), exit.
A second SIGTERM/SIGINT aborts at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import traceback
from types import FrameType

import torch

from core.errors import DatasetUnavailable, InvalidInput
from core.settings import Settings
from store import queue
from store.db import check_schema, make_engine, make_sessionmaker, transaction
from store.queue import Lease, LeaseLost
from workers import device as devices
from workers import runner

log = logging.getLogger(__name__)

# Problems with the job's own inputs: retrying cannot help.
PERMANENT = (InvalidInput, DatasetUnavailable)


class Heartbeat(threading.Thread):
    """Renews the lease every heartbeat interval; notes when the job is no longer ours."""

    def __init__(self, worker: Worker, lease: Lease) -> None:
        super().__init__(name=f"heartbeat-{lease.job_id[:8]}", daemon=True)
        self.worker, self.lease = worker, lease
        self.lost = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        cfg = self.worker.settings
        while not self._done.wait(cfg.heartbeat_seconds):
            try:
                with transaction(self.worker.sessions) as s:
                    queue.heartbeat(s, self.lease, cfg.lease_seconds)
                    queue.touch_worker(s, self.worker.name, self.lease.job_id)
            except LeaseLost:
                self.lost.set()
                return
            except Exception:  # a database hiccup: the lease has slack, try again next beat
                log.warning("heartbeat for job %s failed", self.lease.job_id, exc_info=True)

    def stop(self) -> None:
        self._done.set()


class Worker:
    def __init__(self, settings: Settings, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.engine = make_engine(settings.database_url)
        check_schema(self.engine)  # refuse to start on a schema that is behind
        self.sessions = make_sessionmaker(self.engine)
        self.device = devices.pick(settings.device)
        self.draining = threading.Event()

    # -- signals ---------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            if self.draining.is_set():
                log.warning("second signal: aborting")
                os._exit(128 + signum)
            log.info("signal %d: finishing the current population, then exiting", signum)
            self.draining.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # -- the loop --------------------------------------------------------------------------
    def serve(self, *, exit_when_idle: bool = False, max_jobs: int | None = None) -> int:
        with transaction(self.sessions) as s:
            queue.register_worker(s, self.name, socket.gethostname(), os.getpid(),
                                  devices.describe(self.device))
        log.info("worker %s on %s", self.name, devices.describe(self.device))
        done = 0
        while not self.draining.is_set() and (max_jobs is None or done < max_jobs):
            with transaction(self.sessions) as s:
                lease = queue.claim(s, self.name, self.settings.lease_seconds)
                queue.touch_worker(s, self.name, lease.job_id if lease else None)
            if lease is None:
                if exit_when_idle:
                    break
                self.draining.wait(self.settings.poll_seconds)
                continue
            self.run_one(lease)
            done += 1
        with transaction(self.sessions) as s:
            queue.touch_worker(s, self.name, None)
        return done

    def run_one(self, lease: Lease) -> None:
        cfg = self.settings
        if lease.failures >= cfg.max_attempts:
            self._finish(lambda s: queue.fail(
                s, lease, f"gave up after {lease.failures} failed attempts (workers lost or crashed)"))
            return
        log.info("job %s: attempt %d", lease.job_id, lease.attempt)
        beat = Heartbeat(self, lease)
        beat.start()

        def should_stop() -> None:
            if beat.lost.is_set():
                raise LeaseLost(lease.job_id)
            if self.draining.is_set():
                raise runner.Stop()

        try:
            runner.run(self.sessions, lease, cfg, self.device, should_stop)
        except LeaseLost:
            log.info("job %s is no longer ours (cancelled or re-leased); dropped", lease.job_id)
        except runner.Stop:
            log.info("job %s handed back to the queue", lease.job_id)
            self._finish(lambda s: queue.release(s, lease))
        except PERMANENT as exc:
            detail = getattr(exc, "detail", None) or str(exc)
            self._finish(lambda s: queue.fail(s, lease, detail))
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            log.error("job %s crashed: %s\n%s", lease.job_id, text, traceback.format_exc())
            if lease.failures + 1 >= cfg.max_attempts:
                self._finish(lambda s: queue.fail(
                    s, lease, f"failed {lease.failures + 1} times; last error: {text}"))
            else:
                delay = min(cfg.retry_backoff_max_seconds, cfg.retry_backoff_seconds * 2 ** lease.failures)
                self._finish(lambda s: queue.requeue(s, lease, text, delay))
        finally:
            beat.stop()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _finish(self, write: object) -> None:
        try:
            with transaction(self.sessions) as s:
                write(s)  # type: ignore[operator]
        except LeaseLost:
            log.info("job was taken from us before we could record its outcome")
