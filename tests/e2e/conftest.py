"""What the end-to-end tests share: `thresher up` as a real process on its own SQLite database,
reached over real HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import serving

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp: Path, datasets_dir: Path) -> dict[str, str]:
    return dict(os.environ, THRESHER_DATABASE_URL=f"sqlite:///{tmp / 'var' / 'thresher.db'}",
                THRESHER_DATASETS_DIR=str(datasets_dir), THRESHER_CACHE_DIR=str(tmp / "var" / "cache"))


@pytest.fixture
def service(tmp_path: Path, mnist_dir: Path) -> Iterator[str]:
    """`thresher up` (API + one worker) on its own SQLite database under tmp_path."""
    with serving("up", {**_env(tmp_path, mnist_dir), "PYTHONPATH": str(ROOT)}, tmp_path,
                 tmp_path / "up.log", up_seconds=120, stop_seconds=60, poll_seconds=0.3) as url:
        yield url
