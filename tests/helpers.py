"""Helpers the tests share: counting what the database holds, driving the API."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select

from store import blobs, records, tokens
from store.db import make_engine, make_sessionmaker, transaction
from store.models import Blob, BlobChunk, Dataset, Job, Model, Trial

TABLES = (Blob, BlobChunk, Model, Dataset, Job, Trial)


def row_counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        counts = {t.__tablename__: int(conn.scalar(select(func.count()).select_from(t)) or 0)
                  for t in TABLES}
    engine.dispose()
    return counts


def make_token(url: str, name: str = "alice", *, admin: bool = False) -> str:
    engine = make_engine(url)
    with transaction(make_sessionmaker(engine)) as s:
        _, plaintext = tokens.create(s, name, admin=admin)
    engine.dispose()
    return plaintext


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload_model(client: TestClient, weights: bytes, architecture: str = "lenet-300-100") -> dict[str, Any]:
    r = client.post("/v1/models", data={"architecture": architecture},
                    files={"weights": ("model.safetensors", weights, "application/octet-stream")})
    assert r.status_code == 201, r.text
    return r.json()


def upload_dataset(client: TestClient, data: bytes, filename: str = "data.npz") -> dict[str, Any]:
    r = client.post("/v1/datasets", files={"file": (filename, data, "application/octet-stream")})
    assert r.status_code == 201, r.text
    return r.json()


def submit(client: TestClient, model_id: str, dataset_id: str, **spec: Any) -> dict[str, Any]:
    body = {"model_id": model_id, "dataset_id": dataset_id, "method": "magnitude",
            "optimizer": "nevergrad:NGOpt", "max_accuracy_drop": 0.01, "budget": {"trials": 40},
            "seed": 0, **spec}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def trials(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """Every trial of a job, page by page (a TestClient is an httpx.Client too)."""
    out: list[dict[str, Any]] = []
    while True:
        page = client.get(f"/v1/jobs/{job_id}/trials", params={"offset": len(out), "limit": 1000}).json()
        out += page["items"]
        if len(out) >= page["total"]:
            return out


def seed_jobs(url: str, n: int) -> list[str]:
    """`n` queued jobs on one model and dataset (the rows the queue tests claim); their ids."""
    engine = make_engine(url)
    with transaction(make_sessionmaker(engine)) as s:
        sha = blobs.put(s, b"weights")
        model = records.add_model(s, architecture="lenet-300-100", weights_sha256=sha, summary={},
                                  name=None)
        ds = records.add_dataset(s, summary={}, builtin="mnist", blob_sha256=None, name=None)
        ids = [records.add_job(s, model_id=model.id, dataset_id=ds.id, spec={}, trials_total=1).id
               for _ in range(n)]
    engine.dispose()
    return ids


class _ById(HTMLParser):
    """Collects the text inside the element with a given id (nested elements included)."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                      "source", "track", "wbr"})

    def __init__(self, ident: str) -> None:
        super().__init__()
        self.ident, self.depth, self.found, self.parts = ident, 0, False, []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        if self.depth:
            self.depth += 1
            self.parts.append(" ")  # element boundaries separate words, as a reader sees them
        elif dict(attrs).get("id") == self.ident:
            self.depth, self.found = 1, True

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag not in self.VOID:
            self.depth -= 1
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.parts.append(data)


def text_of(html: str, ident: str) -> str | None:
    """The whitespace-normalized text of the element with id `ident`, or None without one."""
    parser = _ById(ident)
    parser.feed(html)
    return " ".join("".join(parser.parts).split()) if parser.found else None


def random_splits(n: int = 300) -> Any:
    """Seeded random 28×28 images and labels as workers.runtime.data.Splits (validation and
    test: the first 100 training samples): enough to train a few steps, not to learn anything."""
    import torch

    from workers.runtime.data import Splits

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return Splits(x, y, x[:100], y[:100], x[:100], y[:100])
