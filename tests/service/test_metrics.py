"""GET /metrics: Prometheus' own parser reads it; request latency by route and status from this
process; jobs, queue, trials, workers from the database, moving as a job runs and reported alike
by two API processes on the same database; admin tokens only."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from core.settings import Settings
from service.app import create_app
from tests.helpers import bearer, make_token, submit, upload_dataset, upload_model
from workers.jobs.loop import Worker


def scrape(client: TestClient, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics", headers=bearer(token))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def _db_figures(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[Any, float]:
    return {k: v for k, v in samples.items() if k[0].startswith("thresher_")
            and not k[0].startswith("thresher_http") and "heartbeat_age" not in k[0]}


def test_metrics_move_as_a_job_runs(settings: Settings, small_model_weights: bytes,
                                    small_dataset_npz: bytes) -> None:
    admin = make_token(settings.database_url, "root", admin=True)
    user = make_token(settings.database_url, "alice")
    with TestClient(create_app(settings), headers=bearer(user)) as client, \
            TestClient(create_app(settings)) as other:
        assert client.get("/metrics").status_code == 403  # not an admin token
        before = scrape(client, admin)
        assert before[("thresher_jobs", (("status", "queued"),))] == 0
        ids = {"model_id": upload_model(client, small_model_weights)["id"],
               "dataset_id": upload_dataset(client, small_dataset_npz)["id"]}
        job = submit(client, **ids, budget={"trials": 6})
        queued = scrape(client, admin)
        assert queued[("thresher_queue_depth", ())] == 1
        Worker(settings, name="metrics").serve(exit_when_idle=True)
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
        after = scrape(client, admin)
        assert after[("thresher_jobs", (("status", "succeeded"),))] == 1
        assert after[("thresher_queue_depth", ())] == 0
        assert after[("thresher_trials_stored_total", (("method", "magnitude"),))] == 6
        assert after[("thresher_trial_duration_seconds_count", ())] == 6
        assert after[("thresher_workers", ())] == 1
        assert ("thresher_worker_heartbeat_age_seconds", (("worker", "metrics"),)) in after
        # this process's requests, by route template and status
        key = ("thresher_http_request_duration_seconds_count",
               (("method", "POST"), ("route", "/v1/jobs"), ("status", "201")))
        assert after[key] == 1
        # a second API process on the same database reports the same database figures
        assert _db_figures(scrape(other, admin)) == _db_figures(scrape(client, admin))
