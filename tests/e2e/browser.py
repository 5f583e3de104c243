"""A real server process, and Debian's Chromium driven by Playwright, for the dashboard's tests.

Chromium comes from Debian's package (`make test` installs it where /usr/bin/chromium is missing);
Playwright never downloads a browser of its own here."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

from tests.processes import serving

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium reaches out to Google's services, which the
# closed network refuses; a fresh profile per context keeps runs independent.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTHS = (1280, 390)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_env(db_url: str, datasets_dir: Path, cache_dir: Path) -> dict[str, str]:
    return dict(os.environ, THRESHER_DATABASE_URL=db_url, THRESHER_DATASETS_DIR=str(datasets_dir),
                THRESHER_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT), THRESHER_POLL_SECONDS="0.2")


def api_server(env: dict[str, str], cwd: Path) -> contextlib.AbstractContextManager[str]:
    """`thresher serve` on a free port; its base URL once /healthz answers."""
    return serving("serve", env, cwd, up_seconds=60, stop_seconds=30)


def start_worker(env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cli.main", "worker", "--exit-when-idle"], env=env,
                            cwd=cwd, stdout=(cwd / "worker.log").open("wb"), stderr=subprocess.STDOUT)


@contextmanager
def chromium(profile: Path, width: int = WIDTHS[0]) -> Iterator[BrowserContext]:
    """A Chromium browser context on a fresh profile."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package "
                    "(apt-get install chromium)")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": 900}, accept_downloads=True)
        try:
            yield context
        finally:
            context.close()


def sign_in(page: Page, base: str, token: str) -> None:
    page.goto(f"{base}/")
    assert page.url.startswith(f"{base}/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def screenshots(page: Page, folder: Path, name: str) -> None:
    """The page at each width, full length, as test artifacts."""
    folder.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": WIDTHS[0], "height": 900})
