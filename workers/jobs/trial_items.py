"""Running one claimed trial work item of a distributed method (its `train_trial`, reached
through the registry): a training run that any worker may do.

The worker keeps the item's lease alive from a heartbeat thread, writes the trial's validation
accuracy after every epoch (what the dashboard shows and what pruners of later trials compare
against), asks the job's pruner whether to stop, and finishes the item with its outcome and its
pruned weights in one fenced write. A worker killed mid-trial loses only that trial's progress:
the lease expires and another worker runs the trial again from the start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.architectures import Architecture
from core.settings import Settings
from core.spec import JobSpec
from store import blobs, trial_queue
from store.models import Trial
from store.queue import LeaseLost
from store.reconnect import describe, is_unavailable, retrying
from workers.jobs.inputs import read_job_inputs
from workers.methods import TrialOutcome, load_distributed
from workers.runtime.data import Splits, held_out
from workers.runtime.heartbeat import Heartbeat
from workers.runtime.stopping import ItemLost, Stop
from workers.search import trial_pruners

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What every trial of a job starts from; loaded once per worker process and job."""

    job_id: str
    spec: JobSpec
    arch: Architecture
    reference: dict[str, torch.Tensor]
    splits: Splits


class TrialContexts:
    """What the trials of a job start from, loaded once per worker and job. A worker holds one
    job's context at a time (MNIST-sized splits are cheap to reload); the job's coordinator
    shares what it has loaded already, so the trials it trains itself read nothing again."""

    def __init__(self) -> None:
        self._held: tuple[str, JobContext] | None = None

    @staticmethod
    def _key(job_id: str, device: torch.device) -> str:
        return f"{job_id}@{device}"

    def share(self, ctx: JobContext, device: torch.device) -> None:
        self._held = (self._key(ctx.job_id, device), ctx)

    def get(self, sessions: sessionmaker[Session], job_id: str, settings: Settings,
            device: torch.device) -> JobContext:
        key = self._key(job_id, device)
        if self._held is not None and self._held[0] == key:
            return self._held[1]
        got = retrying(sessions, lambda s: read_job_inputs(s, job_id, settings),
                       what=f"loading the inputs of job {job_id}", write=False)
        splits = got.splits(settings, device)
        fraction = load_distributed(got.spec.method).hold_out(got.spec)
        if fraction > 0:  # trials never see the images the coordinator confirms on
            splits = held_out(splits, fraction)[0]
        ctx = JobContext(job_id=job_id, spec=got.spec, arch=got.arch(),
                         reference=got.params(device), splits=splits)
        self.share(ctx, device)
        return ctx


def finished_trials(s: Session, job_id: str, before: int) -> list[trial_pruners.Finished]:
    rows = s.execute(select(Trial.number, Trial.intermediate, Trial.val_accuracy, Trial.pruned,
                            Trial.error)
                     .where(Trial.job_id == job_id, Trial.number < before)
                     .order_by(Trial.number)).all()
    return [trial_pruners.Finished(number=n, intermediate=list(inter or []),
                             value=None if (pruned or err) else acc, pruned=bool(pruned),
                             failed=err is not None)
            for n, inter, acc, pruned, err in rows]


def outcome_document(outcome: TrialOutcome, duration_ms: float) -> dict[str, Any]:
    return {"val_accuracy": outcome.val_accuracy, "nonzero": outcome.nonzero,
            "total": outcome.total, "kept": outcome.kept, "groups_kept": outcome.groups_kept,
            "pruned_at": outcome.pruned_at, "intermediate": list(outcome.intermediate),
            "duration_ms": duration_ms,
            **({"macs": outcome.macs, "total_macs": outcome.total_macs}
               if outcome.macs is not None else {})}


def run_item(sessions: sessionmaker[Session], lease: trial_queue.ItemLease, settings: Settings,
             device: torch.device, should_stop: Callable[[], None],
             contexts: TrialContexts) -> None:
    """Train the item's trial and store its outcome. Raises LeaseLost when the item or its job is
    no longer ours, and whatever `should_stop` raises (a draining worker)."""
    # the lease is kept alive from the claim on: loading a large dataset must not cost the trial
    beat = Heartbeat(sessions, lambda s: trial_queue.heartbeat(s, lease, settings.lease_seconds),
                     settings.heartbeat_seconds, f"trial {lease.number} of job {lease.job_id}")
    beat.start()
    try:
        _train(sessions, lease, settings, device, should_stop, beat, contexts)
    finally:
        beat.stop()


