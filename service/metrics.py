"""GET /metrics (admin token), Prometheus' text format: this API process's request latency by
route and status, and figures read from the database at each scrape (jobs by status, the queue's
depth, trials stored by method and their durations, workers and the age of their heartbeats).
The database is the only state workers share, so every API process reports those alike."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from service.auth import Principal, current_principal, require_admin
from service.errors import ERROR_RESPONSES
from service.routes_jobs import JOB_STATUSES
from store import records
from store.db import transaction
from store.models import utcnow

router = APIRouter(tags=["metrics"], responses=ERROR_RESPONSES)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FleetCollector(Collector):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with transaction(self.sessions, write=False) as s:
            f = records.fleet_figures(s, utcnow())
        jobs = GaugeMetricFamily("thresher_jobs", "jobs by status", labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], f.jobs_by_status.get(status, 0))
        yield jobs
        yield GaugeMetricFamily("thresher_queue_depth", "jobs queued, waiting for a worker",
                                value=f.jobs_by_status.get("queued", 0))
        trials = CounterMetricFamily("thresher_trials_stored", "trials stored, by method", labels=["method"])
        for method, n in sorted(f.trials_by_method.items()):
            trials.add_metric([method], n)
        yield trials
        durations = HistogramMetricFamily("thresher_trial_duration_seconds", "how long stored trials took")
        durations.add_metric([], [(str(b), n) for b, n in f.trial_seconds_buckets.items()]
                             + [("+Inf", f.trial_count)], sum_value=f.trial_seconds_sum)
        yield durations
        yield GaugeMetricFamily("thresher_workers", "workers that have registered", value=len(f.workers))
        age = GaugeMetricFamily("thresher_worker_heartbeat_age_seconds", "seconds since a worker's last "
                                "heartbeat", labels=["worker"])
        for name, seconds in sorted(f.workers.items()):
            age.add_metric([name], seconds)
        yield age


def install(app: object, sessions: sessionmaker[Session]) -> None:
    """A registry of the app's own (not the process-global one: tests build many apps)."""
    registry = CollectorRegistry()
    latency = Histogram("thresher_http_request_duration_seconds", "API request latency, this process",
                        ["route", "method", "status"], registry=registry)
    registry.register(FleetCollector(sessions))
    app.state.metrics_registry = registry  # type: ignore[attr-defined]

    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        # the route template the router matched (never the raw path: ids would explode the labels)
        matched = request.scope.get("route")
        route = getattr(matched, "path", None) or "unmatched"
        latency.labels(route, request.method, str(response.status_code)).observe(time.perf_counter() - started)
        return response

    app.middleware("http")(measure)  # type: ignore[attr-defined]


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
def metrics(request: Request, principal: Principal = Depends(current_principal)) -> Response:
    require_admin(principal)  # worker names and every principal's job counts
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE)
