"""Outages mid-job, with real processes over real HTTP: the API restarted, PostgreSQL restarted
(a private cluster, never the shared server), and a SQLite database locked for a while. Every job
finishes, no trial is lost, written twice or recomputed, and no worker crashes out."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from store import queue
from store.db import make_engine, make_sessionmaker, transaction, upgrade
from store.models import Job, Trial, utcnow
from tests import pg_cluster
from tests.helpers import make_token, submit, upload_dataset, upload_model
from tests.processes import Deployment, job, trials, wait_for


@pytest.fixture
def deployment_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Deployment] = []

    def make(url: str, **settings: object) -> Deployment:
        made.append(Deployment(url, tmp_path, **settings))
        return made[-1]

    yield make
    for d in made:
        d.close()


def _upload(client: httpx.Client, weights: bytes, data: bytes) -> dict[str, str]:
    return {"model_id": upload_model(client, weights)["id"],  # type: ignore[arg-type]
            "dataset_id": upload_dataset(client, data)["id"]}  # type: ignore[arg-type]


def _stored_rows(url: str, job_id: str) -> dict[int, tuple[int, datetime]]:
    """Each stored trial's row id and write time: a trial rewritten or recomputed would change them."""
    engine = make_engine(url)
    with transaction(make_sessionmaker(engine), write=False) as s:
        rows = s.execute(select(Trial.number, Trial.id, Trial.created_at).where(Trial.job_id == job_id))
        out = {n: (i, c) for n, i, c in rows}
    engine.dispose()
    return out


def _progress(client: httpx.Client, job_id: str) -> int:
    return int(job(client, job_id)["progress"]["trials_done"])


def _finished(client: httpx.Client, job_id: str) -> bool:
    status = job(client, job_id)["status"]
    assert status in ("queued", "running", "succeeded"), job(client, job_id)
    return bool(status == "succeeded")


def _assert_complete(client: httpx.Client, job_id: str, total: int) -> list[dict[str, Any]]:
    got = trials(client, job_id)
    assert [t["number"] for t in got] == list(range(total))  # unique and complete
    return got


SPEC = {"budget": {"trials": 120}, "search": {"population": 8}}  # about 15 s of work
SHORT = {"budget": {"trials": 24}, "search": {"population": 8}}


def test_the_api_restarted_mid_job_loses_nothing(deployment_factory: Any, app_db_url: str,
                                                 small_model_weights: bytes,
                                                 small_dataset_npz: bytes) -> None:
    d: Deployment = deployment_factory(app_db_url, lease_seconds=30)
    token = make_token(app_db_url)
    d.start_api()
    with d.client(token) as client:
        ids = _upload(client, small_model_weights, small_dataset_npz)
        first = submit(client, **ids, seed=1, **SPEC)  # type: ignore[arg-type]
        d.start_worker("w1")
        wait_for(lambda: _progress(client, first["id"]) >= 16, "the job is under way")
        d.kill_api()
        seen = _stored_rows(app_db_url, first["id"])
        # the worker carries on while no API runs: the job advances in the database meanwhile
        wait_for(lambda: len(_stored_rows(app_db_url, first["id"])) > len(seen) + 8,
                 "the worker writes trials while the API is down")
        d.start_api()
        assert job(client, first["id"])["status"] in ("running", "succeeded")
        second = submit(client, **ids, seed=2, **SHORT)  # type: ignore[arg-type]
        for j, total in ((first, 120), (second, 24)):
            wait_for(lambda j=j: _finished(client, j["id"]), f"job {j['id']} succeeds")
            _assert_complete(client, j["id"], total)
            assert job(client, j["id"])["attempt"] == 1  # never handed over or retried
        after = _stored_rows(app_db_url, first["id"])
        assert {n: after[n] for n in seen} == seen  # nothing stored was rewritten
    d.assert_workers_alive()
    assert d.stop_workers() == {"w1": 0}


