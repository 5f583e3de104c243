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
from collections.abc import Callable
from types import FrameType

import torch
from sqlalchemy.orm import Session

from core.errors import DatasetUnavailable, InvalidInput
from core.settings import Settings
from store import queue, trial_queue
from store.db import check_schema, make_engine, make_sessionmaker, transaction
from store.queue import Lease, LeaseLost
from store.reconnect import Backoff, describe, is_unavailable, retrying, wait_for_database
from workers.jobs import runner, trial_items
from workers.runtime import allocator
from workers.runtime import device as devices
from workers.runtime.heartbeat import Heartbeat
from workers.runtime.stopping import Stop

log = logging.getLogger(__name__)

# Problems with the job's own inputs: retrying cannot help.
PERMANENT = (InvalidInput, DatasetUnavailable)


class Worker:
    def __init__(self, settings: Settings, name: str | None = None) -> None:
        self.settings = settings
        allocator.keep_freed_memory()  # before the first tensor: see workers.runtime.allocator
        self.name = name or settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.engine = make_engine(settings.database_url,
                                  sqlite_busy_timeout=settings.sqlite_busy_timeout_seconds)
        wait_for_database(self.engine, f"worker {self.name}")
        check_schema(self.engine)  # refuse to start on a schema that is behind
        self.sessions = make_sessionmaker(self.engine)
        self.device = devices.pick(settings.device, settings.gpu_lock_dir)
        # what the trials of the job last worked on start from (one job at a time)
        self.trial_contexts = trial_items.TrialContexts()
        self.draining = threading.Event()

    # -- signals ---------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            if self.draining.is_set():
                log.warning("second signal: aborting")
                os._exit(128 + signum)
            log.info("signal %d: finishing the current population, then exiting", signum)
            self.draining.set()
            # A drain that cannot finish (the database is gone) must not outlive the deployment's
            # grace period: exit, and the lease hands the job to another worker when it expires.
            bound = threading.Timer(self.settings.drain_seconds, self._drain_overdue, args=(signum,))
            bound.daemon = True
            bound.start()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _drain_overdue(self, signum: int) -> None:
        log.warning("the drain took longer than %.0f s (THRESHER_DRAIN_SECONDS): exiting; the job "
                    "is resumed elsewhere once its lease expires", self.settings.drain_seconds)
        logging.shutdown()
        os._exit(128 + signum)

    # -- the loop --------------------------------------------------------------------------
    def serve(self, *, exit_when_idle: bool = False, max_jobs: int | None = None) -> int:
        retrying(self.sessions, lambda s: queue.register_worker(
            s, self.name, socket.gethostname(), os.getpid(), devices.describe(self.device)),
            what=f"registering worker {self.name}")
        log.info("worker %s on %s", self.name, devices.describe(self.device))
        done = 0
        outage = Backoff()
        while not self.draining.is_set() and (max_jobs is None or done < max_jobs):
            try:
                # Trials of running jobs first: they are what a job's coordinator waits for.
                with transaction(self.sessions) as s:
                    item = trial_queue.claim(s, self.name, self.settings.lease_seconds)
                    if item is not None:
                        queue.touch_worker(s, self.name, item.job_id)
                if item is None:
                    with transaction(self.sessions) as s:
                        lease = queue.claim(s, self.name, self.settings.lease_seconds)
                        queue.touch_worker(s, self.name, lease.job_id if lease else None)
            except Exception as exc:
                # Not `retrying`: a draining worker stops waiting. A claim whose COMMIT was cut
                # off may have taken a job we never heard of; its lease expires and it runs again.
                if not is_unavailable(exc):
                    raise
                delay = outage.next_delay()
                log.warning("database unavailable while claiming (%s); retrying in %.1f s",
                            describe(exc), delay)
                self.draining.wait(delay)
                continue
            outage.reset()
            if item is not None:
                self.run_item(item)
                continue
            if lease is None:
                if exit_when_idle:
                    break
                self.draining.wait(self.settings.poll_seconds)
                continue
            self.run_one(lease)
            done += 1
        try:
            with transaction(self.sessions) as s:
                queue.touch_worker(s, self.name, None)
        except Exception as exc:  # only the dashboard's "current job": not worth waiting for
            if not is_unavailable(exc):
                raise
        return done

    def run_item(self, item: trial_queue.ItemLease) -> None:
        log.info("job %s: trial %d, attempt %d", item.job_id, item.number, item.attempt)

        def should_stop() -> None:
            if self.draining.is_set():
                raise Stop()

        try:
            trial_items.work_on(self.sessions, item, self.settings, self.device, should_stop,
                                self.trial_contexts)
        except Stop:
            log.info("trial %d of job %s handed back to the queue", item.number, item.job_id)
        except LeaseLost:  # the trial was taken from us (cancelled, or re-leased after a freeze)
            log.info("trial %d of job %s is no longer ours; dropped", item.number, item.job_id)
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def run_one(self, lease: Lease) -> None:
        cfg = self.settings
        if lease.failures >= cfg.max_attempts:
            self._finish(lambda s: queue.fail(
                s, lease, f"gave up after {lease.failures} failed attempts (workers lost or crashed)"))
            return
        log.info("job %s: attempt %d", lease.job_id, lease.attempt)

        def renew(s: Session) -> None:
            queue.heartbeat(s, lease, cfg.lease_seconds)
            queue.touch_worker(s, self.name, lease.job_id)

        beat = Heartbeat(self.sessions, renew, cfg.heartbeat_seconds, f"job {lease.job_id}")
        beat.start()

        def should_stop() -> None:
            if beat.lost.is_set():
                raise LeaseLost(lease.job_id)
            if self.draining.is_set():
                raise Stop()

        try:
            runner.run(self.sessions, lease, cfg, self.device, should_stop, self.trial_contexts)
        except LeaseLost:
            log.info("job %s is no longer ours (cancelled or re-leased); dropped", lease.job_id)
        except Stop:
            log.info("job %s handed back to the queue", lease.job_id)
            self._finish(lambda s: queue.release(s, lease))
        except PERMANENT as exc:
            detail = getattr(exc, "detail", None) or str(exc)
            self._finish(lambda s: queue.fail(s, lease, detail))
        except Exception as exc:
            if is_unavailable(exc):  # not the job's fault: hand it back without counting a failure
                log.warning("job %s: database unavailable (%s); handed back", lease.job_id, describe(exc))
                self._finish(lambda s: queue.release(s, lease))
                return
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

    def _finish(self, write: Callable[[Session], None]) -> None:
        try:
            retrying(self.sessions, write, what="recording a job's outcome")
        except LeaseLost:
            log.info("job was taken from us before we could record its outcome")
