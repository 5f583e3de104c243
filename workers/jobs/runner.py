"""Running one claimed job: load model and data, search, store the checkpoint, finish the job."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import methods
from core.architectures import Architecture
from core.documents import REFERENCE_DETAILS
from core.settings import Settings
from core.spec import JobSpec
from store import blobs, records, trial_queue
from store.models import Artifact, Job, utcnow
from store.queue import Lease, update_job
from store.reconnect import retrying
from workers.jobs import checkpoint
from workers.jobs.inputs import JobInputs, read_job_inputs
from workers.jobs.trial_items import TrialContexts
from workers.methods import MethodJob, load
from workers.models import compaction, pt2_weights, zoo
from workers.models.masking import nonzero_parameters
from workers.runtime.data import Splits
from workers.runtime.evaluation import accuracy
from workers.runtime.stopping import Stop
from workers.search.trials import Evaluated, SearchResult

log = logging.getLogger(__name__)


class DbRecorder:
    """Persists a search into the job's rows; every write is fenced by the lease.

    Trials are buffered and written in bulk, one transaction at most every `flush_seconds`
    (populations of cheap trials come far faster than transactions should); what a crash loses
    from the buffer is recomputed, identically, on resume."""

    def __init__(self, sessions: sessionmaker[Session], lease: Lease, stored: dict[int, Evaluated],
                 should_stop: Any, flush_seconds: float = 0.5) -> None:
        self.sessions, self.lease, self.stored = sessions, lease, stored
        self.should_stop = should_stop
        self.flush_seconds = flush_seconds
        self._buffer: list[Evaluated] = []
        self._progress: dict[str, Any] = {}
        self._last_flush = time.monotonic()

    def replay(self, number: int) -> Evaluated | None:
        return self.stored.get(number)

    def write(self, trials: Sequence[Evaluated], *, trials_done: int, stage: str,
              best: Evaluated | None) -> None:
        self._buffer.extend(trials)
        self._progress = {"trials_done": trials_done, "stage": stage,
                          **({"round": trials[-1].round} if trials else {})}
        if best is not None:
            self._progress["best"] = best.best_doc()
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered trials; while the database is unavailable the buffer is kept and the
        write retried (store.reconnect), so an outage costs time, never a scored trial."""
        if self._buffer or self._progress:
            rows, progress = [t.row() for t in self._buffer], self._progress
            retrying(self.sessions, lambda s: records.write_trials(s, self.lease, rows, **progress),
                     what=f"writing {len(rows)} trials of job {self.lease.job_id}")
            self._buffer, self._progress = [], {}
        self._last_flush = time.monotonic()

    def save_state(self, data: bytes) -> None:
        """Replace the job's training state; trials scored so far are stored first."""
        self.flush()

        def write(s: Session) -> None:
            update_job(s, self.lease)  # still ours? (before writing megabytes)
            old = s.scalar(select(Job.state_sha256).where(Job.id == self.lease.job_id))
            sha = blobs.put(s, data)
            update_job(s, self.lease, state_sha256=sha)
            if old is not None and old != sha:
                blobs.delete_if_unreferenced(s, old)

        retrying(self.sessions, write, what=f"saving the training state of job {self.lease.job_id}")

    def set_reference(self, reference: dict[str, Any]) -> None:
        retrying(self.sessions,
                 lambda s: update_job(s, self.lease, reference=reference, stage="reference"),
                 what=f"recording the reference of job {self.lease.job_id}")

    def check(self) -> None:
        try:
            self.should_stop()
        except Stop:
            self.flush()  # a draining worker hands back every trial it has scored
            raise


def _stored_trials(session: Session, job_id: str) -> dict[int, Evaluated]:
    out: dict[int, Evaluated] = {}
    for t in records.all_trials(session, job_id):
        out[t.number] = Evaluated(
            number=t.number, stage=t.stage, candidate=list(t.candidate), keep_ratios=dict(t.keep_ratios),
            val_accuracy=t.val_accuracy, accuracy_drop=t.accuracy_drop, scored_on=t.scored_on,
            nonzero=t.nonzero, total=t.total, compression_ratio=t.compression_ratio,
            weights_ratio=t.weights_ratio, objective=t.objective if t.objective is not None else 0.0,
            feasible=t.feasible, error=t.error, duration_ms=t.duration_ms, round=t.round,
            worker=t.worker, pruned=t.pruned,
            intermediate=list(t.intermediate) if t.intermediate is not None else None,
            params_sha256=t.params_sha256,
        )
    return out


