"""The API's documents are declared (core.documents): the OpenAPI schema describes every JSON
response, and what a real job's routes send is exactly what is declared, nothing more, so the
Python client's typed documents see every field."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from core import documents
from core.settings import Settings
from service.app import create_app
from tests.helpers import bearer, make_token, submit, upload_dataset, upload_model
from workers.jobs.loop import Worker

# routes that answer something other than a JSON document
NOT_JSON = {("get", "/v1/jobs/{job_id}/checkpoint"), ("get", "/metrics")}


def test_the_openapi_schema_declares_every_json_response(settings: Settings) -> None:
    with TestClient(create_app(settings), headers=bearer(make_token(settings.database_url))) as client:
        r = client.get("/openapi.json")
    assert r.status_code == 200, r.text
    schema = r.json()
    declared = []
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            if (method, path) in NOT_JSON:
                continue
            code = next(c for c in op["responses"] if c.startswith("2"))
            body = op["responses"][code]["content"]["application/json"]["schema"]
            # a named document, or a list of them: not the `{"type": "object"}` of a bare dict
            ref = body.get("$ref") or body.get("items", {}).get("$ref")
            assert ref and ref.startswith("#/components/schemas/"), (method, path, body)
            declared.append(ref.rsplit("/", 1)[1])
    assert {"JobDoc", "Page_TrialDoc_", "ModelDoc", "DatasetDoc", "ParetoDoc", "WorkerDoc"} <= set(declared)


def undeclared(doc: BaseModel, where: str = "") -> list[str]:
    """Fields a document carries that its model does not declare, at any depth (a job's `best`
    may carry a method's own figures: documents.Best says so)."""
    out = [] if isinstance(doc, documents.Best) else [f"{where}.{k}" for k in doc.model_extra or {}]
    for name in type(doc).model_fields:
        value = getattr(doc, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                out += undeclared(item, f"{where}.{name}")
    return out


@pytest.mark.parametrize("method", ["magnitude", "l0"])
def test_a_jobs_documents_are_exactly_the_declared_ones(settings: Settings, small_model_weights: bytes,
                                                        small_dataset_npz: bytes, method: str) -> None:
    extra: dict[str, Any] = ({"budget": {"trials": 6}} if method == "magnitude" else
                             {"budget": {"trials": 2}, "optimizer": "optuna:tpe",
                              "regularization": {"granularity": "neuron", "epochs": 1,
                                                 "finetune_epochs": 0, "train_subset": 500,
                                                 "pruner": "none"}})
    token = make_token(settings.database_url, admin=True)
    with TestClient(create_app(settings), headers=bearer(token)) as client:
        model = upload_model(client, small_model_weights)
        data = upload_dataset(client, small_dataset_npz)
        job = submit(client, model["id"], data["id"], method=method, max_accuracy_drop=0.05, **extra)
        assert Worker(settings, name="docs-worker").serve(exit_when_idle=True) == 1
        done = documents.JobDoc.model_validate(client.get(f"/v1/jobs/{job['id']}").json())
        assert done.status == "succeeded" and done.best is not None, done.error
        # single-round methods have no round to show
        assert (done.progress.round, done.progress.rounds) == (None, None)
        reads: list[tuple[type[BaseModel], str]] = [
            (documents.ModelDoc, f"/v1/models/{model['id']}"),
            (documents.Page[documents.ModelDoc], "/v1/models"),
            (documents.DatasetDoc, f"/v1/datasets/{data['id']}"),
            (documents.Page[documents.DatasetDoc], "/v1/datasets"),
            (documents.JobDoc, f"/v1/jobs/{job['id']}"),
            (documents.Page[documents.JobDoc], "/v1/jobs"),
            (documents.Page[documents.TrialDoc], f"/v1/jobs/{job['id']}/trials"),
            (documents.ParetoDoc, f"/v1/jobs/{job['id']}/pareto"),
            (documents.Health, "/healthz"),
        ]
        for kind, path in reads:
            r = client.get(path)
            assert r.status_code == 200, (path, r.text)
            doc = kind.model_validate(r.json())
            assert undeclared(doc) == [], path
            # and the client's parse gives the same JSON back (`--json` prints it)
            assert doc.model_dump(mode="json", exclude_unset=True) == r.json(), path
        for kind, path in [(documents.ArchitectureDoc, "/v1/architectures"),
                           (documents.WorkerDoc, "/v1/workers")]:
            items = client.get(path).json()
            assert items and all(undeclared(kind.model_validate(i)) == [] for i in items), path
