"""The dashboard through the real app and database: sign-in, ownership, the new-job form's
validation (the API's messages, next to their fields), the job page and its polling."""

from __future__ import annotations

import asyncio
import json
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.settings import Settings
from service.app import create_app
from store import queue, records
from store.db import make_engine, make_sessionmaker, transaction
from store.models import Job
from tests.conftest import npz_bytes
from tests.helpers import bearer, make_token, row_counts, submit, text_of, upload_model
from tests.service.test_api import _arrays, _weights


@dataclass
class World:
    app: FastAPI
    url: str
    tokens: dict[str, str]

    def browser(self, who: str) -> TestClient:
        """A client that signs in the way the dashboard does: with the session cookie."""
        return TestClient(self.app, cookies={"thresher_session": self.tokens[who]})

    def api(self, who: str) -> TestClient:
        return TestClient(self.app, headers=bearer(self.tokens[who]))


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    url = settings.database_url
    tokens = {"alice": make_token(url, "alice"), "bob": make_token(url, "bob"),
              "root": make_token(url, "root", admin=True)}
    yield World(create_app(settings), url, tokens)


def _job(world: World, who: str = "alice", **spec: Any) -> dict[str, Any]:
    api = world.api(who)
    model = upload_model(api, _weights())
    ds = api.post("/v1/datasets", json={"builtin": "mnist"}).json()
    return submit(api, model["id"], ds["id"], **spec)


def _write_trials(url: str, rows: list[dict[str, Any]], **job_values: Any) -> None:
    """Write trials as a worker does (claim, then fenced bulk writes): the only queued job."""
    sessions = make_sessionmaker(make_engine(url))
    with transaction(sessions) as s:
        lease = queue.claim(s, "test-worker", lease_seconds=600)
    assert lease is not None
    with transaction(sessions) as s:
        records.write_trials(s, lease, rows, **job_values)


def _trial(n: int, ratio: float, acc: float, *, feasible: bool = True, stage: str = "search",
           round_: int = 0) -> dict[str, Any]:
    return {"number": n, "stage": stage, "round": round_, "candidate": [-1.0, -0.5, 0.0],
            "keep_ratios": {"fc1.weight": 0.1, "fc2.weight": 0.3, "fc3.weight": 1.0},
            "val_accuracy": acc, "accuracy_drop": 0.95 - acc, "scored_on": 6000,
            "nonzero": round(266_610 / ratio), "total": 266_610, "compression_ratio": ratio,
            "weights_ratio": ratio, "objective": -1.0, "feasible": feasible, "error": None,
            "duration_ms": 10.0 + n}


# -- sign-in and ownership ---------------------------------------------------------------------

