"""Hostile input: every case answers with the right status and a message that names the problem,
leaves no row or blob behind, and the service still answers /healthz."""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import safetensors.numpy
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from store import tokens
from store.db import make_engine, make_sessionmaker, transaction
from tests import graph_models
from tests.conftest import make_settings, npz_bytes
from tests.helpers import bearer, make_token, row_counts

ROOT = Path(__file__).resolve().parents[2]
MARKER = Path("/tmp/thresher-hostile-pickle-ran")


class Evil:
    """Unpickling this would create MARKER: proof that nothing unpickles uploads."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(MARKER), "w"))


def lenet300(**changes: np.ndarray) -> bytes:
    rng = np.random.default_rng(0)
    shapes = {"fc1.weight": (300, 784), "fc1.bias": (300,), "fc2.weight": (100, 300),
              "fc2.bias": (100,), "fc3.weight": (10, 100), "fc3.bias": (10,)}
    tensors = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    tensors.update(changes)
    return safetensors.numpy.save(tensors)


def arrays(**changes: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {"x_train": rng.random((40, 1, 28, 28), dtype=np.float32), "y_train": rng.integers(0, 10, 40),
           "x_test": rng.random((10, 1, 28, 28), dtype=np.float32), "y_test": rng.integers(0, 10, 10)}
    out.update(changes)
    return out


def raw_header(header: dict[str, Any], data: bytes = b"") -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def pt2_archive() -> bytes:
    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    buf = io.BytesIO()
    torch.export.save(torch.export.export(Tiny(), (torch.ones(2),)), buf)
    return buf.getvalue()


GUARDS_MARKER = Path("/tmp/thresher-hostile-guards-ran")


def tiny_pt2() -> bytes:
    """A real export of a small convnet with BatchNorm, dynamic batch size."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    return graph_models.export_bytes(net)


def pt2_edit(**edits: Any) -> Request:
    return model_file(graph_models.rewrite(tiny_pt2(), **edits))


def model_file(payload: bytes) -> Request:
    return lambda w: w.client.post("/v1/models", files={"file": ("model.pt2", payload)})


def _set_target(target: str) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["graph_module"]["graph"]["nodes"][0]["target"] = target
    return edit


def _read_later(d: dict[str, Any]) -> None:
    nodes = d["graph_module"]["graph"]["nodes"]  # the first node reads the last one's output
    nodes[0]["inputs"][0]["arg"] = {"as_tensor": {"name": nodes[-1]["outputs"][0]["as_tensor"]["name"]}}


def _read_itself(d: dict[str, Any]) -> None:
    node = d["graph_module"]["graph"]["nodes"][0]
    node["inputs"][0]["arg"] = {"as_tensor": {"name": node["outputs"][0]["as_tensor"]["name"]}}


def _rename(first: str | None, second_as_first: bool = False) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        specs = d["graph_module"]["signature"]["input_specs"]
        if first is not None:
            specs[0]["parameter"]["parameter_name"] = first
        if second_as_first:
            specs[1]["parameter"]["parameter_name"] = specs[0]["parameter"]["parameter_name"]
    return edit


def _guards(d: dict[str, Any]) -> None:
    d["guards_code"] = [f"open({str(GUARDS_MARKER)!r}, 'w').write('ran')"]


def _million_nodes(d: dict[str, Any]) -> None:
    d["graph_module"]["graph"]["nodes"] = [
        {"target": "torch.ops.aten.relu.default", "inputs": [], "outputs": [], "name": "n"}] * 10**6


