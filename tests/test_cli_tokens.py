"""`thresher token create|list|revoke` and the first-start admin token, through the real CLI."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cli.main import ADMIN_TOKEN_FILE, _first_admin_token
from core.settings import Settings
from service.app import create_app
from tests.helpers import bearer

ROOT = Path(__file__).resolve().parents[1]


def thresher(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, THRESHER_DATABASE_URL=url))


def test_create_list_revoke(settings: Settings) -> None:
    url = settings.database_url
    created = thresher(url, "token", "create", "--name", "alice")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("thr_") and "shown once" in created.stderr
    token_id = created.stderr.split()[1]

    listing = thresher(url, "token", "list")
    assert "alice" in listing.stdout and token_id in listing.stdout
    assert token not in listing.stdout  # values are never shown again (only hashes are stored)

    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs", headers=bearer(token)).status_code == 200
        assert thresher(url, "token", "revoke", token_id).returncode == 0
        refused = client.get("/v1/jobs", headers=bearer(token))
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]

    bad = thresher(url, "token", "create", "--name", "../root")
    assert bad.returncode == 2 and "must be 1-100 characters" in bad.stderr
    assert thresher(url, "token", "revoke", "no-such-id").returncode == 2


def test_first_start_creates_one_admin_token(settings: Settings, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    _first_admin_token(settings)
    printed = capsys.readouterr().out
    token = ADMIN_TOKEN_FILE.read_text().strip()
    assert token in printed
    assert stat.S_IMODE(ADMIN_TOKEN_FILE.stat().st_mode) == 0o600
    with TestClient(create_app(settings), headers=bearer(token)) as client:
        assert client.get("/v1/workers").status_code == 200  # an admin token
    _first_admin_token(settings)  # a later start keeps the existing token
    assert capsys.readouterr().out == "" and ADMIN_TOKEN_FILE.read_text().strip() == token