@pytest.mark.own_database
def test_postgresql_restarted_mid_job_is_ridden_out(deployment_factory: Any, small_model_weights: bytes,
                                                    small_dataset_npz: bytes) -> None:
    reason = pg_cluster.unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs a private PostgreSQL cluster (the shared server is never restarted): {reason}")
    cluster = pg_cluster.PrivateCluster()
    try:
        url = cluster.url()
        upgrade(url)
        token = make_token(url)
        # A lease longer than the outage: the busy worker keeps its job; the idle one polls.
        d: Deployment = deployment_factory(url, lease_seconds=60)
        d.start_api()
        with d.client(token) as client:
            ids = _upload(client, small_model_weights, small_dataset_npz)
            first = submit(client, **ids, seed=1, **SPEC)  # type: ignore[arg-type]
            d.start_worker("w1")
            d.start_worker("w2")
            wait_for(lambda: _progress(client, first["id"]) >= 16, "the first job is under way")
            busy = job(client, first["id"])["worker"]
            before = trials(client, first["id"])
            seen = _stored_rows(url, first["id"])

            cluster.stop()
            r = client.get(f"/v1/jobs/{first['id']}")
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            body = r.json()
            assert body["error"] == "database_unavailable"
            assert body["detail"].startswith("the database is unreachable for now: ")
            r = client.post("/v1/jobs", json={**ids, "max_accuracy_drop": 0.01, **SHORT})
            assert r.status_code == 503 and r.json()["error"] == "database_unavailable", r.text
            idle = "w2" if busy == "w1" else "w1"
            # both workers meet the outage: one writing its trials, the other claiming
            wait_for(lambda: "database unavailable while writing" in d.log(busy),
                     "the busy worker's trial write meets the outage", timeout=60)
            wait_for(lambda: "database unavailable while claiming" in d.log(idle),
                     "the idle worker's claim meets the outage", timeout=60)
            d.assert_workers_alive()
            cluster.start()

            wait_for(lambda: client.get("/v1/jobs").status_code == 200, "the API recovers by itself")
            second = submit(client, **ids, seed=2, **SHORT)  # type: ignore[arg-type]
            for j in (first, second):
                wait_for(lambda j=j: _finished(client, j["id"]), f"job {j['id']} succeeds")
            done = job(client, first["id"])
            assert done["attempt"] == 1  # the busy worker rode the outage out, nobody took over
            got = _assert_complete(client, first["id"], 120)
            assert got[: len(before)] == before
            after = _stored_rows(url, first["id"])
            assert {n: after[n] for n in seen} == seen  # stored trials kept, not written again
            assert "resuming" not in d.log(busy)  # ... nor recomputed
            _assert_complete(client, second["id"], 24)
            assert job(client, second["id"])["status"] == "succeeded"
        d.assert_workers_alive()  # nobody crashed out
        assert d.stop_workers() == {"w1": 0, "w2": 0}
        assert d.api_starts == 1  # the API was never restarted
    finally:
        cluster.destroy()


def _lock(url: str) -> Any:
    """Hold SQLite's write lock (as a long write transaction or a backup would) until closed."""
    sessions = make_sessionmaker(make_engine(url))
    return transaction(sessions)