def _first_tensor(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        change(next(iter(d["config"].values())))
    return edit


def _strides_past(entry: dict[str, Any]) -> None:
    entry["tensor_meta"]["strides"] = [{"as_int": 1000 * s["as_int"]} for s in entry["tensor_meta"]["strides"]]


def _member(name: str, mode: int | None = None) -> Any:
    import zipfile

    info = zipfile.ZipInfo(name)
    if mode is not None:
        info.create_system = 3
        info.external_attr = mode << 16
    return info


def torchscript_file() -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    return buf.getvalue()


def zip_bomb() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x_train.npy", b"\0" * (200 * 1024 * 1024))
    return buf.getvalue()


def npz_with_member(name: str, payload: bytes, mode: int | None = None) -> bytes:
    """A valid dataset .npz whose member `name` is replaced by raw bytes, written with the Unix
    file mode `mode` (a symlink, a directory, a device) where given."""
    import zipfile

    good = zipfile.ZipFile(io.BytesIO(npz_bytes(arrays())))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for info in good.infolist():
            if info.filename != name:
                zf.writestr(info, good.read(info))
        member = zipfile.ZipInfo(name)
        if mode is not None:
            member.create_system = 3  # Unix, so that the mode bits mean what they say
            member.external_attr = mode << 16
        zf.writestr(member, payload)
    return buf.getvalue()


def object_array_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{**arrays(), "x_train": np.array([None, "a"], dtype=object)})  # a pickle inside
    return buf.getvalue()


@dataclass
class World:
    client: TestClient  # alice
    url: str
    ids: dict[str, str]  # alice's model, dataset, job
    bob: str
    revoked: str


@pytest.fixture
def world(tmp_path: Path, app_db_url: str) -> Iterator[World]:
    cfg = make_settings(app_db_url, tmp_path, max_upload_bytes=16 * 1024 * 1024, max_trials=10_000,
                        max_tensors=64)
    alice, bob = make_token(app_db_url, "alice"), make_token(app_db_url, "bob")
    revoked = make_token(app_db_url, "carol")
    with transaction(make_sessionmaker(make_engine(app_db_url))) as s:
        row = tokens.lookup(s, revoked)
        assert row is not None
        tokens.revoke(s, row.id)
    with TestClient(create_app(cfg), headers=bearer(alice)) as client:
        model = client.post("/v1/models", data={"architecture": "lenet-300-100"},
                            files={"weights": ("w", lenet300())}).json()
        ds = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(arrays()))}).json()
        job = client.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": ds["id"],
                                            "max_accuracy_drop": 0.01, "budget": {"trials": 10}}).json()
        yield World(client, app_db_url, {"model": model["id"], "dataset": ds["id"], "job": job["id"]},
                    bob, revoked)


Request = Callable[[World], httpx.Response]


def weights(payload: bytes, architecture: str = "lenet-300-100") -> Request:
    return lambda w: w.client.post("/v1/models", data={"architecture": architecture},
                                   files={"weights": ("weights.bin", payload)})


def dataset(payload: bytes) -> Request:
    return lambda w: w.client.post("/v1/datasets", files={"file": ("data.bin", payload)})


def job(**changes: Any) -> Request:
    def send(w: World) -> httpx.Response:
        body = {"model_id": w.ids["model"], "dataset_id": w.ids["dataset"], "method": "magnitude",
                "max_accuracy_drop": 0.01, "budget": {"trials": 10}, **changes}
        return w.client.post("/v1/jobs", json=body)
    return send


def as_bob(method: str, path: str) -> Request:
    return lambda w: w.client.request(method, path.format(**w.ids), headers=bearer(w.bob))