def _train(sessions: sessionmaker[Session], lease: trial_queue.ItemLease, settings: Settings,
           device: torch.device, should_stop: Callable[[], None], beat: Heartbeat,
           contexts: TrialContexts) -> None:
    ctx = contexts.get(sessions, lease.job_id, settings, device)
    spec = ctx.spec
    method = load_distributed(spec.method)
    batch_start = lease.batch * spec.budget.parallel
    finished = retrying(sessions, lambda s: finished_trials(s, lease.job_id, batch_start),
                        what=f"reading the finished trials of job {lease.job_id}", write=False)
    kind, epochs = method.trial_pruner(spec)
    pruner = trial_pruners.TrialPruner(kind, seed=spec.seed, epochs=epochs, finished=finished,
                                       number=lease.number)
    seen: list[float] = []

    def check() -> None:
        if beat.lost.is_set():
            raise ItemLost(f"trial {lease.number} of job {lease.job_id}")
        should_stop()

    def report(epoch: int, acc: float) -> bool:
        seen.append(acc)
        retrying(sessions, lambda s: trial_queue.update_item(s, lease, intermediate=list(seen)),
                 what=f"reporting epoch {epoch} of trial {lease.number}")
        check()
        return pruner.after_epoch(acc)

    start = time.perf_counter()
    # Each trial's own seed: the job's seed and its number (same spec, same trials, on any worker)
    outcome = method.train_trial(
        ctx.arch, ctx.reference, ctx.splits, spec, lease.candidate,
        seed=spec.seed * 100_003 + lease.number, device=device, report=report, check=check)
    duration_ms = (time.perf_counter() - start) * 1e3
    data = safetensors.torch.save({k: v.detach().to("cpu").contiguous()
                                   for k, v in outcome.params.items()})
    doc = outcome_document(outcome, duration_ms)

    def finish(s: Session) -> None:
        trial_queue.update_item(s, lease)  # still ours? (before writing a megabyte)
        trial_queue.finish(s, lease, doc, blobs.put(s, data))

    retrying(sessions, finish, what=f"storing trial {lease.number} of job {lease.job_id}")
    log.info("job %s trial %d: val %.4f, %d/%d non-zero%s", lease.job_id, lease.number,
             outcome.val_accuracy, outcome.nonzero, outcome.total,
             f", pruned after epoch {outcome.pruned_at}" if outcome.pruned_at is not None else "")


def work_on(sessions: sessionmaker[Session], lease: trial_queue.ItemLease, settings: Settings,
            device: torch.device, should_stop: Callable[[], None],
            contexts: TrialContexts) -> None:
    """Run a claimed item and record how it ended: done, retried later with backoff, or given up
    after `max_attempts`. What `should_stop` raises (draining, the coordinator's job lost) hands the
    item back uncounted and propagates."""
    what = f"trial {lease.number} of job {lease.job_id}"
    if lease.failures >= settings.max_attempts:
        _record(sessions, lambda s: trial_queue.give_up_or_retry(
            s, lease, "its workers were lost", max_attempts=settings.max_attempts, delay_seconds=0))
        return
    try:
        run_item(sessions, lease, settings, device, should_stop, contexts)
    except ItemLost:
        log.info("%s is no longer ours (re-leased, or its job stopped); dropped", what)
    except (LeaseLost, Stop):
        # draining, or the job this worker coordinates was lost: the item goes back, uncounted
        _record(sessions, lambda s: trial_queue.release(s, lease))
        raise
    except Exception as exc:
        if is_unavailable(exc):  # not the trial's fault: back to the queue, uncounted
            log.warning("%s: database unavailable (%s); handed back", what, describe(exc))
            _record(sessions, lambda s: trial_queue.release(s, lease))
            return
        text = f"{type(exc).__name__}: {exc}"
        log.error("%s crashed: %s", what, text, exc_info=True)
        delay = min(settings.retry_backoff_max_seconds,
                    settings.retry_backoff_seconds * 2 ** lease.failures)
        _record(sessions, lambda s: trial_queue.give_up_or_retry(
            s, lease, text, max_attempts=settings.max_attempts, delay_seconds=delay))


def _record(sessions: sessionmaker[Session], write: Callable[[Session], object]) -> None:
    try:
        retrying(sessions, write, what="recording how a trial ended")
    except LeaseLost:
        log.info("the trial was taken from us before we could record how it ended")
