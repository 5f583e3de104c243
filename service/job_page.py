"""The job page: what it shows (built once per render from the job's rows) and its live parts,
which the browser swaps in place while the job runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.orm import Session

from core.stages import steering
from service import charts
from service.job_figures import (
    convergence,
    pareto_front,
    rounds,
    scored,
    stages,
    thinned,
    timing,
)
from service.templating import TEMPLATES
from service.views import job_doc, trial_doc
from store import records
from store.models import Blob, Dataset, Job, Model

PAGE_SIZE = 50
FINAL = ("succeeded", "failed", "cancelled")
# id of the element on the page → the template that renders it
PARTS = {"job-summary": "_job_summary.html", "job-best": "_job_best.html",
         "job-charts": "_job_charts.html", "job-trials": "_job_trials.html"}
SORT_LABELS = {"number": "#", "ratio": "ratio", "accuracy": "val. accuracy", "drop": "drop",
               "nonzero": "non-zero", "duration": "ms"}
# The scatter's accuracy axis stops this far below the reference (or 4 δ, if larger); trials
# further down (a model pruned to nothing scores ~10 %) sit on the bottom edge.
Y_SPAN = 0.05


@dataclass(frozen=True)
class TableState:
    """Sort, page and stage filter of the trial table; unknown values fall back to the default."""

    sort: str = "number"
    desc: bool = False
    page: int = 1
    stage: str | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> TableState:
        sort = params.get("sort", "number")
        page = params.get("page", "1")
        return cls(sort=sort if sort in records.TRIAL_SORTS else "number",
                   desc=params.get("dir") == "desc",
                   page=max(int(page), 1) if page.isdigit() and len(page) < 9 else 1,
                   stage=params.get("stage") or None)

    def query(self, **changes: Any) -> str:
        s = replace(self, **changes)
        items = {"sort": s.sort if s.sort != "number" else None, "dir": "desc" if s.desc else None,
                 "page": s.page if s.page != 1 else None, "stage": s.stage}
        return urlencode({k: v for k, v in items.items() if v is not None})


def version(job: Job) -> str:
    """Changes whenever anything the page shows of the job changes (polls compare it)."""
    return f"{job.status}.{job.trials_done}.{job.attempt}.{job.updated_at.timestamp():.6f}"


def _layer_bars(model: Model | None, best: dict[str, Any] | None) -> list[charts.LayerBar]:
    if not best or not best.get("keep_ratios"):
        return []
    sizes = {layer["name"]: int(layer["parameters"])
             for layer in (model.summary.get("layers", []) if model else [])}
    ratios: dict[str, float] = best["keep_ratios"]
    order = [n for n in sizes if n in ratios] + [n for n in ratios if n not in sizes]
    return [charts.LayerBar(n, sizes.get(n, 0), float(ratios[n])) for n in order]


def context(session: Session, job: Job, state: TableState, now: datetime) -> dict[str, Any]:
    doc = job_doc(job)
    spec = job.spec
    method, delta = str(spec.get("method", "")), float(spec.get("max_accuracy_drop", 0.0))
    model, dataset = session.get(Model, job.model_id), session.get(Dataset, job.dataset_id)
    points = records.trial_points(session, job.id)
    front = pareto_front(points)
    steps = convergence(points, method)
    job_rounds = rounds(points)
    stage_order = stages(points)
    best = job.best
    ref = job.reference or {}
    full_ref = ref.get("val_accuracy")
    subset_ref = (ref.get("scored_val_accuracy")
                  if (spec.get("search") or {}).get("validation_subset") else None)
    y_floor = full_ref - max(4 * delta, Y_SPAN) if full_ref is not None else None
    keep = {p.number for p in front} | {s.number for s in steps}
    if best:
        keep.add(int(best["trial_number"]))
    shown = thinned(points, keep)
    all_scored = len(scored(points))
    clipped = sum(1 for p in shown if y_floor is not None and (p.val_accuracy or 0.0) < y_floor)
    last = points[-1].number if points else 0
    reported = (int(best["trial_number"]), float(best["compression_ratio"])) if best else None

    page_rows, table_total = records.list_trials(
        session, job.id, offset=(state.page - 1) * PAGE_SIZE, limit=PAGE_SIZE, sort=state.sort,
        descending=state.desc, stage=state.stage)
    pruned = next((a for a in job.artifacts if a.format == "pruned"), None)
    checkpoint = session.get(Blob, pruned.blob_sha256) if pruned is not None else None
    return {
        "job": doc,
        "version": version(job),
        "final": job.status in FINAL,
        "now": now,
        "timing": timing(job.status, job.started_at, job.finished_at, now, job.trials_done,
                         job.trials_total),
        "model": model,
        "dataset": dataset,
        "delta": delta,
        "best": best,
        "best_round": next((p.round for p in points if best and p.number == best["trial_number"]),
                           None),
        "steering": sorted(steering(method)),
        # olmp scores its round searches on training images: the table says so on those rows
        "search_split": ref.get("search_split"),
        "reference": doc["reference"],
        "multi_round": len(job_rounds) > 1,
        "rounds": job_rounds,
        "stage_order": stage_order,
        "shapes": {s: charts.SHAPES[i % len(charts.SHAPES)] for i, s in enumerate(stage_order)},
        "steps": steps,
        "front": front,
        "scatter_shown": len(shown),
        "scatter_total": all_scored,
        "scatter_clipped": clipped,
        "y_floor": y_floor,
        "feasible_count": sum(1 for p in points if p.feasible),
        "trial_count": len(points),
        "layer_bars": _layer_bars(model, best),
        "charts": {
            "convergence": charts.convergence("chart-convergence", steps, last,
                                              max(job.trials_total - 1, last), job_rounds, reported),
            "scatter": charts.scatter("chart-scatter", shown, front, stage_order, full_ref, delta,
                                      subset_ref, y_floor),
            "layers": charts.layers("chart-layers", _layer_bars(model, best)),
        },
        "trials": [trial_doc(t) for t in page_rows],
        "table": state,
        "table_total": table_total,
        "pages": max(-(-table_total // PAGE_SIZE), 1),
        "page_size": PAGE_SIZE,
        "sort_labels": SORT_LABELS,
        "checkpoint_bytes": checkpoint.size if checkpoint else None,
    }


def render_parts(ctx: dict[str, Any], names: tuple[str, ...] = tuple(PARTS)) -> dict[str, str]:
    return {name: TEMPLATES.get_template(PARTS[name]).render(ctx) for name in names}