CASES: list[tuple[str, Request, int, str]] = [
    ("pickle with __reduce__ as weights", weights(pickle.dumps(Evil())), 422, "not a safetensors file"),
    ("pickle with __reduce__ as dataset", dataset(pickle.dumps(Evil())), 422, "not a safetensors file"),
    ("torch.export .pt2 archive as weights", weights(pt2_archive()), 422, "not a safetensors file"),
    ("torch.export .pt2 archive as dataset", dataset(pt2_archive()), 422, "not a .npy array"),
    ("TorchScript file as dataset", dataset(torchscript_file()), 422, "not a .npy array"),
    ("TorchScript file as weights", weights(torchscript_file()), 422, "not a safetensors file"),
    ("zip bomb as dataset", dataset(zip_bomb()), 422, "expands to"),
    ("truncated safetensors", weights(lenet300()[:500_000]), 422, "corrupt safetensors data"),
    ("header that lies about offsets", weights(raw_header(
        {k: {"dtype": "F32", "shape": list(s), "data_offsets": [0, 4 * int(np.prod(s))]}
         for k, s in {"fc1.weight": (300, 784), "fc1.bias": (300,), "fc2.weight": (100, 300),
                      "fc2.bias": (100,), "fc3.weight": (10, 100), "fc3.bias": (10,)}.items()},
        b"\0" * 64)), 422, "corrupt safetensors data"),
    ("header length of 1 TB", weights(struct.pack("<Q", 1 << 40) + b"{}"), 422, "not a safetensors file"),
    ("too many tensors", weights(raw_header({f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
                                             for i in range(100)}, b"\0" * 4)), 422, "more than the limit of 64"),
    ("tensor of rank 20", weights(raw_header({"t": {"dtype": "F32", "shape": [1] * 20,
                                                    "data_offsets": [0, 4]}}, b"\0" * 4)), 422, "rank 20"),
    ("tensor of 2^40 elements", weights(raw_header({"t": {"dtype": "F32", "shape": [1 << 20, 1 << 20],
                                                          "data_offsets": [0, 4]}}, b"\0" * 4)), 422,
     "elements, more than the limit"),
    ("NaN weights", weights(lenet300(**{"fc1.bias": np.full(300, np.nan, np.float32)})), 422, "'fc1.bias' holds NaN"),
    ("Inf weights", weights(lenet300(**{"fc2.weight": np.full((100, 300), np.inf, np.float32)})), 422,
     "'fc2.weight' holds NaN or infinite"),
    ("float16 weights", weights(lenet300(**{"fc3.bias": np.zeros(10, np.float16)})), 422, "dtype F16"),
    ("transposed weights", weights(lenet300(**{"fc1.weight": np.zeros((784, 300), np.float32)})), 422,
     "'fc1.weight' has shape [784, 300]"),
    ("labels out of range", dataset(npz_bytes(arrays(y_train=np.full(40, -3)))), 422, "negative label"),
    ("mismatched x/y lengths", dataset(npz_bytes(arrays(y_test=np.zeros(9, np.int64)))), 422,
     "x_test has 10 samples but y_test has 9"),
    ("empty dataset", dataset(npz_bytes(arrays(x_train=np.zeros((0, 1, 28, 28), np.float32),
                                               y_train=np.zeros(0, np.int64)))), 422, "x_train is empty"),
    ("npz member that is a symbolic link", dataset(npz_with_member(
        "x_train.npy", b"/etc/passwd", 0o120777)), 422, "member 'x_train.npy' is a symbolic link"),
    ("npz member that is a device", dataset(npz_with_member(
        "x_train.npy", b"", 0o020666)), 422, "member 'x_train.npy' is a special file"),
    ("npz member that is a directory", dataset(npz_with_member(
        "x_train.npy/", b"", 0o040755)), 422, "member 'x_train.npy/' is a directory"),
    ("npz member without the .npy magic", dataset(npz_with_member(
        "x_train.npy", b"these are not the bytes of an array")), 422,
     "member 'x_train.npy' is not a .npy array"),
    ("npz member that is an object array", dataset(object_array_npz()), 422,
     "member 'x_train.npy' must be a numeric array, not pickled objects"),
    ("pt2 whose guards_code would write a file", pt2_edit(model_json=_guards), 422,
     "carries guards_code"),
    ("pt2 with weights flagged use_pickle", pt2_edit(weights_config=_first_tensor(
        lambda e: e.update(use_pickle=True))), 422, "stored as a pickle (use_pickle)"),
    ("pt2 calling builtins.exec", pt2_edit(model_json=_set_target("builtins.exec")), 422,
     "calls 'builtins.exec', which is not on the allowlist"),
    ("pt2 calling os.system", pt2_edit(model_json=_set_target("os.system")), 422,
     "calls 'os.system', which is not on the allowlist"),
    ("pt2 calling an aten op off the allowlist", pt2_edit(model_json=_set_target(
        "torch.ops.aten._foreach_add.Scalar")), 422, "not on the allowlist"),
    ("pt2 node reading a later value", pt2_edit(model_json=_read_later), 422, "before it is defined"),
    ("pt2 node reading itself", pt2_edit(model_json=_read_itself), 422, "before it is defined"),
    ("pt2 tensor named like a path", pt2_edit(model_json=_rename("../../etc/x")), 422,
     "is not a dotted name"),
    ("pt2 tensor name given twice", pt2_edit(model_json=_rename(None, second_as_first=True)), 422,
     "is given twice"),
    ("pt2 with a million nodes", pt2_edit(model_json=_million_nodes), 422, "THRESHER_MAX_GRAPH_NODES"),
    ("pt2 of another schema version", pt2_edit(model_json=lambda d: d.update(
        schema_version={"major": 99, "minor": 0})), 422, "schema version"),
    ("pt2 weight whose strides point past its bytes", pt2_edit(weights_config=_first_tensor(
        _strides_past)), 422, "point past its bytes"),
    ("pt2 float64 weight", pt2_edit(weights_config=_first_tensor(
        lambda e: e["tensor_meta"].update(dtype=8))), 422, "F32 is required"),
    ("pt2 zip bomb", pt2_edit(extra=[(_member("net/extra.bin"), b"\0" * (100 * 1024 * 1024))]), 422,
     "expands to"),
    ("pt2 symlink member", pt2_edit(extra=[(_member("net/link", 0o120777), b"/etc/passwd")]), 422,
     "member 'net/link' is a symbolic link"),
    ("pt2 path-traversal member", pt2_edit(extra=[(_member("../../etc/cron.d/x"), b"")]), 422,
     "'../../etc/cron.d/x' is not a plain relative path"),
    ("pt2 with weights and architecture too", lambda w: w.client.post(
        "/v1/models", data={"architecture": "lenet-300-100"},
        files={"file": ("m.pt2", tiny_pt2()), "weights": ("w", lenet300())}), 422, "not both"),
    ("a zip that is not a torch.export archive", model_file(npz_bytes(arrays())), 422,
     "not a torch.export archive"),
    ("huge budget", job(budget={"trials": 50_000}), 422, "exceeds this server's limit of 10000"),
    ("absurd budget", job(budget={"trials": 10**12}), 422, "budget.trials must be at most"),
    ("δ out of range", job(max_accuracy_drop=1.5), 422, "max_accuracy_drop must be in [0, 1)"),
    ("NaN δ", lambda w: w.client.post("/v1/jobs", content=b'{"max_accuracy_drop": NaN}',
                                      headers={"content-type": "application/json"}), 422, "max_accuracy_drop"),
    ("unknown fields", job(run_as="root"), 422, "run_as: Extra inputs are not permitted"),
    ("path-like architecture", weights(lenet300(), "../../etc/passwd"), 422,
     "unknown architecture '../../etc/passwd'"),
    ("unicode look-alike architecture", weights(lenet300(), "lenet\u2010300\u2010100"), 422,
     "unknown architecture 'lenet\u2010300\u2010100'"),
    ("path-like built-in dataset", lambda w: w.client.post("/v1/datasets", json={"builtin": "../../../etc"}),
     422, "unknown built-in dataset '../../../etc'"),
    ("path-like job id", lambda w: w.client.get("/v1/jobs/..%2F..%2Fetc%2Fpasswd"), 404, "no such route"),
    ("oversize JSON", lambda w: w.client.post("/v1/jobs", content=b" " * (2 * 1024 * 1024) + b"{}",
                                              headers={"content-type": "application/json"}), 413,
     "larger than the limit of 1048576 bytes"),
    ("deeply nested JSON", lambda w: w.client.post("/v1/datasets", content=b"[" * 200_000,
                                                   headers={"content-type": "application/json"}), 422,
     "not valid JSON"),
    ("missing token", lambda w: w.client.get("/v1/jobs", headers={"authorization": ""}), 401, "missing token"),
    ("malformed Authorization", lambda w: w.client.get("/v1/jobs", headers={"authorization": "Basic YTpi"}),
     401, "must be 'Bearer <token>'"),
    ("revoked token", lambda w: w.client.get("/v1/jobs", headers=bearer(w.revoked)), 401, "revoked"),
    ("made-up token", lambda w: w.client.get("/v1/jobs", headers=bearer("thr_" + "A" * 43)), 401, "unknown"),
    ("another principal's model", as_bob("GET", "/v1/models/{model}"), 404, "model"),
    ("another principal's dataset", as_bob("GET", "/v1/datasets/{dataset}"), 404, "dataset"),
    ("another principal's job", as_bob("GET", "/v1/jobs/{job}"), 404, "job"),
    ("another principal's trials", as_bob("GET", "/v1/jobs/{job}/trials"), 404, "job"),
    ("another principal's checkpoint", as_bob("GET", "/v1/jobs/{job}/checkpoint"), 404, "job"),
    ("cancelling another principal's job", as_bob("POST", "/v1/jobs/{job}/cancel"), 404, "job"),
    ("a job on another principal's model", lambda w: w.client.post(
        "/v1/jobs", headers=bearer(w.bob), json={"model_id": w.ids["model"], "dataset_id": w.ids["dataset"],
                                                 "max_accuracy_drop": 0.01, "budget": {"trials": 5}}),
     404, "model"),
    ("workers list without admin", lambda w: w.client.get("/v1/workers"), 403, "admin token"),
]


