"""Rows → JSON documents the API returns."""

from __future__ import annotations

from typing import Any

from core import methods
from core.documents import REFERENCE_DETAILS
from store.models import Dataset, Job, Model, Trial, Worker


def model_doc(m: Model) -> dict[str, Any]:
    # an uploaded graph's program is stored with the model but is not part of its page
    summary = {k: v for k, v in m.summary.items() if k != "architecture_config"}
    return {"id": m.id, "name": m.name, "weights_sha256": m.weights_sha256,
            "created_at": m.created_at.isoformat(), **summary}


def _shown_config(config: dict[str, Any]) -> dict[str, Any]:
    # an uploaded graph's program travels in its downloads' manifests; the job page names it only
    if "program" in config:
        return {k: v for k, v in config.items() if k != "program"}
    return config


def dataset_doc(d: Dataset) -> dict[str, Any]:
    return {"id": d.id, "name": d.name, "builtin": d.builtin, "created_at": d.created_at.isoformat(),
            **d.summary}


def job_doc(j: Job) -> dict[str, Any]:
    spec = j.spec
    ref = j.reference or {}
    rounds = methods.get(spec["method"]).rounds
    return {
        "id": j.id,
        "status": j.status,
        "model_id": j.model_id,
        "dataset_id": j.dataset_id,
        "method": spec["method"],
        "optimizer": spec["optimizer"],
        "max_accuracy_drop": spec["max_accuracy_drop"],
        "seed": spec["seed"],
        "spec": spec,
        "progress": {
            "trials_done": j.trials_done,
            "trials_total": j.trials_total,
            "fraction": j.trials_done / j.trials_total if j.trials_total else 0.0,
            "stage": j.stage,
            "round": j.round if rounds is not None else None,
            "rounds": rounds(spec) if rounds is not None else None,
        },
        "reference": {
            "val_accuracy": ref.get("val_accuracy"),
            "test_accuracy": ref.get("test_accuracy"),
            "total_parameters": ref.get("total_parameters"),
            **{k: ref[k] for k in REFERENCE_DETAILS if k in ref},
        },
        "best": j.best,
        "test_accuracy": j.test_accuracy,
        # the downloads it offers: GET /v1/jobs/{id}/checkpoint?format=<format>
        "artifacts": [{"format": a.format, "architecture": a.architecture,
                       "architecture_config": _shown_config(a.architecture_config),
                       "sha256": a.blob_sha256}
                      for a in j.artifacts],
        "error": j.error,
        "attempt": j.attempt,
        "worker": j.lease_owner if j.status == "running" else None,
        "created_at": j.created_at.isoformat(),
        "started_at": j.started_at.isoformat() if j.started_at else None,
        "finished_at": j.finished_at.isoformat() if j.finished_at else None,
        "updated_at": j.updated_at.isoformat(),
    }


def trial_doc(t: Trial) -> dict[str, Any]:
    return {
        "number": t.number,
        "stage": t.stage,
        "round": t.round,
        "candidate": t.candidate,
        "keep_ratios": t.keep_ratios,
        "metrics": {
            "val_accuracy": t.val_accuracy,
            "accuracy_drop": t.accuracy_drop,
            "scored_on": t.scored_on,
            "nonzero": t.nonzero,
            "total": t.total,
            "compression_ratio": t.compression_ratio,
            "weights_ratio": t.weights_ratio,
            "objective": t.objective,
        },
        "feasible": t.feasible,
        "error": t.error,
        "duration_ms": t.duration_ms,
        # training trials (methods l0, sgl): the worker that ran it, whether a pruner stopped it,
        # and its validation accuracy after each epoch
        "worker": t.worker,
        "pruned": t.pruned,
        "intermediate": t.intermediate,
    }


def worker_doc(w: Worker) -> dict[str, Any]:
    return {"name": w.name, "host": w.host, "pid": w.pid, "device": w.device,
            "current_job_id": w.current_job_id, "last_seen": w.last_seen.isoformat()}
