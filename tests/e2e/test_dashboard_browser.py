"""The dashboard in a real browser (Debian's Chromium through Playwright) against a real API process
and a real worker process: submit through the form, watch the job finish without reloading,
check what the page draws against the API's JSON, download the checkpoint; ownership and keyboard
reachability. Screenshots of every page at 1280 and 390 px go to tests/artifacts/dashboard/."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import safetensors.numpy
from playwright.sync_api import Page
from safetensors import safe_open

from tests.conftest import ARTIFACTS, TEST_BACKEND
from tests.e2e.browser import api_server, chromium, screenshots, service_env, sign_in, start_worker
from tests.helpers import make_token
from tests.processes import wait_for

SHOTS = ARTIFACTS / "dashboard" / TEST_BACKEND
# Enough trials that the job spans several of the worker's bulk writes (at most one every 0.5 s):
# the database shows progress between 0 and BUDGET for a while.
BUDGET = 600


@dataclass
class Service:
    base: str
    db_url: str
    env: dict[str, str]
    tmp: Path

    def api(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def service(app_db_url: str, tmp_path: Path, mnist_dir: Path) -> Iterator[Service]:
    env = service_env(app_db_url, mnist_dir, tmp_path / "cache")
    with api_server(env, tmp_path) as base:
        yield Service(base, app_db_url, env, tmp_path)


def _all_trials(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = api.get(f"/v1/jobs/{job_id}/trials", params={"offset": len(out), "limit": 1000}).json()
        out += page["items"]
        if len(out) >= page["total"]:
            return out


def _pareto(trials: list[dict[str, Any]]) -> set[int]:
    """Trials no other trial beats on both compression ratio and validation accuracy (brute force)."""
    pts = [(t["number"], t["metrics"]["compression_ratio"], t["metrics"]["val_accuracy"])
           for t in trials if t["metrics"]["compression_ratio"] is not None]
    return {n for n, r, a in pts
            if not any(r2 >= r and a2 >= a and (r2 > r or a2 > a) for _, r2, a2 in pts)}


def _fill_form(page: Page, tmp: Path, weights: bytes, data: bytes, delta: str) -> None:
    (tmp / "model.safetensors").write_bytes(weights)
    (tmp / "data.npz").write_bytes(data)
    page.check("input[name=dataset_source][value=upload]")
    page.set_input_files("#weights", str(tmp / "model.safetensors"))
    page.set_input_files("#dataset_file", str(tmp / "data.npz"))
    page.select_option("#method", "magnitude")
    page.select_option("#optimizer", "nevergrad:NGOpt")
    page.fill("#max_accuracy_drop", delta)
    page.fill("#budget-trials", str(BUDGET))
    page.fill("#seed", "0")


def _partial_or_done(api: httpx.Client, job_id: str) -> bool:
    doc = api.get(f"/v1/jobs/{job_id}").json()
    return bool((doc["status"] != "queued" and doc["status"] != "running")
                or 0 < doc["progress"]["trials_done"] < BUDGET)


WATCH = """() => {
  // what the page shows over time, recorded in the page itself (it is never reloaded)
  window.__notReloaded = true;
  window.__seen = [];
  const note = () => {
    const s = document.querySelector('#job-status'), d = document.querySelector('#trials-done');
    if (s && d) window.__seen.push([s.textContent.trim(), Number(d.dataset.value)]);
  };
  note();
  new MutationObserver(note).observe(document.querySelector('#job-summary'), {childList: true, subtree: true});
}"""


def test_submit_watch_check_and_download_in_a_real_browser(service: Service, small_model_weights: bytes,
                                                           small_dataset_npz: bytes) -> None:
    alice = make_token(service.db_url, "alice")
    api = service.api(alice)
    with chromium(service.tmp / "profile-alice") as browser:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        sign_in(page, service.base, alice)
        page.click("nav >> text=New job")
        page.wait_for_url(f"{service.base}/jobs/new")

        # a bad δ: the API's own message, next to the δ field
        _fill_form(page, service.tmp, small_model_weights, small_dataset_npz, "1.5")
        page.click("#submit")
        page.wait_for_selector("#err-max_accuracy_drop")
        api_detail = api.post("/v1/jobs", json={"model_id": "m", "dataset_id": "d", "max_accuracy_drop": 1.5,
                                                "budget": {"trials": BUDGET}}).json()["detail"]
        assert page.inner_text("#err-max_accuracy_drop") == api_detail
        assert page.get_attribute("#max_accuracy_drop", "aria-invalid") == "true"
        assert "err-max_accuracy_drop" in (page.get_attribute("#max_accuracy_drop", "aria-describedby") or "")
        # next to it: the message sits in the field's own block, right under its input and hint
        assert page.evaluate("""() => document.querySelector('#err-max_accuracy_drop').parentElement
                                 === document.querySelector('#max_accuracy_drop').parentElement""")
        assert page.evaluate("document.activeElement.id") == "error-summary"
        assert api.get("/v1/jobs").json()["total"] == 0
        screenshots(page, SHOTS, "new-job-error")

        _fill_form(page, service.tmp, small_model_weights, small_dataset_npz, "0.02")
        page.click("#submit")
        page.wait_for_url(f"{service.base}/jobs/*")
        job_id = page.url.rsplit("/", 1)[1]
        assert page.inner_text("#job-status") == "queued"
        page.evaluate(WATCH)
        navigations: list[str] = []
        page.on("framenavigated", lambda f: navigations.append(f.url) if f == page.main_frame else None)

        worker = start_worker(service.env, service.tmp)
        try:
            # Progress must be seen moving on the page. The page polls every 1.5 s, and a fast
            # machine may run the whole job between two polls: once the database shows partial
            # progress the worker is frozen until the page has shown it, then resumed.
            wait_for(lambda: _partial_or_done(api, job_id), "the job makes progress", timeout=300)
            if api.get(f"/v1/jobs/{job_id}").json()["status"] == "running":
                worker.send_signal(signal.SIGSTOP)
                try:
                    page.wait_for_function(
                        f"window.__seen.some(([s, d]) => s === 'running' && d > 0 && d < {BUDGET})",
                        timeout=60_000)
                finally:
                    worker.send_signal(signal.SIGCONT)
            page.wait_for_function("document.querySelector('#job-status').textContent.trim() === 'succeeded'",
                                   timeout=300_000)
        finally:
            assert worker.wait(timeout=120) == 0, (service.tmp / "worker.log").read_text()
        assert navigations == [] and page.evaluate("window.__notReloaded") is True
        seen = page.evaluate("window.__seen")
        statuses = [s for s, _ in seen]
        assert statuses[0] == "queued" and "running" in statuses
        assert any(0 < done < BUDGET for _, done in seen), seen  # progress moved live
        assert seen[-1] == ["succeeded", BUDGET]

        job = api.get(f"/v1/jobs/{job_id}").json()
        trials = _all_trials(api, job_id)
        best = job["best"]
        assert job["status"] == "succeeded" and len(trials) == BUDGET

        # the best-so-far card: the API's numbers, as printed
        assert page.inner_text("#best-ratio") == f"{best['compression_ratio']:,.2f}×"
        assert float(page.get_attribute("#best-ratio", "data-value") or 0) == best["compression_ratio"]
        assert int(page.get_attribute("#best-nonzero", "data-value") or 0) == best["nonzero"]
        assert page.inner_text("#best-nonzero").startswith(f"{best['nonzero']:,} of {best['total']:,}")
        assert page.inner_text("#best-accuracy").startswith(f"{best['val_accuracy']:.4f}")
        assert page.inner_text("#best-drop").startswith(f"{best['accuracy_drop']:.4f}")
        assert page.inner_text("#best-test").startswith(f"{job['test_accuracy']:.4f}")
        assert int(page.get_attribute("#best-trial", "data-value") or -1) == best["trial_number"]
        assert page.inner_text("#trials-done") == str(BUDGET)

        # the scatter: one mark per scored trial, with the API's numbers and the Pareto front
        marks = page.eval_on_selector_all("#chart-scatter [data-trial]", """els => els.map(e => [
            Number(e.dataset.trial), Number(e.dataset.ratio), Number(e.dataset.accuracy),
            e.dataset.feasible === 'true', e.classList.contains('pareto')])""")
        scored = {t["number"]: t for t in trials if t["metrics"]["compression_ratio"] is not None}
        assert sorted(m[0] for m in marks) == sorted(scored)
        for n, ratio, acc, feasible, _ in marks:
            t = scored[n]
            assert (ratio, acc, feasible) == (t["metrics"]["compression_ratio"],
                                              t["metrics"]["val_accuracy"], t["feasible"])
        assert {m[0] for m in marks if m[4]} == _pareto(trials)
        delta_line = float(page.get_attribute("#chart-scatter [data-line=delta]", "data-accuracy") or 0)
        assert delta_line == pytest.approx(job["reference"]["val_accuracy"] - 0.02)
        assert page.locator("#table-front tbody tr").count() == len(_pareto(trials))

        # convergence: the running best of the feasible trials, ending at the job's best
        steps = page.eval_on_selector_all("#chart-convergence .step", """els => els.map(e => [
            Number(e.dataset.trial), Number(e.dataset.ratio)])""")
        expected, top = [], 0.0
        for t in trials:
            if t["feasible"] and t["metrics"]["compression_ratio"] > top:
                top = t["metrics"]["compression_ratio"]
                expected.append([t["number"], top])
        assert steps == expected and steps[-1][1] == best["compression_ratio"]
        assert page.get_attribute("#chart-convergence .reported", "data-trial") == str(best["trial_number"])
        assert page.locator("#table-convergence tbody tr").count() == len(expected)

        # per layer: the best candidate's keep ratios beside the model's layer sizes
        model = api.get(f"/v1/models/{job['model_id']}").json()
        sizes = {layer["name"]: layer["parameters"] for layer in model["layers"]}
        layers = page.eval_on_selector_all("#chart-layers .layer", """els => els.map(e => [
            e.dataset.layer, Number(e.dataset.parameters), Number(e.dataset.keepRatio)])""")
        assert layers == [[n, sizes[n], r] for n, r in best["keep_ratios"].items()]
        assert page.locator("#table-layers tbody tr").count() == len(layers)

        # the trial table pages by 50 and sorts in place
        rows = page.eval_on_selector_all("#trials-table tbody tr", "els => els.map(e => Number(e.dataset.trial))")
        assert rows == list(range(50))
        page.click("#trials-table th >> text=ratio")
        page.wait_for_selector("#trials-table th[aria-sort=descending]")
        rows = page.eval_on_selector_all("#trials-table tbody tr", "els => els.map(e => Number(e.dataset.trial))")
        by_ratio = sorted(trials, key=lambda t: (-(t["metrics"]["compression_ratio"] or -1), t["number"]))
        assert rows == [t["number"] for t in by_ratio[:50]]
        assert "sort=ratio" in page.url and page.evaluate("window.__notReloaded") is True

        # the download: the checkpoint whose non-zero count the manifest and the API report
        with page.expect_download() as download:
            page.click("#download")
        path = service.tmp / "pruned.safetensors"
        download.value.save_as(path)
        with safe_open(str(path), "np") as f:
            manifest = json.loads(f.metadata()["thresher"])
        state = safetensors.numpy.load_file(str(path))
        nonzero = sum(int(np.count_nonzero(t)) for t in state.values())
        assert nonzero == manifest["nonzero"] == best["nonzero"]
        assert manifest["compression_ratio"] == best["compression_ratio"]

        # sorting rewrote the address (history.replaceState), in the same document
        assert navigations == [page.url] and page.evaluate("window.__notReloaded") is True
        assert errors == []
        screenshots(page, SHOTS, "job")
        page.goto(f"{service.base}/")
        assert page.locator(f"tr[data-job='{job_id}'] .status").inner_text() == "succeeded"
        screenshots(page, SHOTS, "jobs")
        page.goto(f"{service.base}/jobs/new")
        screenshots(page, SHOTS, "new-job")

    root = make_token(service.db_url, "root", admin=True)
    with chromium(service.tmp / "profile-root") as browser:
        page = browser.new_page()
        page.goto(f"{service.base}/login")
        screenshots(page, SHOTS, "login")
        sign_in(page, service.base, root)
        page.click("nav >> text=Workers")
        assert page.locator("tr[data-worker]").count() == 1
        assert "cpu" in page.locator("tr[data-worker] td[data-label=device]").inner_text()
        screenshots(page, SHOTS, "workers")


def _queued_job(service: Service, token: str, weights: bytes) -> str:
    api = service.api(token)
    model = api.post("/v1/models", data={"architecture": "lenet-300-100"},
                     files={"weights": ("w.safetensors", weights)}).json()
    ds = api.post("/v1/datasets", json={"builtin": "mnist"}).json()
    job = api.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": ds["id"],
                                     "max_accuracy_drop": 0.01, "budget": {"trials": 10}}).json()
    return str(job["id"])


def test_another_principal_cannot_see_the_job_page(service: Service, small_model_weights: bytes) -> None:
    job_id = _queued_job(service, make_token(service.db_url, "alice"), small_model_weights)
    bob = make_token(service.db_url, "bob")
    with chromium(service.tmp / "profile-bob") as browser:
        page = browser.new_page()
        sign_in(page, service.base, bob)
        assert page.locator("tr[data-job]").count() == 0
        response = page.goto(f"{service.base}/jobs/{job_id}")
        assert response is not None and response.status == 404
        assert page.inner_text("h1") == "Not found" and page.locator("#job-summary").count() == 0
        polled = page.evaluate(f"fetch('/ui/jobs/{job_id}').then(r => r.status)")
        assert polled == 404


def _tab_through(page: Page, presses: int = 80) -> list[str]:
    """What the Tab key reaches, in order: each focused element as 'tag#id' or 'tag:text'."""
    page.evaluate("document.activeElement && document.activeElement.blur()")
    reached = []
    for _ in range(presses):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("""() => { const e = document.activeElement;
            return e.tagName.toLowerCase() + (e.id ? '#' + e.id : ':' + e.textContent.trim().slice(0, 40)); }"""))
    return reached


def test_the_main_controls_are_reachable_and_usable_by_keyboard(service: Service,
                                                             small_model_weights: bytes) -> None:
    alice = make_token(service.db_url, "alice")
    job_id = _queued_job(service, alice, small_model_weights)
    with chromium(service.tmp / "profile-keys") as browser:
        page = browser.new_page()
        sign_in(page, service.base, alice)
        reached = _tab_through(page, 30)
        for control in ("a:Skip to content", "a:Jobs", "a:New job", "a:API docs", "select#status-filter",
                        "button:Filter", f"a:{job_id[:8]}"):
            assert control in reached, (control, reached)
        assert any(r.startswith("button:Sign out") for r in reached)
        # the focus is visible
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline not in ("", "none")

        page.goto(f"{service.base}/jobs/new")
        reached = _tab_through(page, 40)
        for control in ("select#architecture", "input#weights", "select#builtin", "select#method",
                        "select#optimizer", "input#max_accuracy_drop", "input#budget-trials", "input#seed",
                        "summary:Advanced options", "button#submit"):
            assert control in reached, (control, reached)

        page.goto(f"{service.base}/jobs/{job_id}")
        reached = _tab_through(page, 40)
        for control in ("button#cancel", "a:Job as JSON", "summary:Convergence as a table (0 improvements)",
                        "a:# ▲", "a:ratio", "select#stage-filter", "button:Show"):
            assert control in reached, (control, reached)
        # sort by keyboard: the focus stays on the heading it pressed
        while page.evaluate("document.activeElement.textContent.trim()") != "ratio":
            page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        page.wait_for_selector("#trials-table th[aria-sort=descending]")
        assert page.evaluate("document.activeElement.dataset.focusKey") == "sort-ratio"
        # and cancel by keyboard, without a reload
        page.evaluate("window.__notReloaded = true")
        page.focus("#cancel")
        page.keyboard.press("Enter")
        page.wait_for_function("document.querySelector('#job-status').textContent.trim() === 'cancelled'")
        assert page.evaluate("window.__notReloaded") is True
        assert service.api(alice).get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
