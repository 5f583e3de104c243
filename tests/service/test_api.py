"""The API on a migrated SQLite through the real app: uploads, jobs, and bad input."""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Iterator

import numpy as np
import pytest
import safetensors.numpy
from fastapi.testclient import TestClient

from core.settings import Settings
from service.app import create_app
from tests.conftest import npz_bytes
from tests.helpers import bearer, make_token, row_counts, submit, upload_dataset, upload_model


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=bearer(make_token(settings.database_url))) as c:
        yield c


def _weights(**changes: np.ndarray) -> bytes:
    rng = np.random.default_rng(0)
    tensors = {"fc1.weight": rng.normal(size=(300, 784)), "fc1.bias": np.zeros(300),
               "fc2.weight": rng.normal(size=(100, 300)), "fc2.bias": np.zeros(100),
               "fc3.weight": rng.normal(size=(10, 100)), "fc3.bias": np.zeros(10)}
    tensors = {k: v.astype(np.float32) for k, v in tensors.items()}
    tensors.update(changes)
    return safetensors.numpy.save({k: v for k, v in tensors.items() if v is not None})


def _arrays(n: int = 50, **changes: np.ndarray | None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.random((n, 1, 28, 28), dtype=np.float32), "y_train": rng.integers(0, 10, n),
              "x_test": rng.random((20, 1, 28, 28), dtype=np.float32), "y_test": rng.integers(0, 10, 20)}
    arrays.update(changes)  # type: ignore[arg-type]
    return {k: v for k, v in arrays.items() if v is not None}


