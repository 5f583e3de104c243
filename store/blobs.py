"""Content-addressed bytes, chunked so that large checkpoints and datasets stream."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import delete, exists, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from store.models import Artifact, Blob, BlobChunk, Dataset, Job, Model, Trial, TrialItem, utcnow

CHUNK_SIZE = 1024 * 1024


def put(session: Session, data: bytes) -> str:
    """Store `data` (idempotent, also between concurrent transactions) and return its sha256."""
    sha = hashlib.sha256(data).hexdigest()
    if session.get(Blob, sha) is not None:
        return sha
    # Two uploads of the same bytes at once: the second INSERT waits for the first transaction and
    # then does nothing, instead of failing on the primary key.
    insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    claimed = session.execute(
        insert(Blob).values(sha256=sha, size=len(data), chunk_size=CHUNK_SIZE, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["sha256"]).returning(Blob.sha256)).first()
    if claimed is None:  # another transaction stored these bytes meanwhile
        return sha
    for idx, start in enumerate(range(0, max(len(data), 1), CHUNK_SIZE)):
        session.add(BlobChunk(sha256=sha, idx=idx, data=data[start : start + CHUNK_SIZE]))
        # Flush per chunk so the session never holds a large blob's chunks twice.
        session.flush()
    return sha


def iter_chunks(session: Session, sha: str) -> Iterator[bytes]:
    count = session.scalar(select(Blob.size).where(Blob.sha256 == sha))
    if count is None:
        raise KeyError(sha)
    idx = 0
    while True:
        chunk = session.scalar(
            select(BlobChunk.data).where(BlobChunk.sha256 == sha, BlobChunk.idx == idx)
        )
        if chunk is None:
            return
        yield chunk
        idx += 1


def read(session: Session, sha: str) -> bytes:
    data = b"".join(iter_chunks(session, sha))
    if hashlib.sha256(data).hexdigest() != sha:
        raise ValueError(f"blob {sha} is corrupt")
    return data


def read_cached(session: Session, sha: str, cache_dir: Path) -> bytes:
    """Read through a local cache keyed by sha256 (a worker fetches a blob once per machine)."""
    path = cache_dir / sha[:2] / sha
    if path.is_file():
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == sha:
            return data
    data = read(session, sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def delete_if_unreferenced(session: Session, sha: str) -> bool:
    """Drop a blob nothing points at any more (a replaced training state); True if it went."""
    referenced = session.scalar(select(or_(
        exists().where(Model.weights_sha256 == sha), exists().where(Dataset.blob_sha256 == sha),
        exists().where(Artifact.blob_sha256 == sha), exists().where(Job.state_sha256 == sha),
        exists().where(Trial.params_sha256 == sha),
        exists().where(TrialItem.params_sha256 == sha))))
    if referenced:
        return False
    session.execute(delete(BlobChunk).where(BlobChunk.sha256 == sha))
    session.execute(delete(Blob).where(Blob.sha256 == sha))
    return True