@pytest.mark.own_database
def test_a_locked_sqlite_database_is_ridden_out_and_a_lease_lost_meanwhile_is_dropped(
        deployment_factory: Any, sqlite_url: str, small_model_weights: bytes,
        small_dataset_npz: bytes) -> None:
    # Writers give up on the lock after 0.5 s (the default is 30 s); then they retry or answer 503.
    d: Deployment = deployment_factory(sqlite_url, lease_seconds=3, sqlite_busy_timeout_seconds=0.5)
    token = make_token(sqlite_url)
    d.start_api()
    with d.client(token) as client:
        ids = _upload(client, small_model_weights, small_dataset_npz)
        j = submit(client, **ids, seed=4, **SPEC)  # type: ignore[arg-type]
        d.start_worker("w1")
        wait_for(lambda: _progress(client, j["id"]) >= 16, "the job is under way")

        # 1. Locked for a while: reads go on, writes wait; the worker keeps its job and its trials.
        with _lock(sqlite_url):
            wait_for(lambda: "database unavailable while writing" in d.log("w1"),
                     "the worker's trial write meets the lock", timeout=60)
            assert client.get(f"/v1/jobs/{j['id']}").status_code == 200  # WAL: readers unaffected
            r = client.post("/v1/jobs", json={**ids, "max_accuracy_drop": 0.01, **SPEC})
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "database_unavailable" and "database is locked" in r.json()["detail"]
            stalled = _progress(client, j["id"])
        wait_for(lambda: _progress(client, j["id"]) > stalled + 8, "the worker carries on")
        assert job(client, j["id"])["attempt"] == 1

        # 2. Locked past the lease while another worker takes the job over: the stale worker's
        # fenced writes change nothing when the lock goes; it drops the job and carries on.
        with _lock(sqlite_url) as s:
            expires = s.scalar(select(Job.lease_expires_at).where(Job.id == j["id"]))
            assert expires is not None
            time.sleep(max(0.0, (expires - utcnow()).total_seconds()) + 0.2)
            usurper = queue.claim(s, "usurper", lease_seconds=1)
            assert usurper is not None and usurper.job_id == j["id"] and usurper.attempt == 2
            taken = {n: (i, c) for n, i, c in s.execute(
                select(Trial.number, Trial.id, Trial.created_at).where(Trial.job_id == j["id"]))}
        wait_for(lambda: "no longer ours" in d.log("w1"), "the stale worker drops the job")
        # the usurper never heartbeats: its 1 s lease runs out and w1 claims the job afresh
        wait_for(lambda: _finished(client, j["id"]), "the job succeeds")
        assert job(client, j["id"])["attempt"] == 3
        assert f"resuming with {len(taken)} stored trials" in d.log("w1")
        _assert_complete(client, j["id"], 120)
        after = _stored_rows(sqlite_url, j["id"])
        assert {n: after[n] for n in taken} == taken  # what was stored at the takeover stays
    d.assert_workers_alive()
    assert d.stop_workers() == {"w1": 0}


@pytest.mark.own_database
def test_sigterm_during_an_outage_exits_within_the_drain_bound_and_the_job_goes_on(
        deployment_factory: Any, sqlite_url: str, small_model_weights: bytes,
        small_dataset_npz: bytes) -> None:
    d: Deployment = deployment_factory(sqlite_url, lease_seconds=3, sqlite_busy_timeout_seconds=0.5,
                                       drain_seconds=2)
    token = make_token(sqlite_url)
    d.start_api()
    with d.client(token) as client:
        ids = _upload(client, small_model_weights, small_dataset_npz)
        j = submit(client, **ids, seed=5, **SHORT | {"budget": {"trials": 64}})  # type: ignore[arg-type]
        w1 = d.start_worker("w1")
        wait_for(lambda: _progress(client, j["id"]) >= 16, "the job is under way")
        with _lock(sqlite_url):
            wait_for(lambda: "database unavailable" in d.log("w1"), "the worker meets the lock")
            w1.send_signal(signal.SIGTERM)  # its drain cannot store anything while the lock holds
            assert w1.wait(timeout=60) == 128 + signal.SIGTERM
        assert "the drain took longer than 2 s" in d.log("w1")
        del d.workers["w1"]
        stored = _stored_rows(sqlite_url, j["id"])
        # the job stays the dead worker's until its lease expires; then another worker resumes it
        d.start_worker("w2")
        wait_for(lambda: _finished(client, j["id"]), "the job succeeds")
        assert job(client, j["id"])["attempt"] == 2
        assert f"resuming with {len(stored)} stored trials" in d.log("w2")
        _assert_complete(client, j["id"], 64)
        after = _stored_rows(sqlite_url, j["id"])
        assert {n: after[n] for n in stored} == stored
    assert d.stop_workers() == {"w2": 0}