def _load(s: Session, lease: Lease,
          settings: Settings) -> tuple[JobInputs, dict[int, Evaluated], bytes | None]:
    """The job's inputs, its stored trials and its training state, if any."""
    inputs = read_job_inputs(s, lease.job_id, settings)
    state_sha = s.scalar(select(Job.state_sha256).where(Job.id == lease.job_id))
    stored = _stored_trials(s, lease.job_id)
    update_job(s, lease, stage="loading")
    return inputs, stored, blobs.read(s, state_sha) if state_sha else None


def run(sessions: sessionmaker[Session], lease: Lease, settings: Settings, device: torch.device,
        should_stop: Any, contexts: TrialContexts | None = None) -> None:
    got, stored, state = retrying(sessions, lambda s: _load(s, lease, settings),
                                  what=f"loading job {lease.job_id}")
    spec, dataset_summary = got.spec, got.dataset_summary

    arch = got.arch()
    model = zoo.build(arch).to(device).eval()
    params = got.params(device)
    splits = got.splits(settings, device)
    if stored:
        log.info("job %s: resuming with %d stored trials", lease.job_id, len(stored))

    torch.manual_seed(spec.seed)
    recorder = DbRecorder(sessions, lease, stored, should_stop)
    job = MethodJob(arch=arch, model=model, params=params, splits=splits, spec=spec,
                    recorder=recorder, state=state, settings=settings, sessions=sessions,
                    lease=lease, device=device, should_stop=should_stop,
                    contexts=contexts if contexts is not None else TrialContexts())
    result = load(spec.method).run(job)

    manifest = manifest_for(result, arch_name=arch.name, arch_config=dict(arch.config),
                            dataset_summary=dataset_summary, spec=spec, job_id=lease.job_id,
                            model_id=got.model_id, dataset_id=got.dataset_id,
                            weights_sha256=got.weights_sha256, device=str(device))
    data = checkpoint.build(result.pruned.params, manifest)
    best = {**result.best.best_doc(), "test_accuracy": result.test_accuracy}
    compact = None
    if "compact" in methods.get(spec.method).artifacts:
        compact = compact_checkpoint(arch, model, result, manifest, splits)
        if compact is not None:
            best["compact"] = compact[1]

    # (format, architecture, its config, the file) of every download the job offers
    artifacts = [("pruned", arch.name, dict(arch.config), data)]
    if compact is not None:
        artifacts.append(("compact", compact[2], compact[1]["architecture_config"], compact[0]))
    archive_sha = got.model_summary.get("archive_sha256")
    if archive_sha:  # an uploaded graph: its own .pt2 archive, with the pruned weights
        best["downloads"] = ("full shape: an uploaded graph's pruned and pt2 downloads keep every "
                             "layer's shape, with zeros where weights were pruned (tucker: the "
                             "decomposed layers composed back); filters are not removed from "
                             "uploaded graphs")
        archive = retrying(sessions, lambda s: blobs.read_cached(s, archive_sha, settings.cache_dir),
                           what=f"reading the archive of model {got.model_id}")
        artifacts.append(("pt2", arch.name, dict(arch.config),
                          pt2_weights.with_weights(archive, arch.config["program"],  # type: ignore[arg-type]
                                                   result.pruned.params)))
    for extra in result.artifacts:  # a method's own formats (workers.search.trials.ExtraArtifact)
        best[extra.format] = extra.doc
        artifacts.append((extra.format, extra.architecture, extra.architecture_config,
                          checkpoint.build(extra.tensors, {**manifest, **extra.manifest},
                                           extra.format)))

    def finish(s: Session) -> None:
        trial_queue.delete_items(s, lease)  # their outcomes are trials now (fenced: still ours?)
        old_state = s.scalar(select(Job.state_sha256).where(Job.id == lease.job_id))
        # trials_total was planned at admission as an upper bound (olmp may need fewer retraining
        # attempts): a finished job's total is what it recorded
        update_job(s, lease, status="succeeded", stage="done", best=best, reference=result.reference.doc(),
                   trials_total=Job.trials_done,
                   test_accuracy=result.test_accuracy, finished_at=utcnow(),
                   lease_expires_at=None, error=None, state_sha256=None)
        for fmt, name, config, blob in artifacts:
            s.add(Artifact(job_id=lease.job_id, format=fmt, architecture=name,
                           architecture_config=config, blob_sha256=blobs.put(s, blob)))
        if old_state is not None:
            blobs.delete_if_unreferenced(s, old_state)  # a finished job needs no training state

    retrying(sessions, finish, what=f"storing the result of job {lease.job_id}")
    log.info("job %s succeeded: %.1fx at val drop %.4f, test accuracy %.4f", lease.job_id,
             result.best.compression_ratio or 0.0, result.best.accuracy_drop or 0.0, result.test_accuracy)