@pytest.mark.parametrize(("case", "send", "status", "message"), CASES, ids=[c[0] for c in CASES])
def test_hostile_input(world: World, case: str, send: Request, status: int, message: str) -> None:
    MARKER.unlink(missing_ok=True)
    GUARDS_MARKER.unlink(missing_ok=True)
    before = row_counts(world.url)
    response = send(world)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and message in body["detail"], body
    assert row_counts(world.url) == before  # nothing half-written
    assert world.client.get("/healthz").json() == {"status": "ok"}
    assert not MARKER.exists(), "an upload was unpickled"
    assert not GUARDS_MARKER.exists(), "an archive's guards_code was executed"
    if status == 404 and "another principal" in case:
        # and the owner still sees it
        assert world.client.get(f"/v1/jobs/{world.ids['job']}").status_code == 200


def test_a_pickled_sample_input_is_accepted_and_never_read(world: World) -> None:
    """torch.export.save always writes `sample_inputs/model.pt`, a pickle: the reader never opens
    it, so one that would run code on unpickling changes nothing."""
    MARKER.unlink(missing_ok=True)
    archive = graph_models.rewrite(tiny_pt2(), members={"data/sample_inputs/model.pt": pickle.dumps(Evil())})
    r = world.client.post("/v1/models", files={"file": ("model.pt2", archive)})
    assert r.status_code == 201, r.text
    assert r.json()["architecture"] == "graph" and not MARKER.exists()