def test_health_docs_and_index(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert "/v1/jobs" in client.get("/openapi.json").json()["paths"]
    assert client.get("/openapi.json", headers={"authorization": ""}).status_code == 401
    assert client.get("/docs", follow_redirects=False).headers["location"] == "/login"
    # dashboard pages take the session cookie (or a bearer token); without either, the sign-in page
    assert client.get("/", headers={"authorization": ""}, follow_redirects=False).headers["location"] == "/login"
    token = client.headers["authorization"][7:]
    login = client.post("/login", data={"token": token}, follow_redirects=False)
    cookie = login.headers["set-cookie"].lower()
    assert login.status_code == 303 and "httponly" in cookie and "secure" in cookie
    assert "samesite=strict" in cookie
    bad = client.post("/login", data={"token": "thr_wrong"}, follow_redirects=False)
    assert bad.status_code == 401 and "unknown or revoked" in bad.text
    # the cookie is Secure, which the test client (plain http://testserver) withholds; a browser
    # on 127.0.0.1 or localhost sends it
    page = client.get("/", headers={"cookie": f"thresher_session={token}"})
    docs = client.get("/docs", headers={"cookie": f"thresher_session={token}"})
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assert page.status_code == 200 and "No jobs yet" in page.text and "alice" in page.text


def test_upload_model_reports_layers_and_parameters(client: TestClient) -> None:
    body = upload_model(client, _weights())
    assert body["architecture"] == "lenet-300-100"
    assert body["total_parameters"] == 266_610
    assert body["layers"][0] == {"name": "fc1.weight", "kind": "linear", "shape": [300, 784],
                                 "parameters": 235_200, "prunable": True, "buffer": False,
                                 "dtype": "F32"}
    assert client.get(f"/v1/models/{body['id']}").json()["id"] == body["id"]


def test_builtin_and_uploaded_datasets(client: TestClient) -> None:
    r = client.post("/v1/datasets", json={"builtin": "mnist"})
    assert r.status_code == 201, r.text
    assert r.json()["splits"] == {"train": 54_000, "validation": 6_000, "test": 10_000}
    assert r.json()["classes"] == 10 and r.json()["sample_shape"] == [1, 28, 28]
    up = upload_dataset(client, npz_bytes(_arrays()))
    assert up["splits"] == {"train": 45, "validation": 5, "test": 20}
    st = upload_dataset(client, safetensors.numpy.save(_arrays(x_val=np.zeros((7, 1, 28, 28), np.float32),
                                                               y_val=np.arange(7))), "d.safetensors")
    assert st["splits"] == {"train": 50, "validation": 7, "test": 20}
    assert st["validation"] == {"source": "given"}


def _weights_vgg(**changes: np.ndarray) -> bytes:
    """vgg-fashion's tensors as torch writes them: BatchNorm step counters as int64 scalars."""
    from core.zoo import VGG_FASHION

    rng = np.random.default_rng(2)
    tensors: dict[str, np.ndarray] = {}
    for t in VGG_FASHION.tensors:
        if t.kind == "num_batches_tracked":
            tensors[t.name] = np.array(100, dtype=np.int64)
        elif t.kind == "running_var":
            tensors[t.name] = np.ones(t.shape, np.float32)
        else:
            tensors[t.name] = rng.normal(size=t.shape).astype(np.float32)
    tensors.update(changes)
    return safetensors.numpy.save(tensors)


def test_batchnorm_models_and_fashion_mnist(client: TestClient) -> None:
    body = upload_model(client, _weights_vgg(), architecture="vgg-fashion")
    assert body["total_parameters"] == 288_170  # running statistics are not parameters
    layers = {layer["name"]: layer for layer in body["layers"]}
    assert layers["bn1.num_batches_tracked"] == {
        "name": "bn1.num_batches_tracked", "kind": "num_batches_tracked", "shape": [],
        "parameters": 0, "prunable": False, "buffer": True, "dtype": "I64"}
    assert layers["bn1.weight"]["kind"] == "batchnorm" and not layers["bn1.weight"]["prunable"]
    assert layers["conv3.weight"]["prunable"] and layers["conv3.weight"]["shape"] == [64, 32, 3, 3]
    r = client.post("/v1/datasets", json={"builtin": "fashion-mnist"})
    assert r.status_code == 201, r.text
    assert r.json()["source"] == "builtin:fashion-mnist" and r.json()["name"] == "fashion-mnist"
    assert r.json()["splits"] == {"train": 54_000, "validation": 6_000, "test": 10_000}
    assert client.get(f"/v1/datasets/{r.json()['id']}").json()["builtin"] == "fashion-mnist"


def _pickle_payload() -> bytes:
    return pickle.dumps({"fc1.weight": [1.0, 2.0]})


BAD_MODELS = [
    ("pickle", {"architecture": "lenet-300-100"}, _pickle_payload(), 422, "not a safetensors file"),
    ("zip (torch.save format)", {"architecture": "lenet-300-100"},
     b"PK\x03\x04" + b"\x00" * 100, 422, "not a safetensors file"),
    ("wrong architecture", {"architecture": "lenet-5"}, _weights(), 422, "lack tensor 'conv1.weight'"),
    ("unknown architecture", {"architecture": "vgg-99"}, _weights(), 422, "unknown architecture 'vgg-99'"),
    ("wrong shape", {"architecture": "lenet-300-100"},
     _weights(**{"fc2.weight": np.zeros((100, 299), np.float32)}), 422, "'fc2.weight' has shape [100, 299]"),
    ("wrong dtype", {"architecture": "lenet-300-100"},
     _weights(**{"fc1.bias": np.zeros(300, np.float64)}), 422, "'fc1.bias' has dtype F64"),
    ("NaN weights", {"architecture": "lenet-300-100"},
     _weights(**{"fc3.weight": np.full((10, 100), np.nan, np.float32)}), 422, "'fc3.weight' holds NaN"),
    ("extra tensor", {"architecture": "lenet-300-100"},
     _weights(**{"fc4.weight": np.zeros(3, np.float32)}), 422, "'fc4.weight', which lenet-300-100 does not"),
    ("empty", {"architecture": "lenet-300-100"}, b"", 422, "weights is empty"),
    ("float step counter", {"architecture": "vgg-fashion"},
     _weights_vgg(**{"bn2.num_batches_tracked": np.array(3.0, np.float32)}), 422,
     "'bn2.num_batches_tracked' has dtype F32, int64 (I64) is required for a num_batches_tracked"),
    ("negative running variance", {"architecture": "vgg-fashion"},
     _weights_vgg(**{"bn4.running_var": -np.ones(64, np.float32)}), 422,
     "'bn4.running_var' (a running variance) holds negative values"),
    ("NaN running mean", {"architecture": "vgg-fashion"},
     _weights_vgg(**{"bn1.running_mean": np.full(32, np.nan, np.float32)}), 422,
     "'bn1.running_mean' holds NaN"),
]


@pytest.mark.parametrize(("case", "form", "payload", "status", "message"), BAD_MODELS,
                         ids=[c[0] for c in BAD_MODELS])
def test_bad_models_are_refused_and_leave_nothing(client: TestClient, settings: Settings, case: str,
                                                  form: dict[str, str], payload: bytes, status: int,
                                                  message: str) -> None:
    before = row_counts(settings.database_url)
    r = client.post("/v1/models", data=form, files={"weights": ("w.bin", payload)})
    assert r.status_code == status, r.text
    assert r.json()["error"] and message in r.json()["detail"]
    assert row_counts(settings.database_url) == before


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x_train.npy", b"\x00" * (64 * 1024 * 1024))
    return buf.getvalue()


BAD_DATASETS = [
    ("NaN samples", npz_bytes(_arrays(x_train=np.full((50, 1, 28, 28), np.nan, np.float32))),
     "x_train holds NaN"),
    ("negative label", npz_bytes(_arrays(y_train=np.full(50, -1))), "y_train holds a negative label"),
    ("too many classes", npz_bytes(_arrays(y_test=np.full(20, 10**6))), "at most 16 classes"),
    ("float labels", npz_bytes(_arrays(y_train=np.zeros(50, np.float32))), "integer class labels"),
    ("mismatched lengths", npz_bytes(_arrays(y_train=np.zeros(49, np.int64))),
     "x_train has 50 samples but y_train has 49"),
    ("empty split", npz_bytes(_arrays(x_test=np.zeros((0, 1, 28, 28), np.float32),
                                      y_test=np.zeros(0, np.int64))), "x_test is empty"),
    ("missing array", npz_bytes(_arrays(y_test=None)), "lacks array 'y_test'"),
    ("sample shapes differ", npz_bytes(_arrays(x_test=np.zeros((20, 1, 27, 28), np.float32))),
     "x_test samples have shape [1, 27, 28]"),
    ("half a validation split", npz_bytes(_arrays(x_val=np.zeros((3, 1, 28, 28), np.float32))),
     "both x_val and y_val"),
    ("object arrays (pickle)", npz_bytes({**_arrays(), "y_train": np.array([object()] * 50)}),
     "member 'y_train.npy' must be a numeric array"),
    ("pickle file", _pickle_payload(), "not a safetensors file"),
    ("zip bomb", _zip_bomb(), "expands to"),
]


@pytest.mark.parametrize(("case", "payload", "message"), BAD_DATASETS, ids=[c[0] for c in BAD_DATASETS])
def test_bad_datasets_are_refused_and_leave_nothing(tmp_path, app_db_url: str, case: str,  # type: ignore[no-untyped-def]
                                                    payload: bytes, message: str) -> None:
    from tests.conftest import make_settings

    cfg = make_settings(app_db_url, tmp_path, max_classes=16, max_upload_bytes=8 * 1024 * 1024)
    with TestClient(create_app(cfg), headers=bearer(make_token(app_db_url))) as client:
        before = row_counts(app_db_url)
        r = client.post("/v1/datasets", files={"file": ("d.npz", payload)})
        assert r.status_code == 422, r.text
        assert message in r.json()["detail"]
        assert row_counts(app_db_url) == before


def test_unknown_builtin_and_wrong_media_type(client: TestClient) -> None:
    r = client.post("/v1/datasets", json={"builtin": "imagenet"})
    assert r.status_code == 422 and "unknown built-in dataset 'imagenet'" in r.json()["detail"]
    r = client.post("/v1/datasets", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415


@pytest.fixture
def ids(client: TestClient) -> dict[str, str]:
    model = upload_model(client, _weights())
    ds = upload_dataset(client, npz_bytes(_arrays()))
    return {"model_id": model["id"], "dataset_id": ds["id"]}


BAD_JOBS = [
    ({"optimizer": "sgd"}, "unknown optimizer 'sgd'"),
    ({"method": "distill"}, "unknown method 'distill'"),
    ({"max_accuracy_drop": -0.01}, "max_accuracy_drop must be in [0, 1)"),
    ({"max_accuracy_drop": 1}, "max_accuracy_drop must be in [0, 1)"),
    ({"budget": {"trials": 0}}, "budget.trials must be at least 1"),
    ({"budget": {}}, "budget.trials: Field required"),
    ({"search": {"population": 0}}, "search.population"),
    ({"search": {"validation_subset": 1000}}, "validation_subset 1000 exceeds the dataset's 5"),
    ({"colour": "red"}, "colour: Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("change", "message"), BAD_JOBS, ids=[str(c[0]) for c in BAD_JOBS])
def test_bad_jobs_are_refused_and_leave_nothing(client: TestClient, settings: Settings,
                                                ids: dict[str, str], change: dict[str, object],
                                                message: str) -> None:
    before = row_counts(settings.database_url)
    body = {**ids, "method": "magnitude", "optimizer": "optuna:tpe", "max_accuracy_drop": 0.01,
            "budget": {"trials": 10}, **change}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert row_counts(settings.database_url) == before


def test_job_with_missing_or_incompatible_inputs(client: TestClient, ids: dict[str, str]) -> None:
    body = {"method": "magnitude", "max_accuracy_drop": 0.01, "budget": {"trials": 10}}
    r = client.post("/v1/jobs", json={**body, **ids, "model_id": "nope"})
    assert r.status_code == 404 and "model 'nope' not found" in r.json()["detail"]
    flat = upload_dataset(client, npz_bytes({k: (v.reshape(len(v), 28, 28) if k.startswith("x") else v)
                                             for k, v in _arrays().items()}))
    lenet5 = _weights_lenet5()
    m5 = upload_model(client, lenet5, "lenet-5")
    r = client.post("/v1/jobs", json={**body, "model_id": m5["id"], "dataset_id": flat["id"]})
    assert r.status_code == 422 and "lenet-5 expects [1, 28, 28]" in r.json()["detail"]
    # labels beyond what the model outputs
    twelve = upload_dataset(client, npz_bytes(_arrays(y_test=np.full(20, 11))))
    r = client.post("/v1/jobs", json={**body, "model_id": ids["model_id"], "dataset_id": twelve["id"]})
    assert r.status_code == 422 and "dataset has 12 classes, lenet-300-100 outputs 10" in r.json()["detail"]


def _weights_lenet5() -> bytes:
    shapes = {"conv1.weight": (20, 1, 5, 5), "conv1.bias": (20,), "conv2.weight": (50, 20, 5, 5),
              "conv2.bias": (50,), "fc1.weight": (500, 800), "fc1.bias": (500,),
              "fc2.weight": (10, 500), "fc2.bias": (10,)}
    return safetensors.numpy.save({k: np.ones(s, np.float32) for k, s in shapes.items()})


def test_job_lifecycle_before_any_worker(client: TestClient, ids: dict[str, str]) -> None:
    jobs = [submit(client, **ids, seed=i) for i in range(3)]
    assert all(j["status"] == "queued" and j["progress"]["trials_done"] == 0 for j in jobs)
    listing = client.get("/v1/jobs", params={"limit": 2}).json()
    assert listing["total"] == 3 and [j["id"] for j in listing["items"]] == [jobs[2]["id"], jobs[1]["id"]]
    assert client.get("/v1/jobs", params={"limit": 2, "offset": 2}).json()["items"][0]["id"] == jobs[0]["id"]
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    r = client.get(f"/v1/jobs/{jobs[0]['id']}/checkpoint")
    assert r.status_code == 409 and "is queued" in r.json()["detail"]
    assert client.get(f"/v1/jobs/{jobs[0]['id']}/trials").json() == {"items": [], "total": 0,
                                                                      "offset": 0, "limit": 100}
    cancelled = client.post(f"/v1/jobs/{jobs[0]['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{jobs[0]['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert client.get("/v1/jobs/does-not-exist").status_code == 404
    assert client.get("/v1/jobs", params={"status": "queued"}).json()["total"] == 2