def manifest_for(result: SearchResult, *, arch_name: str, arch_config: dict[str, Any],
                 dataset_summary: dict[str, Any], spec: JobSpec, job_id: str, model_id: str,
                 dataset_id: str, weights_sha256: str, device: str) -> dict[str, Any]:
    best, pruned = result.best, result.pruned
    sizes = {n: result.pruned.params[n].numel() for n in pruned.kept}
    return {
        "job_id": job_id,
        "architecture": arch_name,
        "architecture_config": arch_config,
        "preprocessing": dataset_summary.get("preprocessing"),
        "sample_shape": dataset_summary.get("sample_shape"),
        "classes": dataset_summary.get("classes"),
        "validation": dataset_summary.get("validation"),
        "layers": {n: {"kept": pruned.kept[n], "total": sizes[n], "keep_ratio": pruned.kept[n] / sizes[n],
                       "threshold": result.thresholds.get(n)} for n in pruned.kept},
        "nonzero": pruned.nonzero,
        "total": pruned.total,
        "compression_ratio": best.compression_ratio,
        "weights_ratio": best.weights_ratio,
        # with a hold-out, the pruned model's accuracy and drop are on the held-out images
        # (scored_on of them), against the reference's there (confirm_val_accuracy)
        "reference": {"val_accuracy": result.reference.val_accuracy,
                      "test_accuracy": result.reference.test_accuracy,
                      **{k: v for k, v in result.reference.doc().items()
                         if k in REFERENCE_DETAILS}},
        "pruned": {"val_accuracy": best.val_accuracy, "accuracy_drop": best.accuracy_drop,
                   "scored_on": best.scored_on, "test_accuracy": result.test_accuracy},
        "max_accuracy_drop": spec.max_accuracy_drop,
        "trial_number": best.number,
        "seed": spec.seed,
        "spec": spec.model_dump(mode="json"),
        "model_id": model_id,
        "dataset_id": dataset_id,
        "reference_weights_sha256": weights_sha256,
        "device": device,
    }


def compact_checkpoint(arch: Architecture, model: torch.nn.Module, result: SearchResult,
                       manifest: dict[str, Any], splits: Splits
                       ) -> tuple[bytes, dict[str, Any], str] | None:
    """Where whole neurons or filters are zero: the same model with smaller dense shapes, its
    architecture config, its accuracy recomputed on it, and its measured CPU speed-up."""
    try:
        small_arch, small = compaction.compact(arch, result.pruned.params)
    except compaction.NotCompactable as exc:
        log.info("no compact checkpoint: %s", exc)
        return None
    if small_arch.total_parameters >= arch.total_parameters:
        return None  # nothing whole was pruned: the compact model would be the same size
    cpu = {k: v.detach().to("cpu") for k, v in small.items()}
    small_model = zoo.build(small_arch).eval()
    test_accuracy = accuracy(small_model, cpu, splits.x_test.cpu(), splits.y_test.cpu())
    speed = compaction.cpu_speedup(arch, {k: v.detach().to("cpu") for k, v in result.pruned.params.items()},
                                   small_arch, cpu)
    doc = {"architecture_config": dict(small_arch.config), "parameters": small_arch.total_parameters,
           "shapes": {t.name: list(t.shape) for t in small_arch.tensors},
           "test_accuracy": test_accuracy, "cpu_speedup": speed}
    kept = {t.name: int(torch.count_nonzero(cpu[t.name])) for t in small_arch.prunable}
    small_manifest = {
        **manifest, "architecture": small_arch.name,
        "architecture_config": dict(small_arch.config), "compact": doc,
        # this file's own tensors (the pruned file's figures stay under "pruned" / "reference")
        "layers": {t.name: {"kept": kept[t.name], "total": t.numel,
                            "keep_ratio": kept[t.name] / t.numel, "threshold": None}
                   for t in small_arch.prunable},
        "nonzero": nonzero_parameters(small_arch, cpu),
        "total": small_arch.total_parameters}
    return checkpoint.build(cpu, small_manifest, "compact"), doc, small_arch.name