def test_there_are_at_least_25_cases() -> None:
    assert len(CASES) >= 25


def test_requests_per_minute_are_limited_with_retry_after(tmp_path: Path, app_db_url: str) -> None:
    cfg = make_settings(app_db_url, tmp_path, requests_per_minute=5)
    with TestClient(create_app(cfg), headers=bearer(make_token(app_db_url))) as client:
        codes = [client.get("/v1/jobs").status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        limited = client.get("/v1/jobs")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert "more than 5 requests per minute" in limited.json()["detail"]
        other = client.get("/v1/jobs", headers=bearer(make_token(app_db_url, "bob")))
        assert other.status_code == 200  # budgets are per principal
        assert client.get("/healthz").status_code == 200


def test_concurrent_jobs_per_principal_are_limited(tmp_path: Path, app_db_url: str) -> None:
    cfg = make_settings(app_db_url, tmp_path, max_active_jobs=2)
    with TestClient(create_app(cfg), headers=bearer(make_token(app_db_url))) as client:
        model = client.post("/v1/models", data={"architecture": "lenet-300-100"},
                            files={"weights": ("w", lenet300())}).json()
        ds = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(arrays()))}).json()
        body = {"model_id": model["id"], "dataset_id": ds["id"], "max_accuracy_drop": 0.01,
                "budget": {"trials": 5}}
        first = client.post("/v1/jobs", json=body).json()
        assert client.post("/v1/jobs", json=body).status_code == 201
        third = client.post("/v1/jobs", json=body)
        assert third.status_code == 429 and "already has 2 queued or running jobs" in third.json()["detail"]
        client.post(f"/v1/jobs/{first['id']}/cancel")
        assert client.post("/v1/jobs", json=body).status_code == 201


