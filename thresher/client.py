"""A Python client for the Thresher API (httpx only: no torch, no server code).

    from thresher.client import Client
    c = Client("http://127.0.0.1:8000", token)
    model = c.upload_model("model.pt2")                   # or ("w.safetensors", architecture="lenet-5")
    data = c.upload_dataset(builtin="fashion-mnist")      # or c.upload_dataset("data.npz")
    job = c.submit(model.id, data.id, method="magnitude", max_accuracy_drop=0.01,
                   budget={"trials": 40})
    done = c.wait(job.id, progress=lambda j: print(j.progress.trials_done, j.progress.stage))
    c.download(job.id, "pruned.safetensors")

Every call returns the API's documents parsed into the pydantic models the API declares
(`core.documents`: `JobDoc`, `TrialDoc`, …; `.model_dump(mode="json")` gives the JSON back); a
refusal raises `RequestRefused` with the API's status and message as they are, a server that
cannot be reached `Unreachable`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from core.documents import DatasetDoc, JobDoc, ModelDoc, Page, ParetoDoc, TrialDoc

__all__ = ["Client", "ClientError", "DatasetDoc", "JobDoc", "ModelDoc", "Page", "ParetoDoc",
           "RequestRefused", "TrialDoc", "Unreachable"]

FINISHED = ("succeeded", "failed", "cancelled")
D = TypeVar("D", bound=BaseModel)


class ClientError(Exception):
    """Base of what the client raises."""


class Unreachable(ClientError):
    """No answer from the server (connection refused, DNS, timeout)."""


class RequestRefused(ClientError):
    """The API answered 4xx or 5xx: `status`, `error` and `detail` as it sent them."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail

    @property
    def authentication(self) -> bool:
        return self.status in (401, 403)


class Client:
    def __init__(self, url: str, token: str | None, *, timeout: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"the server at {self.url} cannot be reached ({exc})") from None
        if r.status_code >= 400:
            try:
                body = r.json()
                error, detail = str(body.get("error", "error")), str(body.get("detail", r.text))
            except ValueError:
                error, detail = "error", r.text
            raise RequestRefused(r.status_code, error, detail)
        return r

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._call(method, path, **kwargs).json()

    def _doc(self, kind: type[D], method: str, path: str, **kwargs: Any) -> D:
        try:
            return kind.model_validate(self._json(method, path, **kwargs))
        except (ValueError, ValidationError) as exc:
            # a server that is not Thresher's, or of an incompatible version
            raise RequestRefused(200, "unexpected", f"{path} did not answer a {kind.__name__}: "
                                 f"{str(exc)[:300]}") from None

    # models and datasets
    def upload_model(self, path: str | Path, *, architecture: str | None = None,
                     name: str | None = None) -> ModelDoc:
        """A torch.export archive (.pt2), or safetensors weights of a registered `architecture`."""
        p = Path(path)
        form = {"name": name} if name else {}
        with p.open("rb") as f:
            if architecture is None:
                return self._doc(ModelDoc, "POST", "/v1/models", files={"file": (p.name, f)}, data=form)
            return self._doc(ModelDoc, "POST", "/v1/models", files={"weights": (p.name, f)},
                              data={**form, "architecture": architecture})

    def upload_dataset(self, path: str | Path | None = None, *, builtin: str | None = None,
                       name: str | None = None) -> DatasetDoc:
        if (path is None) == (builtin is None):
            raise ValueError("give a file or a built-in dataset's name")
        if builtin is not None:
            return self._doc(DatasetDoc, "POST", "/v1/datasets", json={"builtin": builtin})
        assert path is not None
        p = Path(path)
        with p.open("rb") as f:
            return self._doc(DatasetDoc, "POST", "/v1/datasets", files={"file": (p.name, f)},
                              data={"name": name} if name else {})

    def models(self, offset: int = 0, limit: int = 50) -> Page[ModelDoc]:
        return self._doc(Page[ModelDoc], "GET", "/v1/models", params={"offset": offset, "limit": limit})

    def datasets(self, offset: int = 0, limit: int = 50) -> Page[DatasetDoc]:
        return self._doc(Page[DatasetDoc], "GET", "/v1/datasets",
                         params={"offset": offset, "limit": limit})

    # jobs
    def submit(self, model_id: str, dataset_id: str, **spec: Any) -> JobDoc:
        """The job spec's fields as keywords (method, max_accuracy_drop, budget, seed, …)."""
        return self._doc(JobDoc, "POST", "/v1/jobs",
                         json={"model_id": model_id, "dataset_id": dataset_id, **spec})

    def job(self, job_id: str) -> JobDoc:
        return self._doc(JobDoc, "GET", f"/v1/jobs/{job_id}")

    def jobs(self, status: str | None = None, offset: int = 0, limit: int = 50) -> Page[JobDoc]:
        params: dict[str, Any] = {"offset": offset, "limit": limit, **({"status": status} if status else {})}
        return self._doc(Page[JobDoc], "GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> JobDoc:
        return self._doc(JobDoc, "POST", f"/v1/jobs/{job_id}/cancel")

    def wait(self, job_id: str, progress: Callable[[JobDoc], None] | None = None, *,
             poll_seconds: float = 1.0, timeout: float | None = None) -> JobDoc:
        """Poll until the job has finished (succeeded, failed or cancelled); `progress` sees every
        document polled. TimeoutError past `timeout` seconds (the job keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            doc = self.job(job_id)
            if progress is not None:
                progress(doc)
            if doc.status in FINISHED:
                return doc
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {doc.status} after {timeout} s")
            time.sleep(poll_seconds)

    def trials(self, job_id: str) -> list[TrialDoc]:
        """Every trial of the job, in number order (all pages)."""
        out: list[TrialDoc] = []
        while True:
            page = self._doc(Page[TrialDoc], "GET", f"/v1/jobs/{job_id}/trials",
                             params={"offset": len(out), "limit": 1000})
            out += page.items
            if len(out) >= page.total or not page.items:
                return out

    def pareto(self, job_id: str) -> ParetoDoc:
        return self._doc(ParetoDoc, "GET", f"/v1/jobs/{job_id}/pareto")

    def download(self, job_id: str, path: str | Path, format: str = "pruned") -> Path:
        """One of the job's downloads (its document's `artifacts`) written to `path`."""
        r = self._call("GET", f"/v1/jobs/{job_id}/checkpoint", params={"format": format})
        out = Path(path)
        out.write_bytes(r.content)
        return out
