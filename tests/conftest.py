"""Shared fixtures: real databases through the real migrations, real MNIST, real torch."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

import tests.numerics  # noqa: F401  (before anything imports torch: pins its CPU kernels)
from core.settings import Settings
from store.db import upgrade

ROOT = Path(__file__).resolve().parents[1]
DATASETS_DIR = Path(os.environ.get("THRESHER_DATASETS_DIR", ROOT.parent / "shared" / "datasets"))
PG_ADMIN_URL = os.environ.get(
    "THRESHER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
ARTIFACTS = ROOT / "tests" / "artifacts"
# `make test` runs the suite on SQLite, then again with THRESHER_TEST_BACKEND=postgresql.
TEST_BACKEND = os.environ.get("THRESHER_TEST_BACKEND", "sqlite")


def _postgres_available() -> bool:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


POSTGRES = _postgres_available()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (DATASETS_DIR / "mnist").is_dir():
        pytest.fail(f"MNIST is expected at {DATASETS_DIR / 'mnist'} (../shared/datasets/mnist)")
    return DATASETS_DIR


def _fresh_postgres() -> Iterator[str]:
    name = f"thresher_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind (PostgreSQL only where a server is reachable)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'thresher.db'}"
        return
    if not POSTGRES:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    yield from _fresh_postgres()


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    upgrade(empty_db_url)
    return empty_db_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'thresher.db'}"
    upgrade(url)
    return url


@pytest.fixture
def app_db_url(tmp_path: Path) -> Iterator[str]:
    """The database the service and workers run on in this pass of the suite (migrated)."""
    if TEST_BACKEND == "postgresql":
        if not POSTGRES:
            pytest.fail(f"THRESHER_TEST_BACKEND=postgresql but no server at {PG_ADMIN_URL}")
        for url in _fresh_postgres():
            upgrade(url)
            yield url
        return
    url = f"sqlite:///{tmp_path / 'thresher.db'}"
    upgrade(url)
    yield url


def make_settings(url: str, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        database_url=url, datasets_dir=DATASETS_DIR, cache_dir=tmp_path / "cache",
        lease_seconds=5.0, heartbeat_seconds=0.5, poll_seconds=0.1, retry_backoff_seconds=0.2,
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(app_db_url: str, tmp_path: Path) -> Settings:
    return make_settings(app_db_url, tmp_path)


# -- small real data and a small real model -------------------------------------------------

def load_small_arrays(datasets_dir: Path = DATASETS_DIR) -> dict[str, np.ndarray]:
    """A slice of MNIST with its own validation split: quick to score, still real."""
    from core import builtin_datasets

    m = builtin_datasets.load("mnist", datasets_dir)
    return {
        "x_train": m.x_train[:4000], "y_train": m.y_train[:4000],
        "x_val": m.x_train[50000:51000], "y_val": m.y_train[50000:51000],
        "x_test": m.x_test[:2000], "y_test": m.y_test[:2000],
    }


def train_small_model(arrays: dict[str, np.ndarray]) -> bytes:
    """LeNet-300-100 trained for 2 epochs on 4,000 images (about 90 % accurate)."""
    import safetensors.torch
    import torch

    from workers.models.reference_training import train
    from workers.runtime.data import split_arrays

    splits = split_arrays(arrays, {})
    params, result = train("lenet-300-100", splits, epochs=2, seed=0, device=torch.device("cpu"))
    assert result.val_accuracy > 0.8
    return safetensors.torch.save({k: v.contiguous() for k, v in params.items()})


def small_inputs() -> tuple[bytes, bytes]:
    """(weights, dataset .npz) of the small model and data, outside pytest (tests/golden)."""
    arrays = load_small_arrays()
    return train_small_model(arrays), npz_bytes(arrays)


@pytest.fixture(scope="session")
def small_arrays(mnist_dir: Path) -> dict[str, np.ndarray]:
    return load_small_arrays(mnist_dir)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture(scope="session")
def small_dataset_npz(small_arrays: dict[str, np.ndarray]) -> bytes:
    return npz_bytes(small_arrays)


@pytest.fixture(scope="session")
def small_model_weights(small_arrays: dict[str, np.ndarray]) -> bytes:
    return train_small_model(small_arrays)