def test_cors_is_off_unless_configured(tmp_path: Path, app_db_url: str) -> None:
    headers = {"origin": "https://evil.example", "access-control-request-method": "GET"}
    with TestClient(create_app(make_settings(app_db_url, tmp_path))) as client:
        assert "access-control-allow-origin" not in client.options("/v1/jobs", headers=headers).headers
    cfg = make_settings(app_db_url, tmp_path, cors_origins=["https://app.example"])
    with TestClient(create_app(cfg)) as client:
        ok = client.options("/v1/jobs", headers={**headers, "origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-origin" not in client.options("/v1/jobs", headers=headers).headers


@pytest.fixture
def live_server(tmp_path: Path, app_db_url: str) -> Iterator[tuple[str, str, int]]:
    token = make_token(app_db_url)
    port = _free_port()
    env = dict(os.environ, THRESHER_DATABASE_URL=app_db_url, THRESHER_MAX_UPLOAD_BYTES=str(8 * 1024 * 1024))
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
            assert time.monotonic() < deadline
        yield url, token, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_2_gb_upload_is_refused_early_with_bounded_memory(live_server: tuple[str, str, int],
                                                            app_db_url: str) -> None:
    url, token, pid = live_server
    before = row_counts(app_db_url)
    # declared: refused from the headers alone, before any body byte is read
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall((f"POST /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                      "Content-Type: multipart/form-data; boundary=B\r\n"
                      f"Content-Length: {2 * 1024**3}\r\n\r\n").encode())
        sock.settimeout(30)
        chunks = []
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            chunks.append(chunk)
        reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 413") and "larger than the limit of 8388608 bytes" in reply

    # undeclared (chunked): refused once the streamed bytes pass the limit, memory stays flat
    def body() -> Iterator[bytes]:
        yield b'--B\r\nContent-Disposition: form-data; name="weights"; filename="w"\r\n\r\n'
        for _ in range(2048):
            yield b"\0" * (1 << 20)

    response = httpx.post(f"{url}/v1/models", content=body(), timeout=120,
                          headers={"authorization": f"Bearer {token}",
                                   "content-type": "multipart/form-data; boundary=B"})
    assert response.status_code == 413 and "larger than the limit" in response.json()["detail"]
    assert _peak_rss_kib(pid) < 400 * 1024  # far below the 2 GB sent
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert row_counts(app_db_url) == before


def test_mangled_graph_json_is_refused_not_crashed_on(world: World) -> None:
    """300 seeded mutations of a real export's graph and weights config (a value replaced by one
    of another JSON type, anywhere in the tree): each upload is accepted or answered 422, never a
    5xx, and a refusal stores nothing."""
    import random

    rng = random.Random(0)
    strangers: list[Any] = [None, 7, -1, 1.5, "x", [], {}, [1, "a"], {"as_int": "x"}, True]

    def mutate(doc: Any) -> None:
        node, path = doc, []
        while isinstance(node, (dict, list)) and node and rng.random() < 0.85:
            key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
            path.append((node, key))
            node = node[key]
        if path:
            parent, key = path[-1]
            parent[key] = rng.choice(strangers)

    archive = tiny_pt2()
    for i in range(300):
        edits = {"model_json": mutate} if i % 2 == 0 else {"weights_config": mutate}
        before = row_counts(world.url)
        r = world.client.post("/v1/models", files={"file": ("m.pt2", graph_models.rewrite(archive, **edits))})
        assert r.status_code in (201, 422), (i, r.text)
        if r.status_code == 422:
            assert r.json()["detail"].startswith("file") and row_counts(world.url) == before