def test_pages_need_a_session_and_sign_in_returns_to_the_page(world: World) -> None:
    anon = TestClient(world.app)
    r = anon.get("/jobs/abc?sort=ratio", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fjobs%2Fabc%3Fsort%3Dratio"
    assert anon.get("/", follow_redirects=False).headers["location"] == "/login"
    assert 'name="next" value="/jobs/abc?sort=ratio"' in anon.get("/login?next=/jobs/abc?sort=ratio").text
    back = anon.post("/login", data={"token": world.tokens["alice"], "next": "/jobs/abc"},
                     follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == "/jobs/abc"
    for elsewhere in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        r = anon.post("/login", data={"token": world.tokens["alice"], "next": elsewhere},
                      follow_redirects=False)
        assert r.headers["location"] == "/", elsewhere
    for path in ("/ui/jobs", "/ui/workers", "/static/dashboard.css", "/docs/assets/swagger-ui.css"):
        assert TestClient(world.app).get(path).status_code == 401, path
    assert world.browser("alice").get("/static/dashboard.js").headers["content-type"].startswith(
        "text/javascript")


def test_another_principal_gets_404_on_the_job_page_and_its_polling(world: World) -> None:
    job = _job(world, "alice")
    alice, bob, root = world.browser("alice"), world.browser("bob"), world.browser("root")
    assert alice.get(f"/jobs/{job['id']}").status_code == 200
    page = bob.get(f"/jobs/{job['id']}")
    assert page.status_code == 404 and "Not found" in page.text and "magnitude" not in page.text
    for path in (f"/ui/jobs/{job['id']}", f"/ui/jobs/{job['id']}/trials"):
        r = bob.get(path)
        assert r.status_code == 404 and r.json()["error"] == "not_found", path
    assert bob.post(f"/jobs/{job['id']}/cancel", follow_redirects=False).status_code == 404
    assert world.api("alice").get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    assert job["id"] not in bob.get("/").text and job["id"] not in bob.get("/ui/jobs").text
    assert job["id"] in alice.get("/").text
    assert root.get(f"/jobs/{job['id']}").status_code == 200 and job["id"] in root.get("/").text


def test_workers_are_for_admins_only(world: World) -> None:
    assert world.browser("alice").get("/workers").status_code == 403
    assert world.browser("alice").get("/ui/workers").status_code == 403
    assert 'href="/workers"' not in world.browser("alice").get("/").text
    page = world.browser("root").get("/workers")
    assert page.status_code == 200 and "No worker has started yet" in page.text


def test_api_docs_load_nothing_from_elsewhere(world: World) -> None:
    docs = world.browser("alice").get("/docs").text
    assert not re.search(r"(src|href)=['\"]https?:", docs), docs
    for asset in re.findall(r"/docs/assets/[\w.-]+", docs):
        assert world.browser("alice").get(asset).status_code == 200, asset


# -- the new-job form ------------------------------------------------------------------------

def _form(**changes: str) -> dict[str, str]:
    base = {"model_source": "upload", "architecture": "lenet-300-100", "dataset_source": "builtin",
            "builtin": "mnist", "method": "magnitude", "optimizer": "nevergrad:NGOpt",
            "max_accuracy_drop": "0.01", "budget.trials": "50", "seed": "3", "options": ""}
    return {**base, **changes}


def _files(weights: bytes | None = None, dataset: bytes | None = None) -> dict[str, Any]:
    files: dict[str, Any] = {"weights": ("w.safetensors", _weights() if weights is None else weights)}
    if dataset is not None:
        files["dataset_file"] = ("d.npz", dataset)
    return files


def _api_spec_detail(world: World, **spec: Any) -> str:
    api = world.api("alice")
    model = upload_model(api, _weights())
    ds = api.post("/v1/datasets", json={"builtin": "mnist"}).json()
    body = {"model_id": model["id"], "dataset_id": ds["id"], "method": "magnitude",
            "optimizer": "nevergrad:NGOpt", "max_accuracy_drop": 0.01, "budget": {"trials": 50},
            "seed": 3, **spec}
    r = api.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    return str(r.json()["detail"])


def _api_upload_detail(world: World, route: str, data: dict[str, str], field: str, payload: bytes) -> str:
    r = world.api("alice").post(route, data=data, files={field: ("f", payload)})
    assert r.status_code == 422, r.text
    return str(r.json()["detail"])


# (case, form changes, files, where the message shows, how the API words the same mistake)
SPEC_CASES = [
    ("δ out of range", {"max_accuracy_drop": "1.5"}, "max_accuracy_drop", {"max_accuracy_drop": 1.5}),
    ("budget of 0", {"budget.trials": "0"}, "budget-trials", {"budget": {"trials": 0}}),
    ("seed not a number", {"seed": "abc"}, "seed", {"seed": "abc"}),
    ("negative seed", {"seed": "-1"}, "seed", {"seed": -1}),
    ("unknown optimizer", {"optimizer": "nevergrad:Nope"}, "optimizer", {"optimizer": "nevergrad:Nope"}),
    ("unknown method", {"method": "prune-it-all"}, "method", {"method": "prune-it-all"}),
    ("bad search option", {"options": '{"search": {"population": 0}}'}, "options",
     {"search": {"population": 0}}),
    ("unknown spec field", {"options": '{"bogus": 1}'}, "options", {"bogus": 1}),
    ("olmp budget under its rounds", {"method": "olmp", "budget.trials": "5",
                                      "options": '{"olmp": {"rounds": 10}}'}, "budget-trials",
     {"method": "olmp", "budget": {"trials": 5}, "olmp": {"rounds": 10}}),
    ("parallel trials for a method that scores populations", {"budget.parallel": "2"},
     "budget-parallel", {"budget": {"trials": 50, "parallel": 2}}),
    ("no trial at once", {"method": "l0", "budget.parallel": "0"}, "budget-parallel",
     {"method": "l0", "budget": {"trials": 50, "parallel": 0}}),
]


@pytest.mark.parametrize(("case", "changes", "where", "api_spec"), SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_a_bad_spec_field_gets_the_api_s_message_next_to_it(world: World, case: str, changes: dict[str, str],
                                                          where: str, api_spec: dict[str, Any]) -> None:
    expected = _api_spec_detail(world, **api_spec)
    before = row_counts(world.url)
    r = world.browser("alice").post("/jobs/new", data=_form(**changes), files=_files())
    assert r.status_code == 422
    assert text_of(r.text, f"err-{where}") == expected
    assert expected in (text_of(r.text, "error-summary") or "")
    assert row_counts(world.url) == before  # nothing half-written
    # the field is marked for assistive technology and the other values are kept
    field = re.search(rf'<[^>]*aria-describedby="[^"]*err-{where}"[^>]*>', r.text)
    assert field and 'aria-invalid="true"' in field.group(0)
    assert 'value="3"' in r.text or where == "seed"


def test_bad_uploads_get_the_api_s_message_next_to_their_field(world: World) -> None:
    browser = world.browser("alice")
    wrong_shape = _weights(**{"fc2.weight": np.zeros((100, 299), np.float32)})
    no_labels = npz_bytes(_arrays(y_test=None))
    cases = [
        ("weights", _form(), _files(weights=wrong_shape),
         _api_upload_detail(world, "/v1/models", {"architecture": "lenet-300-100"}, "weights", wrong_shape)),
        ("weights", _form(), _files(weights=pickle.dumps({"fc1.weight": [1.0]})),
         _api_upload_detail(world, "/v1/models", {"architecture": "lenet-300-100"}, "weights",
                            pickle.dumps({"fc1.weight": [1.0]}))),
        ("architecture", _form(architecture="vgg-99"), _files(),
         _api_upload_detail(world, "/v1/models", {"architecture": "vgg-99"}, "weights", _weights())),
        ("dataset_file", _form(dataset_source="upload"), _files(dataset=no_labels),
         _api_upload_detail(world, "/v1/datasets", {}, "file", no_labels)),
    ]
    before = row_counts(world.url)
    for where, form, files, expected in cases:
        r = browser.post("/jobs/new", data=form, files=files)
        assert r.status_code == 422 and text_of(r.text, f"err-{where}") == expected, where
    r = browser.post("/jobs/new", data=_form(), files={"weights": ("", b"")})
    assert text_of(r.text, "err-weights") == "weights: choose the model's .safetensors file"
    r = browser.post("/jobs/new", data=_form(options="{not json"), files=_files())
    assert (text_of(r.text, "err-options") or "").startswith("options: not valid JSON")
    assert row_counts(world.url) == before


def test_an_incompatible_dataset_is_refused_at_the_data_fieldset(world: World) -> None:
    rgb = npz_bytes(_arrays(x_train=np.zeros((50, 3, 32, 32), np.float32),
                            x_test=np.zeros((20, 3, 32, 32), np.float32)))
    api = world.api("alice")
    model = upload_model(api, _weights())
    ds = api.post("/v1/datasets", files={"file": ("d.npz", rgb)}).json()
    expected = api.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": ds["id"],
                                          "max_accuracy_drop": 0.01, "budget": {"trials": 5}}).json()
    before = row_counts(world.url)
    r = world.browser("alice").post("/jobs/new", data=_form(dataset_source="upload"),
                                    files=_files(dataset=rgb))
    assert r.status_code == 422 and text_of(r.text, "err-dataset") == expected["detail"]
    assert "expects [1, 28, 28]" in expected["detail"]
    assert row_counts(world.url) == before


def test_the_form_queues_the_job_the_api_would_and_reuses_uploads(world: World) -> None:
    browser = world.browser("alice")
    options = {"search": {"population": 4}}
    r = browser.post("/jobs/new", data=_form(options=json.dumps(options)), files=_files(),
                     follow_redirects=False)
    assert r.status_code == 303, text_of(r.text, "error-summary")
    job_id = r.headers["location"].removeprefix("/jobs/")
    job = world.api("alice").get(f"/v1/jobs/{job_id}").json()
    twin = _job(world, "alice", max_accuracy_drop=0.01, budget={"trials": 50}, seed=3, **options)
    strip = lambda spec: {k: v for k, v in spec.items() if k not in ("model_id", "dataset_id")}  # noqa: E731
    assert strip(job["spec"]) == strip(twin["spec"])
    assert job["status"] == "queued" and job["progress"]["trials_total"] == 50
    model = world.api("alice").get(f"/v1/models/{job['model_id']}").json()
    assert model["architecture"] == "lenet-300-100" and model["name"] == "w.safetensors"
    page = browser.get(r.headers["location"])
    assert text_of(page.text, "job-status") == "queued"

    # a second job on the same model and dataset, picked from the earlier uploads
    before = row_counts(world.url)
    r = browser.post("/jobs/new", data=_form(model_source="existing", model_id=job["model_id"],
                                             dataset_source="existing", dataset_id=job["dataset_id"],
                                             seed="4"), follow_redirects=False)
    assert r.status_code == 303
    after = row_counts(world.url)
    assert (after["model"], after["dataset"], after["job"]) == (before["model"], before["dataset"],
                                                                 before["job"] + 1)
    # another principal cannot pick alice's model
    r = world.browser("bob").post("/jobs/new", data=_form(model_source="existing", model_id=job["model_id"]))
    assert r.status_code == 422
    assert text_of(r.text, "err-model_id") == f"model {job['model_id']!r} not found"


def test_the_form_offers_what_the_code_registers(world: World) -> None:
    from core import methods
    from core.architectures import registry
    from core.optimizers import OPTIMIZERS

    html = world.browser("alice").get("/jobs/new").text
    expected = {"method": list(methods.names()), "optimizer": list(OPTIMIZERS),
                "architecture": sorted(registry()), "builtin": ["mnist", "fashion-mnist"]}
    for select, names in expected.items():
        block = re.search(rf'<select id="{select}".*?</select>', html, re.S)
        assert block is not None and re.findall(r'<option value="([^"]+)"', block.group(0)) == names


# -- the job page and its polling ------------------------------------------------------------

def test_a_multi_round_job_page_polls_and_shows_rounds_and_sorted_trials(world: World) -> None:
    job = _job(world, "alice", method="olmp", budget={"trials": 20}, olmp={"rounds": 4})
    jid = job["id"]
    browser = world.browser("alice")
    first = browser.get(f"/ui/jobs/{jid}").json()
    assert browser.get(f"/ui/jobs/{jid}", params={"v": first["version"]}).status_code == 204
    assert first["final"] is False and text_of(first["parts"]["job-summary"], "job-status") == "queued"

    rows = [_trial(0, 1.0, 0.95, stage="reference")]
    for r in range(4):
        base = 1 + r * 6
        rows += [_trial(base + i, 2.0 + r * 3 + i, 0.95 - 0.002 * i, feasible=i < 4, round_=r)
                 for i in range(5)]
        rows.append(_trial(base + 5, 1.5 + r * 2, 0.948, stage="adjust", round_=r))
    best = {"trial_number": 24, "stage": "adjust", "compression_ratio": 7.5, "weights_ratio": 7.6,
            "nonzero": round(266_610 / 7.5), "total": 266_610, "val_accuracy": 0.948,
            "accuracy_drop": 0.002, "scored_on": 6000,
            "keep_ratios": {"fc1.weight": 0.1, "fc2.weight": 0.3, "fc3.weight": 1.0}}
    _write_trials(world.url, rows, trials_done=len(rows), stage="adjust", best=best,
                  reference={"val_accuracy": 0.95, "total_parameters": 266_610,
                             "scored_val_accuracy": 0.99, "scored_on": 1000,
                             "search_split": "train"})

    live = browser.get(f"/ui/jobs/{jid}", params={"v": first["version"]})
    assert live.status_code == 200
    parts = live.json()["parts"]
    assert live.json()["version"] != first["version"]
    charts_html = parts["job-charts"]
    assert charts_html.count('class="round') >= 4  # one shaded band per round
    # search trials steer OLMP and never count as its best: only reference and adjust trials do
    steps = [int(n) for n in re.findall(r'class="step" data-trial="(\d+)"', charts_html)]
    assert steps == [0, 6, 12, 18, 24]
    assert len(re.findall(r'class="pt [^"]*" data-trial=', charts_html)) == len(rows)
    assert text_of(parts["job-best"], "best-ratio") == "7.50×"
    assert "round 3" in (text_of(parts["job-best"], "best-trial") or "")

    # the trial table sorts by compression ratio, highest first, in pages of 50
    table = browser.get(f"/ui/jobs/{jid}/trials", params={"sort": "ratio", "dir": "desc"}).json()
    shown = [int(n) for n in re.findall(r'<tr data-trial="(\d+)"', table["parts"]["job-trials"])]
    by_ratio = sorted(rows, key=lambda t: (-t["compression_ratio"], t["number"]))
    assert shown == [t["number"] for t in by_ratio]
    # the search rows were scored on training images, and their "scored on" cell says so
    cells = dict(re.findall(r'<tr data-trial="(\d+)".*?<td class="num">([^<]*(?:<span class="muted">train</span>)?)</td>\s*<td class="num">[\d.]+</td>\s*</tr>',
                            table["parts"]["job-trials"], flags=re.S))
    assert len(cells) == len(rows)
    assert {n for n, c in cells.items() if "train" in c} == {str(t["number"]) for t in rows
                                                             if t["stage"] == "search"}
    only_adjust = browser.get(f"/ui/jobs/{jid}/trials", params={"stage": "adjust"}).json()
    assert re.findall(r'<tr data-trial="(\d+)"', only_adjust["parts"]["job-trials"]) == ["6", "12", "18", "24"]
    page = browser.get(f"/jobs/{jid}", params={"sort": "ratio", "dir": "desc"}).text
    assert 'aria-sort="descending"' in page and f'data-poll="/ui/jobs/{jid}?sort=ratio&amp;dir=desc"' in page


def test_a_derived_download_shows_its_size_flops_and_speed_in_both_layouts(world: World) -> None:
    job = _job(world, "alice")
    latency = {"threads": 1,
               "1": {"dense_ms": 1.2, "decomposed_ms": 0.7, "speedup": 1.71},
               "256": {"dense_ms": 157.4, "decomposed_ms": 104.2, "speedup": 1.51,
                       "channels_last": {"dense_ms": 147.3, "decomposed_ms": 68.1, "speedup": 2.16}}}
    best = {"trial_number": 0, "stage": "search", "compression_ratio": 5.47, "weights_ratio": 5.47,
            "nonzero": round(266_610 / 5.47), "total": 266_610, "val_accuracy": 0.948,
            "accuracy_drop": 0.002, "scored_on": 6000,
            "decomposed": {"parameters": 52_727, "flops_ratio": 4.76, "test_accuracy": 0.9357,
                           "cpu_latency": latency},
            # a compact download measured before channels-last timings: NCHW only
            "compact": {"parameters": 40_000, "cpu_latency": {"threads": 1, "256": {
                "dense_ms": 10.0, "compact_ms": 5.0, "speedup": 2.0}}}}
    _write_trials(world.url, [_trial(0, 5.47, 0.948)], trials_done=1, stage="search", best=best)
    parts = world.browser("alice").get(f"/ui/jobs/{job['id']}").json()["parts"]
    assert text_of(parts["job-best"], "best-decomposed") == (
        "52,727 parameters, 4.76× fewer FLOPs, 1.51× as fast on CPU (batch 256; 2.16× with both "
        "channels-last) test 0.9357")
    assert text_of(parts["job-best"], "best-compact") == "40,000 parameters, 2.00× as fast on CPU (batch 256)"


def test_cancel_from_the_dashboard(world: World) -> None:
    job = _job(world, "alice")
    browser = world.browser("alice")
    assert 'id="cancel"' in browser.get(f"/jobs/{job['id']}").text
    r = browser.post(f"/jobs/{job['id']}/cancel", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{job['id']}"
    assert world.api("alice").get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    final = browser.get(f"/ui/jobs/{job['id']}").json()
    assert final["final"] is True and 'id="cancel"' not in final["parts"]["job-summary"]
    assert text_of(final["parts"]["job-summary"], "job-status") == "cancelled"


def _status_as_the_response_starts(world: World, path: str, headers: dict[str, str],
                                   job_id: str) -> tuple[int, str]:
    """POST `path` straight into the ASGI app and read the job's status from the database, over
    a connection of its own, at the moment the app starts its response: what a client that
    follows the response at once would see."""
    engine = make_engine(world.url)
    seen: list[tuple[int, str]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            with transaction(make_sessionmaker(engine), write=False) as s:
                status = s.get_one(Job, job_id).status
            seen.append((message["status"], status))

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    try:
        asyncio.run(world.app(scope, receive, send))
    finally:
        engine.dispose()
    assert len(seen) == 1
    return seen[0]


def test_a_cancel_is_committed_before_its_response_starts(world: World) -> None:
    # the dashboard's button answers 303: the page it redirects to must show the job cancelled
    job = _job(world, "alice")
    assert _status_as_the_response_starts(
        world, f"/jobs/{job['id']}/cancel", {"cookie": f"thresher_session={world.tokens['alice']}"},
        job["id"]) == (303, "cancelled")
    # and the API's cancel, for the same reason
    job = _job(world, "alice")
    assert _status_as_the_response_starts(
        world, f"/v1/jobs/{job['id']}/cancel", bearer(world.tokens["alice"]), job["id"]
    ) == (200, "cancelled")


def test_every_route_that_takes_the_writing_transaction_commits_before_it_answers(
        world: World) -> None:
    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute

    from service.deps import db_write

    def writes(d: Dependant) -> list[Dependant]:
        return [d] * (d.call is db_write) + [w for sub in d.dependencies for w in writes(sub)]

    def routes(rs: list[Any]) -> Iterator[APIRoute]:
        for r in rs:  # included routers nest (FastAPI keeps them as they were included)
            if isinstance(r, APIRoute):
                yield r
            elif hasattr(r, "original_router"):
                yield from routes(r.original_router.routes)

    found = {f"{sorted(r.methods)[0]} {r.path}": [w.scope for w in writes(r.dependant)]
             for r in routes(world.app.routes)}
    found = {route: scopes for route, scopes in found.items() if scopes}
    assert {"POST /v1/jobs", "POST /v1/jobs/{job_id}/cancel", "POST /jobs/{job_id}/cancel"} <= set(found)
    assert all(scopes == ["function"] for scopes in found.values()), found


def test_a_failed_job_shows_its_error_and_the_list_filters_by_status(world: World) -> None:
    failed, queued = _job(world, "alice"), _job(world, "alice")
    sessions = make_sessionmaker(make_engine(world.url))
    with transaction(sessions) as s:
        lease = queue.claim(s, "test-worker", lease_seconds=600)  # the oldest: `failed`
        assert lease is not None and lease.job_id == failed["id"]
        queue.fail(s, lease, "DatasetUnavailable: the built-in mnist files are missing")
    browser = world.browser("alice")
    page = browser.get(f"/jobs/{failed['id']}").text
    assert text_of(page, "job-status") == "failed"
    assert text_of(page, "job-error") == ("The job failed DatasetUnavailable: the built-in mnist files "
                                          "are missing")
    listed = browser.get("/", params={"status": "failed"}).text
    assert f'data-job="{failed["id"]}"' in listed and f'data-job="{queued["id"]}"' not in listed
    everything = browser.get("/ui/jobs").json()["parts"]["jobs-table"]
    # newest first
    assert everything.index(queued["id"]) < everything.index(failed["id"])
